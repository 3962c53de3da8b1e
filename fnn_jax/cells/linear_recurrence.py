"""The diagonal linear recurrence h_t = a_t * h_{t-1} + b_t, sequential or parallel.

LRU and minGRU reduce to it. Because (a1, b1) then (a2, b2) composes to
(a1 * a2, a2 * b1 + b2), which is associative, the whole sequence can also be solved with
``jax.lax.associative_scan`` in O(log T) depth instead of T sequential steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _compose(left: tuple[Array, Array], right: tuple[Array, Array]) -> tuple[Array, Array]:
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def solve(
    a: Array,
    b: Array,
    h0: Array,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
) -> tuple[Array, Array]:
    """All states of h_t = a_t * h_{t-1} + b_t at once.

    Args:
      a, b: [batch, time, hidden] coefficients (real or complex).
      h0: [batch, hidden] state before the first step (after the last one if reverse).
      lengths: optional [batch] valid lengths; steps past them leave h unchanged.
      reverse: run from the last step to the first.
      resets: optional [batch, time] bool: h restarts from zero before these steps
        (a_t = 0 there, so nothing before them flows on). Not with reverse.

    Returns:
      (h_last [batch, hidden], hs [batch, time, hidden]); hs past a sequence's length are zero.
    """
    b = b.astype(jnp.result_type(a, b, h0))
    mask = None
    if lengths is not None:
        mask = (jnp.arange(a.shape[1])[None, :] < lengths[:, None])[..., None]
        a = jnp.where(mask, a, jnp.ones_like(a))
        b = jnp.where(mask, b, jnp.zeros_like(b))
    if resets is not None:
        if reverse:
            raise ValueError(
                "resets mark where a sequence starts reading forward: not with reverse"
            )
        restart = resets[..., None] if mask is None else resets[..., None] & mask
        a = jnp.where(restart, jnp.zeros_like(a), a)
    first = -1 if reverse else 0
    b = b.at[:, first].add(a[:, first] * h0)
    _, hs = jax.lax.associative_scan(_compose, (a, b), reverse=reverse, axis=1)
    h_last = hs[:, 0] if reverse else hs[:, -1]
    if mask is not None:
        hs = jnp.where(mask, hs, jnp.zeros_like(hs))
    return h_last, hs
