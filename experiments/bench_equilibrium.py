"""The ``equilibrium`` section of experiments/bench.py: fnn_jax's own fixed-point solver
(fnn_jax.cells.fixed_point) against ``optimistix.fixed_point``, to decide which one fnn_jax
should depend on.

The problem: z* = tanh(drive + z* @ W) for a batch of 32 rows, hidden 64 and 256 (64 only
with --quick), float32, W of spectral norm 0.9, either symmetric (real eigenvalues: Anderson
has something to gain) or orthogonal (all singular values 0.9, eigenvalues on a circle).
Tolerance 1e-5 absolute and relative for every solver, at most 200 steps, z0 = 0.

Rows, each jitted (forward: z; forward+backward: grad of sum(z) w.r.t. W and drive):

* ``ours:anderson`` / ``ours:iterate``: ``fixed_point.solve`` with that solver and the
  implicit gradient (the adjoint solved by the same solver), policy "warn" (the default);
* ``ours:phantom``: Anderson forward, gradient through 5 phantom steps;
* ``optx:dense``: ``optimistix.FixedPointIteration`` with ``ImplicitAdjoint()``, whose default
  linear solver ``lineax.AutoLinearSolver(well_posed=None)`` picks LU and so materialises the
  (32*H) x (32*H) Jacobian of the whole batch;
* ``optx:gmres``: the same with ``ImplicitAdjoint(lineax.GMRES(1e-5, 1e-5))``, matrix-free
  (``lineax.BiCGStab`` broke down on this problem when tried; optimistix 0.1.0 has no Anderson).

Each row reports the iterations (ours: max over rows of ``Diagnostics.iterations``;
optimistix: ``stats["num_steps"]``), whether it converged, the median (and fastest) ms of
both modes, timed round-robin with bench.py's helpers (the slow dense row at hidden >= 128 is
timed on its own, with fewer repeats), the compiled temporary memory
(``compile().memory_analysis().temp_size_in_bytes``) and the distance to ``ours:anderson``:
max |z - z_ref| and max |grad - grad_ref| / max |grad_ref|.

Ours stops row by row (each row is its own problem, with its own diagnostics); optimistix
treats the whole [32, H] array as one problem: its stopping rule is a max over all entries,
and it reports one step count and one result for the batch. Without optimistix (or lineax)
installed its rows are skipped.

    python experiments/bench.py --section equilibrium --out bench_results/equilibrium.json

Section ``phantom`` (this script alone, no timing): how far phantom gradients are from the
implicit gradient. float64, tol 1e-12 for every solve, so what remains is phantom's own
truncation (the first k terms of the implicit gradient's Neumann series), not solver
noise. Two problems, each at ||W_zz||_2 = 0.5 and 0.9 and phantom_steps 1, 5 and 20:

* ``solve``: one fixed point z = tanh(drive + z W), batch 32, hidden 64, W symmetric and
  orthogonal (as above), gradient of sum(z * c) (c a fixed random cotangent) w.r.t. W and
  drive;
* ``layer``: the equilibrium layer (``layers.Recurrent(cell="equilibrium")``) over 8 steps of
  8 features (the digits' shape), batch 32, hidden 64, W_zz orthogonal, gradient of
  mean(ys * c) w.r.t. every parameter (through time, so errors of every step add up).

Each row: relative error ||g_k - g|| / ||g|| (L2 over all parameters), the cosine between
them, and ||W_zz||_2^k, the error's bound for a 1-Lipschitz activation.

    python experiments/bench_equilibrium.py --section phantom --out bench_results/phantom.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fnn_jax import layers
from fnn_jax.cells import fixed_point as fp

try:
    import lineax as lx
    import optimistix as optx
except ImportError:  # a test extra; its rows are skipped without it
    lx = optx = None

BATCH = 32
HIDDENS = (64, 256)
QUICK_HIDDENS = (64,)
MATRICES = ("symmetric", "orthogonal")
SPECTRAL_NORM = 0.9
TOL = 1e-5
MAX_ITER = 200
PHANTOM_STEPS = 5
REFERENCE = "ours:anderson"
DENSE = "optx:dense"
SLOW_DENSE_HIDDEN = 128  # from here on the dense row is timed apart, with SLOW_REPEATS
SLOW_REPEATS = 3
MODES = ("fwd", "fwd_bwd")
NOTES = (
    "ours stops row by row (per-row Diagnostics, policy warn/raise/ignore); optimistix treats "
    "the whole batch as one problem (stopping rule: max over all entries; one num_steps and "
    "one result for the batch)",
    "iters: ours = max over rows of Diagnostics.iterations; optimistix = stats['num_steps']",
    f"{DENSE}: ImplicitAdjoint() default linear solver (AutoLinearSolver -> LU on the "
    "materialised (B*H)^2 Jacobian); optx:gmres: lineax.GMRES, matrix-free",
    f"|dz| = max|z - z_ref|, dgrad = max|g - g_ref| / max|g_ref|, ref = {REFERENCE}",
)

Theta = tuple[jax.Array, jax.Array]  # (W [H, H], drive [B, H])
Solve = Callable[[Theta], tuple[jax.Array, jax.Array, jax.Array]]  # z, iterations, converged
# bench.py's time_implementations: (impl -> mode -> Timed, cfg) -> impl -> mode -> timing
TimeImplementations = Callable[[dict[str, dict[str, Any]], Any], dict[str, dict[str, Any]]]


def weight(kind: str, hidden: int) -> jax.Array:
    """A [hidden, hidden] matrix of spectral norm 0.9, symmetric or a scaled orthogonal."""
    a = jax.random.normal(jax.random.key(0), (hidden, hidden), jnp.float32)
    a = (a + a.T) / 2 if kind == "symmetric" else jnp.linalg.qr(a)[0]
    return SPECTRAL_NORM * a / jnp.linalg.norm(a, 2)


def fixed_map(theta: Theta, z: jax.Array) -> jax.Array:
    """f((W, drive), z) = tanh(drive + z @ W), row by row."""
    w, drive = theta
    return jnp.tanh(drive + z @ w)


def ours(solver: fp.Solver) -> Solve:
    def run(theta: Theta) -> tuple[jax.Array, jax.Array, jax.Array]:
        z, diagnostics = fp.solve(fixed_map, theta, jnp.zeros_like(theta[1]), solver)
        return z, jnp.max(diagnostics.iterations), jnp.all(diagnostics.converged)

    return run


def optimistix(linear_solver: Any | None) -> Solve:
    """optimistix.fixed_point by FixedPointIteration, implicit adjoint with the given linear
    solver (None: ImplicitAdjoint's default)."""
    adjoint = (
        optx.ImplicitAdjoint() if linear_solver is None else optx.ImplicitAdjoint(linear_solver)
    )

    def run(theta: Theta) -> tuple[jax.Array, jax.Array, jax.Array]:
        solution = optx.fixed_point(
            lambda z, args: fixed_map(args, z),
            optx.FixedPointIteration(rtol=TOL, atol=TOL),
            jnp.zeros_like(theta[1]),
            theta,
            max_steps=MAX_ITER,
            adjoint=adjoint,
            throw=False,
        )
        ok = solution.result == optx.RESULTS.successful
        return solution.value, solution.stats["num_steps"], ok

    return run


def implementations() -> dict[str, Solve]:
    def solver(**options: Any) -> fp.Solver:
        return fp.Solver(max_iter=MAX_ITER, tol=TOL, rtol=TOL, **options)

    impls = {
        REFERENCE: ours(solver(name="anderson")),
        "ours:iterate": ours(solver(name="iterate")),
        "ours:phantom": ours(
            solver(name="anderson", gradient="phantom", phantom_steps=PHANTOM_STEPS)
        ),
    }
    if optx is not None:
        impls["optx:gmres"] = optimistix(lx.GMRES(rtol=TOL, atol=TOL))
        impls[DENSE] = optimistix(None)
    return impls


def _compile(solve: Solve, theta: Theta) -> dict[str, Any]:
    """Compiled forward and forward+backward, their temp memory and compile time."""
    start = time.perf_counter()
    fwd = jax.jit(solve).lower(theta).compile()
    fwd_bwd = jax.jit(jax.grad(lambda t: jnp.sum(solve(t)[0]))).lower(theta).compile()
    return {
        "fwd": fwd,
        "fwd_bwd": fwd_bwd,
        "compile_s": time.perf_counter() - start,
        "fwd_temp_bytes": fwd.memory_analysis().temp_size_in_bytes,
        "fwd_bwd_temp_bytes": fwd_bwd.memory_analysis().temp_size_in_bytes,
    }


def _distance(a: Any, b: Any, relative: bool) -> float:
    num = max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    den = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b)) if relative else 1.0
    return num / den


