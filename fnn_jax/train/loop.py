"""``train_and_evaluate``: the whole life of a run in its workdir.

Resume order: this workdir's latest checkpoint, else ``config.init_from`` (parameters only,
see fnn_jax.finetune), else scratch. Batch order is a function of (seed, epoch) and dropout
keys of (seed, step), so a resumed run repeats exactly what an uninterrupted one would do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fnn_jax import config as config_lib
from fnn_jax import data as data_lib
from fnn_jax import finetune, reporting
from fnn_jax.checkpoint import Checkpoints, export_params
from fnn_jax.files import workdir_lock, write_json
from fnn_jax.optim import make_optimizer
from fnn_jax.tasks import Task, metric_mode
from fnn_jax.train.steps import (
    TrainState,
    all_finite,
    build_model,
    compute_features,
    count_params,
    evaluate,
    init_params,
    make_eval_step,
    make_train_step,
    to_device_batch,
    zero_sums,
)

log = logging.getLogger("fnn_jax")


EXIT_PREEMPTED = 75  # os.EX_TEMPFAIL: "try again"; what experiments/main.py exits with


class Preempted(RuntimeError):
    """SIGTERM arrived; the run saved its state at a step boundary and stopped."""


_SIGTERM_SEEN = threading.Event()  # set by request_preemption, e.g. in sweep workers


def request_preemption(signum=None, frame=None) -> None:
    """A SIGTERM handler for processes that run trials: the next (or current) run stops at
    a step boundary and saves, however early the signal came."""
    _SIGTERM_SEEN.set()


def clear_preemption() -> None:
    """Marks a SIGTERM as handled (its run saved and stopped): later runs start normally."""
    _SIGTERM_SEEN.clear()


class PreemptionFlag:
    """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    @property
    def requested(self) -> bool:
        return _SIGTERM_SEEN.is_set()

    def _handle(self, signum, frame) -> None:
        _SIGTERM_SEEN.set()

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stretch of training with one optimizer and one set of freezing rules."""

    name: str
    num_steps: int
    optimizer: ml_collections.ConfigDict
    rules: tuple[tuple[str, str], ...] | None = None  # None: everything trains
    patience: int = 0
    lr_mults: tuple[tuple[str, float], ...] = ()


def load_dataset(cfg: ml_collections.ConfigDict) -> data_lib.Dataset:
    """config.data -> Dataset (names and options were checked by config.validate)."""
    return data_lib.load(cfg.name, **cfg.options.to_dict())


def check_config_file(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json, or refuses to resume a workdir made with another model or data."""
    path = workdir / "config.json"
    new = config_lib.to_dict(config)
    if path.exists():
        old = json.loads(path.read_text())
        arch, other = config_lib.split_differences(old, new)
        if arch:
            raise ValueError(
                f"workdir {workdir} holds a run with a different model/data config; "
                f"refusing to resume. Differing keys:\n  " + "\n  ".join(arch)
            )
        if other:
            log.warning("resuming %s with changed settings:\n  %s", workdir, "\n  ".join(other))
    write_json(path, new)


def default_stages(config: ml_collections.ConfigDict, total_steps: int) -> list[Stage]:
    return [Stage("train", total_steps, config.optimizer, None, config.train.patience)]


def count_nonfinite(
    progress: dict[str, Any], step: int, limit: int, run: str = ""
) -> FloatingPointError | None:
    """Counts a skipped non-finite step in ``progress``; past ``limit`` such steps, returns
    the error that ends the run (``run`` names it in the log, e.g. a vectorised trial)."""
    progress["nonfinite_steps"] += 1
    log.warning("%sstep %d: non-finite loss or gradient; update skipped", run, step)
    if progress["nonfinite_steps"] <= limit:
        return None
    return FloatingPointError(
        f"non-finite loss or gradient at step {step} ({progress['nonfinite_steps']} such "
        f"steps; config.train.max_nonfinite_steps={limit})"
    )


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether a validation value beats the best so far by more than min_delta (never NaN)."""
    if np.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``config`` in ``workdir``; returns the report.

    stop_after_steps: stop once this many steps ran in this call, after checkpointing (for
    time-limited jobs, and for tests of resumption). The same call again continues.
    """
    config_lib.validate(config)
    workdir = Path(workdir).absolute()
    with workdir_lock(workdir):
        check_config_file(workdir, config)
        return _run(config, workdir, stop_after_steps)


