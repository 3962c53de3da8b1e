"""``train_together``: trials that differ only in seed and scalar optimizer settings, trained
as one jitted program (``jax.vmap`` over a leading trial axis of every array).

Each trial keeps all that a run of its own has: its workdir (config.json, Orbax checkpoints,
metrics.jsonl, TensorBoard events, curves, report), its initialisation, batch order and
dropout keys (from its seed), its learning-rate schedule and its early stopping. A trial that
has stopped stays in the program, masked (its state no longer changes), until all have.

Results equal ``train_and_evaluate`` of each config to float tolerance (batched matrix
products may round differently), and the checkpoints are the same: a trial interrupted here
resumes here or alone. The gain: on a small model a step is mostly dispatch and Python
overhead, and K trials pay it (and compilation, data loading) once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fnn_jax import config as config_lib
from fnn_jax import reporting
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.files import workdir_lock
from fnn_jax.optim import make_optimizer, schedule
from fnn_jax.train import loop
from fnn_jax.train.steps import (
    TrainState,
    eval_batches,
    eval_step_body,
    init_params,
    make_eval_step,
    to_device_batch,
    train_step_body,
    zero_sums,
)

log = logging.getLogger("fnn_jax")

# The config keys in which trials of one group may differ.
VECTORIZABLE = (
    "seed",
    "optimizer.learning_rate",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "regularization.l1",
    "regularization.l2",
)


def group_key(config: ml_collections.ConfigDict) -> str | None:
    """Configs with equal keys can train together; None for one that cannot (it fine-tunes:
    pretrained weights, stages or LoRA adapters)."""
    if config.init_from or config.finetune.stages or config.finetune.lora_rank:
        return None
    shared = config_lib.to_dict(config)
    for key in VECTORIZABLE:
        section, _, name = key.rpartition(".")
        (shared[section] if section else shared).pop(name)
    # Momentum 0 means no momentum buffer at all: another optimizer-state structure.
    shared["momentum_buffer"] = bool(config.optimizer.momentum)
    return json.dumps(shared, sort_keys=True, default=list)


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises ValueError naming what keeps ``configs`` from training together."""
    if not configs:
        raise ValueError("train_together needs at least one config")
    for i, config in enumerate(configs):
        if group_key(config) is None:
            raise ValueError(
                f"trial {i} fine-tunes (init_from, finetune.stages or finetune.lora_rank "
                "is set) and cannot be vectorised; run it alone"
            )
    first = config_lib.to_dict(configs[0])
    for i, config in enumerate(configs[1:], 1):
        if group_key(config) == group_key(configs[0]):
            continue
        differ = [
            d
            for d in config_lib.differences(first, config_lib.to_dict(config))
            if not d.startswith(tuple(f"{key}:" for key in VECTORIZABLE))
        ]
        if not differ:
            differ = ["optimizer.momentum: 0 and non-zero (a momentum buffer or none)"]
        raise ValueError(
            f"trial {i} differs from trial 0 in more than {', '.join(VECTORIZABLE)}, so they "
            "cannot train in one vectorised program:\n  " + "\n  ".join(differ)
        )


def train_together(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str | Path],
    *,
    stop_after_steps: int | None = None,
) -> list[dict[str, Any] | Exception]:
    """Trains (or resumes) each ``configs[k]`` in ``workdirs[k]``, all in one vmapped program.

    Returns, per trial, its report (as ``train_and_evaluate`` does), ``{"interrupted_at":
    step}`` after ``stop_after_steps`` steps, or the exception that stopped that trial alone
    (e.g. too many non-finite steps); the others go on. SIGTERM saves every trial and raises
    Preempted.
    """
    if len(configs) != len(workdirs):
        raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs")
    for config in configs:
        config_lib.validate(config)
    check_group(configs)
    workdirs = [Path(w).absolute() for w in workdirs]
    if len(set(workdirs)) != len(workdirs):
        raise ValueError(f"two trials share a workdir: {[str(w) for w in workdirs]}")
    with contextlib.ExitStack() as locks:
        for config, workdir in zip(configs, workdirs, strict=True):
            locks.enter_context(workdir_lock(workdir))
            loop.check_config_file(workdir, config)
        return _Group(configs, workdirs).run(stop_after_steps)