def _time(
    compiled: dict[str, dict[str, Any]],
    theta: Theta,
    cfg: Any,
    time_impls: TimeImplementations,
    timed: Any,
) -> dict[str, dict[str, Any]]:
    """Median timings, round-robin; the slow dense row (hidden >= SLOW_DENSE_HIDDEN) apart."""

    def benches(names: list[str]) -> dict[str, dict[str, Any]]:
        return {
            name: {
                mode: timed(lambda c=compiled[name][mode]: c(theta), jax.block_until_ready, 0.0)
                for mode in MODES
            }
            for name in names
        }

    slow = [DENSE] if DENSE in compiled and theta[0].shape[0] >= SLOW_DENSE_HIDDEN else []
    timings = time_impls(benches([n for n in compiled if n not in slow]), cfg)
    if slow:
        few = dataclasses.replace(cfg, repeats=min(cfg.repeats, SLOW_REPEATS), warmup=0)
        timings.update(time_impls(benches(slow), few))
    for modes in timings.values():
        for timing in modes.values():
            timing.pop("gflops", None)
    return timings


def problem(
    hidden: int, kind: str, cfg: Any, time_impls: TimeImplementations, timed: Any
) -> list[dict[str, Any]]:
    """Every implementation on one (hidden, matrix): rows for the table."""
    drive = jax.random.normal(jax.random.key(1), (BATCH, hidden), jnp.float32)
    theta = (weight(kind, hidden), drive)
    compiled = {name: _compile(solve, theta) for name, solve in implementations().items()}
    outputs = {name: c["fwd"](theta) for name, c in compiled.items()}
    grads = {name: c["fwd_bwd"](theta) for name, c in compiled.items()}
    print(f"[equilibrium] hidden {hidden}, {kind}: timing {', '.join(compiled)}", flush=True)
    timings = _time(compiled, theta, cfg, time_impls, timed)
    rows = []
    for name, c in compiled.items():
        z, iterations, converged = outputs[name]
        rows.append(
            {
                "hidden": hidden,
                "matrix": kind,
                "impl": name,
                "iterations": int(iterations),
                "converged": bool(converged),
                "fwd_ms": timings[name]["fwd"]["ms"],
                "fwd_bwd_ms": timings[name]["fwd_bwd"]["ms"],
                "fwd_min_ms": timings[name]["fwd"]["min_ms"],
                "fwd_bwd_min_ms": timings[name]["fwd_bwd"]["min_ms"],
                "repeats": timings[name]["fwd"]["repeats"],
                "fwd_temp_bytes": int(c["fwd_temp_bytes"]),
                "fwd_bwd_temp_bytes": int(c["fwd_bwd_temp_bytes"]),
                "compile_s": c["compile_s"],
                "z_max_abs_diff": _distance(z, outputs[REFERENCE][0], relative=False),
                "grad_rel_diff": _distance(grads[name], grads[REFERENCE], relative=True),
                "timings": timings[name],
            }
        )
    return rows


