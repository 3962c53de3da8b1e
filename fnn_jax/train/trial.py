"""What a run is made of: the Setup its trials share (data, task, model, step budget),
each trial's typed state (Trial: its bookkeeping, Progress, saved beside every checkpoint,
and how it saves and restores itself), and the Group of trials that train a stage
together."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from fnn_jax import data as data_lib
from fnn_jax import reporting, tasks
from fnn_jax.checkpoint import Checkpoints, StateMismatch
from fnn_jax.config import ConfigError
from fnn_jax.data import augment, fingerprint
from fnn_jax.finetune import Stage
from fnn_jax.tasks import Task
from fnn_jax.train import mesh
from fnn_jax.train.steps import TrainState, build_model, init_params, to_device_batch
from fnn_jax.tree import all_finite

log = logging.getLogger("fnn_jax")


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config fixes before training starts: data, task, model and step budget."""

    dataset: data_lib.Dataset
    task: Task
    metric: str  # the validation metric for early stopping and the best checkpoint
    mode: str  # "min" | "max": which way ``metric`` improves
    batch_size: int
    steps_per_epoch: int
    eval_every: int
    model: Any
    sample: dict  # a train batch, for model.init
    window: int = 0  # truncated BPTT's window length (config.train.tbptt_length); 0: off
    windows: int = 1  # steps per batch of rows: one per window
    data_description: dict = dataclasses.field(default_factory=dict)  # data.json's content

    @functools.cached_property
    def abstract_params(self) -> Any:
        """The model's parameters as shapes and dtypes (jax.eval_shape: nothing computed),
        for what is sized before any is allocated: zero sums, the mesh, start-up checks."""
        return jax.eval_shape(
            lambda key: init_params(self.model, key, self.sample), jax.random.key(0)
        )

    def train_indices(self, seed: int, start: int, count: int) -> np.ndarray:
        """[count, batch] int32: the train rows of global steps start..start+count-1, across
        epochs. The order is a function of (seed, epoch) (``data.batches``' order), so a
        resumed run sees what an uninterrupted one saw. With truncated BPTT, ``windows``
        consecutive steps share their rows (one window each). The rows were checked when
        the dataset was built (data.Dataset), so no batch is checked again here."""
        rows = []
        batches_per_epoch = self.steps_per_epoch // self.windows
        for step in range(start, start + count):
            epoch, position = divmod(step // self.windows, batches_per_epoch)
            order = _epoch_rows(self.dataset.num_rows("train"), seed, epoch, self.batch_size)
            rows.append(order[position])
        return np.stack(rows)


@functools.lru_cache(maxsize=64)
def _epoch_rows(n: int, seed: int, epoch: int, batch_size: int) -> np.ndarray:
    """[batches, batch_size] int32: one epoch's batches of row indices (remainder dropped)."""
    order = data_lib.epoch_order(n, seed=seed, epoch=epoch).astype(np.int32)
    count = n // batch_size
    return order[: count * batch_size].reshape(count, batch_size)


def setup(config: ml_collections.ConfigDict) -> Setup:
    """The run's Setup: config.data loaded, the model built, the step budget worked out."""
    dataset = load_data(config)
    task = tasks.for_dataset(dataset)
    metric = config.train.early_stopping_metric or task.main_metric
    try:
        mode = task.selection_metric(metric, "config.train.early_stopping_metric").direction
    except ValueError as error:
        raise ConfigError(f"{error} (dataset {dataset.name!r})") from None
    batch_size = config.data.batch_size
    if batch_size < 1:
        raise ConfigError(f"config.data.batch_size must be >= 1; got {batch_size}")
    steps_per_epoch = dataset.num_rows("train") // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.data.batch_size={batch_size} is larger than the training split "
            f"of {dataset.name!r} ({dataset.num_rows('train')} rows)"
        )
    try:
        augment.check(augment.Augment.from_config(config.data.augment), *_inputs_of(dataset))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    window = config.train.tbptt_length
    windows = _check_tbptt(config, dataset, task) if window else 1
    steps_per_epoch *= windows
    if dataset.streams is not None:  # the first rows: shapes for the model's init
        first = dataset.streams["train"].rows(np.arange(batch_size))
    else:
        first = next(data_lib.batches(dataset.train, batch_size, seed=0, epoch=0))
    return Setup(
        dataset=dataset,
        task=task,
        metric=metric,
        mode=mode,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        eval_every=config.train.eval_every_steps or steps_per_epoch,
        model=build_model(config.model, dataset),
        sample=to_device_batch(first),
        window=window,
        windows=windows,
        data_description=fingerprint.describe(
            config.data.name, config.data.options.to_dict(), dataset
        ),
    )


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """config.data's dataset; a ConfigError (one line, nothing written yet) naming the
    dataset when its files or loader refuse."""
    name = config.data.name
    try:
        return data_lib.load(name, **config.data.options.to_dict())
    except (ValueError, OSError, ImportError) as error:  # DataError is a ValueError
        raise ConfigError(f"config.data.name={name!r}: {error}") from None


