"""Elman network: hidden-state feedback.

    h_t = f(x_t W_ih + b_ih + h_{t-1} W_hh + b_hh),    y_t = h_t

Matches PyTorch's ``nn.RNN`` (two biases) so weights convert exactly.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn_jax.cells._common import (
    Array,
    Params,
    activation_fn,
    along_last,
    check_input,
    orthogonal,
    uniform,
)
from fnn_jax.cells.spec import CellSpec


class ElmanCarry(NamedTuple):
    h: Array  # [*batch, hidden]


def init_params(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> Params:
    """w_ih [input, hidden], w_hh [hidden, hidden], b_ih/b_hh [hidden]."""
    k_ih, k_hh = jax.random.split(key)
    bound = hidden_size**-0.5
    return {
        "w_ih": uniform(k_ih, (input_size, hidden_size), bound, dtype),
        "w_hh": orthogonal(k_hh, (hidden_size, hidden_size), dtype=dtype),
        "b_ih": jnp.zeros((hidden_size,), dtype),
        "b_hh": jnp.zeros((hidden_size,), dtype),
    }


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32) -> ElmanCarry:
    return ElmanCarry(jnp.zeros((*batch_shape, hidden_size), dtype))


def project_inputs(params: Params, x: Array) -> Array:
    """[..., input] -> [..., hidden]: the part of the pre-activation that needs no feedback."""
    check_input(x, params["w_ih"])
    xw = x @ params["w_ih"]
    return xw + along_last(params["b_ih"] + params["b_hh"], xw)


def step_projected(
    params: Params, carry: ElmanCarry, xp_t: Array, *, activation: str = "tanh"
) -> tuple[ElmanCarry, Array]:
    h = activation_fn(activation)(xp_t + carry.h @ params["w_hh"])
    return ElmanCarry(h), h


def step(
    params: Params, carry: ElmanCarry, x_t: Array, *, activation: str = "tanh"
) -> tuple[ElmanCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t [*batch, hidden])."""
    return step_projected(params, carry, project_inputs(params, x_t), activation=activation)


def _scan_carries(how, w_hh, h0, xp, valid):
    """carries [time, batch, hidden], the carry after each step (kept where not valid),
    and the pre-activations; ``how`` is (activation, unroll)."""
    activation, unroll = how
    act = activation_fn(activation)

    def one(h, inputs):
        xp_t, valid_t = inputs
        pre = xp_t + h @ w_hh
        h = jnp.where(valid_t[:, None], act(pre), h)
        return h, (h, pre)

    return jax.lax.scan(one, h0, (xp, valid), unroll=unroll)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _carries(how, w_hh, h0, xp, valid):
    return _scan_carries(how, w_hh, h0, xp, valid)[0]


def _carries_fwd(how, w_hh, h0, xp, valid):
    carries, pres = _scan_carries(how, w_hh, h0, xp, valid)
    return carries, (w_hh, h0, carries, pres, valid)


def _carries_bwd(how, residuals, d_carries):
    """Back through time for the carry only; the weight gradient is one matmul after it."""
    activation, unroll = how
    w_hh, h0, carries, pres, valid = residuals
    act = activation_fn(activation)

    def one(d_h, inputs):
        d_carry_t, pre_t, valid_t = inputs
        keep = valid_t[:, None]
        d_total = d_h + d_carry_t
        d_pre = jax.vjp(act, pre_t)[1](jnp.where(keep, d_total, 0))[0]
        return jnp.where(keep, 0, d_total) + d_pre @ w_hh.T, d_pre

    inputs = (d_carries, pres, valid)
    d_h0, d_pres = jax.lax.scan(one, jnp.zeros_like(h0), inputs, reverse=True, unroll=unroll)
    previous = jnp.concatenate([h0[None], carries[:-1]])  # the carry each step started from
    d_w_hh = jnp.einsum("tbi,tbj->ij", previous, d_pres)
    return d_w_hh, d_h0, d_pres, None


_carries.defvjp(_carries_fwd, _carries_bwd)


def sequence(  # noqa: PLR0913 (the four options are keyword-only)
    params: Params,
    carry: ElmanCarry,
    xs: Array,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    unroll: int = 1,
    activation: str = "tanh",
) -> tuple[ElmanCarry, Array]:
    """The whole sequence, as ``scan(step, params, carry, xs, ...)`` computes it, with a
    backward pass written for the recurrence: the carry's gradient runs back through time
    alone and dW_hh is one [hidden, time*batch] @ [time*batch, hidden] matmul after the
    loop (autodiff of the scan adds a rank-batch update into dW_hh at every step). x W_ih
    is one matmul for all steps too.

    xs [batch, time, input], lengths [batch] -> (final carry, ys [batch, time, hidden]);
    outputs past a sequence's length are zero, its carry the one at its last valid step.
    """
    time = xs.shape[1]
    xp = project_inputs(params, jnp.swapaxes(xs, 0, 1))  # [time, batch, hidden]
    if lengths is None:
        valid = jnp.ones(xp.shape[:2], bool)
    else:
        valid = jnp.arange(time)[:, None] < lengths[None, :]
    if reverse:
        xp, valid = xp[::-1], valid[::-1]
    carries = _carries((activation, unroll), params["w_hh"], carry.h, xp, valid)
    ys = jnp.where(valid[..., None], carries, 0)
    if reverse:
        ys = ys[::-1]
    return ElmanCarry(carries[-1]), jnp.swapaxes(ys, 0, 1)


SPEC = CellSpec(
    "elman", init_params, init_carry, step, project_inputs, step_projected, sequence=sequence
)