def section_equilibrium(
    cfg: Any, time_impls: TimeImplementations, timed: Any, *, quick: bool = False
) -> dict[str, Any]:
    """Ours (anderson, iterate, phantom) vs optimistix (dense and GMRES adjoint), per hidden
    size and matrix. ``time_impls``/``timed``: bench.py's time_implementations and Timed."""
    hiddens = QUICK_HIDDENS if quick else HIDDENS
    rows = [
        r for h in hiddens for kind in MATRICES for r in problem(h, kind, cfg, time_impls, timed)
    ]
    return {
        "batch": BATCH,
        "hiddens": list(hiddens),
        "matrices": list(MATRICES),
        "spectral_norm": SPECTRAL_NORM,
        "tol": TOL,
        "max_iter": MAX_ITER,
        "phantom_steps": PHANTOM_STEPS,
        "backend": jax.default_backend(),
        "optimistix": None if optx is None else optx.__version__,
        "lineax": None if lx is None else lx.__version__,
        "notes": list(NOTES),
        "rows": rows,
    }


def print_equilibrium(result: dict[str, Any], cfg: Any) -> None:
    """One line per (hidden, matrix, implementation)."""
    del cfg
    print(
        f"\nequilibrium: z = tanh(drive + z @ W), batch {result['batch']}, float32, |W|_2 "
        f"{result['spectral_norm']}, tol {result['tol']:g}, max_iter {result['max_iter']}, "
        f"backend {result['backend']}, optimistix {result['optimistix'] or 'not installed'}"
    )
    for note in result["notes"]:
        print(f"  * {note}")
    cols = f"{'H':>4} {'W':<10} {'impl':<14} {'iters':>5} {'conv':>4} | {'fwd ms':>9} "
    cols += f"{'(min)':>9} {'f+b ms':>9} {'(min)':>9} | {'fwd MB':>8} {'f+b MB':>8} | "
    cols += f"{'|dz|':>8} {'dgrad':>8}"
    print(f"{cols}\n{'-' * len(cols)}")
    most = max((r["repeats"] for r in result["rows"]), default=0)
    for r in result["rows"]:
        note = f"  ({r['repeats']} repeats)" if r["repeats"] < most else ""
        print(
            f"{r['hidden']:>4} {r['matrix']:<10} {r['impl']:<14} {r['iterations']:>5} "
            f"{'yes' if r['converged'] else 'NO':>4} | {r['fwd_ms']:9.3f} {r['fwd_min_ms']:9.3f} "
            f"{r['fwd_bwd_ms']:9.3f} {r['fwd_bwd_min_ms']:9.3f} | "
            f"{r['fwd_temp_bytes'] / 2**20:8.2f} {r['fwd_bwd_temp_bytes'] / 2**20:8.2f} | "
            f"{r['z_max_abs_diff']:8.1e} {r['grad_rel_diff']:8.1e}{note}"
        )


