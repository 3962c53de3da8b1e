"""What a model reports about its own computation (Flax collection ``diagnostics``), added
up between log lines and evaluated over splits beside the task's sums.

A layer sows a dict of scalars per call (the equilibrium cell: solver statistics, see
fnn_jax.cells.equilibrium.summarize); keys starting with ``max_`` combine by maximum, the
others add. A model that sows nothing has no ``diagnostics`` entry in its sums at all.

Train sums also add up, under NORMS, each step's global norms of the gradients (before
clipping), the parameters (after the update) and the updates, logged as their means over
the steps since the last log line.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn_jax import tasks

COLLECTION = "diagnostics"
NORMS = "norms"
NORM_NAMES = ("grad_norm", "param_norm", "update_norm")
Sums = dict[str, Any]


def step_norms(grads: Any, params: Any, updates: Any) -> dict[str, jax.Array]:
    """One train step's entry under NORMS (global L2 norms, float32; ``steps``: 1)."""
    norm = lambda tree: optax.tree.norm(tree).astype(jnp.float32)
    values = (norm(grads), norm(params), norm(updates))
    return {"steps": jnp.float32(1), **dict(zip(NORM_NAMES, values, strict=True))}


def zero_norms() -> dict[str, jax.Array]:
    return {name: jnp.float32(0) for name in ("steps", *NORM_NAMES)}


def _combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: jnp.maximum(a[k], b[k]) if k.startswith("max_") else a[k] + b[k] for k in a}


def collect(variables: dict[str, Any]) -> dict[str, Any] | None:
    """One forward pass's sown dicts (``apply(..., mutable=[COLLECTION])``), combined over
    layers and calls; None when the model sowed nothing."""
    sown = variables.get(COLLECTION)
    if not sown:
        return None
    records = jax.tree.leaves(sown, is_leaf=lambda x: isinstance(x, dict) and "solves" in x)
    total = records[0]
    for record in records[1:]:
        total = _combine(total, record)
    return total


def with_diagnostics(task_sums: Sums, diagnostics: dict[str, Any] | None) -> Sums:
    """The task's sums, plus the diagnostics under COLLECTION when there are any."""
    return task_sums if diagnostics is None else {**task_sums, COLLECTION: diagnostics}


def add(old: Sums, new: Sums) -> Sums:
    """``old`` + ``new``; diagnostics combine by key (a step that sows nothing, such as a
    head-only stage on cached features, leaves the running diagnostics as they are)."""
    task = {k: v for k, v in new.items() if k != COLLECTION}
    total = jax.tree.map(jnp.add, {k: old[k] for k in task}, task)
    if COLLECTION in old:
        if COLLECTION in new:
            total[COLLECTION] = _combine(old[COLLECTION], new[COLLECTION])
        else:
            total[COLLECTION] = old[COLLECTION]
    return total


def metrics(task, sums: Sums) -> dict[str, float]:
    """The task's metrics of ``sums``, and the solver's when the model reported any:
    mean and max iterations per solve, the largest residual, the fraction converged."""
    values = task.metrics({k: v for k, v in sums.items() if k not in (COLLECTION, NORMS)})
    tasks.check_declared(task, values)
    norms = sums.get(NORMS)
    if norms is not None and float(norms["steps"]) > 0:
        values |= {name: float(norms[name]) / float(norms["steps"]) for name in NORM_NAMES}
    d = sums.get(COLLECTION)
    if d is not None and float(d["solves"]) > 0:  # (a head-only stage on cached features
        # solves nothing: no solver metrics rather than zeros)
        d = {k: np.asarray(v, np.float64) for k, v in d.items()}
        solves = float(d["solves"])
        values |= {
            "solver_iterations_mean": float(d["iterations"]) / solves,
            "solver_iterations_max": float(d["max_iterations"]),
            "solver_residual_max": float(d["max_residual"]),
            "solver_converged_fraction": 1.0 - float(d["unconverged"]) / solves,
        }
    return values
