"""Fine-tuning: start from a pretrained checkpoint, replace the head, train in stages.

Driven by config (see ``fnn_jax.config.default_config``):

    config.init_from = "runs/digits_pretrain"     # a workdir or its checkpoints/ folder
    config.init_step = "best"                     # "best", "latest" or a step number
    config.finetune.reinit = ("head/.*",)         # initialised fresh for the new task
    config.finetune.stages = classic_stages(head_epochs=10, all_epochs=10)

With init_from set and no stages, the classic recipe is the default: half of
config.train's budget on the head (Adam 1e-3), half on everything (Adam 1e-4).

A stage is a dict: name, rules (first-match (regex, "train" | "frozen") on '/'-joined
parameter paths), optimizer (overrides of config.optimizer), num_steps or num_epochs,
optional patience and lr_mults ((regex, multiplier), first match, default 1).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import traverse_util

from fnn_jax import lora
from fnn_jax.checkpoint import Checkpoints, CorruptCheckpoint
from fnn_jax.config import ConfigError
from fnn_jax.data import augment
from fnn_jax.optim import frozen_mask
from fnn_jax.tasks import Task
from fnn_jax.tree import paths, require_matches

log = logging.getLogger("fnn_jax")


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stretch of training with one optimizer and one set of freezing rules."""

    name: str
    num_steps: int
    optimizer: ml_collections.ConfigDict
    rules: tuple[tuple[str, str], ...] | None = None  # None: everything trains
    patience: int = 0
    lr_mults: tuple[tuple[str, float], ...] = ()


def classic_stages(
    *,
    head_epochs: int,
    all_epochs: int,
    head_learning_rate: float = 1e-3,
    all_learning_rate: float = 1e-4,
) -> list[dict]:
    """Train the new head with everything else frozen, then everything at a lower rate."""
    return [
        {
            "name": "head",
            "rules": [("head/.*", "train"), (".*", "frozen")],
            "optimizer": {"name": "adam", "learning_rate": head_learning_rate},
            "num_epochs": head_epochs,
        },
        {
            "name": "all",
            "rules": [(".*", "train")],
            "optimizer": {"name": "adam", "learning_rate": all_learning_rate},
            "num_epochs": all_epochs,
        },
    ]


def gradual_unfreezing(
    blocks: Sequence[str],
    *,
    epochs_per_stage: int,
    learning_rate: float,
    head: str = "head/.*",
) -> list[dict]:
    """One stage per block: stage k trains the head and the k blocks nearest to it.

    blocks: regexes from the top of the network (nearest the head) down, e.g.
    ("encoder/layer_1/.*", "encoder/layer_0/.*").
    """
    stages = []
    for k in range(len(blocks) + 1):
        trained = [head, *blocks[:k]]
        stages.append(
            {
                "name": "head" if k == 0 else f"unfreeze_{k}",
                "rules": [(p, "train") for p in trained] + [(".*", "frozen")],
                "optimizer": {"learning_rate": learning_rate},
                "num_epochs": epochs_per_stage,
            }
        )
    return stages


def _stage(config, index: int, spec: dict, steps_per_epoch: int, params: Any) -> Stage:
    """One Stage from a stage dict (its keys were checked by config.check_stage)."""
    optimizer = ml_collections.ConfigDict(config.optimizer.to_dict())
    for key, value in spec.get("optimizer", {}).items():
        optimizer[key] = value
    steps = spec.get("num_steps") or spec["num_epochs"] * steps_per_epoch
    name = spec.get("name", f"stage_{index}")
    where = f"config.finetune.stages[{index}] ({name!r})"
    rules = tuple(tuple(rule) for rule in spec.get("rules", [(".*", "train")]))
    lr_mults = tuple(tuple(m) for m in spec.get("lr_mults", ()))
    model_paths = paths(params["base"] if config.finetune.lora_rank else params)
    require_matches(model_paths, [pattern for pattern, _ in rules], f"{where}.rules")
    require_matches(model_paths, [pattern for pattern, _ in lr_mults], f"{where}.lr_mults")
    if config.finetune.lora_rank:
        rules = lora.rules(rules, _adapted_paths(config, params["base"]))
    if config.finetune.lora_rank and lr_mults:
        lr_mults = tuple((f"(base|lora)/{p}", m) for p, m in lr_mults)
    if all(jax.tree.leaves(frozen_mask(params, rules))):
        raise ConfigError(f"{where} trains no parameter: its rules {list(rules)} freeze all")
    return Stage(
        name=name,
        num_steps=int(steps),
        optimizer=optimizer,
        rules=rules,
        patience=spec.get("patience", config.train.patience),
        lr_mults=lr_mults,
    )