# ----------------------------------------------------------------------------- phantom

PHANTOM_NORMS = (0.5, 0.9)
PHANTOM_STEP_COUNTS = (1, 5, 20)
PHANTOM_HIDDEN, PHANTOM_TIME, PHANTOM_INPUT = 64, 8, 8
PHANTOM_TOL = 1e-12  # float64: the reference is exact to far below the errors measured


def _phantom_solver(steps: int | None) -> fp.Solver:
    """Implicit gradients (steps None) or ``steps`` phantom steps; tight, and loud."""
    gradient = {} if steps is None else {"gradient": "phantom", "phantom_steps": steps}
    return fp.Solver(
        tol=PHANTOM_TOL, rtol=0.0, max_iter=1000, on_nonconvergence="raise", **gradient
    )


def _solve_loss(solver: fp.Solver, norm: float, kind: str) -> tuple[Callable, Any]:
    """sum(z * c) of one fixed point, as a function of theta = (W, drive)."""
    w = weight(kind, PHANTOM_HIDDEN).astype(jnp.float64) * (norm / SPECTRAL_NORM)
    drive = jax.random.normal(jax.random.key(1), (BATCH, PHANTOM_HIDDEN), jnp.float64)
    c = jax.random.normal(jax.random.key(2), (BATCH, PHANTOM_HIDDEN), jnp.float64)

    def loss(theta: Theta) -> jax.Array:
        z, _ = fp.solve(fixed_map, theta, jnp.zeros_like(theta[1]), solver)
        return jnp.sum(z * c)

    return loss, (w, drive)