@dataclasses.dataclass
class _Trial:
    """One trial's host-side bookkeeping (its arrays live in the group's stacked state)."""

    config: ml_collections.ConfigDict
    workdir: Path
    checkpoints: Checkpoints
    progress: dict[str, Any]
    step: int
    active: bool = True
    batches: Iterator | None = None
    metrics_log: reporting.MetricsLog | None = None
    final_state: TrainState | None = None  # its slice of the state once it is done
    outcome: dict[str, Any] | Exception | None = None


def host_slices(tree: Any, size: int) -> list[Any]:
    """The ``size`` trees along the leading axis of every leaf, as NumPy copies: one
    transfer for all trials, and safe from the next step, which donates the device buffers."""
    host = jax.device_get(tree)
    return [jax.tree.map(lambda x, k=k: np.array(x[k]), host) for k in range(size)]


def lr_tables(cfgs: Sequence[ml_collections.ConfigDict], total_steps: int) -> jax.Array:
    """[trials, total_steps] float32: each optimizer config's schedule at steps 0, 1, ...
    (one compiled program for all)."""

    def tables(steps):
        values = [schedule(cfg, total_steps)(steps) for cfg in cfgs]
        return jnp.stack(
            [jnp.broadcast_to(jnp.asarray(v, jnp.float32), steps.shape) for v in values]
        )

    return jax.jit(tables)(jnp.arange(total_steps))


@jax.jit
def zero_rows(rows: jax.Array, tree: Any) -> Any:
    """``tree`` [trials, ...] with the trials where ``rows`` [trials] is True set to zero."""
    return jax.tree.map(
        lambda x: jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.zeros_like(x), x), tree
    )


