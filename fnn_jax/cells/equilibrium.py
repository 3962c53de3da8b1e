"""Equilibrium cell: at every time step, the feedback iterated to its fixed point.

    z_t = f(x_t W_ih + b + h_{t-1} W_hh + z_t W_zz)      (solved for z_t)
    h_t = y_t = z_t

W_zz is the feedback within a step (the seeds' neuron "iterated until the network
converges"); W_hh carries memory from the previous step's fixed point, so y_T depends on
every earlier input. The fixed point is unique while the map is a contraction (f 1-Lipschitz,
as tanh and relu are, and ||W_zz||_2 < 1): ``init_params`` sets ||W_zz||_2 = ``spectral_scale``
and ``bound_feedback`` keeps it under a bound during training. The solve starts from
h_{t-1}, is done by ``fixed_point.solve`` (Anderson or plain iteration, implicit or phantom
gradients) and is never silently unconverged: each step's diagnostics add up in the carry
(``SolveStats``, per sequence) and ``Solver.on_nonconvergence`` decides what a miss does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn_jax.cells import fixed_point
from fnn_jax.cells._common import (
    Array,
    Params,
    activation_fn,
    activation_option,
    along_last,
    check_input,
    orthogonal,
    uniform,
)
from fnn_jax.cells.fixed_point import Solver
from fnn_jax.cells.spec import CellSpec, Option

DEFAULT_SOLVER = Solver()


class SolveStats(NamedTuple):
    """The solves of one sequence so far, each leaf [*batch] (steps past a length excluded)."""

    solves: Array  # int32: time steps solved
    iterations: Array  # int32: iterations over those steps
    max_iterations: Array  # int32
    max_residual: Array  # float32
    unconverged: Array  # int32: steps that missed the tolerance


class EquilibriumCarry(NamedTuple):
    h: Array  # [*batch, hidden]: the last step's fixed point
    stats: SolveStats


def init_params(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    spectral_scale: float = 0.5,
    memory_scale: float = 0.5,
    dtype=jnp.float32,
) -> Params:
    """w_ih [input, hidden], b [hidden], w_hh [hidden, hidden] (memory) orthogonal times
    ``memory_scale``, w_zz [hidden, hidden] (feedback) orthogonal times ``spectral_scale``."""
    k_ih, k_hh, k_zz = jax.random.split(key, 3)
    return {
        "w_ih": uniform(k_ih, (input_size, hidden_size), hidden_size**-0.5, dtype),
        "b": jnp.zeros((hidden_size,), dtype),
        "w_hh": orthogonal(k_hh, (hidden_size, hidden_size), memory_scale, dtype),
        "w_zz": orthogonal(k_zz, (hidden_size, hidden_size), spectral_scale, dtype),
    }


def init_carry(
    batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32
) -> EquilibriumCarry:
    count = jnp.zeros(batch_shape, jnp.int32)
    stats = SolveStats(count, count, count, jnp.zeros(batch_shape, jnp.float32), count)
    return EquilibriumCarry(jnp.zeros((*batch_shape, hidden_size), dtype), stats)


def bound_feedback(params: Params, max_feedback_norm: float = 0.0) -> Params:
    """``params`` with W_zz scaled down to spectral norm ``max_feedback_norm`` if larger
    (0: unchanged). A differentiable reparametrisation: training may push the raw W_zz past
    the bound, the map used stays a contraction for a bound < 1. The norm is exact
    (an SVD of a [hidden, hidden] matrix, once per forward pass, not per step)."""
    if not max_feedback_norm:
        return params
    w = params["w_zz"]
    norm = jnp.linalg.norm(w.astype(jnp.float32), 2)
    scale = jnp.minimum(1.0, max_feedback_norm / jnp.maximum(norm, 1e-12)).astype(w.dtype)
    return {**params, "w_zz": w * scale}


def project_inputs(params: Params, x: Array) -> Array:
    """[..., input] -> [..., hidden]."""
    check_input(x, params["w_ih"])
    xw = x @ params["w_ih"]
    return xw + along_last(params["b"], xw)


def _add(stats: SolveStats, d: fixed_point.Diagnostics) -> SolveStats:
    return SolveStats(
        stats.solves + 1,
        stats.iterations + d.iterations,
        jnp.maximum(stats.max_iterations, d.iterations),
        jnp.maximum(stats.max_residual, d.residual),
        stats.unconverged + (~d.converged).astype(jnp.int32),
    )


def step_projected(
    params: Params,
    carry: EquilibriumCarry,
    xp_t: Array,
    *,
    activation: str = "tanh",
    solver: Solver = DEFAULT_SOLVER,
    check: bool = True,
) -> tuple[EquilibriumCarry, Array]:
    """``step`` on projected inputs xp_t [*batch, hidden]. ``check=False`` leaves the
    forward solve's policy to the caller (the layers check a whole sequence at once)."""
    act = activation_fn(activation)
    drive = xp_t + carry.h @ params["w_hh"]  # everything but the feedback z_t W_zz

    def f(theta, z):
        w_zz, drive = theta
        return act(drive + z @ w_zz)

    z, diagnostics = fixed_point.solve(
        f, (params["w_zz"], drive), carry.h, solver, check_forward=check
    )
    return EquilibriumCarry(z, _add(carry.stats, diagnostics)), z


