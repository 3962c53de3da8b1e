"""Small pytree utilities shared by the optimizer, checkpoints, fine-tuning and training."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn_jax.config import ConfigError


def path_str(path) -> str:
    """'/'-joined names of a pytree path, e.g. 'encoder/layer_0/w_ih'."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def first_match(tree: Any, patterns: Sequence[tuple[str, Any]], default: Any) -> Any:
    """A tree with, per leaf, the value of the first pattern that fully matches its path."""
    compiled = [(re.compile(p), v) for p, v in patterns]

    def pick(path, _):
        name = path_str(path)
        return next((v for p, v in compiled if p.fullmatch(name)), default)

    return jax.tree_util.tree_map_with_path(pick, tree)


def paths(tree: Any) -> list[str]:
    """Every leaf's '/'-joined path."""
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def require_matches(names: Sequence[str], patterns: Sequence[str], where: str) -> None:
    """ConfigError naming ``where``, the pattern and the nearest names when a pattern fully
    matches none of ``names``: a typo in a freezing rule must not freeze (or train, or skip)
    the wrong parameters silently. Every pattern in the project is a full match."""
    for pattern in patterns:
        compiled = re.compile(pattern)
        if not any(compiled.fullmatch(name) for name in names):
            near = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
            hint = f"; nearest: {near}" if near else f"; the paths: {sorted(names)[:8]}"
            raise ConfigError(f"{where}: {pattern!r} matches no parameter path{hint}")


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """A bool scalar: every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def count_params(tree: Any) -> int:
    """Number of values in all leaves."""
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
