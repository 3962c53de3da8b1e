"""The full config schema, its validation, and comparison of two runs' configs.

Every experiment config starts from ``default_config()`` and changes values; it never adds
keys. ``validate`` catches what a locked ConfigDict cannot: wrong names for optimizers,
schedules, cells and datasets, keys added to an unlocked dict, and values of the wrong type.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Iterator
from typing import Any

import ml_collections
from ml_collections import config_dict

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "exponential", "step")
# Sections whose differences make a checkpoint meaningless for this config.
ARCHITECTURE_KEYS = ("model", "data", "seed")


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

    c.model = ml_collections.ConfigDict()
    c.model.cell = "lstm"
    c.model.hidden_size = 128
    c.model.num_layers = 1
    c.model.bidirectional = False
    c.model.dropout = 0.0
    c.model.pooling = "last"  # classifier: "last" or "mean"
    c.model.activation = "tanh"  # elman, jordan, equilibrium
    c.model.output_activation = "tanh"  # jordan
    c.model.output_size = config_dict.placeholder(int)  # jordan, lru; None = hidden_size
    c.model.embed_dim = 64  # token inputs (language models, copy memory)
    c.model.unroll = 1
    c.model.remat = False
    c.model.parallel = False  # lru, mingru: associative scan over time

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

    c.regularization = ml_collections.ConfigDict()
    c.regularization.l1 = 0.0
    c.regularization.l2 = 0.0
    c.regularization.exclude = r"(^|/)(b|b_\w+|bias)$"  # paths the penalty skips

    # Fine-tuning (fnn_jax.finetune). Resume order: this workdir, else init_from, else scratch.
    c.init_from = ""  # a pretrained workdir (or its checkpoints/ folder)
    c.init_step = "best"  # "best", "latest" or a step number
    c.finetune = ml_collections.ConfigDict()
    c.finetune.reinit = ("head/.*",)  # parameters initialised fresh, not loaded
    c.finetune.dont_load = ()  # checkpoint parameters the new model may leave unused
    c.finetune.stages = []  # stage dicts; empty = one stage with config.optimizer
    c.finetune.lora_rank = 0  # > 0: low-rank adapters on the kernels, base frozen
    c.finetune.lora_alpha = 8.0
    c.finetune.lora_targets = r"(.*/)?(w_ih|w_hh|kernel)"
    c.finetune.cache_features = True  # head-only stages train on features computed once

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 10
    c.train.num_steps = 0  # > 0 overrides num_epochs
    c.train.log_every_steps = 50
    c.train.eval_every_steps = 0  # 0 = once per epoch
    c.train.keep_checkpoints = 3  # latest N, plus the best
    c.train.early_stopping_metric = ""  # "" = the task's main metric
    c.train.patience = 0  # evaluations without improvement before stopping; 0 = off
    c.train.min_delta = 0.0
    c.train.max_nonfinite_steps = 0  # steps with NaN/Inf loss skipped before failing
    return c


def _walk(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and key != "options":
            yield from _walk(value, path + ".")
        else:
            yield path, value


def _lookup(cfg: ml_collections.ConfigDict, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        node = node[part]
    return node


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


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails before any training on unknown keys, wrong types or unknown names."""
    reference = default_config()
    reference_paths = dict(_walk(reference))
    for path, value in _walk(config):
        if path not in reference_paths:
            raise ValueError(f"unknown config key {path!r}{_suggest(path, reference_paths)}")
        expected = reference_paths[path]
        field = reference
        for part in path.split(".")[:-1]:
            field = field[part]
        expected_type = field.get_type(path.split(".")[-1])
        if value is None or expected is None and expected_type is type(None):
            continue
        numeric = expected_type is float and isinstance(value, int) and not isinstance(value, bool)
        if not isinstance(value, expected_type) and not numeric:
            raise ValueError(
                f"config.{path} must be {expected_type.__name__}; got {value!r} "
                f"({type(value).__name__})"
            )
    # Late imports: reading a config must not pull in Flax or the dataset loaders.
    from fnn_jax import data
    from fnn_jax.layers import CELLS

    check_choice("model.cell", config.model.cell, CELLS)
    check_choice("data.name", config.data.name, data.available())
    accepted = inspect.signature(data.REGISTRY[config.data.name]).parameters
    for option in config.data.options:
        if option not in accepted:
            raise ValueError(
                f"config.data.options.{option} is not an option of dataset "
                f"{config.data.name!r}{_suggest(option, accepted)}; valid: {sorted(accepted)}"
            )
    check_choice("optimizer.name", config.optimizer.name, OPTIMIZERS)
    check_choice("optimizer.schedule", config.optimizer.schedule, SCHEDULES)


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


def split_differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(architectural differences, other differences) between a saved and a new config."""
    diffs = differences(old, new)
    arch = [d for d in diffs if d.split(".")[0].split(":")[0] in ARCHITECTURE_KEYS]
    return arch, [d for d in diffs if d not in arch]
