"""The one config schema, its validation, and comparison of two runs' configs.

Every experiment config starts from ``default_config()`` and changes values; it never adds
keys. ``validate`` catches what a locked ConfigDict cannot: wrong names for optimizers,
schedules, cells and datasets, keys added to an unlocked dict, values of the wrong type and
malformed fine-tuning stages. The runner, the sweep checker and stage validation all check
keys and values with ``check_key`` / ``check_value`` here: one set of types, one message.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

# Each optimizer is the optax function of that name; the config.optimizer keys it reads
# (besides learning_rate) are passed as its keyword arguments of the same name.
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "adam": ("b1", "b2", "eps"),
    "adamw": ("b1", "b2", "eps", "weight_decay"),
    "rmsprop": ("eps", "momentum"),
    "sgd": ("momentum", "nesterov"),
}
SCHEDULES = ("constant", "warmup_cosine", "exponential", "step")
DTYPES = ("float32", "bfloat16")  # model.dtype: what the model computes in
STAGE_KEYS = ("name", "rules", "optimizer", "num_steps", "num_epochs", "patience", "lr_mults")
RULE_LABELS = ("train", "frozen")
# Allowed values of numeric keys: (lowest, highest), None = unbounded, both ends included.
# Every float must also be finite. Checked by ``check_value``, so sweeps and stages too.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "data.batch_size": (1, None),
    "data.eval_batch_size": (1, None),
    "data.stream_workers": (0, None),
    "data.stream_prefetch": (0, None),
    "data.augment.jitter": (0.0, None),
    "data.augment.scale": (0.0, None),
    "data.augment.max_shift": (0, None),
    "data.augment.mask_width": (0, None),
    "model.hidden_size": (1, None),
    "model.num_layers": (1, None),
    "model.dropout": (0.0, 0.99),
    "model.recurrent_dropout": (0.0, 0.99),
    "model.zoneout": (0.0, 0.99),
    "model.output_size": (1, None),
    "model.embed_dim": (1, None),
    "model.unroll": (0, None),
    "model.equilibrium.max_iter": (1, None),
    "model.equilibrium.tol": (0.0, None),  # and > 0: check_equilibrium
    "model.equilibrium.rtol": (0.0, None),
    "model.equilibrium.anderson_memory": (1, None),
    "model.equilibrium.phantom_steps": (1, None),
    "model.equilibrium.max_feedback_norm": (0.0, None),
    "optimizer.learning_rate": (0.0, None),
    "optimizer.weight_decay": (0.0, None),
    "optimizer.momentum": (0.0, 1.0),
    "optimizer.b1": (0.0, 1.0),
    "optimizer.b2": (0.0, 1.0),
    "optimizer.eps": (0.0, None),
    "optimizer.clip_norm": (0.0, None),
    "optimizer.warmup_steps": (0, None),
    "optimizer.decay_rate": (0.0, None),
    "optimizer.decay_steps": (1, None),
    "optimizer.final_lr_fraction": (0.0, None),
    "regularization.l1": (0.0, None),
    "regularization.l2": (0.0, None),
    "finetune.lora_rank": (0, None),
    "train.num_epochs": (0, None),
    "train.num_steps": (0, None),
    "train.log_every_steps": (1, None),
    "train.eval_every_steps": (0, None),
    "train.keep_checkpoints": (1, None),
    "train.checkpoint_every_s": (0.0, None),
    "train.closed_loop_steps": (0, None),
    "train.patience": (0, None),
    "train.min_delta": (0.0, None),
    "train.max_nonfinite_steps": (0, None),
    "train.tbptt_length": (0, None),
    "train.profile_steps": (0, None),
    "mesh.data": (-1, None),
    "mesh.model": (1, None),
    "distributed.num_processes": (1, None),
    "distributed.process_id": (0, None),
    "distributed.timeout_s": (0.0, None),
}
# Sections whose differences make a checkpoint meaningless for this config, and the keys in
# them that change only how the model runs (a change resumes, with a warning).
ARCHITECTURE_KEYS = ("model", "data", "seed")
# Keys outside those sections that a checkpoint depends on as much: truncated BPTT fixes
# what a step is (a window of a row) and the state carried between steps.
STATE_KEYS = ("train.tbptt_length",)
EQUILIBRIUM_SOLVER_KEYS = (
    "solver",
    "max_iter",
    "tol",
    "rtol",
    "anderson_memory",
    "gradient",
    "phantom_steps",
    "on_nonconvergence",
)
EXECUTION_KEYS = (
    "data.allow_changed",
    "data.stream_workers",
    "data.stream_prefetch",
    "model.unroll",
    "model.remat",
    "model.scan_impl",
    *(f"model.equilibrium.{key}" for key in EQUILIBRIUM_SOLVER_KEYS),
)


def default_config() -> ml_collections.ConfigDict:
    """Every key the runner reads, with its default. Unlocked: the caller edits, then locks."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    # Keyword arguments of the dataset's loader (see fnn_jax.data); validated against it.
    c.data.options = ml_collections.ConfigDict()
    # Resume even though the data differs from what the run's checkpoints were trained on
    # (data.json's fingerprint): rows, shapes or file hashes. Otherwise such a resume is refused.
    c.data.allow_changed = False
    # A streamed dataset (data.options.stream, fnn_jax.data.corpus): worker processes that
    # read and pack its rows (0: threads of this process) and batches read ahead.
    c.data.stream_workers = 0
    c.data.stream_prefetch = 2
    # Training batches only (fnn_jax.data.augment); 0 = off.
    c.data.augment = ml_collections.ConfigDict()
    c.data.augment.jitter = 0.0  # std of Gaussian noise on every step
    c.data.augment.scale = 0.0  # std of a per-sequence, per-feature factor around 1
    c.data.augment.max_shift = 0  # steps a sequence moves later (zeros in front)
    c.data.augment.mask_width = 0  # longest window of steps set to zero

    c.model = ml_collections.ConfigDict()
    c.model.cell = "lstm"
    c.model.hidden_size = 128
    c.model.num_layers = 1
    c.model.bidirectional = False
    c.model.dropout = 0.0  # between layers and before the head
    c.model.recurrent_dropout = 0.0  # variational: inputs and fed-back state, mask per sequence
    c.model.zoneout = 0.0  # lstm, gru: a unit keeps its previous value with this probability
    c.model.pooling = "last"  # classifier: "last" or "mean"
    c.model.output_size = config_dict.placeholder(int)  # jordan, lru; None = hidden_size
    c.model.embed_dim = 64  # token inputs (language models, copy memory)
    c.model.unroll = 0  # lax.scan unroll; 0 = the cell's own (cells.CellSpec.unroll)
    c.model.remat = False
    c.model.scan_impl = "sequential"  # "associative" (lru, mingru) or "auto"
    c.model.dtype = "float32"  # "bfloat16": mixed precision (parameters, optimizer in float32)
    # A section per cell with options: the options its spec declares (cells.spec.Option),
    # read only when that cell runs (tests/test_cell_options.py checks they match the specs).
    c.model.elman = ml_collections.ConfigDict()
    c.model.elman.activation = "tanh"
    c.model.jordan = ml_collections.ConfigDict()
    c.model.jordan.activation = "tanh"
    c.model.jordan.output_activation = "tanh"
    # cell "equilibrium": its activation and how each step's fixed point is found
    # (fnn_jax.cells.fixed_point; the keys below make its option ``solver``).
    c.model.equilibrium = ml_collections.ConfigDict()
    c.model.equilibrium.activation = "tanh"
    c.model.equilibrium.solver = "anderson"  # or "iterate"
    c.model.equilibrium.max_iter = 50
    c.model.equilibrium.tol = 1e-5  # converged: |f(z) - z| <= tol + rtol * |z| (max norms)
    c.model.equilibrium.rtol = 1e-5
    c.model.equilibrium.anderson_memory = 5
    c.model.equilibrium.gradient = "implicit"  # or "phantom" (an approximation)
    c.model.equilibrium.phantom_steps = 5
    c.model.equilibrium.on_nonconvergence = "warn"  # "raise", "ignore"
    c.model.equilibrium.max_feedback_norm = 0.0  # > 0: keeps ||W_zz||_2 at most this

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0  # decoupled decay; adamw only
    c.optimizer.momentum = 0.9  # sgd (0 = plain) and rmsprop
    c.optimizer.nesterov = False
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.clip_norm = 1.0  # global gradient norm; 0 = off
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.optimizer.decay_rate = 0.1  # exponential / step
    c.optimizer.decay_steps = 1000  # exponential: e-folding-like period; step: interval
    c.optimizer.final_lr_fraction = 0.0  # warmup_cosine end value / peak

    # Devices (fnn_jax.train.mesh): a data axis splitting each batch's rows and a model
    # axis splitting the matrices the rules name (regex of a parameter path -> the
    # PartitionSpec of that array as a tuple). One device: nothing changes.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis; -1: all that the model axis leaves
    c.mesh.model = 1
    # The recurrent matrices along their gate / hidden axis. A head's kernel can be added,
    # ("head/kernel", (None, "model")), when its classes split evenly over the model axis.
    c.mesh.rules = (("(.*/)?w_(ih|hh|zz)", (None, "model")),)

    # Several processes, one model (fnn_jax.train.distributed); "" = this process alone.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # "host:port" of process 0, or "auto"
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    # Seconds process 0 waits for the others to report (on the coordinator's port + 1)
    # before naming the missing ranks (fnn_jax.train.rendezvous); 0: leave it to JAX.
    c.distributed.timeout_s = 30.0

    c.regularization = ml_collections.ConfigDict()
    c.regularization.l1 = 0.0
    c.regularization.l2 = 0.0
    c.regularization.exclude = r"(.*/)?(b|b_\w+|bias)"  # paths (full match) the penalty skips

    # Fine-tuning (fnn_jax.finetune). Resume order: this workdir, else init_from, else scratch.
    c.init_from = ""  # a pretrained workdir (or its checkpoints/ folder)
    c.init_step = "best"  # "best", "latest" or a step number
    c.finetune = ml_collections.ConfigDict()
    c.finetune.reinit = ("head/.*",)  # parameters initialised fresh, not loaded
    c.finetune.dont_load = ()  # checkpoint parameters the new model may leave unused
    c.finetune.stages = []  # stage dicts; empty = one stage with config.optimizer
    c.finetune.lora_rank = 0  # > 0: low-rank adapters on the kernels, base frozen
    c.finetune.lora_alpha = 8.0
    c.finetune.lora_targets = r"(.*/)?(w_ih|w_hh|w_zz|kernel)"
    c.finetune.cache_features = True  # head-only stages train on features computed once

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 10
    c.train.num_steps = 0  # > 0 overrides num_epochs
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 0  # 0 = once per epoch
    c.train.keep_checkpoints = 3  # latest N, plus the best
    # Seconds of training between saves (at evaluations; a new best waits in memory and is
    # written before the next save). Stage ends and interruptions always save; a killed
    # process loses at most this much. 0: save at every evaluation.
    c.train.checkpoint_every_s = 30.0
    c.train.closed_loop_steps = 12  # forecasting: test error k steps ahead on own predictions
    c.train.early_stopping_metric = ""  # "" = the task's main metric
    c.train.patience = 0  # evaluations without improvement before stopping; 0 = off
    c.train.min_delta = 0.0
    c.train.max_nonfinite_steps = 0  # steps with NaN/Inf loss skipped before failing
    # > 0: truncated BPTT. Each train row is cut into windows of this many steps, one
    # optimizer step per window; the recurrent state passes from window to window of a row
    # with its gradient stopped (tasks with a label per step: language models).
    c.train.tbptt_length = 0
    # Optimizer steps per jitted call (a lax loop over that many batches): an int >= 1, or
    # "auto" (measured: enough steps to make the per-call overhead small).
    c.train.steps_per_dispatch = config_dict.FieldReference("auto", field_type=object)
    # JAX's persistent compilation cache (fnn_jax.compilation); "" = off.
    c.train.compilation_cache = "~/.cache/fnn_jax/compilation"
    # Resume a checkpoint whose optimizer state no longer fits the optimizer settings with
    # its parameters and a fresh optimizer state (otherwise such a resume is refused).
    c.train.reset_optimizer = False
    # > 0: a jax.profiler trace of this many steps from the end of the first dispatch, in
    # <workdir>/profile (TensorBoard's profile plugin, or Perfetto; fnn_jax.train.profile).
    c.train.profile_steps = 0
    # The global norms of the gradients, parameters and updates in the train logs (their
    # means since the last record): three reductions over the parameters a step.
    c.train.log_norms = True
    return c