def _layer_loss(solver: fp.Solver, norm: float) -> tuple[Callable, Any]:
    """mean(ys * c) of the equilibrium layer, as a function of its parameters."""
    layer = layers.Recurrent(
        cell="equilibrium", hidden_size=PHANTOM_HIDDEN, options={"solver": solver}
    )
    xs = jax.random.normal(jax.random.key(1), (BATCH, PHANTOM_TIME, PHANTOM_INPUT), jnp.float64)
    c = jax.random.normal(jax.random.key(2), (BATCH, PHANTOM_TIME, PHANTOM_HIDDEN), jnp.float64)
    params = layer.init(jax.random.key(0), xs)["params"]
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    w_zz = params["w_zz"]
    params = {**params, "w_zz": w_zz * (norm / jnp.linalg.norm(w_zz, 2))}

    def loss(p: Any) -> jax.Array:
        return jnp.mean(layer.apply({"params": p}, xs)[1] * c)

    return loss, params


def _compare(grad: Any, reference: Any) -> tuple[float, float]:
    """(||g - g_ref|| / ||g_ref||, cosine(g, g_ref)) over all leaves."""
    flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])
    g, r = flat(grad), flat(reference)
    error = float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r))
    return error, float(jnp.dot(g, r) / (jnp.linalg.norm(g) * jnp.linalg.norm(r)))


def section_phantom() -> dict[str, Any]:
    """Phantom against implicit gradients (see the module docstring), float64."""
    problems = {f"solve:{kind}": kind for kind in MATRICES} | {"layer": None}
    rows = []
    with jax.enable_x64(True):
        for name, kind in problems.items():
            for norm in PHANTOM_NORMS:

                def build(steps: int | None, norm=norm, kind=kind) -> tuple[Callable, Any]:
                    solver = _phantom_solver(steps)
                    return (
                        _layer_loss(solver, norm)
                        if kind is None
                        else _solve_loss(solver, norm, kind)
                    )

                loss, theta = build(None)
                reference = jax.jit(jax.grad(loss))(theta)
                for steps in PHANTOM_STEP_COUNTS:
                    loss, theta = build(steps)
                    error, cosine = _compare(jax.jit(jax.grad(loss))(theta), reference)
                    rows.append(
                        {
                            "problem": name,
                            "feedback_norm": norm,
                            "phantom_steps": steps,
                            "rel_error": error,
                            "cosine": cosine,
                            "bound": norm**steps,
                        }
                    )
                    print(f"[phantom] {name} |W|={norm} k={steps}: {error:.2e}", flush=True)
    return {
        "batch": BATCH,
        "hidden": PHANTOM_HIDDEN,
        "time_steps": PHANTOM_TIME,
        "tol": PHANTOM_TOL,
        "dtype": "float64",
        "backend": jax.default_backend(),
        "rows": rows,
    }


def print_phantom(result: dict[str, Any]) -> None:
    print(
        f"\nphantom vs implicit gradients: batch {result['batch']}, hidden {result['hidden']}, "
        f"{result['dtype']}, tol {result['tol']:g}, backend {result['backend']}"
    )
    cols = f"{'problem':<17} {'|W_zz|':>6} {'k':>3} | {'rel error':>9} {'cosine':>9} {'|W|^k':>9}"
    print(f"{cols}\n{'-' * len(cols)}")
    for r in result["rows"]:
        print(
            f"{r['problem']:<17} {r['feedback_norm']:>6} {r['phantom_steps']:>3} | "
            f"{r['rel_error']:9.2e} {r['cosine']:9.6f} {r['bound']:9.2e}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Equilibrium sections run on their own.")
    parser.add_argument("--section", choices=["phantom"], default="phantom")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = section_phantom()
    print_phantom(result)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"phantom": result}, indent=2))


if __name__ == "__main__":
    main()
