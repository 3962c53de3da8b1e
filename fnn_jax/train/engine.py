"""The one training engine: K trials driven step by step, a single run being K = 1.

Per step, for every trial: count a skipped non-finite step, log train metrics, evaluate,
track the best step and early stopping, save, end the stage, honour preemption. This is
written once here; only the stepper (``jit(step)`` or ``jit(vmap(step))``, see
fnn_jax.train.steppers) differs between a run alone and a vectorised group.

The trials of a group share the data, the model and the stage list; they differ only in
seed and scalar settings (fnn_jax.train.vectorized.VECTORIZABLE). They go through the stages
together: a trial whose stage ended (or stopped early) waits until every trial has ended
that stage, then all start the next one with fresh optimizer states. Waiting changes
nothing, since a trial's batches and dropout keys are functions of its own step, so each
trial ends as it would alone.

What the trials share and what each holds: fnn_jax.train.trial. Which parameters a finished
trial reports and exports: fnn_jax.train.finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fnn_jax import finetune, reporting
from fnn_jax.checkpoint import Checkpoints, StateMismatch, export_params
from fnn_jax.finetune import Stage
from fnn_jax.optim import make_optimizer, schedule
from fnn_jax.train import finish, steppers
from fnn_jax.train.preemption import (
    Preempted,
    PreemptionFlag,
    clear_preemption,
    requested_by,
)
from fnn_jax.train.steps import (
    StepSpec,
    TrainState,
    compute_features,
    evaluate,
    init_params,
    make_eval_step,
    to_device_batch,
    zero_sums,
)
from fnn_jax.train.trial import Progress, Setup, Trial, improves, setup
from fnn_jax.tree import count_params, paths, require_matches

log = logging.getLogger("fnn_jax")


class Engine:
    """Trains K trials (K = 1 for a single run) in their workdirs; see the module docstring."""

    def __init__(
        self,
        configs: Sequence[ml_collections.ConfigDict],
        workdirs: Sequence[Path],
        plan: Setup | None = None,
    ):
        self.started = time.time()
        self.plan = plan = plan or setup(configs[0])  # what the trials share
        self.config = configs[0]
        self.to_model = finetune.model_params(configs[0])
        self.eval_step = make_eval_step(plan.model, plan.task, self.to_model)
        # Zero train sums, shaped by the task (from abstract parameters: nothing is computed).
        abstract_params = jax.eval_shape(
            lambda key: init_params(plan.model, key, plan.sample), jax.random.key(0)
        )
        self.sums0 = zero_sums(plan.model, plan.task, abstract_params, plan.sample)
        # An L1/L2 term that is 0 in every trial stays out of the loss.
        self.penalties = tuple(
            name for name in ("l1", "l2") if any(c.regularization[name] for c in configs)
        )
        self.trials = [
            self._open(c, Path(w), len(configs) > 1) for c, w in zip(configs, workdirs, strict=True)
        ]
        # The trials that train together in this process (a resumed group may hold some
        # that had already finished their training).
        self.group_size = sum(t.step < sum(s.num_steps for s in t.stages) for t in self.trials)

    # ------------------------------------------------------------------------ set-up

    def _fresh_state(self, params: Any, stage: Stage, step: int) -> TrainState:
        tx = make_optimizer(
            stage.optimizer,
            stage.num_steps,
            params=params,
            rules=stage.rules,
            lr_mults=stage.lr_mults,
        )
        sums = jax.tree.map(jnp.zeros_like, self.sums0)
        return TrainState(jnp.asarray(step, jnp.int32), params, tx.init(params), sums)

    def _open(self, config: ml_collections.ConfigDict, workdir: Path, grouped: bool) -> Trial:
        """A trial restored from its workdir's newest intact checkpoint, else fresh."""
        plan = self.plan
        init_key, dropout_key, lora_key = jax.random.split(jax.random.key(config.seed), 3)
        model_params = init_params(plan.model, init_key, plan.sample)
        # What the optimizer trains: the model's parameters, or those plus LoRA adapters.
        params = finetune.training_tree(config, model_params, lora_key)
        reg = config.regularization
        if (reg.l1 or reg.l2) and reg.exclude:
            require_matches(paths(params), [reg.exclude], "config.regularization.exclude")
        stages = finetune.stages(config, plan.steps_per_epoch, params)
        checkpoints = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
        restored = self._restore(
            checkpoints,
            lambda record: self._fresh_state(params, stages[record["stage"]], 0),
            reset_optimizer=config.train.reset_optimizer,
        )
        if restored is not None:
            step, state, record = restored
            progress = Progress.from_record(record)
            log.info("resumed %s from step %d", workdir, step)
        else:
            params = finetune.initial_params(config, params)
            state, step = self._fresh_state(params, stages[0], 0), 0
            ft = config.finetune
            progress = Progress(lora_rank=ft.lora_rank, lora_alpha=ft.lora_alpha)
        return Trial(
            config=config,
            workdir=workdir,
            checkpoints=checkpoints,
            metrics_log=reporting.MetricsLog(workdir, resume_step=step),
            stages=stages,
            progress=progress,
            state=steppers.host_copy(state),
            step=step,
            dropout_key=dropout_key,
            label=f"{workdir.name}: " if grouped else "",
        )

    @staticmethod
    def _restore(
        checkpoints: Checkpoints, like_for: Any, *, reset_optimizer: bool
    ) -> tuple[int, TrainState, dict] | None:
        """The newest intact step; with ``reset_optimizer``, a step whose optimizer state no
        longer fits the config resumes with its parameters and a fresh optimizer state."""
        try:
            return checkpoints.restore_good(like_for)
        except StateMismatch:
            if not reset_optimizer:
                raise
        step = checkpoints.latest_step()
        saved, record = checkpoints.restore_saved(step)
        fresh = like_for(record)
        as_like = lambda like, value: np.asarray(value, like.dtype)
        state = fresh.replace(
            step=np.asarray(saved["step"], np.int32),
            params=jax.tree.map(as_like, fresh.params, saved["params"]),
            sums=jax.tree.map(as_like, fresh.sums, saved["sums"]),
        )
        log.warning(
            "config.train.reset_optimizer: step %d resumes with its parameters and a fresh "
            "optimizer state",
            step,
        )
        return step, state, record

    # ------------------------------------------------------------------------ the loop

    def run(self, stop_after_steps: int | None = None) -> list[dict[str, Any] | Exception]:
        """Trains every trial to its end; per trial its report, ``{"interrupted_at": step}``
        after ``stop_after_steps`` group steps, or the exception that stopped it alone.
        SIGTERM or Ctrl-C saves every trial and raises Preempted."""
        total = sum(s.num_steps for s in self.trials[0].stages)
        bar = reporting.Progress(
            total, min(t.step for t in self.trials), self.config.train.log_every_steps
        )
        preemption = PreemptionFlag()
        self.ran, interrupted = 0, False
        try:
            for index in range(len(self.trials[0].stages)):
                members = [t for t in self.trials if t.in_training and t.progress.stage == index]
                for trial in members:
                    if trial.step >= trial.stage_end or trial.patience_spent():
                        self._end_stage(trial)  # resumed at its end, or after its early stop
                members = [t for t in members if t.in_training and t.progress.stage == index]
                if members and self._train_stage(members, stop_after_steps, preemption, bar):
                    interrupted = True
                    break
        finally:
            preemption.restore()
            bar.close()
            for trial in self.trials:
                trial.checkpoints.wait()
                trial.metrics_log.flush()
        if interrupted and preemption.requested:
            self._close(self.trials)
            by = requested_by()
            clear_preemption()
            saved = ", ".join(f"step {t.step} in {t.workdir}" for t in self.trials)
            raise Preempted(f"{by}: saved {saved}; run again to resume")
        for trial in self.trials:
            if interrupted and trial.outcome is None:
                trial.outcome = {"interrupted_at": trial.step}
            elif trial.outcome is None:
                trial.outcome = self._finish(trial)
        self._close(self.trials)
        return [t.outcome for t in self.trials]

    def _train_stage(
        self,
        members: list[Trial],
        stop_after_steps: int | None,
        preemption: PreemptionFlag,
        bar: reporting.Progress,
    ) -> bool:
        """Trains ``members`` (all in the same stage) until each ends it; True when
        interrupted (preemption or ``stop_after_steps``), every member saved."""
        for trial in members:
            self._announce_stage(trial)
        stepper, features = self._stepper(members)
        plan = self.plan
        batches = [plan.train_batches(t.config.seed, t.step, t.stage_end) for t in members]
        active = [True] * len(members)
        while any(active):
            rows = [
                self._device_batch(next(batches[i]), features and features[i]) if on else None
                for i, on in enumerate(active)
            ]
            finite = stepper.step(rows)
            self.ran += 1
            for i, trial in enumerate(members):
                if active[i]:
                    trial.step += 1
                    if not finite[i]:
                        active[i] = self._count_nonfinite(trial)
            saved = self._log_evaluate_save(members, active, stepper)
            self._show(bar, members, active)
            stop = self.ran == stop_after_steps
            if preemption.requested or stop:
                states = stepper.host_states()
                for i, trial in enumerate(members):
                    if active[i] and i not in saved:
                        self._save(trial, states[i])
                return True
        return False

    @staticmethod
    def _announce_stage(trial: Trial) -> None:
        """The stage's whole optimizer (stages inherit config.optimizer: say what they got)."""
        stage = trial.stage
        trainable = finish.trainable_counts([stage], trial.state.params)[stage.name]
        log.info(
            "%sstage %r: steps %d to %d, %d trainable parameters%s, optimizer %s",
            trial.label,
            stage.name,
            trial.step,
            trial.stage_end,
            trainable,
            "" if stage.rules is None else f" (rules {list(stage.rules)})",
            stage.optimizer.to_dict(),
        )

    def _stepper(self, members: list[Trial]) -> tuple[steppers.Stepper, list | None]:
        """The stepper for ``members``' shared stage, and each member's frozen-encoder
        features [train examples, ...] when the stage trains only the head on them."""
        plan, stage = self.plan, members[0].stage
        frozen = finetune.frozen_tree(members[0].state.params, stage.rules)
        cached = finetune.caches_features(self.config, plan.model, plan.task, frozen)
        spec = StepSpec(
            model=plan.model,
            task=plan.task,
            exclude=self.config.regularization.exclude,
            frozen=frozen,
            to_model=self.to_model,
            cached_features=cached,
        )
        stepper = steppers.make_stepper(
            spec,
            stage,
            [t.state for t in members],
            settings=[
                steppers.trial_settings(t.stage.optimizer, t.config.regularization, self.penalties)
                for t in members
            ],
            dropout_keys=[t.dropout_key for t in members],
            eval_step=self.eval_step,
        )
        if not cached:
            return stepper, None
        # A head-only stage runs the frozen encoder once per stage, not once per step.
        batch_size = self.config.data.eval_batch_size
        features = [
            compute_features(
                plan.model, self.to_model(t.state.params), plan.dataset.train, batch_size
            )
            for t in members
        ]
        return stepper, features

    @staticmethod
    def _device_batch(batch: dict, features: jax.Array | None) -> dict:
        device_batch = to_device_batch(batch)
        if features is not None:
            device_batch["features"] = features[batch["index"]]
            del device_batch["inputs"]
        return device_batch

    def _count_nonfinite(self, trial: Trial) -> bool:
        """Counts a skipped non-finite step; False once the trial has too many (its outcome
        is then the error, and it stops alone)."""
        trial.progress.nonfinite_steps += 1
        log.warning(
            "%sstep %d: non-finite loss or gradient; update skipped", trial.label, trial.step
        )
        limit = trial.config.train.max_nonfinite_steps
        if trial.progress.nonfinite_steps <= limit:
            return True
        trial.outcome = FloatingPointError(
            f"non-finite loss or gradient at step {trial.step} ({trial.progress.nonfinite_steps} "
            f"such steps; config.train.max_nonfinite_steps={limit})"
        )
        return False

    def _log_evaluate_save(
        self, members: list[Trial], active: list[bool], stepper: steppers.Stepper
    ) -> set[int]:
        """Train metrics, validation, early stopping, checkpoints and stage ends of the
        active members whose step calls for them; returns the indices saved."""
        train = self.config.train
        due_log = [
            on and (t.step % train.log_every_steps == 0 or t.step == t.stage_end)
            for t, on in zip(members, active, strict=True)
        ]
        if any(due_log):
            for trial, sums, due in zip(members, stepper.sums(), due_log, strict=True):
                if due:
                    values = self.plan.task.metrics(sums)
                    values["learning_rate"] = self._learning_rate(trial)
                    trial.metrics_log.write(trial.step, "train", values)
                    trial.summary = f"loss {values['loss']:.4f}"
            stepper.reset_sums(due_log)
        due_eval = [
            on and (t.step % self.plan.eval_every == 0 or t.step == t.stage_end)
            for t, on in zip(members, active, strict=True)
        ]
        if not any(due_eval):
            return set()
        split, batch_size = self.plan.dataset.validation, self.config.data.eval_batch_size
        sums = stepper.evaluate_sums(split, batch_size)
        states = stepper.host_states()
        for i, trial in enumerate(members):
            if not due_eval[i]:
                continue
            values = self.plan.task.metrics(sums[i])
            trial.metrics_log.write(trial.step, "validation", values)
            value, progress = values[self.plan.metric], trial.progress
            trial.summary += f"  val {self.plan.metric} {value:.4f}"
            if improves(value, progress.best_value, self.plan.mode, train.min_delta):
                progress.best_value, progress.best_step, progress.bad_evals = value, trial.step, 0
            else:
                progress.bad_evals += 1
            stop_early = trial.patience_spent()
            if stop_early:
                log.info(
                    "%searly stopping at step %d (stage %s)",
                    trial.label,
                    trial.step,
                    trial.stage.name,
                )
            ends_stage = stop_early or trial.step == trial.stage_end
            self._save(trial, states[i], stage_end=ends_stage)
            trial.metrics_log.flush()
            if ends_stage:
                trial.state = states[i]
                self._end_stage(trial)
                active[i] = False
        return {i for i, due in enumerate(due_eval) if due}

    @staticmethod
    def _learning_rate(trial: Trial) -> float:
        """The base learning rate of the step just taken (its stage's schedule, counted
        from the stage's start; per-group ``lr_mults`` scale it further)."""
        stage = trial.stage
        count = trial.step - 1 - trial.progress.stage_start
        return float(schedule(stage.optimizer, stage.num_steps)(count))

    def _show(self, bar: reporting.Progress, members: list[Trial], active: list[bool]) -> None:
        """Alone: this step's loss and validation metric; in a group: how many still train."""
        steps = [t.step for t, on in zip(members, active, strict=True) if on] or [members[0].step]
        if len(self.trials) == 1:
            summary = members[0].summary.strip()
        else:
            summary = f"{sum(active)}/{len(members)} trials training"
        bar.update(max(steps), summary)
        for trial in members:
            trial.summary = ""

    def _save(self, trial: Trial, state: TrainState, *, stage_end: bool = False) -> None:
        if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params)):
            raise FloatingPointError(
                f"refusing to save step {trial.step} of {trial.workdir}: parameters are not finite"
            )
        record = trial.progress.record(trial.step, self.plan.steps_per_epoch)
        is_best = trial.progress.best_step == trial.step
        trial.checkpoints.save(trial.step, state, record, is_best=is_best, stage_end=stage_end)

    def _end_stage(self, trial: Trial) -> None:
        """Moves a trial to its next stage (fresh optimizer state, fresh patience), or ends
        its training (``stopped`` when that came before the planned steps)."""
        progress = trial.progress
        progress.stage_ends.append(trial.step)
        progress.stage, progress.stage_start, progress.bad_evals = progress.stage + 1, trial.step, 0
        if progress.stage < len(trial.stages):
            fresh = self._fresh_state(trial.state.params, trial.stage, trial.step)
            trial.state = steppers.host_copy(fresh)
        else:
            progress.stopped = trial.step < sum(s.num_steps for s in trial.stages)

    # ------------------------------------------------------------------------ the end

    def _finish(self, trial: Trial) -> dict[str, Any]:
        """Restores the best checkpoint, evaluates it on validation and test, exports its
        merged parameters and writes the report."""
        config, workdir, dataset = trial.config, trial.workdir, self.plan.dataset
        progress, step = trial.progress, trial.step
        evaluated_step, params, problem = finish.best_params(
            trial, self.plan.metric, self.plan.mode
        )
        best_step = progress.best_step if progress.best_step is not None else step
        stages = finish.stage_summaries(trial, params, self.plan.metric, self.plan.mode)
        batch_size = config.data.eval_batch_size
        results = {
            split: evaluate(
                self.eval_step, params, dataset.split(split), batch_size, self.plan.task
            )
            for split in ("validation", "test")
        }
        exported = self.to_model(params)
        export_params(workdir / "export", exported)
        report = {
            "name": f"{dataset.name} / {config.model.cell}",
            "workdir": str(workdir),
            "steps": step,
            "best_step": best_step,
            "evaluated_step": evaluated_step,  # best_step, unless that checkpoint was lost
            "metric": self.plan.metric,
            "stopped_early": bool(progress.stopped),
            "nonfinite_steps": progress.nonfinite_steps,
            "results": results,
            "baselines": dataset.baselines,
            "parameters": count_params(exported),
            "trainable_parameters": {s["name"]: s["trainable_parameters"] for s in stages},
            "init_from": {"workdir": config.init_from, "step": config.init_step}
            if config.init_from
            else None,
            "stages": stages,
            "wall_time_s": round(time.time() - self.started, 1),
            "paths": {
                "curves": str(workdir / "curves.png"),
                "report": str(workdir / "report.md"),
                "checkpoints": str(workdir / "checkpoints"),
                "export": str(workdir / "export"),
                "tensorboard": str(workdir / "tensorboard"),
            },
        }
        if problem is not None:
            report["best_checkpoint_problem"] = problem
        if self.group_size > 1:
            report["vectorized_with"] = self.group_size
        reporting.plot_curves(
            trial.metrics_log.records,
            self.plan.metric,
            workdir / "curves.png",
            stage_ends=progress.stage_ends,
            best_step=progress.best_step,
        )
        reporting.write_report(workdir, report)
        return report

    @staticmethod
    def _close(trials: list[Trial]) -> None:
        for trial in trials:
            trial.checkpoints.close()
            trial.metrics_log.close()