def stages(config: ml_collections.ConfigDict, steps_per_epoch: int, params: Any) -> list[Stage]:
    """The Stages of config.finetune.stages; one stage with config.optimizer for plain
    training (and the classic recipe for init_from without stages)."""
    specs = list(config.finetune.stages)
    total = config.train.num_steps or config.train.num_epochs * steps_per_epoch
    if not specs and config.init_from and not config.finetune.lora_rank:
        # The classic recipe by default: half the budget on the head, half on everything.
        specs = classic_stages(head_epochs=1, all_epochs=1)
        specs[0]["num_steps"], specs[1]["num_steps"] = total // 2, total - total // 2
        for spec in specs:
            del spec["num_epochs"]
    elif not specs:
        if not config.finetune.lora_rank:
            return [Stage("train", total, config.optimizer, None, config.train.patience)]
        specs = [{"name": "lora", "rules": [(".*", "train")], "num_steps": total}]
    return [_stage(config, i, spec, steps_per_epoch, params) for i, spec in enumerate(specs)]


def _adapted_paths(config: ml_collections.ConfigDict, params: Any) -> list[str]:
    """Kernels that get adapters: the LoRA targets, except freshly initialised ones."""
    adapted = lora.targeted_paths(params, config.finetune.lora_targets, config.finetune.reinit)
    if not adapted:
        raise ConfigError(
            f"config.finetune.lora_targets={config.finetune.lora_targets!r} matches no 2-D "
            f"parameter outside config.finetune.reinit; the paths: {paths(params)}"
        )
    return adapted


def training_tree(config: ml_collections.ConfigDict, params: Any, key: jax.Array) -> Any:
    """What the optimizer trains: the model's params, or {"base", "lora"} with adapters."""
    if not config.finetune.lora_rank:
        return params
    ft = config.finetune
    _adapted_paths(config, params)  # a ConfigError naming the key when nothing is targeted
    adapters = lora.init_adapters(key, params, ft.lora_rank, ft.lora_targets, ft.reinit)
    return {"base": params, "lora": adapters}


def model_params(config: ml_collections.ConfigDict):
    """A function from the training tree to the parameters the model is applied with."""
    if not config.finetune.lora_rank:
        return lambda tree: tree
    return functools.partial(
        lora.merge, alpha=config.finetune.lora_alpha, rank=config.finetune.lora_rank
    )


def caches_features(config: ml_collections.ConfigDict, model, task: Task, frozen) -> bool:
    """Whether a stage can train its head on features computed once: everything below the
    head is frozen, the encoder uses no dropout, the inputs are not augmented, and features
    are one vector per sequence."""
    ft = config.finetune
    if not ft.cache_features or frozen is None or ft.lora_rank or task.per_step_outputs:
        return False
    if augment.Augment.from_config(config.data.augment).active:
        return False
    if not getattr(model, "features_are_deterministic", False):
        return False
    flat = traverse_util.flatten_dict(frozen, sep="/")
    return all(is_frozen for path, is_frozen in flat.items() if not path.startswith("head/"))


def frozen_tree(params: Any, rules) -> Any | None:
    """True where a parameter is frozen under ``rules``; None when nothing is frozen."""
    return None if rules is None else frozen_mask(params, rules)