def step(
    params: Params,
    carry: EquilibriumCarry,
    x_t: Array,
    *,
    activation: str = "tanh",
    solver: Solver = DEFAULT_SOLVER,
    check: bool = True,
) -> tuple[EquilibriumCarry, Array]:
    """One time step. x_t [*batch, input] -> (carry, y_t = z_t [*batch, hidden])."""
    xp_t = project_inputs(params, x_t)
    return step_projected(params, carry, xp_t, activation=activation, solver=solver, check=check)


def solver_from_section(section: Any) -> Solver:
    """The solver a config section (config.model.equilibrium) describes."""
    return Solver(
        name=section["solver"],
        max_iter=section["max_iter"],
        tol=section["tol"],
        rtol=section["rtol"],
        memory=section["anderson_memory"],
        gradient=section["gradient"],
        phantom_steps=section["phantom_steps"],
        on_nonconvergence=section["on_nonconvergence"],
    )


def summarize(carry: EquilibriumCarry, *, solver: Solver = DEFAULT_SOLVER) -> dict[str, Array]:
    """The final carry's stats as scalars over the batch, after applying the policy to the
    whole sequence's forward solves (what the layers sow as ``diagnostics``)."""
    s = carry.stats
    per_sequence = fixed_point.Diagnostics(s.max_iterations, s.max_residual, s.unconverged == 0)
    fixed_point.check(per_sequence, solver)
    count = lambda a: jnp.sum(a.astype(jnp.float32))  # summed over many steps: no overflow
    return {
        "solves": count(s.solves),
        "iterations": count(s.iterations),
        "max_iterations": jnp.max(s.max_iterations).astype(jnp.float32),
        "max_residual": jnp.max(s.max_residual),
        "unconverged": count(s.unconverged),
    }


SPEC = CellSpec(
    "equilibrium",
    init_params,
    init_carry,
    step,
    project_inputs,
    step_projected,
    prepare=bound_feedback,
    summarize=summarize,
    float32_at_least=True,
    options=(
        activation_option(),
        Option(
            "solver",
            DEFAULT_SOLVER,
            "how each step's fixed point is found (fixed_point.Solver)",
            to=("step", "summarize"),
            from_section=solver_from_section,
        ),
        Option(
            "max_feedback_norm",
            0.0,
            "> 0: W_zz is scaled to at most this spectral norm (bound_feedback)",
            to=("prepare",),
            minimum=0.0,
        ),
    ),
)