def _train_batches(split, batch_size: int, seed: int, start: int, end: int):
    """(batch index within its epoch, batch) for global steps start..end-1, across epochs."""
    per_epoch = data_lib.num_batches(split, batch_size)
    step = start
    while step < end:
        epoch, first = divmod(step, per_epoch)
        for i, batch in enumerate(data_lib.batches(split, batch_size, seed=seed, epoch=epoch)):
            if i < first:
                continue  # resuming inside this epoch
            yield i, batch
            step += 1
            if step >= end:
                return


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config fixes before training starts: data, task, model and step budget."""

    dataset: data_lib.Dataset
    task: Task
    metric: str  # the validation metric for early stopping and the best checkpoint
    mode: str  # "min" | "max": which way ``metric`` improves
    spec: Any  # the shape/dtype every train batch must have (data.batch_spec)
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    model: Any
    sample: dict  # a train batch, for model.init

    def train_batches(self, seed: int, start: int, end: int):
        """Checked train batches (index in epoch, batch) for global steps start..end-1."""
        name, train = self.dataset.name, self.dataset.train
        for i, batch in _train_batches(train, self.batch_size, seed, start, end):
            data_lib.check_batch(batch, dataset=name, split="train", index=i, expected=self.spec)
            yield i, batch


def setup(config: ml_collections.ConfigDict) -> Setup:
    """The run's Setup: config.data loaded, the model built, the step budget worked out."""
    dataset = load_dataset(config.data)
    task = Task(dataset.task, dataset.num_classes)
    metric = config.train.early_stopping_metric or task.main_metric
    batch_size = config.data.batch_size
    steps_per_epoch = data_lib.num_batches(dataset.train, batch_size)
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.data.batch_size={batch_size} is larger than the training split "
            f"of {dataset.name!r} ({len(dataset.train)} rows)"
        )
    return Setup(
        dataset=dataset,
        task=task,
        metric=metric,
        mode=metric_mode(metric),
        spec=data_lib.batch_spec(dataset),
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=config.train.num_steps or config.train.num_epochs * steps_per_epoch,
        eval_every=config.train.eval_every_steps or steps_per_epoch,
        model=build_model(config.model, dataset),
        sample=to_device_batch(next(data_lib.batches(dataset.train, batch_size, seed=0, epoch=0))),
    )