def _check_tbptt(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, task: Task) -> int:
    """The number of windows per row for config.train.tbptt_length; a ConfigError naming
    the key and the numbers when truncated BPTT cannot apply."""
    window, time = config.train.tbptt_length, int(dataset.train.inputs.shape[1])
    where = f"config.train.tbptt_length={window}"
    if window > time:
        raise ConfigError(
            f"{where} is longer than the sequences of {dataset.name!r} ({time} steps); "
            f"use at most {time}, or 0 for full backpropagation through time"
        )
    if not task.per_step_outputs:
        raise ConfigError(
            f"{where}: truncated BPTT needs a loss at every window, a target per step (task "
            f"'tagging' or 'step_forecast'); dataset {dataset.name!r} is {task.kind!r}"
        )
    if config.model.bidirectional:
        raise ConfigError(f"{where}: a bidirectional encoder reads the future; not with it")
    if augment.Augment.from_config(config.data.augment).active:
        raise ConfigError(f"{where}: config.data.augment would transform each window apart")
    return -(-time // window)


def _inputs_of(dataset: data_lib.Dataset) -> tuple[Any, int]:
    """The train inputs' dtype and time axis."""
    inputs = dataset.train.inputs
    return inputs.dtype, inputs.shape[1]


@dataclasses.dataclass
class Progress:
    """A trial's bookkeeping, saved as JSON beside every checkpoint."""

    stage: int = 0
    stage_start: int = 0
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped: bool = False  # ended early (patience), before the planned steps
    nonfinite_steps: int = 0
    lora_rank: int = 0  # for fine-tuning from this run: how to merge its adapters
    lora_alpha: float = 0.0
    init_step: int | None = None  # the step of config.init_from this run started from
    pruned_at: int | None = None  # cut by a pruner or a halving rung: trains no further
    stage_ends: list[int] = dataclasses.field(default_factory=list)  # last step of each
    # The scalar settings PBT gave the trial (learning_rate, weight_decay, ...: its float32
    # values, exact as JSON numbers); None: its config's. Restored on resume.
    settings: dict[str, float] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Progress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def record(self, step: int, steps_per_epoch: int) -> dict[str, Any]:
        epoch, position = divmod(step, steps_per_epoch)
        return {**dataclasses.asdict(self), "epoch": epoch, "batch": position}


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether a validation value beats the best so far by more than min_delta (never NaN)."""
    if np.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


@dataclasses.dataclass
class Trial:
    """One trial's host-side state. Its arrays live in the stepper while its stage trains,
    and in ``state`` (host copies) between stages and at the end."""

    config: ml_collections.ConfigDict
    workdir: Path
    checkpoints: Checkpoints
    metrics_log: reporting.MetricsLog
    stages: list[Stage]
    progress: Progress
    state: TrainState
    step: int
    dropout_key: jax.Array
    label: str  # prefix for log lines: "" alone, the workdir's name in a group
    summary: str = ""  # this step's train loss / validation metric, for the progress bar
    outcome: dict[str, Any] | Exception | None = None  # report, interruption or error
    saved_at: float = dataclasses.field(default_factory=time.monotonic)  # its last save
    # A new best (step, host state, progress record) not yet written: it goes to disk
    # before the next save, so every saved record's best step is on disk too.
    unsaved_best: tuple[int, Any, dict[str, Any]] | None = None
    # A streamed dataset's reader position at a step (feeds.StreamedRows.position): saved
    # as an item of that step's checkpoint.
    data_position: Callable[[int], dict | None] | None = None

    @property
    def stage(self) -> Stage:
        return self.stages[self.progress.stage]

    @property
    def stage_end(self) -> int:
        return self.progress.stage_start + self.stage.num_steps

    @property
    def in_training(self) -> bool:
        done = self.progress.pruned_at is not None or self.progress.stage >= len(self.stages)
        return self.outcome is None and not done

    def checkpoint(
        self, state: TrainState, steps_per_epoch: int, *, stage_end: bool = False, now: bool = False
    ) -> bool:
        """Saves ``state`` (host copies, or arrays on the devices) at a stage end, when
        asked (``now``: an interruption, a pruning) or when config.train.checkpoint_every_s
        have passed since the last save, the best state kept in memory since then first;
        else keeps it in memory if it is a new best. True when it saved."""
        due = now or stage_end
        due = due or time.monotonic() - self.saved_at >= self.config.train.checkpoint_every_s
        if jax.process_count() > 1:  # clocks differ: every process saves when process 0 does
            due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
        record = self.progress.record(self.step, steps_per_epoch)
        is_best = self.progress.best_step == self.step
        if not due:
            if is_best:  # arrays on the devices are copied there: the next step donates them
                self.unsaved_best = (self.step, _kept(state), record)
            return False
        if is_best:  # this save supersedes the best in memory
            self.unsaved_best = None
        self.write_unsaved_best()
        self._save(self.step, state, record, is_best=is_best, stage_end=stage_end)
        self.saved_at = time.monotonic()
        return True

    def write_unsaved_best(self) -> None:
        """Saves the best state kept in memory since the last save, if any."""
        if self.unsaved_best is not None:
            self._save(*self.unsaved_best, is_best=True)
            self.unsaved_best = None

    def _save(
        self,
        step: int,
        state: TrainState,
        record: dict[str, Any],
        *,
        is_best: bool,
        stage_end: bool = False,
    ) -> None:
        self.metrics_log.check_in_place()  # no save into a deleted workdir
        if not _all_finite(state.params):
            raise FloatingPointError(
                f"refusing to save step {step} of {self.workdir}: parameters are not finite"
            )
        position = None if self.data_position is None else self.data_position(step)
        self.checkpoints.save(
            step, state, record, is_best=is_best, stage_end=stage_end, data=position
        )

    def patience_spent(self) -> bool:
        patience = self.stage.patience
        return bool(patience and self.progress.bad_evals >= patience)


def _kept(state: TrainState) -> TrainState:
    """``state`` safe from the next dispatch: host copies as they are, arrays on the
    devices copied there (with their shardings: nothing gathered)."""
    if not any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state)):
        return state
    return _device_copy(state)


@jax.jit
def _device_copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def _all_finite(params: Any) -> bool:
    """Whether every parameter is finite; arrays on the devices are checked there (one
    boolean comes back, not the parameters)."""
    leaves = jax.tree.leaves(params)
    on_devices = [x for x in leaves if isinstance(x, jax.Array)]
    finite = all(np.isfinite(x).all() for x in leaves if not isinstance(x, jax.Array))
    if on_devices:
        finite = finite and bool(mesh.host(_all_finite_on_devices(on_devices)))
    return finite


_all_finite_on_devices = jax.jit(all_finite)


class Group:
    """The trials that train one stage together (one trial for a single run), in the
    order of the stepper's rows, and which of them still train it: a trial leaves when it
    ends the stage (its last step, or early stopping) or is halted by non-finite steps."""

    def __init__(self, trials: list[Trial]):
        self.trials = trials
        self.active = [True] * len(trials)
        self.saved: set[int] = set()  # the rows saved at the current point
        self.shrunk = False  # trials were cut at a halving rung: re-pack the program

    @property
    def training(self) -> list[tuple[int, Trial]]:
        """(row, trial) of the trials still training this stage."""
        return [(i, t) for i, t in enumerate(self.trials) if self.active[i]]

    def leave(self, row: int) -> None:
        self.active[row] = False

    def due(self, every: int) -> list[bool]:
        """Per row: still training, and at a multiple of ``every`` or its stage's end."""
        return [
            on and (t.step % every == 0 or t.step == t.stage_end)
            for t, on in zip(self.trials, self.active, strict=True)
        ]

    def batch_indices(self, setup: Setup, count: int) -> list[np.ndarray | None]:
        """Per row: the train rows of the next ``count`` steps (None: not training)."""
        return [
            setup.train_indices(t.config.seed, t.step, count) if on else None
            for t, on in zip(self.trials, self.active, strict=True)
        ]

    def advance(self, count: int) -> None:
        """The trials still training took ``count`` steps."""
        for trial, on in zip(self.trials, self.active, strict=True):
            trial.step += count if on else 0


def restore(
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
        carry=jax.tree.map(as_like, fresh.carry, saved.get("carry")),
    )
    log.warning(
        "config.train.reset_optimizer: step %d resumes with its parameters and a fresh "
        "optimizer state",
        step,
    )
    return step, state, record