class _Group:
    """The trials' stacked device state ([trials, ...] leaves) and the loop that drives it,
    step by step as the single-run loop does, with every decision taken per trial."""

    def __init__(self, configs, workdirs):
        self.started = time.time()
        self.configs = list(configs)
        self.plan = plan = loop.setup(configs[0])  # what the trials share: data, model, budget
        self.total = plan.total_steps
        model, task, sample = plan.model, plan.task, plan.sample
        self.eval_step = make_eval_step(model, task)  # one trial's params: for the report
        self.batched_eval = jax.jit(jax.vmap(eval_step_body(model, task), in_axes=(0, None)))
        self.trials, states, keys, sums = [], [], [], None
        for config, workdir in zip(configs, workdirs, strict=True):
            init_key, dropout_key, _ = jax.random.split(jax.random.key(config.seed), 3)
            params = init_params(model, init_key, sample)
            sums = sums if states else zero_sums(model, task, params, sample)  # all alike
            tx = make_optimizer(config.optimizer, self.total)
            fresh = TrainState(jnp.asarray(0, jnp.int32), params, tx.init(params), sums)
            checkpoints = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
            restored = checkpoints.restore_good(lambda progress, fresh=fresh: fresh)
            if restored is None:
                state, progress, step = fresh, loop.initial_progress(config), 0
            else:
                step, state, progress = restored
                progress.pop("hashes", None)
                log.info("resumed %s from step %d", workdir, step)
            self.trials.append(_Trial(config, workdir, checkpoints, progress, step))
            states.append(state)
            keys.append(dropout_key)
        self.state = jax.device_put(jax.tree.map(lambda *leaves: np.stack(leaves), *states))
        self.dropout_keys = jnp.stack(keys)
        self.hyper = self._hyperparameters()
        self.train_step = self._vectorized_step()

    def _hyperparameters(self) -> dict[str, jax.Array]:
        """Per trial ([trials] or [trials, steps]): what the vmapped step takes as arguments.

        The learning rate is a table of each trial's own schedule, looked up by the
        optimizer's step count as its schedule would be evaluated. An L1/L2 weight that is 0
        in every trial stays out of the loss, as in a run of its own.
        """
        configs = self.configs
        column = lambda get: jnp.asarray([get(c) for c in configs], jnp.float32)
        hyper = {
            "learning_rate": lr_tables([c.optimizer for c in configs], self.total),
            "weight_decay": column(lambda c: c.optimizer.weight_decay),
        }
        if configs[0].optimizer.momentum:
            hyper["momentum"] = column(lambda c: c.optimizer.momentum)
        for name in ("l1", "l2"):
            if any(c.regularization[name] for c in configs):
                hyper[name] = column(lambda c, name=name: c.regularization[name])
        return hyper

    def _vectorized_step(self):
        """jit(vmap(step)): one step of every trial; a trial not ``active`` is left as is."""
        shared = self.configs[0]
        body = train_step_body(self.plan.model, self.plan.task, shared.regularization.exclude)
        total = self.total

        def step(state, batch, dropout_key, hyper, active):
            table = hyper["learning_rate"]
            tx = make_optimizer(
                shared.optimizer,
                total,
                learning_rate=lambda count: table[jnp.minimum(count, total - 1)],
                weight_decay=hyper["weight_decay"],
                momentum=hyper.get("momentum"),
            )
            l1, l2 = hyper.get("l1", 0.0), hyper.get("l2", 0.0)
            new, finite = body(state, batch, dropout_key, tx, l1, l2)
            return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state), finite

        return jax.jit(jax.vmap(step), donate_argnums=0)

    # ------------------------------------------------------------------------ the loop

    def run(self, stop_after_steps: int | None) -> list[dict[str, Any] | Exception]:
        plan, cfg = self.plan, self.configs[0]
        for trial in self.trials:
            patience_spent = (
                cfg.train.patience and trial.progress["bad_evals"] >= cfg.train.patience
            )
            if trial.progress["stage"] > 0 or trial.progress["stopped"]:
                trial.active = False  # trained; only its report is missing
            elif trial.step >= self.total or patience_spent:
                self._end_stage(trial)  # resumed right at its end, or after its early stop
            else:
                trial.batches = plan.train_batches(trial.config.seed, trial.step, self.total)
            trial.metrics_log = reporting.MetricsLog(trial.workdir, resume_step=trial.step)
        if not all(t.active for t in self.trials):  # done before this call: keep their state
            for trial, state in zip(
                self.trials, host_slices(self.state, len(self.trials)), strict=True
            ):
                if not trial.active:
                    trial.final_state = state
        bar = reporting.Progress(
            self.total, min(t.step for t in self.trials), cfg.train.log_every_steps
        )
        preemption = loop.PreemptionFlag()
        ran, interrupted = 0, False
        try:
            while any(t.active for t in self.trials):
                self._step()
                ran += 1
                saved = self._log_evaluate_save()
                active = [t for t in self.trials if t.active]
                if active:
                    step = max(t.step for t in active)
                    bar.update(step, f"{len(active)}/{len(self.trials)} trials training")
                if preemption.requested or (
                    stop_after_steps is not None and ran >= stop_after_steps
                ):
                    unsaved = [k for k, t in enumerate(self.trials) if t.active and k not in saved]
                    slices = host_slices(self.state, len(self.trials)) if unsaved else []
                    for k in unsaved:
                        self._save(k, slices[k])
                    interrupted = True
                    break
        finally:
            preemption.restore()
            bar.close()
            for trial in self.trials:
                trial.checkpoints.wait()
                trial.metrics_log.flush()

        if interrupted:
            self._close()
            if preemption.requested:
                loop.clear_preemption()
                raise loop.Preempted(
                    f"SIGTERM: saved {len(self.trials)} vectorised trials in "
                    f"{self.trials[0].workdir.parent}; run again to resume"
                )
            return [
                t.outcome if isinstance(t.outcome, Exception) else {"interrupted_at": t.step}
                for t in self.trials
            ]
        for trial in self.trials:
            if trial.outcome is None:
                trial.outcome = self._finish(trial)  # closes its checkpoints and log
            else:
                trial.checkpoints.close()
                trial.metrics_log.close()
        return [t.outcome for t in self.trials]

    def _step(self) -> None:
        """One train step of every active trial, each on its own next batch."""
        rows, active = [], np.array([t.active for t in self.trials])
        for trial in self.trials:
            rows.append(to_device_batch(next(trial.batches)[1]) if trial.active else None)
        filler = next(row for row in rows if row is not None)  # inactive: any batch, masked
        rows = [filler if row is None else row for row in rows]
        batch = {name: np.stack([row[name] for row in rows]) for name in filler}
        self.state, finite = self.train_step(
            self.state, batch, self.dropout_keys, self.hyper, active
        )
        finite = np.asarray(finite)
        for k, trial in enumerate(self.trials):
            if not trial.active:
                continue
            trial.step += 1
            if finite[k]:
                continue
            limit, name = trial.config.train.max_nonfinite_steps, f"{trial.workdir.name} "
            trial.outcome = loop.count_nonfinite(trial.progress, trial.step, limit, name)
            trial.active = trial.outcome is None

    def _log_evaluate_save(self) -> set[int]:
        """Train metrics, validation, early stopping and checkpoints of the trials whose step
        calls for them (as the single-run loop does); returns the indices saved."""
        cfg, total = self.configs[0], self.total
        due_log = [
            t.active and (t.step % cfg.train.log_every_steps == 0 or t.step == total)
            for t in self.trials
        ]
        if any(due_log):
            sums = host_slices(self.state.sums, len(self.trials))
            for k, trial in enumerate(self.trials):
                if due_log[k]:
                    trial.metrics_log.write(trial.step, "train", self.plan.task.metrics(sums[k]))
            self.state = self.state.replace(sums=zero_rows(np.array(due_log), self.state.sums))
        due_eval = [
            t.active and (t.step % self.plan.eval_every == 0 or t.step == total)
            for t in self.trials
        ]
        if not any(due_eval):
            return set()
        values = self._validate()
        slices = host_slices(self.state, len(self.trials))
        for k, trial in enumerate(self.trials):
            if not due_eval[k]:
                continue
            progress, value = trial.progress, values[k][self.plan.metric]
            trial.metrics_log.write(trial.step, "validation", values[k])
            if loop.improves(value, progress["best_value"], self.plan.mode, cfg.train.min_delta):
                progress.update(best_value=value, best_step=trial.step, bad_evals=0)
            else:
                progress["bad_evals"] += 1
            stop_early = cfg.train.patience and progress["bad_evals"] >= cfg.train.patience
            if stop_early:
                log.info("%s: early stopping at step %d", trial.workdir.name, trial.step)
            self._save(k, slices[k])
            trial.metrics_log.flush()
            if stop_early or trial.step == total:
                trial.final_state = slices[k]
                self._end_stage(trial)
        return {k for k, due in enumerate(due_eval) if due}

    def _validate(self) -> list[dict[str, float]]:
        """Every trial's validation metrics, in one pass over the split."""
        total = None
        split, batch_size = self.plan.dataset.validation, self.configs[0].data.eval_batch_size
        for batch in eval_batches(split, batch_size):
            sums = self.batched_eval(self.state.params, batch)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        return [self.plan.task.metrics(sums) for sums in host_slices(total, len(self.trials))]

    def _save(self, k: int, state: TrainState) -> None:
        trial = self.trials[k]
        if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params)):
            raise FloatingPointError(
                f"refusing to save step {trial.step} of {trial.workdir}: parameters are not finite"
            )
        epoch, position = divmod(trial.step, self.plan.steps_per_epoch)
        record = {**trial.progress, "epoch": epoch, "batch": position}
        is_best = trial.progress["best_step"] == trial.step
        trial.checkpoints.save(trial.step, state, record, is_best=is_best)

    def _end_stage(self, trial: _Trial) -> None:
        trial.progress.update(stage=1, stage_start=trial.step, bad_evals=0)
        trial.progress["stopped"] = trial.step < self.total
        trial.active = False

    def _finish(self, trial: _Trial) -> dict[str, Any]:
        plan = self.plan
        return loop.finish(
            dict(
                config=trial.config,
                workdir=trial.workdir,
                dataset=plan.dataset,
                task=plan.task,
                checkpoints=trial.checkpoints,
                progress=trial.progress,
                step=trial.step,
                state=trial.final_state,
                eval_step=self.eval_step,
                to_model=lambda tree: tree,
                metric=plan.metric,
                stages=loop.default_stages(trial.config, self.total),
                metrics_log=trial.metrics_log,
                started=self.started,
                extra={"vectorized_with": len(self.trials)},
            )
        )

    def _close(self) -> None:
        for trial in self.trials:
            trial.checkpoints.close()
            trial.metrics_log.close()