def pretrained_params(
    init_from: str, init_step: str, *, what: str = "config.init_from"
) -> tuple[dict, int, Path]:
    """(model parameters, step, checkpoint folder) from a pretrained run; ``what`` names the
    caller in messages. A step deleted while it is read (a running run pruning its old
    steps) is looked up once more: "best" and "latest" then resolve anew."""
    folder = Path(init_from)
    if (folder / "checkpoints").is_dir():
        folder = folder / "checkpoints"
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: no checkpoint folder at {folder}")
    for attempt in (1, 2):
        checkpoints, step = Checkpoints(folder, read_only=True), None
        try:
            step = _pick_step(checkpoints, init_step, folder, what)
            state, progress = checkpoints.restore_saved(step)
            break
        except CorruptCheckpoint:
            if attempt == 2 or step is None or (folder / str(step)).exists():
                raise
            log.info("%s: step %d was deleted while it was read; looking again", what, step)
        finally:
            checkpoints.close()
    params = state["params"]
    if lora.is_lora_tree(params):  # a LoRA run: start from its merged weights
        params = lora.merge(params, progress["lora_alpha"], progress["lora_rank"])
    return params, step, folder


def _pick_step(checkpoints: Checkpoints, init_step: str, folder: Path, what: str) -> int:
    """The step ``init_step`` ("best", "latest" or a number) names among the committed ones."""
    steps = checkpoints.steps()
    if not steps:
        pending = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.isdigit()]
        hint = f" (only unfinished saves: {sorted(pending)})" if pending else ""
        raise FileNotFoundError(f"{what}: no committed checkpoint in {folder}{hint}")
    if init_step == "latest":
        return steps[-1]
    if init_step == "best":
        progress = checkpoints.restore_progress(steps[-1])
        return progress["best_step"] if progress["best_step"] is not None else steps[-1]
    if not init_step.isdigit():
        raise ValueError(
            f"config.init_step={init_step!r} must be 'best', 'latest' or a step number"
        )
    if int(init_step) not in steps:
        raise FileNotFoundError(f"{what}: no step {init_step} in {folder}; has {steps}")
    return int(init_step)


def merge_pretrained(
    params: Any, loaded: Any, *, reinit: Sequence[str], dont_load: Sequence[str], source: str
) -> Any:
    """``params`` with every leaf taken from ``loaded`` except those matching ``reinit``.

    Loud: a shape mismatch, a model parameter missing from the checkpoint, or a checkpoint
    parameter the model does not use (unless it matches ``dont_load``) is an error.
    """
    fresh = traverse_util.flatten_dict(params, sep="/")
    saved = traverse_util.flatten_dict(loaded, sep="/")
    require_matches(list(fresh), reinit, "config.finetune.reinit")
    require_matches(list(saved), dont_load, f"config.finetune.dont_load (paths of {source})")
    matches = lambda patterns, path: any(re.fullmatch(p, path) for p in patterns)
    unused = [
        p for p in saved if p not in fresh and not matches(dont_load, p) and not matches(reinit, p)
    ]
    if unused:
        raise ValueError(
            f"checkpoint {source} has parameters the model does not use: {unused}; "
            f"list them in config.finetune.dont_load to skip them"
        )
    merged, mismatched = {}, []
    for path, value in fresh.items():
        if matches(reinit, path):
            merged[path] = value
            continue
        if path not in saved:
            raise ValueError(
                f"parameter {path!r} (shape {tuple(value.shape)}) is not in checkpoint {source}; "
                f"add it to config.finetune.reinit to initialise it fresh"
            )
        if tuple(saved[path].shape) != tuple(value.shape):
            mismatched.append(
                f"{path!r}: checkpoint {tuple(saved[path].shape)}, model {tuple(value.shape)}"
            )
        merged[path] = jax.numpy.asarray(saved[path], value.dtype)
    if mismatched:
        raise ValueError(
            f"checkpoint {source} does not fit the model; shapes differ for:\n  "
            + "\n  ".join(mismatched)
        )
    return traverse_util.unflatten_dict(merged, sep="/")


def initial_params(config: ml_collections.ConfigDict, tree: Any) -> tuple[Any, int | None]:
    """The training tree to start from, config.init_from merged in (or ``tree`` unchanged),
    and the step it loaded (config.init_step "best" or "latest" resolved; None: none)."""
    if not config.init_from:
        return tree, None
    loaded, step, folder = pretrained_params(config.init_from, config.init_step)
    base = tree["base"] if lora.is_lora_tree(tree) else tree
    merged = merge_pretrained(
        base,
        loaded,
        reinit=config.finetune.reinit,
        dont_load=config.finetune.dont_load,
        source=f"{folder} step {step}",
    )
    return ({**tree, "base": merged} if lora.is_lora_tree(tree) else merged), step
