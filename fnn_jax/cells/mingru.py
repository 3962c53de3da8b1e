"""minGRU (Feng et al., 2024, "Were RNNs all we needed?"): a GRU whose gates ignore h.

    z_t = sigmoid(x_t W_z + b_z),   h~_t = x_t W_h + b_h
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

Gates depend only on the input, so the recurrence is linear in h and can run in parallel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn_jax.cells import linear_recurrence
from fnn_jax.cells._common import Array, Params, along_last, check_input, uniform
from fnn_jax.cells.spec import CellSpec


class MinGRUCarry(NamedTuple):
    h: Array  # [*batch, hidden]


def init_params(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> Params:
    """w_ih [input, 2*hidden] (z then h~), b_ih [2*hidden]."""
    bound = input_size**-0.5
    return {
        "w_ih": uniform(key, (input_size, 2 * hidden_size), bound, dtype),
        "b_ih": jnp.zeros((2 * hidden_size,), dtype),
    }


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32) -> MinGRUCarry:
    return MinGRUCarry(jnp.zeros((*batch_shape, hidden_size), dtype))


def project_inputs(params: Params, x: Array) -> Array:
    """[..., input] -> [..., 2*hidden]: gate logits and candidates."""
    check_input(x, params["w_ih"])
    xw = x @ params["w_ih"]
    return xw + along_last(params["b_ih"], xw)


def _coefficients(xp: Array) -> tuple[Array, Array]:
    z_logit, candidate = jnp.split(xp, 2, axis=-1)
    z = jax.nn.sigmoid(z_logit)
    return 1.0 - z, z * candidate


def step_projected(params: Params, carry: MinGRUCarry, xp_t: Array) -> tuple[MinGRUCarry, Array]:
    a, b = _coefficients(xp_t)
    h = a * carry.h + b
    return MinGRUCarry(h), h


def step(params: Params, carry: MinGRUCarry, x_t: Array) -> tuple[MinGRUCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t = h_t [*batch, hidden])."""
    return step_projected(params, carry, project_inputs(params, x_t))


def parallel(
    params: Params,
    carry: MinGRUCarry,
    xs: Array,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
) -> tuple[MinGRUCarry, Array]:
    """All steps by associative scan: xs [batch, time, input] -> ys [batch, time, hidden]."""
    a, b = _coefficients(project_inputs(params, xs))
    h_last, hs = linear_recurrence.solve(
        a, b, carry.h, lengths=lengths, reverse=reverse, resets=resets
    )
    return MinGRUCarry(h_last), hs


SPEC = CellSpec(
    "mingru",
    init_params,
    init_carry,
    step,
    project_inputs,
    step_projected,
    parallel=parallel,
)
