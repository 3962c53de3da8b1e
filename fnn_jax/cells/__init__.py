"""Feedback cells: pure step functions over a parameter pytree.

Every cell module has ``init_params(key, input_size, hidden_size, ...)``,
``init_carry(batch_shape, hidden_size)`` and ``step(params, carry, x_t) -> (carry, y_t)``,
plus the split ``project_inputs(params, x)`` / ``step_projected(params, carry, xp_t)`` that
``fnn_jax.scan`` uses to hoist the input matmul out of the time loop. ``lru`` and ``mingru``
also have ``parallel(params, carry, xs)`` (associative scan over time). Each module's
``SPEC`` (a ``CellSpec``) says what the layers need to know; ``REGISTRY`` holds them by name.
``fixed_point`` holds the equilibrium cell's solvers (``Solver``, ``solve``).
"""

from fnn_jax.cells import (
    elman,
    equilibrium,
    fixed_point,
    gru,
    jordan,
    linear_recurrence,
    lru,
    lstm,
    mingru,
)
from fnn_jax.cells.spec import SCAN_IMPLS, CellSpec, resolve_scan_impl

REGISTRY: dict[str, CellSpec] = {
    module.SPEC.name: module.SPEC for module in (elman, jordan, lstm, gru, lru, mingru, equilibrium)
}


def get(name: str) -> CellSpec:
    """The spec of the cell called ``name``; an unknown name lists the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; valid choices: {sorted(REGISTRY)}") from None


__all__ = [
    "REGISTRY",
    "SCAN_IMPLS",
    "CellSpec",
    "elman",
    "equilibrium",
    "fixed_point",
    "get",
    "gru",
    "jordan",
    "linear_recurrence",
    "lru",
    "lstm",
    "mingru",
    "resolve_scan_impl",
]
