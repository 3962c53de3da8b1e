"""Gated recurrent unit, with PyTorch's ``nn.GRU`` formulas and gate order (r, z, n).

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

b_hn sits inside the reset product, so it is not folded into the input projection.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn_jax.cells._common import Array, Params, along_last, check_input, orthogonal_blocks, uniform
from fnn_jax.cells.spec import CellSpec


class GRUCarry(NamedTuple):
    h: Array  # [*batch, hidden]


def init_params(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> Params:
    """w_ih [input, 3*hidden], w_hh [hidden, 3*hidden], b_ih/b_hh [3*hidden]."""
    k_ih, k_hh = jax.random.split(key)
    return {
        "w_ih": uniform(k_ih, (input_size, 3 * hidden_size), hidden_size**-0.5, dtype),
        "w_hh": orthogonal_blocks(k_hh, hidden_size, 3, dtype=dtype),
        "b_ih": jnp.zeros((3 * hidden_size,), dtype),
        "b_hh": jnp.zeros((3 * hidden_size,), dtype),
    }


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32) -> GRUCarry:
    return GRUCarry(jnp.zeros((*batch_shape, hidden_size), dtype))


def project_inputs(params: Params, x: Array) -> Array:
    """[..., input] -> [..., 3*hidden]; r and z also take b_hh here, n does not."""
    check_input(x, params["w_ih"])
    hidden = params["w_hh"].shape[0]
    b_hh_rz = jnp.asarray(params["b_hh"]).at[2 * hidden :].set(0)
    xw = x @ params["w_ih"]
    return xw + along_last(params["b_ih"] + b_hh_rz, xw)


def step_projected(params: Params, carry: GRUCarry, xp_t: Array) -> tuple[GRUCarry, Array]:
    hidden = params["w_hh"].shape[0]
    hp = carry.h @ params["w_hh"]
    x_r, x_z, x_n = jnp.split(xp_t, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + along_last(params["b_hh"][2 * hidden :], h_n)))
    h = (1.0 - z) * n + z * carry.h
    return GRUCarry(h), h


def step(params: Params, carry: GRUCarry, x_t: Array) -> tuple[GRUCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t = h_t [*batch, hidden])."""
    return step_projected(params, carry, project_inputs(params, x_t))


SPEC = CellSpec("gru", init_params, init_carry, step, project_inputs, step_projected, zoneout=True)