def initial_progress(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The bookkeeping a fresh run starts with (saved beside every checkpoint)."""
    return {
        "lora_rank": config.finetune.lora_rank,
        "lora_alpha": config.finetune.lora_alpha,
        "stage": 0,
        "stage_start": 0,
        "best_value": None,
        "best_step": None,
        "bad_evals": 0,
        "stopped": False,
        "nonfinite_steps": 0,
    }


def _run(config, workdir: Path, stop_after_steps: int | None) -> dict[str, Any]:
    started = time.time()
    plan = setup(config)
    dataset, task, metric, mode = plan.dataset, plan.task, plan.metric, plan.mode
    steps_per_epoch, total_steps = plan.steps_per_epoch, plan.total_steps
    model, sample, eval_every = plan.model, plan.sample, plan.eval_every
    init_key, dropout_key, lora_key = jax.random.split(jax.random.key(config.seed), 3)
    model_params = init_params(model, init_key, sample)
    sums0 = zero_sums(model, task, model_params, sample)
    fresh_sums = lambda: jax.tree.map(jnp.zeros_like, sums0)  # new buffers: steps donate them
    # What the optimizer trains: the model's parameters, or those plus LoRA adapters.
    params = finetune.training_tree(config, model_params, lora_key)
    to_model = finetune.model_params(config)
    stages = finetune.stages(config, steps_per_epoch, params) or default_stages(config, total_steps)
    eval_step = make_eval_step(model, task, to_model)

    def fresh_state(params, stage: Stage, step: int) -> TrainState:
        tx = make_optimizer(stage.optimizer, stage.num_steps, params, stage.rules, stage.lr_mults)
        return TrainState(jnp.asarray(step, jnp.int32), params, tx.init(params), fresh_sums())

    checkpoints = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    restored = checkpoints.restore_good(
        lambda progress: fresh_state(params, stages[progress["stage"]], 0)
    )
    if restored is not None:
        latest, state, progress = restored
        progress.pop("hashes", None)
        log.info("resumed %s from step %d", workdir, latest)
    else:
        params = finetune.initial_params(config, params)
        state = fresh_state(params, stages[0], 0)
        progress = initial_progress(config)

    step = int(state.step)
    metrics_log = reporting.MetricsLog(workdir, resume_step=step)
    bar = reporting.Progress(sum(s.num_steps for s in stages), step, config.train.log_every_steps)

    def save(state: TrainState) -> None:
        if not bool(all_finite(state.params)):
            raise FloatingPointError(f"refusing to save step {step}: parameters are not finite")
        epoch, position = divmod(step, steps_per_epoch)
        record = {**progress, "epoch": epoch, "batch": position}
        checkpoints.save(step, state, record, is_best=progress["best_step"] == step)

    def evaluate_and_track(state: TrainState, stage: Stage) -> float:
        val = evaluate(
            eval_step, state.params, dataset.validation, config.data.eval_batch_size, task
        )
        metrics_log.write(step, "validation", val)
        value = val[metric]
        if improves(value, progress["best_value"], mode, config.train.min_delta):
            progress.update(best_value=value, best_step=step, bad_evals=0)
        else:
            progress["bad_evals"] += 1
        return value

    ran = 0
    interrupted = False
    preemption = PreemptionFlag()
    try:
        while progress["stage"] < len(stages) and not progress["stopped"]:
            stage = stages[progress["stage"]]
            stage_end = progress["stage_start"] + stage.num_steps
            frozen = finetune.frozen_tree(state.params, stage.rules)
            tx = make_optimizer(
                stage.optimizer, stage.num_steps, state.params, stage.rules, stage.lr_mults
            )
            cached = finetune.caches_features(config, model, task.kind, frozen)
            train_step = make_train_step(
                model, tx, task, config.regularization, dropout_key, frozen, to_model, cached
            )
            if cached:  # the frozen encoder runs once per stage, not once per step
                features = compute_features(
                    model, state.params, dataset.train, config.data.eval_batch_size
                )
            # A stage can be over on entry: resumed at its end, or after its early stop.
            stage_done = step >= stage_end or bool(
                stage.patience and progress["bad_evals"] >= stage.patience
            )
            end = step if stage_done else stage_end
            for _, batch in plan.train_batches(config.seed, step, end):
                device_batch = to_device_batch(batch)
                if cached:
                    device_batch = {**device_batch, "features": features[batch["index"]]}
                    del device_batch["inputs"]
                state, finite = train_step(state, device_batch)
                step, ran = step + 1, ran + 1
                if not bool(finite):
                    error = count_nonfinite(progress, step, config.train.max_nonfinite_steps)
                    if error is not None:
                        raise error
                summary = ""
                if step % config.train.log_every_steps == 0 or step == stage_end:
                    train_metrics = task.metrics(jax.device_get(state.sums))
                    metrics_log.write(step, "train", train_metrics)
                    state = state.replace(sums=fresh_sums())
                    summary = f"loss {train_metrics['loss']:.4f}"
                stage_done = step == stage_end
                saved = False
                if step % eval_every == 0 or stage_done:
                    value = evaluate_and_track(state, stage)
                    summary += f"  val {metric} {value:.4f}"
                    if stage.patience and progress["bad_evals"] >= stage.patience:
                        log.info("early stopping at step %d (stage %s)", step, stage.name)
                        stage_done = True
                    save(state)
                    saved = True
                    metrics_log.flush()
                bar.update(step, summary)
                if preemption.requested or (
                    stop_after_steps is not None and ran >= stop_after_steps
                ):
                    if not saved:
                        save(state)
                    interrupted = True
                    break
                if stage_done:
                    break
            if interrupted:
                break
            if stage_done:  # next stage: fresh optimizer state, fresh early-stopping count
                progress.update(stage=progress["stage"] + 1, stage_start=step, bad_evals=0)
                if progress["stage"] < len(stages):
                    state = fresh_state(state.params, stages[progress["stage"]], step)
                else:
                    progress["stopped"] = step < sum(s.num_steps for s in stages)
    finally:
        preemption.restore()
        bar.close()
        checkpoints.wait()
        metrics_log.flush()

    if interrupted:
        checkpoints.close()
        metrics_log.close()
        if preemption.requested:
            clear_preemption()
            raise Preempted(f"SIGTERM: saved step {step} in {workdir}; run again to resume")
        return {"interrupted_at": step}
    return finish(
        dict(
            config=config,
            workdir=workdir,
            dataset=dataset,
            task=task,
            checkpoints=checkpoints,
            progress=progress,
            step=step,
            state=state,
            eval_step=eval_step,
            to_model=to_model,
            metric=metric,
            stages=stages,
            metrics_log=metrics_log,
            started=started,
        )
    )


def _trainable_counts(stages: list[Stage], params: Any) -> dict[str, int]:
    """Per stage, how many parameter values the optimizer updates."""
    counts = {}
    for stage in stages:
        frozen = finetune.frozen_tree(params, stage.rules)
        if frozen is None:
            counts[stage.name] = count_params(params)
        else:
            leaves = zip(jax.tree.leaves(params), jax.tree.leaves(frozen), strict=True)
            counts[stage.name] = int(sum(np.size(p) for p, f in leaves if not f))
    return counts


def finish(run: dict[str, Any]) -> dict[str, Any]:
    """Restores the best checkpoint, evaluates it on validation and test, exports its merged
    parameters and writes the report (``run["extra"]``, if given, is added to it)."""
    config, workdir, dataset, task = run["config"], run["workdir"], run["dataset"], run["task"]
    checkpoints, progress, step = run["checkpoints"], run["progress"], run["step"]
    best_step = progress["best_step"] if progress["best_step"] is not None else step
    if best_step in checkpoints.steps():
        # Host copies: committed arrays straight from Orbax would make eval_step recompile.
        params = jax.tree.map(np.asarray, checkpoints.restore_saved(best_step)[0]["params"])
    else:
        params = run["state"].params
    batch_size = config.data.eval_batch_size
    results = {
        split: evaluate(run["eval_step"], params, dataset.split(split), batch_size, task)
        for split in ("validation", "test")
    }
    exported = run["to_model"](params)
    export_params(workdir / "export", exported)
    report = {
        "name": f"{dataset.name} / {config.model.cell}",
        "workdir": str(workdir),
        "steps": step,
        "best_step": best_step,
        "metric": run["metric"],
        "stopped_early": bool(progress["stopped"]),
        "nonfinite_steps": progress["nonfinite_steps"],
        "results": results,
        "baselines": dataset.baselines,
        "parameters": count_params(exported),
        "trainable_parameters": _trainable_counts(run["stages"], params),
        "wall_time_s": round(time.time() - run["started"], 1),
        "paths": {
            "curves": str(workdir / "curves.png"),
            "report": str(workdir / "report.md"),
            "checkpoints": str(workdir / "checkpoints"),
            "export": str(workdir / "export"),
            "tensorboard": str(workdir / "tensorboard"),
        },
        **run.get("extra", {}),
    }
    reporting.plot_curves(run["metrics_log"].records, run["metric"], workdir / "curves.png")
    reporting.write_report(workdir, report)
    run["metrics_log"].close()
    checkpoints.close()
    return report
