"""What a cell says about itself, so no other module branches on cell names.

Each cell module exports ``SPEC``; ``fnn_jax.cells.REGISTRY`` maps names to them. The layers
read the spec for the input weight (to check input sizes), the carry and output sizes, and
whether an associative-scan form exists (``resolve_scan_impl``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

SCAN_IMPLS = ("sequential", "associative", "auto")


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """A cell's functions and the facts the layers need about it.

    input_weight: the parameter whose first axis is the input size ([input, ...]).
    output_size: whether ``init_params`` takes ``output_size`` (the output may differ from
        the hidden size); jordan's carry is its output, so then the carry has that size too.
    parallel: ``parallel(params, carry, xs, *, lengths, reverse, resets)`` by associative
        scan (``resets`` [batch, time] bool restart the state from zeros), or None when
        the recurrence is not linear in its state.
    prepare: ``prepare(params, **options) -> params``, applied once before the time loop
        (equilibrium: bounds the feedback's spectral norm), or None.
    summarize: ``summarize(final_carry, **options) -> {name: scalar}``, what the cell reports
        about a sequence (equilibrium: its solver statistics, after applying the
        non-convergence policy to them); the layers call the step with ``check=False``,
        sow the result into the ``diagnostics`` collection. None: nothing to report.
    zoneout: whether zoneout applies (every carry leaf a [*batch, hidden] state, the first
        one the output: lstm, gru).
    unroll: the ``lax.scan`` unroll the layers use unless told otherwise: time steps per
        loop iteration. A cell whose step is a single small matmul spends much of an
        iteration on the loop itself (experiments/bench.py measures it).
    """

    name: str
    init_params: Callable[..., dict[str, jax.Array]]
    init_carry: Callable[..., Any]
    step: Callable[..., Any]
    project_inputs: Callable[..., Any]
    step_projected: Callable[..., Any]
    input_weight: str = "w_ih"
    output_size: bool = False
    carry_is_output: bool = False
    parallel: Callable[..., Any] | None = None
    prepare: Callable[..., Any] | None = None
    summarize: Callable[..., dict[str, Any]] | None = None
    zoneout: bool = False
    unroll: int = 1
    complex_state: bool = False  # the carry is complex (lru); the cell computes in >= 32 bits
    float32_at_least: bool = False  # equilibrium: a bfloat16 residual stalls near 4e-3

    def compute_dtype(self, dtype: Any) -> Any:
        """The dtype the cell runs in for ``dtype``: a complex-state cell needs at least
        float32 (there are no bfloat16 complex numbers), and so does a fixed-point solve."""
        wide = self.complex_state or self.float32_at_least
        return jnp.promote_types(dtype, jnp.float32) if wide else dtype

    def carry_dtype(self, dtype: Any) -> Any:
        """The carry's dtype when the cell runs in ``dtype``."""
        if self.complex_state:
            return jnp.promote_types(self.compute_dtype(dtype), jnp.complex64)
        return self.compute_dtype(dtype)

    def output_features(self, hidden_size: int, output_size: int | None) -> int:
        """Size of y_t: ``output_size`` where the cell takes one (and it is set)."""
        return output_size if self.output_size and output_size is not None else hidden_size

    def carry_size(self, hidden_size: int, output_size: int | None) -> int:
        """The size ``init_carry`` takes: the output size for output feedback."""
        if self.carry_is_output:
            return self.output_features(hidden_size, output_size)
        return hidden_size


def resolve_scan_impl(spec: CellSpec, scan_impl: str) -> str:
    """ "sequential" or "associative" for ``spec`` under the setting ``scan_impl``.

    "auto" takes the associative scan on accelerators where the cell has one; on XLA:CPU a
    sequential scan does less work. Asking for "associative" from a cell without that form
    is an error, never a silent sequential run.
    """
    if scan_impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl={scan_impl!r} is not valid; valid choices: {SCAN_IMPLS}")
    if scan_impl == "associative" and spec.parallel is None:
        raise ValueError(
            f"cell {spec.name!r} has no associative-scan form (its recurrence is not linear "
            f"in its state); use scan_impl='sequential' or 'auto'"
        )
    if scan_impl == "auto":
        on_accelerator = jax.default_backend() != "cpu"
        return "associative" if spec.parallel is not None and on_accelerator else "sequential"
    return scan_impl
