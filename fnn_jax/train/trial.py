"""What a run is made of: the Setup its trials share (data, task, model, step budget), and
each trial's typed state (Trial) with its bookkeeping (Progress, saved beside every
checkpoint)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from fnn_jax import data as data_lib
from fnn_jax import reporting, tasks
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.config import ConfigError
from fnn_jax.finetune import Stage
from fnn_jax.tasks import Task
from fnn_jax.train.steps import TrainState, build_model, to_device_batch


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
    eval_every: int
    model: Any
    sample: dict  # a train batch, for model.init

    def train_batches(self, seed: int, start: int, end: int) -> Iterator[dict]:
        """Checked train batches for global steps start..end-1, across epochs; the order is
        a function of (seed, epoch), so a resumed run sees what an uninterrupted one saw."""
        name, train = self.dataset.name, self.dataset.train
        step = start
        while step < end:
            epoch, first = divmod(step, self.steps_per_epoch)
            epoch_batches = data_lib.batches(train, self.batch_size, seed=seed, epoch=epoch)
            for i, batch in enumerate(epoch_batches):
                if i < first:
                    continue  # resuming inside this epoch
                data_lib.check_batch(
                    batch, dataset=name, split="train", index=i, expected=self.spec
                )
                yield batch
                step += 1
                if step >= end:
                    return


def setup(config: ml_collections.ConfigDict) -> Setup:
    """The run's Setup: config.data loaded, the model built, the step budget worked out."""
    dataset = data_lib.load(config.data.name, **config.data.options.to_dict())
    task = tasks.for_dataset(dataset)
    metric = config.train.early_stopping_metric or task.main_metric
    batch_size = config.data.batch_size
    steps_per_epoch = data_lib.num_batches(dataset.train, batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.data.batch_size={batch_size} is larger than the training split "
            f"of {dataset.name!r} ({len(dataset.train)} rows)"
        )
    first = next(data_lib.batches(dataset.train, batch_size, seed=0, epoch=0))
    return Setup(
        dataset=dataset,
        task=task,
        metric=metric,
        mode=tasks.metric_mode(metric),
        spec=data_lib.batch_spec(dataset),
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        eval_every=config.train.eval_every_steps or steps_per_epoch,
        model=build_model(config.model, dataset),
        sample=to_device_batch(first),
    )


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
    stage_ends: list[int] = dataclasses.field(default_factory=list)  # last step of each

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

    @property
    def stage(self) -> Stage:
        return self.stages[self.progress.stage]

    @property
    def stage_end(self) -> int:
        return self.progress.stage_start + self.stage.num_steps

    @property
    def in_training(self) -> bool:
        return self.outcome is None and self.progress.stage < len(self.stages)

    def patience_spent(self) -> bool:
        patience = self.stage.patience
        return bool(patience and self.progress.bad_evals >= patience)
