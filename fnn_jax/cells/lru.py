"""Linear recurrent unit (Orvieto et al., 2023): a stable diagonal complex recurrence.

    lambda = exp(-exp(nu_log) + i exp(theta_log))        (|lambda| < 1 by construction)
    h_t = lambda * h_{t-1} + exp(gamma_log) * (x_t B)    (B complex, [input, hidden])
    y_t = Re(h_t C) + x_t D                             (C complex [hidden, output], D real)

The paper's skip ``D * x`` is elementwise; here D is a dense [input, output] matrix so the
output size is free. Runs step by step (``step``) or in parallel (``parallel``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn_jax.cells import linear_recurrence
from fnn_jax.cells._common import Array, Params, along_last, check_input
from fnn_jax.cells.spec import CellSpec


class LRUCarry(NamedTuple):
    h: Array  # [*batch, hidden], complex


def init_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    output_size: int | None = None,
    *,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_phase: float = 2 * math.pi,
    dtype=jnp.float32,
) -> Params:
    """Eigenvalues uniform on the ring r_min <= |lambda| <= r_max, phases in [0, max_phase].

    Drawn in float32 (or ``dtype`` if wider) and cast: the log-parametrisation of the
    eigenvalues needs the precision."""
    output_size = hidden_size if output_size is None else output_size
    out_dtype, dtype = dtype, dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32
    k_u1, k_u2, k_bre, k_bim, k_cre, k_cim, k_d = jax.random.split(key, 7)
    u1 = jax.random.uniform(k_u1, (hidden_size,), dtype)
    u2 = jax.random.uniform(k_u2, (hidden_size,), dtype)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    normal = jax.random.normal
    b_std = (2 * input_size) ** -0.5
    c_std = hidden_size**-0.5
    params = {
        "nu_log": nu_log,
        "theta_log": theta_log,
        "gamma_log": jnp.log(jnp.sqrt(1 - modulus**2)),
        "b_re": normal(k_bre, (input_size, hidden_size), dtype) * b_std,
        "b_im": normal(k_bim, (input_size, hidden_size), dtype) * b_std,
        "c_re": normal(k_cre, (hidden_size, output_size), dtype) * c_std,
        "c_im": normal(k_cim, (hidden_size, output_size), dtype) * c_std,
        "d": normal(k_d, (input_size, output_size), dtype) * input_size**-0.5,
    }
    return {name: value.astype(out_dtype) for name, value in params.items()}


def init_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.complex64) -> LRUCarry:
    return LRUCarry(jnp.zeros((*batch_shape, hidden_size), dtype))


def eigenvalues(params: Params) -> Array:
    """lambda [hidden], complex."""
    return jnp.exp(-jnp.exp(params["nu_log"]) + 1j * jnp.exp(params["theta_log"]))


class Projected(NamedTuple):
    bu: Array  # [..., hidden] complex: gamma * (x B)
    du: Array  # [..., output] real: x D


def project_inputs(params: Params, x: Array) -> Projected:
    check_input(x, params["b_re"])
    gamma = jnp.exp(params["gamma_log"])
    bu = x @ params["b_re"] + 1j * (x @ params["b_im"])
    bu = bu * along_last(gamma, bu)
    return Projected(bu, x @ params["d"])


def _readout(params: Params, h: Array, du: Array) -> Array:
    return h.real @ params["c_re"] - h.imag @ params["c_im"] + du


def step_projected(params: Params, carry: LRUCarry, xp_t: Projected) -> tuple[LRUCarry, Array]:
    h = along_last(eigenvalues(params), carry.h) * carry.h + xp_t.bu
    return LRUCarry(h), _readout(params, h, xp_t.du)


def step(params: Params, carry: LRUCarry, x_t: Array) -> tuple[LRUCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t [*batch, output])."""
    return step_projected(params, carry, project_inputs(params, x_t))


def parallel(
    params: Params,
    carry: LRUCarry,
    xs: Array,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    resets: Array | None = None,
) -> tuple[LRUCarry, Array]:
    """All steps by associative scan: xs [batch, time, input] -> ys [batch, time, output]."""
    xp = project_inputs(params, xs)
    a = jnp.broadcast_to(eigenvalues(params), xp.bu.shape)
    h_last, hs = linear_recurrence.solve(
        a, xp.bu, carry.h, lengths=lengths, reverse=reverse, resets=resets
    )
    ys = _readout(params, hs, xp.du)
    if lengths is not None:
        valid = jnp.arange(xs.shape[1])[None, :, None] < lengths[:, None, None]
        ys = jnp.where(valid, ys, jnp.zeros_like(ys))
    return LRUCarry(h_last), ys


SPEC = CellSpec(
    "lru",
    init_params,
    init_carry,
    step,
    project_inputs,
    step_projected,
    input_weight="b_re",
    output_size=True,
    parallel=parallel,
    complex_state=True,
)