def _walk(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and key != "options":
            yield from _walk(value, path + ".")
        else:
            yield path, value


@functools.cache
def _schema() -> dict[str, tuple[type | None, Any]]:
    """Every leaf key of ``default_config()``: (its type, its default)."""
    reference = default_config()
    schema = {}
    for path, default in _walk(reference):
        *parents, leaf = path.split(".")
        node = reference
        for part in parents:
            node = node[part]
        schema[path] = (node.get_type(leaf), default)
    return schema


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(key: str, value: str, choices) -> None:
    """Raises ValueError naming the config key and listing the valid choices."""
    if value not in choices:
        raise ValueError(
            f"config.{key}={value!r} is not valid{_suggest(value, choices)}; "
            f"valid choices: {sorted(choices)}"
        )


def config_argument(arg: str | None, choices: Sequence[str], what: str) -> str:
    """A config file's argument (``--config configs/x.py:ARG``): ``arg``, or the first of
    ``choices`` when none was given; a ValueError naming ``what`` and listing the choices
    when it is not one of them."""
    value = arg or choices[0]
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {list(choices)}")
    return value


def check_key(key: str) -> type | None:
    """The type of the config key ``key`` (dotted); ValueError naming it, with the closest
    known key, if the schema has no such key. ``data.options.<name>`` is any dataset
    option (its name is checked against the dataset by ``validate``): type None."""
    schema = _schema()
    if key in schema:
        return schema[key][0]
    if key.startswith("data.options.") and key.count(".") == 2:
        return None
    if any(path.startswith(key + ".") for path in schema):
        raise ValueError(f"config key {key!r} is a section, not a value")
    raise ValueError(f"unknown config key {key!r}{_suggest(key, schema)}")


def check_value(key: str, value: Any) -> None:
    """Raises ValueError naming ``key`` when ``value`` is not of its schema type.

    A bool is not an int; an int is a float; tuples and lists stand for each other;
    None only where the default is None (a placeholder such as model.output_size).
    """
    expected = check_key(key)
    default = _schema().get(key, (None, None))[1]
    scalars = (bool, int, float, str, type(None))
    if expected is None:
        ok = isinstance(value, (*scalars, tuple, list))
    elif value is None:
        ok = default is None
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected in (tuple, list):
        ok = isinstance(value, tuple | list)
    else:
        ok = isinstance(value, expected)
    if not ok:
        name = expected.__name__ if expected else "a number, string, bool or tuple"
        raise ValueError(f"config.{key} must be {name}; got {value!r} ({type(value).__name__})")
    if expected in (int, float) and value is not None:
        _check_range(key, value)


def _check_range(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"config.{key} must be finite; got {value!r}")
    low, high = RANGES.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"config.{key} must be {allowed}; got {value!r}")


