"""Fixed points z* = f(theta, z*) for a batch of rows: solvers, diagnostics, gradients.

Every row of z [*batch, hidden] is its own problem (f must act row by row, as a cell does):
a row stops, its z frozen, once its residual ||f(z) - z||_inf <= tol + rtol * ||z||_inf, so
its result does not depend on the other rows of the batch. ``solve`` returns the fixed point
and a ``Diagnostics`` record (iterations, final residual, converged) per row, and applies
the ``Solver.on_nonconvergence`` policy: never a silently unconverged point.

Solvers: plain fixed-point iteration, and Anderson acceleration (type II, Walker & Ni 2011),
which mixes the last ``memory`` iterates by a small least-squares problem per row.

Gradients: "implicit" differentiates the fixed point by the implicit function theorem; the
adjoint u = z_bar + (df/dz)^T u is solved by the same solver (memory does not grow with the
iterations) and checked by the same policy. "phantom" back-propagates through
``phantom_steps`` iterations started at the fixed point: the first terms of the implicit
gradient's Neumann series, an approximation that is cheaper and never diverges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Map = Callable[[Any, Array], Array]  # f(theta, z) -> z, row by row

SOLVERS = ("anderson", "iterate")
GRADIENTS = ("implicit", "phantom")
POLICIES = ("warn", "raise", "ignore")
# What "raise" becomes inside a vectorised group (fnn_jax.train.vectorized), where one trial's
# miss must stop that trial alone: no host callback (it would fail the whole program); the
# forward misses reach the step through the sown statistics, an adjoint miss makes the
# gradient NaN, and the engine stops the trial that missed.
HALT = "halt"
_GRAM_RIDGE = 1e-5  # Anderson: ridge on the residuals' Gram matrix, relative to its diagonal


class NonConvergenceError(RuntimeError):
    """A fixed-point solve missed its tolerance under ``on_nonconvergence="raise"``.

    Raised as this class where the check runs on the host: outside ``jit`` (eager calls)
    and inside ``nonconvergence_errors()``. Inside a compiled program the check is a host
    callback, and JAX hands any exception a callback raises to the caller as a
    ``jax.errors.JaxRuntimeError`` carrying only its text; ``nonconvergence_errors()``
    turns that back into this class.
    """


class NonConvergenceWarning(RuntimeWarning):
    """A fixed-point solve missed its tolerance under ``on_nonconvergence="warn"``."""


@dataclasses.dataclass(frozen=True)
class Solver:
    """How to find a fixed point and differentiate it (hashable: a static argument).

    name: "anderson" or "iterate". max_iter: most updates per solve (>= 1).
    tol, rtol: a row has converged when ||f(z) - z||_inf <= tol + rtol * ||z||_inf (tol > 0).
    memory: iterates Anderson mixes (>= 1; 1 is plain iteration).
    gradient: "implicit" or "phantom"; phantom_steps: unrolled steps of the latter (>= 1).
    on_nonconvergence: "warn", "raise" or "ignore", for the forward and the adjoint solve
        ("halt": see HALT).
    """

    name: str = "anderson"
    max_iter: int = 50
    tol: float = 1e-5
    rtol: float = 1e-5
    memory: int = 5
    gradient: str = "implicit"
    phantom_steps: int = 5
    on_nonconvergence: str = "warn"

    def __post_init__(self) -> None:
        for field, allowed in (
            ("name", SOLVERS),
            ("gradient", GRADIENTS),
            ("on_nonconvergence", (*POLICIES, HALT)),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"Solver.{field}={getattr(self, field)!r} is not valid; "
                    f"valid choices: {list(allowed)}"
                )
        if not self.tol > 0:
            raise ValueError(f"Solver.tol must be > 0; got {self.tol!r}")
        if not self.rtol >= 0:
            raise ValueError(f"Solver.rtol must be >= 0; got {self.rtol!r}")
        for field in ("max_iter", "memory", "phantom_steps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Solver.{field} must be an int >= 1; got {value!r}")


class Diagnostics(NamedTuple):
    """One solve, per row ([*batch])."""

    iterations: Array  # int32: updates made before the row met the tolerance (or max_iter)
    residual: Array  # float32: ||f(z) - z||_inf of the returned z
    converged: Array  # bool


# ----------------------------------------------------------------------------- solvers


def _row_norm(a: Array) -> Array:
    return jnp.max(jnp.abs(a), axis=-1)


def _anderson_mix(history: tuple[Array, Array], count: Array) -> Array:
    """The next iterate sum_i alpha_i f(z_i), alpha minimising ||sum_i alpha_i r_i|| with
    sum_i alpha_i = 1, over the ``min(count, memory)`` stored pairs (z_i, f(z_i))."""
    zs, fzs = history  # [*batch, memory, hidden]
    memory, batch = zs.shape[-2], zs.shape[:-2]
    lead = (1,) * len(batch)  # explicit broadcasting (rank promotion may be an error)
    work = jnp.promote_types(zs.dtype, jnp.float32)
    used = (jnp.arange(memory) < count).astype(work)  # slots filled so far
    r = (fzs - zs).astype(work)
    gram = jnp.einsum("...ih,...jh->...ij", r, r) * (used[:, None] * used[None, :]).reshape(
        *lead, memory, memory
    )
    scale = jnp.max(jnp.diagonal(gram, axis1=-2, axis2=-1), axis=-1)
    # Unused slots get the equation alpha_j = 0; used ones a ridge for conditioning.
    ridge = jnp.maximum(scale, 1e-30).reshape(*batch, 1) * (_GRAM_RIDGE * used).reshape(*lead, -1)
    diagonal = ridge + (1 - used).reshape(*lead, memory)
    gram = gram + diagonal[..., None] * jnp.eye(memory, dtype=work).reshape(*lead, memory, memory)
    top = jnp.broadcast_to(
        jnp.concatenate([jnp.zeros(1, work), used]).reshape(*lead, 1, memory + 1),
        (*batch, 1, memory + 1),
    )
    side = jnp.broadcast_to(used.reshape(*lead, memory, 1), (*batch, memory, 1))
    bordered = jnp.concatenate([top, jnp.concatenate([side, gram], -1)], -2)
    rhs = jnp.zeros((*batch, memory + 1, 1), work).at[..., 0, 0].set(1.0)
    alpha = jnp.linalg.solve(bordered, rhs)[..., 1:, 0]  # [*batch, memory]
    return jnp.einsum("...i,...ih->...h", alpha, fzs.astype(work)).astype(zs.dtype)


def find(g: Callable[[Array], Array], z0: Array, solver: Solver) -> tuple[Array, Diagnostics]:
    """z with g(z) = z from z0 [*batch, hidden] by ``solver`` (no custom gradient).

    Each pass evaluates g once: the current z is checked, then (unless it has converged or
    max_iter updates were made) replaced. So the residual reported is that of the z returned.
    """
    batch = z0.shape[:-1]
    anderson = solver.name == "anderson" and solver.memory > 1
    memory = solver.memory if anderson else 0
    history = (jnp.zeros((*batch, memory, z0.shape[-1]), z0.dtype),) * 2

    def not_finished(state):
        k, _, _, done, _, _ = state
        return (k <= solver.max_iter) & ~jnp.all(done)

    def one_pass(state):
        k, z, iterations, done, residual, history = state
        gz = g(z)
        new_residual = _row_norm(gz - z)
        residual = jnp.where(done, residual, new_residual)
        done = done | (new_residual <= solver.tol + solver.rtol * _row_norm(z))
        update = ~done & (k < solver.max_iter)
        if anderson:
            slot = k % memory
            zs, gzs = history
            history = (zs.at[..., slot, :].set(z), gzs.at[..., slot, :].set(gz))
            gz = _anderson_mix(history, k + 1)
        z = jnp.where(update[..., None], gz, z)
        return k + 1, z, iterations + update, done, residual, history

    state = (
        jnp.int32(0),
        z0,
        jnp.zeros(batch, jnp.int32),
        jnp.zeros(batch, bool),
        jnp.full(batch, jnp.inf, jnp.promote_types(z0.dtype, jnp.float32)),
        history,
    )
    _, z, iterations, done, residual, _ = jax.lax.while_loop(not_finished, one_pass, state)
    return z, Diagnostics(iterations, residual.astype(jnp.float32), done)


# ----------------------------------------------------------------------------- the policy


_reported: dict[tuple[str, Solver], int] = {}  # reports per (solve kind, solver) so far


def reset_warnings() -> None:
    """Forget the reports counted so far: the next miss of every solver warns again."""
    _reported.clear()


def _on_host(where: str, solver: Solver, converged, residual, iterations) -> None:
    converged, residual = np.asarray(converged), np.asarray(residual)
    if converged.all():  # under vmap the callback runs whatever the predicate says
        return
    message = (
        f"{where} fixed-point solve did not converge: residual {residual.max():.3g} > "
        f"tol {solver.tol:g} + rtol {solver.rtol:g} * |z| in {(~converged).sum()} of "
        f"{converged.size} rows after {int(np.max(iterations))} iterations "
        f"(solver {solver.name!r}, max_iter {solver.max_iter})"
    )
    if solver.on_nonconvergence == "raise":
        raise NonConvergenceError(message)
    count = _reported[where, solver] = _reported.get((where, solver), 0) + 1
    if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th ... time: no flood of warnings
        note = f" [{count} such {where} reports so far; warned at 1, 2, 4, 8, ...]"
        warnings.warn(message + note, NonConvergenceWarning, 2)


def check(diagnostics: Diagnostics, solver: Solver, where: str = "forward") -> None:
    """Applies ``solver.on_nonconvergence`` to ``diagnostics``: a warning with the residual,
    or NonConvergenceError. On concrete values (an eager call) a "raise" raises at once;
    inside jit, vmap or grad the check is a host callback that runs with the computation
    (catch its error by class inside ``nonconvergence_errors()``)."""
    if solver.on_nonconvergence in ("ignore", HALT):
        return
    args = (diagnostics.converged, diagnostics.residual, diagnostics.iterations)
    if solver.on_nonconvergence == "raise" and not any(
        isinstance(a, jax.core.Tracer) for a in args
    ):
        _on_host(where, solver, *args)
        return
    report = functools.partial(_on_host, where, solver)
    jax.lax.cond(
        jnp.all(diagnostics.converged),
        lambda *_: None,
        lambda *a: jax.debug.callback(report, *a),
        *args,
    )


_CARRIED = re.compile(rf"{NonConvergenceError.__name__}: ([^\n]+)")


class _Reraise(contextlib.AbstractContextManager):
    """See ``nonconvergence_errors``."""

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, jax.errors.JaxRuntimeError):
            found = _CARRIED.findall(str(error))
            if found:
                raise NonConvergenceError(found[-1]) from error

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            with self:
                return jax.block_until_ready(function(*args, **kwargs))

        return checked


def nonconvergence_errors() -> _Reraise:
    """Where a compiled solve's "raise" reaches you as ``NonConvergenceError``.

    A context manager: an error that a ``jit``-ed (or vmapped, or differentiated) solve
    raises inside the block is re-raised as NonConvergenceError with the same message
    (the original chained as its ``__cause__``); other errors pass unchanged. JAX runs
    programs asynchronously, so wait for the result inside the block::

        with fixed_point.nonconvergence_errors():
            ys = jax.block_until_ready(jax.jit(f)(xs))

    Or a decorator, which waits for the result itself:
    ``fixed_point.nonconvergence_errors()(jax.jit(f))(xs)``.
    """
    return _Reraise()


# ----------------------------------------------------------------------------- gradients


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _implicit(f: Map, theta: Any, z0: Array, solver: Solver) -> tuple[Array, Diagnostics]:
    return find(lambda z: f(theta, z), z0, solver)


def _implicit_fwd(f, theta, z0, solver):
    z, diagnostics = _implicit(f, theta, z0, solver)
    return (z, diagnostics), (theta, z)


def _implicit_bwd(f, solver, residuals, cotangents):
    theta, z = residuals
    z_bar = cotangents[0]
    _, vjp = jax.vjp(f, theta, z)
    # The adjoint solves u = z_bar + (df/dz)^T u: the same contraction as the forward map.
    # It is linear and row by row, so each row is solved at unit scale and scaled back: the
    # tolerance is then relative to the cotangent (a mean loss's is tiny, ~1 / batch).
    size = _row_norm(z_bar)[..., None]
    size = jnp.where(size > 0, size, jnp.ones_like(size))
    unit = z_bar / size
    u, diagnostics = find(lambda u: unit + vjp(u)[1], unit, solver)
    check(diagnostics, solver, "adjoint")
    theta_bar, _ = vjp(u * size)
    if solver.on_nonconvergence == HALT:  # a non-finite step: the engine stops the trial
        missed = ~jnp.all(diagnostics.converged)
        theta_bar = jax.tree.map(lambda g: jnp.where(missed, jnp.nan, g), theta_bar)
    return theta_bar, jnp.zeros_like(z)  # z0 (shaped as z) does not move the fixed point


_implicit.defvjp(_implicit_fwd, _implicit_bwd)


def _phantom(f: Map, theta: Any, z0: Array, solver: Solver) -> tuple[Array, Diagnostics]:
    z_star, diagnostics = find(
        lambda z: f(jax.lax.stop_gradient(theta), z), jax.lax.stop_gradient(z0), solver
    )
    z_star = jax.lax.stop_gradient(z_star)
    z = z_star
    for _ in range(solver.phantom_steps):
        z = f(theta, z)
    # The value stays the solver's (training and evaluation see the same forward pass).
    return z + jax.lax.stop_gradient(z_star - z), diagnostics


def solve(
    f: Map, theta: Any, z0: Array, solver: Solver | None = None, *, check_forward: bool = True
) -> tuple[Array, Diagnostics]:
    """The fixed point z* = f(theta, z*) near z0 [*batch, hidden], and its diagnostics.

    Differentiable in ``theta`` (a pytree) by ``solver.gradient``; z0 only seeds the solve.
    ``check_forward=False`` leaves the policy to the caller (a layer checks a whole sequence
    once); the adjoint solve is always checked.
    """
    solver = Solver() if solver is None else solver
    run = _implicit if solver.gradient == "implicit" else _phantom
    z, diagnostics = run(f, theta, z0, solver)
    diagnostics = jax.tree.map(jax.lax.stop_gradient, diagnostics)
    if check_forward:
        check(diagnostics, solver)
    return z, diagnostics
