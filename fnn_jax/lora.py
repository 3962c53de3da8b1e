"""Low-rank adapters (LoRA) as a parameter transformation, not a model change.

A targeted kernel W [in, out] becomes W + (alpha / rank) * A @ B with A [in, rank] and
B [rank, out]. The training tree is ``{"base": params, "lora": adapters}``; freezing rules
freeze the base and train the adapters. The model is applied to ``merge(tree)``: for the
recurrent kernels this costs one small matmul per training step, outside the time loop,
instead of a low-rank product at every time step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

DEFAULT_TARGETS = r"(.*/)?(w_ih|w_hh|w_zz|kernel)"


def targeted_paths(params: Any, targets: str, exclude: Sequence[str] = ()) -> list[str]:
    """'/'-joined paths of the 2-D leaves whose path fully matches ``targets`` and none of
    ``exclude`` (e.g. a freshly initialised head, which trains in full)."""
    pattern = re.compile(targets)
    flat = traverse_util.flatten_dict(params, sep="/")
    return sorted(
        p
        for p, leaf in flat.items()
        if leaf.ndim == 2 and pattern.fullmatch(p) and not any(re.fullmatch(e, p) for e in exclude)
    )


def init_adapters(
    key: jax.Array,
    params: Any,
    rank: int,
    targets: str = DEFAULT_TARGETS,
    exclude: Sequence[str] = (),
) -> dict:
    """Adapters {path...: {"a": [in, rank], "b": [rank, out]}} mirroring the params' nesting.

    A is Gaussian (std 1/sqrt(in)) and B is zero, so the adapted model starts equal to the
    base model.
    """
    flat = traverse_util.flatten_dict(params, sep="/")
    paths = targeted_paths(params, targets, exclude)
    if not paths:
        raise ValueError(f"LoRA targets {targets!r} match no 2-D parameter")
    adapters = {}
    for i, path in enumerate(paths):
        fan_in, fan_out = flat[path].shape
        a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, rank), flat[path].dtype)
        adapters[path] = {
            "a": a * fan_in**-0.5,
            "b": jnp.zeros((rank, fan_out), flat[path].dtype),
        }
    return traverse_util.unflatten_dict(adapters, sep="/")


def is_lora_tree(tree: Any) -> bool:
    return isinstance(tree, dict) and set(tree) == {"base", "lora"}


def merge(tree: Any, alpha: float, rank: int) -> Any:
    """Plain model parameters: each adapted kernel W + (alpha / rank) * A @ B."""
    if not is_lora_tree(tree):
        return tree
    scale = alpha / rank
    flat = traverse_util.flatten_dict(tree["base"], sep="/")
    adapters = traverse_util.flatten_dict(tree["lora"], sep="/")
    for key, a in adapters.items():
        if key.endswith("/a"):
            path = key[: -len("/a")]
            flat[path] = flat[path] + scale * (a @ adapters[path + "/b"])
    return traverse_util.unflatten_dict(flat, sep="/")


def rules(stage_rules, adapted_paths: list[str]):
    """Stage rules for the LoRA tree: adapters train, adapted base kernels stay frozen,
    every other base parameter follows the stage's own rules."""
    out = [("lora/.*", "train")]
    out += [(f"base/{re.escape(p)}", "frozen") for p in adapted_paths]
    out += [(f"base/{pattern}", label) for pattern, label in stage_rules]
    return tuple(out)