class ConfigError(ValueError):
    """A config the runner refuses before anything is written: the message names the key."""


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails before any training (ConfigError) on unknown keys, wrong types, values out of
    range, unknown names or bad stages."""
    try:
        _validate(config)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _validate(config: ml_collections.ConfigDict) -> None:
    for path, value in _walk(config):
        if path == "data.options":
            continue
        check_value(path, value)
    # Late imports: reading a config must not pull in Flax or the dataset loaders.
    from fnn_jax import cells, data, tasks

    check_choice("model.cell", config.model.cell, cells.REGISTRY)
    check_choice("model.scan_impl", config.model.scan_impl, cells.SCAN_IMPLS)
    check_choice("model.dtype", config.model.dtype, DTYPES)
    check_equilibrium(config.model.equilibrium)
    tasks.cell_options(config.model)  # config.model.<cell>: the options the cell declares
    try:
        cells.resolve_scan_impl(cells.get(config.model.cell), config.model.scan_impl)
    except ValueError as error:
        raise ValueError(f"config.model.scan_impl: {error}") from None
    check_regularization(config.model, cells.get(config.model.cell))
    try:
        data.registry.resolve(config.data.name)
    except ValueError as error:
        raise ValueError(f"config.data.name={config.data.name!r}: {error}") from None
    data.check_options(config.data.name, config.data.options, where="config.data.options")
    check_metric_name(config.train.early_stopping_metric)
    check_choice("optimizer.name", config.optimizer.name, OPTIMIZERS)
    check_choice("optimizer.schedule", config.optimizer.schedule, SCHEDULES)
    check_steps_per_dispatch(config.train.steps_per_dispatch)
    for index, stage in enumerate(config.finetune.stages):
        check_stage(f"config.finetune.stages[{index}]", stage)
    if not config.finetune.stages and config.train.num_steps == 0 == config.train.num_epochs:
        raise ValueError(
            "config.train.num_steps and config.train.num_epochs are both 0: nothing to train "
            "(set num_steps > 0, or num_epochs > 0 with num_steps = 0)"
        )


def check_metric_name(name: str) -> None:
    """config.train.early_stopping_metric: "" or a metric some task declares as able to
    select checkpoints (the run's own task is checked once its data is loaded)."""
    from fnn_jax import tasks  # late: reading a config must not import jax

    choices = [n for n, m in tasks.declared_metrics().items() if m.selects]
    if name:
        check_choice("train.early_stopping_metric", name, choices)


def check_regularization(model: ml_collections.ConfigDict, spec: Any) -> None:
    """config.model.zoneout only for cells that have it; neither it nor recurrent dropout
    with an associative scan (both act inside the time loop)."""
    if model.zoneout and not spec.zoneout:
        raise ValueError(
            f"config.model.zoneout={model.zoneout} applies to lstm and gru, not "
            f"config.model.cell={spec.name!r}"
        )
    if (model.zoneout or model.recurrent_dropout) and model.scan_impl == "associative":
        raise ValueError(
            "config.model.recurrent_dropout and config.model.zoneout act inside the time "
            "loop: set config.model.scan_impl to 'sequential' or 'auto', not 'associative'"
        )


def check_equilibrium(options: ml_collections.ConfigDict) -> None:
    """config.model.equilibrium: known solver, gradient and policy names, tol > 0."""
    from fnn_jax.cells import fixed_point  # late: reading a config must not import jax

    check_choice("model.equilibrium.solver", options.solver, fixed_point.SOLVERS)
    check_choice("model.equilibrium.gradient", options.gradient, fixed_point.GRADIENTS)
    check_choice(
        "model.equilibrium.on_nonconvergence", options.on_nonconvergence, fixed_point.POLICIES
    )
    if not options.tol > 0:
        raise ValueError(f"config.model.equilibrium.tol must be > 0; got {options.tol!r}")


def check_steps_per_dispatch(value: Any) -> None:
    """config.train.steps_per_dispatch: "auto" or an int >= 1 (a digit string counts, as
    a command line gives it)."""
    if value == "auto" or (isinstance(value, str) and value.isdigit() and int(value) >= 1):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    raise ValueError(
        f'config.train.steps_per_dispatch must be "auto" or an int >= 1; got {value!r}'
    )


def check_stage(where: str, stage: Any) -> None:
    """Raises ValueError naming ``where`` and the key when a stage dict is malformed."""
    if not isinstance(stage, Mapping):
        raise ValueError(f"{where} must be a dict with keys {list(STAGE_KEYS)}; got {stage!r}")
    for key in stage:
        if key not in STAGE_KEYS:
            raise ValueError(
                f"{where}.{key} is not a stage key{_suggest(key, STAGE_KEYS)}; "
                f"valid: {list(STAGE_KEYS)}"
            )
    _check_stage_length(where, stage)
    _check_stage_optimizer(where, dict(stage.get("optimizer", {})))
    _check_stage_pairs(where, stage)


def _check_stage_length(where: str, stage: Mapping) -> None:
    if ("num_steps" in stage) == ("num_epochs" in stage):
        raise ValueError(f"{where} needs exactly one of num_steps and num_epochs")
    for key in ("num_steps", "num_epochs", "patience"):
        value = stage.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}.{key} must be a non-negative int; got {value!r}")


