"""What each kind of dataset asks of a model: its targets, its model, its loss and metrics.

One class per task kind, in ``REGISTRY``; nothing else branches on the kind's name.
A batch is a dict with ``inputs``, ``targets``, ``lengths`` and ``weights`` ([batch]; 0 marks
rows that only pad the last evaluation batch). ``sums`` are additive over batches; ``metrics``
turns their totals into numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fnn_jax import cells, metrics, models, stats

Array = jax.Array
IGNORE_LABEL = -1  # tagging targets at padded positions
DIRECTIONS = ("max", "min")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric a task reports: its name, which way is better, and whether it may choose
    the best checkpoint and stop a run early (``config.train.early_stopping_metric``)."""

    name: str
    direction: str  # "max": higher is better; "min": lower is better
    selects: bool = True

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"metric {self.name!r}: direction must be one of {DIRECTIONS}; "
                f"got {self.direction!r}"
            )


LOSS = Metric("loss", "min")


def declared_metrics() -> dict[str, Metric]:
    """Every metric some registered task declares, by name."""
    return {m.name: m for cls in REGISTRY.values() for m in cls.declared}


def metric_mode(name: str) -> str:
    """'max' or 'min': the declared direction of the metric ``name`` (any task's)."""
    found = declared_metrics()
    if name not in found:
        raise ValueError(f"unknown metric {name!r}; declared: {sorted(found)}")
    return found[name].direction


def encoder_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The recurrent encoder's fields from config.model (shared by every task's model)."""
    names = (
        "cell",
        "hidden_size",
        "num_layers",
        "bidirectional",
        "dropout",
        "recurrent_dropout",
        "zoneout",
        "output_size",
        "unroll",
        "remat",
        "scan_impl",
    )
    options = {name: cfg[name] for name in names}
    options["unroll"] = cfg.unroll or None  # 0: the cell's own
    options["options"] = flax.core.FrozenDict(cell_options(cfg))  # a model is hashed by jit
    return options | {"dtype": jnp.dtype(cfg.dtype)}


def cell_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The options config.model.cell declares, from its section config.model.<cell>; a
    cell without a section (or an option missing from it) keeps its own defaults."""
    spec = cells.get(cfg.cell)
    section = cfg.get(spec.name)
    values = {}
    for option in spec.options:
        if option.from_section is not None and section is not None:
            values[option.name] = option.from_section(section)
        elif section is not None and option.name in section:
            values[option.name] = section[option.name]
    return spec.option_values(values, f"config.model.{spec.name}")


@dataclasses.dataclass(frozen=True)
class Task:
    """A task kind (subclasses register themselves by ``kind``).

    num_classes: classes (classification) or label vocabulary size (tagging); else None.
    """

    kind: ClassVar[str]
    main_metric: ClassVar[str]
    # Every metric ``metrics`` returns, with its direction (checked when it runs).
    declared: ClassVar[tuple[Metric, ...]] = (LOSS,)
    needs_classes: ClassVar[bool] = False
    # True when outputs are per time step, so there is no one feature vector per sequence
    # that a head-only fine-tuning stage could compute once.
    per_step_outputs: ClassVar[bool] = False
    rolls_forward: ClassVar[bool] = False  # predicts its inputs' next values (fnn_jax.forecast)

    num_classes: int | None = None

    def target_spec(self, dataset: Any) -> dict[str, Any]:
        """The ``targets`` field of a batch spec (see fnn_jax.data.batch_spec)."""
        raise NotImplementedError

    def build_model(self, cfg: ml_collections.ConfigDict, dataset: Any) -> nn.Module:
        """The model for this task, its encoder described by ``cfg`` (config.model)."""
        raise NotImplementedError

    def loss_and_sums(self, outputs: Array, batch: dict) -> tuple[Array, dict[str, Array]]:
        """Mean loss over the batch's real rows, and this batch's additive sums."""
        raise NotImplementedError

    def metrics(self, sums: dict) -> dict[str, float]:
        """Host-side numbers from summed ``sums``."""
        raise NotImplementedError

    def details(self, sums: dict) -> dict[str, Any]:
        """What a report shows beyond the metrics (classification: the confusion matrix
        and per-class scores); nothing by default."""
        return {}

    def baselines(self, dataset: Any) -> dict[str, float]:
        """The floor every dataset of this task has (a classifier's majority class)."""
        return {}

    @classmethod
    def selection_metric(cls, name: str, where: str) -> Metric:
        """The declared metric ``name`` that may select checkpoints; ValueError naming
        ``where`` (the config key) and the task's choices otherwise."""
        found = {m.name: m for m in cls.declared}
        selectable = sorted(n for n, m in found.items() if m.selects)
        if name not in found or not found[name].selects:
            close = difflib.get_close_matches(name, selectable, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{where}={name!r} is not a metric that task {cls.kind!r} can select "
                f"checkpoints by{hint}; choices: {selectable}"
            )
        return found[name]


REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Adds a task kind; its main metric must be one it declares."""
    cls.selection_metric(cls.main_metric, f"{cls.__name__}.main_metric")
    REGISTRY[cls.kind] = cls
    return cls


def check_declared(task: Task, values: dict[str, float]) -> dict[str, float]:
    """``values`` (a task's metrics), or a ValueError naming a metric it does not declare:
    an undeclared metric would have no direction, and early stopping on it could silently
    minimise an accuracy."""
    declared = {m.name for m in task.declared}
    undeclared = sorted(set(values) - declared)
    if undeclared:
        raise ValueError(
            f"task {task.kind!r} computed metrics {undeclared} that it does not declare; add "
            f"each to {type(task).__name__}.declared as tasks.Metric(name, direction)"
        )
    return values


def _host(sums: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in sums.items()}


@register
@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """One class id per sequence: int32 targets [n] in [0, num_classes)."""

    kind: ClassVar[str] = "classification"
    main_metric: ClassVar[str] = "accuracy"
    # precision, recall and f1 are macro averages over the classes.
    declared: ClassVar[tuple[Metric, ...]] = (
        LOSS,
        *(Metric(name, "max") for name in ("accuracy", "precision", "recall", "f1")),
    )
    needs_classes: ClassVar[bool] = True

    def target_spec(self, dataset):
        return {"shape": (None,), "dtype": np.dtype(np.int32), "range": (0, self.num_classes)}

    def build_model(self, cfg, dataset):
        tokens = {}
        if dataset.train.inputs.ndim == 2:  # [n, time] token ids: embedded by the model
            vocab = dataset.info.get("input_vocab_size")
            if not vocab:
                raise ValueError(
                    f"dataset {dataset.name!r} has token inputs but no info['input_vocab_size']"
                )
            tokens = {"vocab_size": int(vocab), "embed_dim": cfg.embed_dim}
        return models.SequenceClassifier(
            **encoder_options(cfg), num_classes=self.num_classes, pooling=cfg.pooling, **tokens
        )

    def loss_and_sums(self, outputs, batch):
        w, targets = batch["weights"].astype(jnp.float32), batch["targets"]
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
        predictions = jnp.argmax(outputs, -1)
        sums = {
            "loss": jnp.sum(ce * w),
            "count": jnp.sum(w),
            "confusion": metrics.confusion_matrix(targets, predictions, self.num_classes, w),
        }
        return sums["loss"] / sums["count"], sums

    def metrics(self, sums):
        sums = _host(sums)
        loss = float(sums["loss"]) / float(sums["count"])
        return {"loss": loss, **metrics.classification_metrics(sums["confusion"])}

    def baselines(self, dataset):
        common = np.bincount(dataset.train.targets, minlength=self.num_classes).argmax()
        return {"accuracy_majority_class": float(np.mean(dataset.test.targets == common))}

    def details(self, sums):
        confusion = np.asarray(sums["confusion"], np.float64)
        correct, rows = int(np.trace(confusion)), int(confusion.sum())
        # The accuracy's exact 95% interval: small test sets (360 digits) need one.
        interval = list(stats.binomial_interval(correct, rows)) if rows else None
        return {
            "confusion": confusion.astype(int).tolist(),
            **metrics.per_class(confusion),
            "accuracy_interval": interval,
        }


@register
@dataclasses.dataclass(frozen=True)
class Forecast(Task):
    """The next values of a series: float32 targets [n, horizon, targets]."""

    kind: ClassVar[str] = "forecast"
    main_metric: ClassVar[str] = "mse"
    declared: ClassVar[tuple[Metric, ...]] = (
        LOSS,
        *(Metric(name, "min") for name in ("mse", "rmse", "mae")),
    )
    rolls_forward: ClassVar[bool] = True

    def target_spec(self, dataset):
        t = dataset.train.targets
        if t.ndim != 3:
            raise ValueError(
                f"dataset {dataset.name!r}: forecast targets must be [n, horizon, targets]; "
                f"got shape {t.shape}"
            )
        return {"shape": (None, *map(int, t.shape[1:])), "dtype": np.dtype(np.float32)}

    def build_model(self, cfg, dataset):
        horizon, targets = self.output_shape(dataset)
        return models.Forecaster(**encoder_options(cfg), horizon=horizon, targets=targets)

    def output_shape(self, dataset) -> tuple[int, int]:
        """(horizon, targets) of the model's output."""
        _, horizon, targets = dataset.train.targets.shape
        return int(horizon), int(targets)

    def loss_and_sums(self, outputs, batch):
        w, targets = batch["weights"].astype(jnp.float32), batch["targets"]
        error = (outputs.reshape(targets.shape) - targets).reshape(targets.shape[0], -1)
        sums = {
            "loss": jnp.sum(jnp.sum(error**2, axis=1) * w),
            "abs": jnp.sum(jnp.sum(jnp.abs(error), axis=1) * w),
            "count": jnp.sum(w) * error.shape[1],
        }
        return sums["loss"] / sums["count"], sums

    def metrics(self, sums):
        sums = _host(sums)
        count = float(sums["count"])
        loss = float(sums["loss"]) / count
        return {"loss": loss, **metrics.regression_metrics(sums["loss"], sums["abs"], count)}


@register
@dataclasses.dataclass(frozen=True)
class Regression(Forecast):
    """One value per sequence: float32 targets [n, 1]."""

    kind: ClassVar[str] = "regression"

    def target_spec(self, dataset):
        return {"shape": (None, 1), "dtype": np.dtype(np.float32)}

    def output_shape(self, dataset):
        return 1, 1


@register
@dataclasses.dataclass(frozen=True)
class StepForecast(Forecast):
    """The next value at every step of a row: float32 targets [n, time, targets]; steps
    past a row's length are not scored."""

    kind: ClassVar[str] = "step_forecast"
    rolls_forward: ClassVar[bool] = False
    per_step_outputs: ClassVar[bool] = True

    def target_spec(self, dataset):
        inputs, targets = dataset.train.inputs, dataset.train.targets
        if targets.ndim != 3 or targets.shape[1] != inputs.shape[1]:
            raise ValueError(
                f"dataset {dataset.name!r}: step_forecast targets must be [n, time, targets] "
                f"with the inputs' time ({inputs.shape[1]}); got shape {targets.shape}"
            )
        return {"shape": (None, *map(int, targets.shape[1:])), "dtype": np.dtype(np.float32)}

    def build_model(self, cfg, dataset):
        return models.StepForecaster(
            **encoder_options(cfg), targets=int(dataset.train.targets.shape[-1])
        )

    def loss_and_sums(self, outputs, batch):
        targets, time = batch["targets"], batch["targets"].shape[1]
        valid = jnp.arange(time)[None, :] < batch["lengths"][:, None]
        valid = (valid * batch["weights"][:, None].astype(jnp.float32))[..., None]
        error = outputs - targets
        sums = {
            "loss": jnp.sum(error**2 * valid),
            "abs": jnp.sum(jnp.abs(error) * valid),
            "count": jnp.maximum(jnp.sum(valid) * targets.shape[-1], 1.0),
        }
        return sums["loss"] / sums["count"], sums


@register
@dataclasses.dataclass(frozen=True)
class Tagging(Task):
    """A label per time step (e.g. the next character): int32 targets [n, time], -1 ignored."""

    kind: ClassVar[str] = "tagging"
    main_metric: ClassVar[str] = "cross_entropy"
    declared: ClassVar[tuple[Metric, ...]] = (
        LOSS,
        *(Metric(name, "min") for name in ("cross_entropy", "perplexity", "bits_per_char")),
        Metric("accuracy", "max"),
    )
    needs_classes: ClassVar[bool] = True
    per_step_outputs: ClassVar[bool] = True

    def target_spec(self, dataset):
        time = int(dataset.train.inputs.shape[1])
        return {
            "shape": (None, time),
            "dtype": np.dtype(np.int32),
            "range": (IGNORE_LABEL, self.num_classes),
        }

    def build_model(self, cfg, dataset):
        return models.CharLM(
            **encoder_options(cfg), vocab_size=self.num_classes, embed_dim=cfg.embed_dim
        )

    def loss_and_sums(self, outputs, batch):
        w, targets = batch["weights"].astype(jnp.float32), batch["targets"]
        valid = (targets >= 0).astype(jnp.float32) * w[:, None]
        safe = jnp.maximum(targets, 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs, safe)
        correct = (jnp.argmax(outputs, -1) == safe).astype(jnp.float32)
        sums = {
            "loss": jnp.sum(ce * valid),
            "correct": jnp.sum(correct * valid),
            "count": jnp.maximum(jnp.sum(valid), 1.0),
        }
        return sums["loss"] / sums["count"], sums

    def metrics(self, sums):
        sums = _host(sums)
        count = float(sums["count"])
        loss = float(sums["loss"]) / count
        return {"loss": loss, **metrics.language_metrics(sums["loss"], sums["correct"], count)}


def get(kind: str, num_classes: int | None = None) -> Task:
    """The task of ``kind``; an unknown kind lists the valid ones."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown task {kind!r}; valid choices: {sorted(REGISTRY)}")
    return REGISTRY[kind](num_classes)


def for_dataset(dataset: Any) -> Task:
    """The task a Dataset declares (its ``task`` and ``num_classes``)."""
    return get(dataset.task, dataset.num_classes)
