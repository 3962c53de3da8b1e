"""Recurrent dropout and zoneout, as wrappers of any cell's ``step`` (usable in ``lax.scan``).

Recurrent (variational) dropout, Gal & Ghahramani (2016): one mask per sequence, the same
at every time step, on the inputs (``xs * mask[:, None, :]``, which the layers apply before
the time loop) and on the fed-back state (the carry's first field: h, or jordan's y) before
each step. Masks are scaled by 1 / (1 - rate), so evaluation runs the plain cell.

Zoneout, Krueger et al. (2017): at every step each unit of every carry leaf keeps its
previous value with probability ``rate`` (a fresh mask per step) instead of taking the new
one; evaluation takes the expectation ``rate * old + (1 - rate) * new``. As in the paper,
each leaf draws its own mask (the LSTM's h and c zone out independently) and may have its
own rate (``rate=(rate_h, rate_c)``; the layers use one rate for both). Per-step masks ride
along with the inputs: ``pack_zoneout_masks`` appends them to xs and ``with_zoneout`` splits
them off again, so ``fnn_jax.scan`` (or your own ``lax.scan``) needs nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Step = Callable[[Any, Any, Array], tuple[Any, Array]]
Rate = float | Sequence[float]  # one rate, or one per carry leaf (zoneout)


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


def _per_leaf(rate: Rate, count: int) -> tuple[float, ...]:
    """``rate`` as one rate per carry leaf (a single float applies to every leaf)."""
    rates = tuple(rate) if isinstance(rate, Sequence) else (rate,) * count
    if len(rates) != count:
        raise ValueError(f"zoneout rate {rate!r}: expected one rate or {count} (one per leaf)")
    return rates


def pack_zoneout_masks(key: Array, xs: Array, sizes: int | Sequence[int], rate: Rate) -> Array:
    """xs [batch, time, features] with per-step keep-old masks appended: one independent
    mask [batch, time, size] per carry leaf, in the carry's order (``sizes``: the leaves'
    sizes, e.g. ``(hidden, hidden)`` for lstm's h and c, ``hidden`` for gru's h); 1.0 where
    a unit keeps its previous value, with probability ``rate`` (or that leaf's rate)."""
    sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    rates = _per_leaf(rate, len(sizes))
    keys = [key] if len(sizes) == 1 else jax.random.split(key, len(sizes))  # gru: as before
    masks = [
        jax.random.bernoulli(k, r, (*xs.shape[:2], n)).astype(xs.dtype)
        for k, r, n in zip(keys, rates, sizes, strict=True)
    ]
    return jnp.concatenate([xs, *masks], axis=-1)


def _split_masks(keep_old: Array, leaves: list[Array]) -> list[Array]:
    """The packed keep-old features split into one mask per carry leaf."""
    sizes = [leaf.shape[-1] for leaf in leaves]
    if keep_old.shape[-1] != sum(sizes):
        raise ValueError(
            f"x_t holds {keep_old.shape[-1]} zoneout mask features after input_size; the "
            f"carry's leaves need {sum(sizes)}, one independent mask per leaf: "
            f"pack_zoneout_masks(key, xs, {tuple(sizes)}, rate)"
        )
    offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
    return jnp.split(keep_old, offsets, axis=-1)


def with_zoneout(step: Step, rate: Rate, input_size: int | None = None) -> Step:
    """``step`` with zoneout on every carry leaf (each [*batch, size], the first one also
    the output, as in lstm and gru: the output is the zoned state), each leaf with its own
    mask and ``rate`` (one float, or one per leaf). With ``input_size``, x_t carries the
    step's keep-old masks after its first ``input_size`` features (``pack_zoneout_masks``:
    training); without, each unit takes the expectation."""

    def zoned(params: Any, carry: Any, x_t: Array) -> tuple[Any, Array]:
        old, tree = jax.tree.flatten(carry)
        rates = _per_leaf(rate, len(old))
        if input_size is None:
            new_carry, _ = step(params, carry, x_t)
            new = jax.tree.leaves(new_carry)
            blend = lambda r, o, n: (r * o + (1 - r) * n).astype(n.dtype)
            leaves = [blend(*leaf) for leaf in zip(rates, old, new, strict=True)]
        else:
            x_t, keep_old = x_t[..., :input_size], x_t[..., input_size:]
            masks = _split_masks(keep_old, old)
            new_carry, _ = step(params, carry, x_t)
            new = jax.tree.leaves(new_carry)
            pick = lambda m, o, n: jnp.where(m.astype(bool), o, n)
            leaves = [pick(*leaf) for leaf in zip(masks, old, new, strict=True)]
        zoned = jax.tree.unflatten(tree, leaves)
        return zoned, zoned[0]

    return zoned
