"""What a cell says about itself, so no other module branches on cell names.

Each cell module exports ``SPEC``; ``fnn_jax.cells.REGISTRY`` maps names to them. The layers
read the spec for the input weight (to check input sizes), the carry and output sizes,
whether an associative-scan form exists (``resolve_scan_impl``) and the options the cell
declares (``Option``: what each is, its default, and which of the cell's functions take it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

SCAN_IMPLS = ("sequential", "associative", "auto")
FUNCTIONS = ("init_params", "step", "prepare", "summarize")  # what an Option can go to


@dataclasses.dataclass(frozen=True)
class Option:
    """A setting a cell declares: the layers pass it, by keyword, only to the functions in
    ``to`` (``step`` covers ``step_projected``), and the config holds it as
    ``config.model.<cell>.<name>``.

    default: its value when nobody sets it; its type is the type a value must have
        (an int is accepted for a float).
    choices: the valid values, or None. minimum: the least valid value, or None.
    from_section: how the config section gives the value, where it is built from several
        keys (equilibrium's ``solver``, a ``fixed_point.Solver``); None: the section's key
        ``name``.
    """

    name: str
    default: Any
    doc: str
    to: tuple[str, ...] = ("step",)
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    from_section: Callable[[Any], Any] | None = None

    def check(self, value: Any, where: str) -> None:
        """Raises ValueError naming ``where`` when ``value`` is not valid for this option."""
        kind = type(self.default)
        fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not fits or isinstance(value, bool) != isinstance(self.default, bool):
            raise ValueError(f"{where} must be a {kind.__name__}; got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where}={value!r} is not valid; valid choices: {list(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{where} must be >= {self.minimum}; got {value!r}")


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
    options: the settings the cell declares (``Option``); the layers pass nothing else.
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
    options: tuple[Option, ...] = ()

    def option_values(self, given: Any = None, where: str = "options") -> dict[str, Any]:
        """Every declared option's value: ``given`` (a mapping, or None) over the defaults.
        A name the cell does not declare, or a bad value, is a ValueError naming it."""
        given = dict(given or {})
        declared = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise ValueError(
                f"{where}: cell {self.name!r} has no option(s) {unknown}; it declares "
                f"{sorted(declared) or 'none'}"
            )
        for name, value in given.items():
            declared[name].check(value, f"{where}.{name}")
        return {name: given.get(name, o.default) for name, o in declared.items()}

    def keywords(self, values: dict[str, Any], function: str) -> dict[str, Any]:
        """The options in ``values`` that ``function`` (one of FUNCTIONS) takes."""
        return {o.name: values[o.name] for o in self.options if function in o.to}

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
