"""Equilibrium cell: at every time step, iterate the feedback to its fixed point.

    z_t = f(x_t W_ih + b + z_t W_hh)          (solved for z_t; y_t = z_t)

The iteration starts from z_{t-1}, which only speeds it up: the fixed point is unique while
the map is a contraction (f 1-Lipschitz and ||W_hh||_2 < 1; init_params sets it to
``spectral_scale``). Gradients come from the implicit function theorem, not from
back-propagating through the iterations, so memory does not grow with ``max_iter``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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


class EquilibriumCarry(NamedTuple):
    z: Array  # [*batch, hidden]


def init_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    spectral_scale: float = 0.5,
    dtype=jnp.float32,
) -> Params:
    """w_ih [input, hidden], b [hidden], w_hh [hidden, hidden] orthogonal * spectral_scale."""
    k_ih, k_hh = jax.random.split(key)
    return {
        "w_ih": uniform(k_ih, (input_size, hidden_size), hidden_size**-0.5, dtype),
        "b": jnp.zeros((hidden_size,), dtype),
        "w_hh": orthogonal(k_hh, (hidden_size, hidden_size), spectral_scale, dtype),
    }


def init_carry(
    batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32
) -> EquilibriumCarry:
    return EquilibriumCarry(jnp.zeros((*batch_shape, hidden_size), dtype))


def project_inputs(params: Params, x: Array) -> Array:
    """[..., input] -> [..., hidden]."""
    check_input(x, params["w_ih"])
    xw = x @ params["w_ih"]
    return xw + along_last(params["b"], xw)


def _iterate(g: Callable[[Array], Array], z0: Array, max_iter: int, tol: float) -> Array:
    """z <- g(z) until max |change| <= tol or max_iter iterations."""

    def not_done(state):
        i, _, change = state
        return (i < max_iter) & (change > tol)

    def body(state):
        i, z, _ = state
        z_new = g(z)
        return i + 1, z_new, jnp.max(jnp.abs(z_new - z))

    inf = jnp.asarray(jnp.inf, z0.dtype)
    _, z, _ = jax.lax.while_loop(not_done, body, (0, z0, inf))
    return z


# jax.custom_vjp's nondiff_argnums needs these positional.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5))
def fixed_point(  # noqa: PLR0917
    f: Callable[[Array, Array, Array], Array],
    w_hh: Array,
    xp: Array,
    z0: Array,
    max_iter: int,
    tol: float,
) -> Array:
    """z* = f(w_hh, xp, z*), found by iteration from z0; differentiated implicitly."""
    return _iterate(lambda z: f(w_hh, xp, z), z0, max_iter, tol)


def _fixed_point_fwd(f, w_hh, xp, z0, max_iter, tol):  # noqa: PLR0917
    z_star = fixed_point(f, w_hh, xp, z0, max_iter, tol)
    return z_star, (w_hh, xp, z_star)


def _fixed_point_bwd(f, max_iter, tol, residuals, z_bar):
    w_hh, xp, z_star = residuals
    _, vjp_all = jax.vjp(f, w_hh, xp, z_star)
    # Adjoint u solves u = z_bar + (df/dz)^T u; the same contraction makes it converge.
    u = _iterate(lambda u: z_bar + vjp_all(u)[2], z_bar, max_iter, tol)
    w_bar, xp_bar, _ = vjp_all(u)
    return w_bar, xp_bar, jnp.zeros_like(z_star)


fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


def step_projected(
    params: Params,
    carry: EquilibriumCarry,
    xp_t: Array,
    *,
    activation: str = "tanh",
    max_iter: int = 50,
    tol: float = 1e-6,
) -> tuple[EquilibriumCarry, Array]:
    act = activation_fn(activation)

    def f(w_hh, xp, z):
        return act(xp + z @ w_hh)

    z = fixed_point(f, params["w_hh"], xp_t, carry.z, max_iter, tol)
    return EquilibriumCarry(z), z


def step(
    params: Params,
    carry: EquilibriumCarry,
    x_t: Array,
    *,
    activation: str = "tanh",
    max_iter: int = 50,
    tol: float = 1e-6,
) -> tuple[EquilibriumCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t = z_t [*batch, hidden])."""
    xp_t = project_inputs(params, x_t)
    return step_projected(params, carry, xp_t, activation=activation, max_iter=max_iter, tol=tol)


SPEC = CellSpec("equilibrium", init_params, init_carry, step, project_inputs, step_projected)
