"""Recurrent dropout and zoneout, as wrappers of any cell's ``step`` (usable in ``lax.scan``).

Recurrent (variational) dropout, Gal & Ghahramani (2016): one mask per sequence, the same
at every time step, on the inputs (``xs * mask[:, None, :]``, which the layers apply before
the time loop) and on the fed-back state (the carry's first field: h, or jordan's y) before
each step. Masks are scaled by 1 / (1 - rate), so evaluation runs the plain cell.

Zoneout, Krueger et al. (2017): at every step each unit of every carry leaf keeps its
previous value with probability ``rate`` (a fresh mask per step) instead of taking the new
one; evaluation takes the expectation ``rate * old + (1 - rate) * new``. Per-step masks ride
along with the inputs: ``pack_zoneout_masks`` appends them to xs and ``with_zoneout`` splits
them off again, so ``fnn_jax.scan`` (or your own ``lax.scan``) needs nothing new.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Step = Callable[[Any, Any, Array], tuple[Any, Array]]


def dropout_mask(key: Array, shape: tuple[int, ...], rate: float, dtype: Any) -> Array:
    """Bernoulli(1 - rate) / (1 - rate): multiply by it to drop units, keeping the mean."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def _scale_state(carry: Any, mask: Array) -> Any:
    """The carry with its first field (the fed-back state) times ``mask`` [*batch, size]."""
    return carry._replace(**{carry._fields[0]: carry[0] * mask.astype(carry[0].dtype)})


def with_state_dropout(step: Step, mask: Array) -> Step:
    """``step`` whose fed-back state is multiplied by ``mask`` (one per sequence) first."""

    def dropped(params: Any, carry: Any, x_t: Array) -> tuple[Any, Array]:
        return step(params, _scale_state(carry, mask), x_t)

    return dropped


def pack_zoneout_masks(key: Array, xs: Array, size: int, rate: float) -> Array:
    """xs [batch, time, features] with per-step keep-old masks [batch, time, size] appended
    (1.0 where a unit keeps its previous value, with probability ``rate``)."""
    masks = jax.random.bernoulli(key, rate, (*xs.shape[:2], size)).astype(xs.dtype)
    return jnp.concatenate([xs, masks], axis=-1)


def with_zoneout(step: Step, rate: float, input_size: int | None = None) -> Step:
    """``step`` with zoneout on every carry leaf (each [*batch, size], the first one also
    the output, as in lstm and gru: the output is the zoned state). With ``input_size``, x_t
    carries the step's keep-old mask after its first ``input_size`` features
    (``pack_zoneout_masks``: training); without, each unit takes the expectation."""

    def zoned(params: Any, carry: Any, x_t: Array) -> tuple[Any, Array]:
        if input_size is None:
            new_carry, _ = step(params, carry, x_t)
            blend = lambda old, new: (rate * old + (1 - rate) * new).astype(new.dtype)
            zoned = jax.tree.map(blend, carry, new_carry)
        else:
            x_t, keep_old = x_t[..., :input_size], x_t[..., input_size:]
            new_carry, _ = step(params, carry, x_t)
            pick = lambda old, new: jnp.where(keep_old.astype(bool), old, new)
            zoned = jax.tree.map(pick, carry, new_carry)
        return zoned, zoned[0]

    return zoned
