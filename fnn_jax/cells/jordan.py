"""Jordan network: output feedback.

    h_t = f(x_t W_ih + y_{t-1} W_yh + b),    y_t = g(h_t W_hy + b_y)

The carry is the previous output y_{t-1}, not the hidden state: the network only
remembers what it said.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn_jax.cells._common import (
    Array,
    Params,
    activation_fn,
    activation_option,
    along_last,
    check_input,
    uniform,
)
from fnn_jax.cells.spec import CellSpec


class JordanCarry(NamedTuple):
    y: Array  # [*batch, output]


def init_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    output_size: int | None = None,
    dtype=jnp.float32,
) -> Params:
    """w_ih [input, hidden], w_yh [output, hidden], b [hidden], w_hy [hidden, output], b_y [output].

    output_size defaults to hidden_size.
    """
    output_size = hidden_size if output_size is None else output_size
    k_ih, k_yh, k_hy = jax.random.split(key, 3)
    return {
        "w_ih": uniform(k_ih, (input_size, hidden_size), hidden_size**-0.5, dtype),
        "w_yh": uniform(k_yh, (output_size, hidden_size), output_size**-0.5, dtype),
        "b": jnp.zeros((hidden_size,), dtype),
        "w_hy": uniform(k_hy, (hidden_size, output_size), hidden_size**-0.5, dtype),
        "b_y": jnp.zeros((output_size,), dtype),
    }


def init_carry(batch_shape: tuple[int, ...], output_size: int, dtype=jnp.float32) -> JordanCarry:
    """Zeros [*batch, output_size]: a Jordan cell feeds back its previous *output* y(t-1),
    so its carry has the output size where the other cells' has the hidden size (the
    same as hidden_size unless init_params was given another output_size)."""
    return JordanCarry(jnp.zeros((*batch_shape, output_size), dtype))


def project_inputs(params: Params, x: Array) -> Array:
    """[..., input] -> [..., hidden]."""
    check_input(x, params["w_ih"])
    xw = x @ params["w_ih"]
    return xw + along_last(params["b"], xw)


def step_projected(
    params: Params,
    carry: JordanCarry,
    xp_t: Array,
    *,
    activation: str = "tanh",
    output_activation: str = "tanh",
) -> tuple[JordanCarry, Array]:
    h = activation_fn(activation)(xp_t + carry.y @ params["w_yh"])
    y = activation_fn(output_activation)(h @ params["w_hy"] + along_last(params["b_y"], h))
    return JordanCarry(y), y


def step(
    params: Params,
    carry: JordanCarry,
    x_t: Array,
    *,
    activation: str = "tanh",
    output_activation: str = "tanh",
) -> tuple[JordanCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t [*batch, output])."""
    xp_t = project_inputs(params, x_t)
    return step_projected(
        params, carry, xp_t, activation=activation, output_activation=output_activation
    )


SPEC = CellSpec(
    "jordan",
    init_params,
    init_carry,
    step,
    project_inputs,
    step_projected,
    output_size=True,
    carry_is_output=True,
    options=(activation_option(), activation_option("output_activation")),
)