def _check_stage_optimizer(where: str, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        try:
            check_value(f"optimizer.{key}", value)
        except ValueError as error:
            raise ValueError(f"{where}.optimizer: {error}") from None
        if key == "name":
            check_choice(f"{where[len('config.') :]}.optimizer.name", value, OPTIMIZERS)


def _check_stage_pairs(where: str, stage: Mapping) -> None:
    """``rules`` are (regex, label) pairs; ``lr_mults`` are (regex, multiplier) pairs."""
    for rule in stage.get("rules", ()):
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"{where}.rules: {rule!r} is not a (regex, label) pair")
        check_choice(f"{where[len('config.') :]}.rules label of {rule[0]!r}", rule[1], RULE_LABELS)
    for mult in stage.get("lr_mults", ()):
        ok = len(mult) == 2 and isinstance(mult[0], str) and isinstance(mult[1], int | float)
        if not ok:
            raise ValueError(f"{where}.lr_mults: {mult!r} is not a (regex, multiplier) pair")


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (added/removed keys too)."""
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, path + "."))
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def in_current_schema(saved: dict[str, Any]) -> dict[str, Any]:
    """A config dict saved by an earlier version, read in today's schema: keys added since
    take their defaults (which is what that version did), keys since removed are dropped."""
    defaults = to_dict(default_config())
    saved = _cell_options_moved(saved, defaults)

    def fill(old: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, default in schema.items():
            value = old.get(key, default)
            both_sections = isinstance(default, dict) and isinstance(value, dict)
            out[key] = fill(value, default) if both_sections and key != "options" else value
        return out

    return fill(saved, defaults)


def _cell_options_moved(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """model.activation and model.output_activation, from before cells declared their
    options, moved into the running cell's section where it declares them (dropping them
    would silently load an Elman run trained with relu as tanh)."""
    model = dict(saved.get("model") or {})
    moved = {k: model.pop(k) for k in ("activation", "output_activation") if k in model}
    section = defaults["model"].get(model.get("cell"))
    if moved and isinstance(section, dict):
        own = dict(model.get(model["cell"]) or {})
        own |= {k: v for k, v in moved.items() if k in section and k not in own}
        model[model["cell"]] = own
    return {**saved, "model": model} if moved else saved


def split_differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(architectural differences, other differences) between a saved and a new config
    (the saved one read in today's schema)."""
    diffs = differences(in_current_schema(old), new)
    key = lambda d: d.split(":")[0]
    arch = [
        d
        for d in diffs
        if (key(d).split(".")[0] in ARCHITECTURE_KEYS and key(d) not in EXECUTION_KEYS)
        or key(d) in STATE_KEYS
    ]
    return arch, [d for d in diffs if d not in arch]
