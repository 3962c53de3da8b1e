"""Long short-term memory, with PyTorch's ``nn.LSTM`` formulas and gate order (i, f, g, o).

[i, f, g, o] = x_t W_ih + b_ih + h_{t-1} W_hh + b_hh
c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
h_t = sigmoid(o) * tanh(c_t)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn_jax.cells._common import Array, Params, along_last, check_input, orthogonal_blocks, uniform
from fnn_jax.cells.spec import CellSpec


class LSTMCarry(NamedTuple):
    h: Array  # [*batch, hidden]
    c: Array  # [*batch, hidden]


def init_params(
    key: Array, input_size: int, hidden_size: int, forget_bias: float = 1.0, dtype=jnp.float32
) -> Params:
    """w_ih [input, 4*hidden], w_hh [hidden, 4*hidden], b_ih/b_hh [4*hidden].

    The forget gate's b_ih starts at forget_bias so early gradients flow through c.
    """
    k_ih, k_hh = jax.random.split(key)
    b_ih = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size : 2 * hidden_size].set(forget_bias)
    return {
        "w_ih": uniform(k_ih, (input_size, 4 * hidden_size), hidden_size**-0.5, dtype),
        "w_hh": orthogonal_blocks(k_hh, hidden_size, 4, dtype=dtype),
        "b_ih": b_ih,
        "b_hh": jnp.zeros((4 * hidden_size,), dtype),
    }


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32) -> LSTMCarry:
    zeros = jnp.zeros((*batch_shape, hidden_size), dtype)
    return LSTMCarry(zeros, zeros)


def project_inputs(params: Params, x: Array) -> Array:
    """[..., input] -> [..., 4*hidden]."""
    check_input(x, params["w_ih"])
    xw = x @ params["w_ih"]
    return xw + along_last(params["b_ih"] + params["b_hh"], xw)


def step_projected(params: Params, carry: LSTMCarry, xp_t: Array) -> tuple[LSTMCarry, Array]:
    gates = xp_t + carry.h @ params["w_hh"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMCarry(h, c), h


def step(params: Params, carry: LSTMCarry, x_t: Array) -> tuple[LSTMCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t = h_t [*batch, hidden])."""
    return step_projected(params, carry, project_inputs(params, x_t))


SPEC = CellSpec("lstm", init_params, init_carry, step, project_inputs, step_projected, zoneout=True)
