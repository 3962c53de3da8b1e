"""Run a cell's step over time: one function, ``scan``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Step = Callable[[Any, Any, Any], tuple[Any, Array]]


def check_carry(carry: Any, batch: int, name: str = "carry0") -> None:
    """Every carry leaf must be [batch, ...] for xs [batch, time, features]: a time-major
    input, or a carry made for another batch, is named here rather than deep inside XLA."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(carry):
        shape = tuple(np.shape(leaf))
        if not shape or shape[0] != batch:
            where = f"{name}{jax.tree_util.keystr(path)}"
            raise ValueError(
                f"{where} has shape {shape}; expected [batch = {batch}, ...] (xs is "
                "[batch, time, features], batch first: a time-major xs has to be swapped)"
            )


def check_sequence(xs: Array, lengths: Array | None, name: str = "xs") -> None:
    """Validates a batch-major sequence and its lengths at trace time.

    Raises ValueError naming the argument, the shape or dtype it got and what was expected.
    Concrete (non-traced) lengths are also range-checked against the time axis.
    """
    if xs.ndim != 3:
        raise ValueError(
            f"{name} must be [batch, time, features]; got shape {tuple(xs.shape)} "
            f"(rank {xs.ndim}, expected rank 3)"
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype; got {xs.dtype}")
    if lengths is None:
        return
    batch, time = xs.shape[:2]
    if lengths.shape != (batch,):
        raise ValueError(
            f"lengths must have shape [batch] = ({batch},); got {tuple(lengths.shape)}"
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be an integer array; got {lengths.dtype}")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > time):
            raise ValueError(
                f"lengths must lie in [0, {time}] (the time axis of {name}); "
                f"got min {values.min()}, max {values.max()}"
            )


def cell_unroll(step: Step) -> int:
    """The unroll a registered cell declares for ``step`` (its ``step`` or
    ``step_projected``, options bound with functools.partial or not); 1 for any other
    function."""
    from fnn_jax import cells  # late: the cells use this module's helpers

    while isinstance(step, functools.partial):  # a step with options bound
        step = step.func
    for spec in cells.REGISTRY.values():
        if step is spec.step or step is spec.step_projected:
            return spec.unroll
    return 1


def _time_major(tree: Any) -> Any:
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), tree)


def scan(  # noqa: PLR0913 (the options are keyword-only)
    step: Step,
    params: Any,
    carry0: Any,
    xs: Array,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    unroll: int | bool | None = None,
    remat: bool = False,
    project: Callable[[Any, Array], Any] | None = None,
    resets: Array | None = None,
    reset_carry: Any = None,
) -> tuple[Any, Array]:
    """Runs ``step(params, carry, x_t) -> (carry, y_t)`` over the time axis.

    Args:
      step: a cell's step function (or any function of that form).
      params: the step's parameter pytree.
      carry0: initial carry, leaves [batch, ...].
      xs: inputs [batch, time, features].
      lengths: optional [batch] integer lengths. Outputs past a sequence's length are zero and
        the final carry is the one at its last valid step (its first, if reverse).
      reverse: run from the last time step to the first; outputs stay in input order.
      unroll: forwarded to ``jax.lax.scan``; None: the unroll the step's cell declares
        (``CellSpec.unroll``: elman's step runs 4 steps per loop iteration, as in the
        layers), 1 for a step of your own.
      remat: recompute each step in the backward pass instead of storing its activations.
      project: optional ``project(params, xs) -> xps``. When given, it is applied once to the
        whole sequence (one large matmul) and ``step`` receives the projected inputs; this is
        how the cells hoist ``x_t W_ih`` out of the loop.
      resets: optional [batch, time] bool: where True, the carry is replaced by
        ``reset_carry`` (leaves [batch, ...]; default zeros) before step t reads x_t, so a
        row can hold several documents. Not with ``reverse``.

    Returns:
      (final carry, ys [batch, time, output]).
    """
    check_sequence(xs, lengths)
    check_carry(carry0, xs.shape[0])
    unroll = cell_unroll(step) if unroll is None else unroll
    inputs = _time_major(xs)
    if project is not None:
        # Time-major first: the transpose then moves the (narrower) raw inputs. Whether
        # hoisting pays at all depends on the platform (see layers.hoists_inputs).
        inputs = project(params, inputs)
    body = jax.checkpoint(step) if remat else step
    if resets is not None:
        if reverse:
            raise ValueError(
                "resets mark where a sequence starts reading forward: not with reverse"
            )
        if tuple(jnp.shape(resets)) != tuple(xs.shape[:2]) or resets.dtype != jnp.bool_:
            raise ValueError(
                f"resets must be bool [batch, time] = {list(xs.shape[:2])}; got "
                f"{resets.dtype} {list(jnp.shape(resets))}"
            )
        if reset_carry is None:
            reset_carry = jax.tree.map(jnp.zeros_like, carry0)
        check_carry(reset_carry, xs.shape[0], "reset_carry")
        body = _with_resets(body, reset_carry)
        inputs = (inputs, jnp.swapaxes(resets, 0, 1))

    if lengths is None:

        def loop(carry, x_t):
            return body(params, carry, x_t)

        carry, ys = jax.lax.scan(loop, carry0, inputs, reverse=reverse, unroll=unroll)
        return carry, jnp.swapaxes(ys, 0, 1)

    time = xs.shape[1]
    valid = jnp.arange(time)[:, None] < lengths[None, :]  # [time, batch]

    def masked_loop(carry, inputs_t):
        x_t, valid_t = inputs_t
        new_carry, y_t = body(params, carry, x_t)

        def keep(new, old):
            mask = valid_t.reshape(valid_t.shape + (1,) * (new.ndim - 1))
            return jnp.where(mask, new, old)

        carry = jax.tree.map(keep, new_carry, carry)
        y_t = keep(y_t, jnp.zeros_like(y_t))
        return carry, y_t

    carry, ys = jax.lax.scan(masked_loop, carry0, (inputs, valid), reverse=reverse, unroll=unroll)
    return carry, jnp.swapaxes(ys, 0, 1)


def _where_rows(flag: Array, new: Any, old: Any) -> Any:
    """Per row: ``new`` where ``flag`` [batch] is True, else ``old`` (leaves [batch, ...])."""

    def pick(a, b):
        return jnp.where(flag.reshape(flag.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def _with_resets(body: Step, reset_carry: Any) -> Step:
    """``body`` reading (x_t, reset_t [batch]): rows flagged start from ``reset_carry``."""

    def with_resets(params, carry, inputs_t):
        x_t, reset_t = inputs_t
        return body(params, _where_rows(reset_t, reset_carry, carry), x_t)

    return with_resets
