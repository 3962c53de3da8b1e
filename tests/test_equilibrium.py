"""The equilibrium cell and its fixed-point solvers: memory across time, implicit and phantom
gradients against independent references, acceleration, and honest convergence."""

import dataclasses
import functools
import importlib.util
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn_jax
from fnn_jax import cells, layers
from fnn_jax.cells import equilibrium as eq
from fnn_jax.cells import fixed_point as fp
from fnn_jax.cells._common import orthogonal

BATCH, TIME, INPUT, HIDDEN = 2, 4, 3, 5
TIGHT = fp.Solver(tol=1e-12, rtol=0.0, max_iter=300)  # float64


def _params(key, feedback_norm=0.5, dtype=jnp.float64):
    """Random parameters (biases too), W_zz at spectral norm ``feedback_norm``."""
    params = eq.init_params(key, INPUT, HIDDEN, dtype=dtype)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(params))
    params = {
        n: p + 0.2 * jax.random.normal(k, p.shape, dtype)
        for (n, p), k in zip(sorted(params.items()), keys, strict=True)
    }
    params["w_zz"] *= feedback_norm / jnp.linalg.norm(params["w_zz"], 2)
    return params


def _last_output(params, xs, solver):
    carry0 = eq.init_carry((xs.shape[0],), HIDDEN, xs.dtype)
    step = functools.partial(eq.step, solver=solver)
    _, ys = fnn_jax.scan(step, params, carry0, xs)
    return ys[:, -1]


def _unrolled_last_output(params, xs, iterations=200):
    """A Python loop over time, each step iterating the feedback ``iterations`` times."""
    h = jnp.zeros((xs.shape[0], HIDDEN), xs.dtype)
    for t in range(xs.shape[1]):
        drive = xs[:, t] @ params["w_ih"] + params["b"][None] + h @ params["w_hh"]
        z = h
        for _ in range(iterations):
            z = jnp.tanh(drive + z @ params["w_zz"])
        h = z
    return h


def test_the_output_depends_on_the_first_input_and_its_gradient_matches_finite_differences(
    key,
):
    """dy_T/dx_1 over 4 steps: implicit gradients against central differences, float64."""
    with jax.enable_x64(True):
        params = _params(key)
        xs = jax.random.normal(jax.random.fold_in(key, 2), (BATCH, TIME, INPUT), jnp.float64)
        direction = jax.random.normal(jax.random.fold_in(key, 3), (BATCH, HIDDEN), jnp.float64)
        loss = lambda xs: jnp.sum(_last_output(params, xs, TIGHT) * direction)
        grad_x1 = jax.grad(loss)(xs)[:, 0]
        eps = 1e-6
        numeric = np.zeros((BATCH, INPUT))
        for b in range(BATCH):
            for i in range(INPUT):
                bump = jnp.zeros_like(xs).at[b, 0, i].set(eps)
                numeric[b, i] = (loss(xs + bump) - loss(xs - bump)) / (2 * eps)
        assert np.min(np.abs(numeric)) > 1e-4, "y_T must depend on x_1 (memory across time)"
        np.testing.assert_allclose(grad_x1, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver", ["anderson", "iterate"])
def test_implicit_gradients_equal_backprop_through_a_long_unrolled_iteration(solver, key):
    with jax.enable_x64(True):
        params = _params(key)
        xs = jax.random.normal(jax.random.fold_in(key, 2), (BATCH, TIME, INPUT), jnp.float64)
        tight = fp.Solver(name=solver, tol=1e-12, rtol=0.0, max_iter=300)
        implicit = jax.grad(lambda p, x: jnp.sum(_last_output(p, x, tight) ** 2), (0, 1))
        unrolled = jax.grad(lambda p, x: jnp.sum(_unrolled_last_output(p, x) ** 2), (0, 1))
        got, want = implicit(params, xs), unrolled(params, xs)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


def test_default_gradients_are_accurate_for_a_mean_loss_over_a_large_batch(key):
    """The adjoint's tolerance is relative to the cotangent: a mean over 64 rows makes each
    row's cotangent ~1/64, which an absolute 1e-5 would accept before iterating at all."""
    with jax.enable_x64(True):
        params = _params(key, feedback_norm=0.9)
        xs = jax.random.normal(jax.random.fold_in(key, 2), (64, TIME, INPUT), jnp.float64)

        def grads(solver):
            loss = lambda p, x: jnp.mean(_last_output(p, x, solver) ** 2)
            return jax.grad(loss, (0, 1))(params, xs)

        got, want = grads(fp.Solver()), grads(TIGHT)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert float(jnp.max(jnp.abs(g - w))) < 1e-3 * float(jnp.max(jnp.abs(w)))


def test_a_bfloat16_layer_solves_in_float32_and_converges(key):
    xs = jax.random.normal(key, (BATCH, TIME, INPUT))
    layer = layers.Recurrent(cell="equilibrium", hidden_size=HIDDEN, dtype=jnp.bfloat16)
    params = layer.init(key, xs)["params"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (carry, ys), _ = layer.apply({"params": params}, xs, mutable=["diagnostics"])
        jax.effects_barrier()
    assert ys.dtype == jnp.bfloat16 and carry.h.dtype == jnp.float32
    assert int(jnp.sum(carry.stats.unconverged)) == 0


def test_repeated_misses_warn_at_powers_of_two_per_solver():
    z0 = jnp.zeros((2, 4))
    counted = {}
    for name in ("iterate", "anderson"):
        solver = fp.Solver(name=name, max_iter=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                fp.solve(_shift, NO_FIXED_POINT, z0, solver)
                jax.effects_barrier()
        counted[name] = [str(w.message).split("[")[1][:1] for w in caught]
    assert counted == {"iterate": ["1", "2", "4"], "anderson": ["1", "2", "4"]}


def test_no_solver_metrics_where_nothing_was_solved():
    from fnn_jax import tasks
    from fnn_jax.train import diagnostics

    class Task:
        kind, declared = "loss_only", (tasks.LOSS,)

        def metrics(self, sums):
            return {"loss": float(sums["loss"])}

    zeros = {"solves": 0.0, "iterations": 0.0, "max_iterations": 0.0, "max_residual": 0.0}
    sums = {"loss": 1.0, "diagnostics": {**zeros, "unconverged": 0.0}}
    assert diagnostics.metrics(Task(), sums) == {"loss": 1.0}


def _tanh_map(theta, z):
    w, drive = theta
    return jnp.tanh(drive + z @ w)


def test_phantom_gradient_is_the_gradient_of_k_steps_from_the_fixed_point(key):
    with jax.enable_x64(True):
        w = orthogonal(key, (HIDDEN, HIDDEN), 0.8, jnp.float64)
        drive = jax.random.normal(jax.random.fold_in(key, 1), (BATCH, HIDDEN), jnp.float64)
        z0 = jnp.zeros((BATCH, HIDDEN), jnp.float64)
        phantom = fp.Solver(tol=1e-12, rtol=0.0, max_iter=300, gradient="phantom")

        def k_steps(theta):  # the reference: 3 plain steps started at the (constant) solution
            z = jax.lax.stop_gradient(fp.solve(_tanh_map, theta, z0, TIGHT)[0])
            for _ in range(3):
                z = _tanh_map(theta, z)
            return jnp.sum(z**2)

        def loss(theta, solver):
            return jnp.sum(fp.solve(_tanh_map, theta, z0, solver)[0] ** 2)

        three = dataclasses.replace(phantom, phantom_steps=3)
        got = jax.grad(loss)((w, drive), three)
        want = jax.grad(k_steps)((w, drive))
        for g, wa in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, wa, rtol=1e-10, atol=1e-12)
        # The value is the solver's in both modes; more steps approach the implicit gradient.
        assert loss((w, drive), three) == loss((w, drive), TIGHT)
        implicit = jax.grad(loss)((w, drive), TIGHT)[0]
        errors = [
            float(
                jnp.max(
                    jnp.abs(
                        jax.grad(loss)((w, drive), dataclasses.replace(phantom, phantom_steps=k))[0]
                        - implicit
                    )
                )
            )
            for k in (1, 5, 40)
        ]
        assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3 * errors[0]


def _symmetric_feedback(key, norm):
    w = jax.random.normal(key, (16, 16))
    w = w + w.T
    return norm * w / jnp.linalg.norm(w, 2)


def test_anderson_reaches_the_tolerance_in_fewer_iterations_than_plain_iteration(key):
    """A slowly contracting map (||W||_2 = 0.95): the same fixed point, far fewer steps."""
    theta = (_symmetric_feedback(key, 0.95), 0.1 * jax.random.normal(key, (4, 16)))
    z0 = jnp.zeros((4, 16))
    results = {}
    for name in ("iterate", "anderson"):
        solver = fp.Solver(name=name, max_iter=500, rtol=0.0)
        results[name] = fp.solve(_tanh_map, theta, z0, solver)
    (z_plain, plain), (z_anderson, anderson) = results["iterate"], results["anderson"]
    assert bool(jnp.all(plain.converged)) and bool(jnp.all(anderson.converged))
    assert int(jnp.max(anderson.iterations)) < int(jnp.min(plain.iterations))
    assert int(jnp.sum(anderson.iterations)) * 3 < int(jnp.sum(plain.iterations))
    np.testing.assert_allclose(z_anderson, z_plain, atol=2e-4)  # tol / (1 - 0.95)


def test_anderson_converges_where_plain_iteration_fails_on_a_non_contractive_map():
    """||W||_2 = 3: plain iteration misses in 200 steps (residual ~2), Anderson solves. The
    map is chaotic enough that Anderson's step count depends on the CPU's rounding (25 and
    50 iterations on one machine, 25 and 83 on another), hence the generous budget."""
    key = jax.random.key(0)
    drive = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (2, 8))
    theta = (orthogonal(key, (8, 8), 3.0), drive)
    z0 = jnp.zeros((2, 8))
    results = {
        name: fp.solve(
            _tanh_map, theta, z0, fp.Solver(name=name, max_iter=200, on_nonconvergence="ignore")
        )
        for name in ("iterate", "anderson")
    }
    assert not np.any(results["iterate"][1].converged)
    assert np.all(results["iterate"][1].residual > 1.0)
    z, anderson = results["anderson"]
    assert np.all(anderson.converged)
    np.testing.assert_allclose(_tanh_map(theta, z), z, atol=2e-5)


def test_iterations_and_residual_are_those_of_a_python_loop(key):
    theta = (_symmetric_feedback(key, 0.9), jax.random.normal(key, (3, 16)))
    solver = fp.Solver(name="iterate", tol=1e-5, rtol=1e-5, max_iter=200)
    z, diagnostics = fp.solve(_tanh_map, theta, jnp.zeros((3, 16)), solver)
    w, drive = (np.asarray(a, np.float32) for a in theta)
    for row in range(3):
        zr, updates = np.zeros(16, np.float32), 0
        while True:
            gz = np.tanh(drive[row] + zr @ w)
            residual = np.max(np.abs(gz - zr))
            if residual <= 1e-5 + 1e-5 * np.max(np.abs(zr)):
                break
            zr, updates = gz, updates + 1
        assert int(diagnostics.iterations[row]) == updates
        np.testing.assert_allclose(diagnostics.residual[row], residual, atol=2e-7)
        np.testing.assert_allclose(z[row], zr, atol=1e-6)


NO_FIXED_POINT = (jnp.eye(4), jnp.ones((2, 4)))  # z -> z + 1 (identity activation)


def _shift(theta, z):
    w, drive = theta
    return drive + z @ w


@pytest.mark.parametrize("name", ["anderson", "iterate"])
def test_a_map_without_fixed_point_is_reported_never_returned_as_converged(name):
    z0 = jnp.zeros((2, 4))
    ignore = fp.Solver(name=name, max_iter=7, on_nonconvergence="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, diagnostics = jax.jit(fp.solve, static_argnums=(0, 3))(
            _shift, NO_FIXED_POINT, z0, ignore
        )
        jax.effects_barrier()
    assert not np.any(diagnostics.converged)
    assert np.all(diagnostics.iterations == 7)
    assert np.all(diagnostics.residual > 0.5)

    warn = dataclasses.replace(ignore, on_nonconvergence="warn")
    with pytest.warns(fp.NonConvergenceWarning, match=r"forward fixed-point solve did not conv"):
        fp.solve(_shift, NO_FIXED_POINT, z0, warn)
        jax.effects_barrier()

    loud = dataclasses.replace(ignore, on_nonconvergence="raise")
    with pytest.raises(fp.NonConvergenceError, match=r"^forward .* residual"):
        fp.nonconvergence_errors()(jax.jit(fp.solve, static_argnums=(0, 3)))(
            _shift, NO_FIXED_POINT, z0, loud
        )


def test_converged_solves_under_vmap_raise_nothing(key):
    """Under vmap the policy's callback runs for every solve; it must look at the flags."""
    w = _symmetric_feedback(key, 0.5)
    drives = jax.random.normal(key, (3, 2, 16))
    solver = fp.Solver(on_nonconvergence="raise")
    solve = jax.jit(jax.vmap(lambda d: fp.solve(_tanh_map, (w, d), jnp.zeros((2, 16)), solver)))
    _, diagnostics = jax.block_until_ready(solve(drives))
    assert np.all(diagnostics.converged)


def test_the_issue_case_feedback_norm_15_by_plain_iteration_raises_through_the_layer(key):
    """||W_zz|| = 1.5: plain iteration misses; the layer checks each sequence once."""
    xs = jax.random.normal(key, (BATCH, TIME, INPUT))
    solver = fp.Solver(name="iterate", on_nonconvergence="raise")
    layer = layers.Recurrent(cell="equilibrium", hidden_size=HIDDEN, options={"solver": solver})
    params = layer.init(key, xs)["params"]
    params["w_zz"] = params["w_zz"] * (1.5 / jnp.linalg.norm(params["w_zz"], 2)) * 4
    with pytest.raises(fp.NonConvergenceError, match=r"did not converge: residual \d"):
        layer.apply({"params": params}, xs)  # eager: checked on the host at once


MISSES = fp.Solver(name="iterate", max_iter=2, tol=1e-9, rtol=0.0, on_nonconvergence="raise")
TRANSFORMS = {
    "jit": lambda f: jax.jit(f),
    "vmap": lambda f: jax.jit(jax.vmap(f, in_axes=(None, 0))),
    "grad": lambda f: jax.jit(jax.grad(lambda p, xs: jnp.sum(f(p, xs)))),
}


@pytest.mark.parametrize("transform", ["eager", *TRANSFORMS])
def test_a_layer_that_misses_under_raise_is_caught_by_class(transform, key):
    """``except NonConvergenceError`` catches the miss: an eager call raises it as is; a
    compiled one (jit, vmap, grad) inside ``nonconvergence_errors()``, whose decorator
    form waits for the result. Its message names the residual."""
    xs = jax.random.normal(key, (BATCH, TIME, INPUT))
    layer = layers.Recurrent(cell="equilibrium", hidden_size=HIDDEN, options={"solver": MISSES})
    params = jax.eval_shape(layer.init, key, xs)["params"]
    params = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, p.dtype), params)
    apply = lambda p, x: layer.apply({"params": p}, x)[1]
    args = (params, xs[None] if transform == "vmap" else xs)
    message = r"^(forward|adjoint) fixed-point solve did not converge: residual \d"
    with pytest.raises(fp.NonConvergenceError, match=message) as caught:
        if transform == "eager":
            apply(*args)
        else:
            fp.nonconvergence_errors()(TRANSFORMS[transform](apply))(*args)
    if transform != "eager":
        assert isinstance(caught.value.__cause__, jax.errors.JaxRuntimeError)
    with pytest.raises(fp.NonConvergenceError, match=message), fp.nonconvergence_errors():
        jax.block_until_ready(jax.jit(apply)(params, xs))  # the block form


def test_other_errors_pass_through_nonconvergence_errors_unchanged():
    def fail(x):
        raise ValueError("not a solver")

    program = jax.jit(lambda x: jax.debug.callback(fail, x) or x)
    with pytest.raises(jax.errors.JaxRuntimeError, match="ValueError: not a solver"):
        fp.nonconvergence_errors()(program)(jnp.ones(2))
    with pytest.raises(KeyError), fp.nonconvergence_errors():
        raise KeyError("x")


def test_a_training_run_with_raise_fails_with_nonconvergence_error_naming_the_residual(
    tmp_path,
):
    from fnn_jax.train import train_and_evaluate
    from tests.test_reliability import _config

    config = _config()
    with config.unlocked():
        config.model.cell = "equilibrium"
        config.model.equilibrium.update(
            solver="iterate", max_iter=1, tol=1e-9, rtol=0.0, on_nonconvergence="raise"
        )
    message = r"^(forward|adjoint) fixed-point solve did not converge: residual \d"
    with pytest.raises(fp.NonConvergenceError, match=message):  # no helper needed
        train_and_evaluate(config, tmp_path / "run")


@pytest.mark.parametrize("policy", ["warn", "raise"])
def test_an_adjoint_that_misses_the_tolerance_is_reported(policy, key):
    """The forward solve starts at the fixed point (0 iterations); the adjoint of a slow
    contraction cannot converge in 3."""
    w = _symmetric_feedback(key, 0.97)
    drive = jax.random.normal(key, (2, 16))
    z_star, _ = fp.solve(_tanh_map, (w, drive), jnp.zeros((2, 16)), fp.Solver(max_iter=500))
    solver = fp.Solver(name="iterate", max_iter=3, on_nonconvergence=policy)
    _, forward = fp.solve(_tanh_map, (w, drive), z_star, solver)
    assert np.all(forward.converged) and np.all(forward.iterations == 0)
    loss = jax.jit(jax.grad(lambda d: jnp.sum(fp.solve(_tanh_map, (w, d), z_star, solver)[0])))
    if policy == "warn":
        with pytest.warns(fp.NonConvergenceWarning, match=r"adjoint fixed-point solve did not"):
            jax.block_until_ready(loss(drive))
            jax.effects_barrier()
    else:
        adjoint = r"^adjoint .* residual \d"
        with pytest.raises(fp.NonConvergenceError, match=adjoint), fp.nonconvergence_errors():
            jax.block_until_ready(loss(drive))


def test_halt_makes_an_adjoint_miss_a_nan_gradient_and_leaves_a_converged_one(key):
    """fixed_point.HALT (a vectorised group's "raise"): no callback, so one trial's miss
    cannot fail the whole program; a missed adjoint makes the gradient NaN (the step is
    non-finite and the engine stops that trial), a converged one is the plain gradient."""
    w = _symmetric_feedback(key, 0.97)
    drive = jax.random.normal(key, (2, 16))
    z_star, _ = fp.solve(_tanh_map, (w, drive), jnp.zeros((2, 16)), fp.Solver(max_iter=500))

    def gradient(max_iter, policy):
        solver = fp.Solver(name="iterate", max_iter=max_iter, on_nonconvergence=policy)
        solve = lambda d: jnp.sum(fp.solve(_tanh_map, (w, d), z_star, solver)[0])
        return jax.jit(jax.grad(solve))(drive)

    assert np.all(np.isnan(gradient(3, fp.HALT)))
    np.testing.assert_array_equal(gradient(500, fp.HALT), gradient(500, "ignore"))
    assert np.all(np.isfinite(gradient(500, fp.HALT)))


def test_gradient_memory_does_not_grow_with_the_iterations(key):
    theta = (_symmetric_feedback(key, 0.9), jax.random.normal(key, (64, 16)))
    z0 = jnp.zeros((64, 16))

    def temp_bytes(max_iter):
        solver = fp.Solver(name="iterate", max_iter=max_iter, on_nonconvergence="ignore")
        grad = jax.jit(jax.grad(lambda t: jnp.sum(fp.solve(_tanh_map, t, z0, solver)[0])))
        return grad.lower(theta).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(1000) == temp_bytes(10)


@pytest.mark.skipif(not importlib.util.find_spec("optimistix"), reason="needs optimistix")
def test_fixed_point_and_gradient_equal_optimistix(key):
    import optimistix as optx

    with jax.enable_x64(True):
        w = orthogonal(key, (HIDDEN, HIDDEN), 0.7, jnp.float64)
        drive = jax.random.normal(key, (BATCH, HIDDEN), jnp.float64)
        z0 = jnp.zeros((BATCH, HIDDEN), jnp.float64)

        def ours(theta):
            return fp.solve(_tanh_map, theta, z0, TIGHT)[0]

        def theirs(theta):
            fn = lambda z, theta: _tanh_map(theta, z)
            iteration = optx.FixedPointIteration(rtol=0.0, atol=1e-12)
            return optx.fixed_point(fn, iteration, z0, theta, max_steps=500).value

        np.testing.assert_allclose(ours((w, drive)), theirs((w, drive)), atol=1e-11)
        direction = jax.random.normal(jax.random.fold_in(key, 1), (BATCH, HIDDEN), jnp.float64)
        got = jax.grad(lambda t: jnp.sum(ours(t) * direction))((w, drive))
        want = jax.grad(lambda t: jnp.sum(theirs(t) * direction))((w, drive))
        for g, wa in zip(got, want, strict=True):
            np.testing.assert_allclose(g, wa, rtol=1e-9, atol=1e-11)


def test_bound_feedback_caps_the_spectral_norm_and_leaves_smaller_ones(key):
    params = eq.init_params(key, INPUT, 8, spectral_scale=1.7)
    capped = eq.bound_feedback(params, 0.9)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(capped["w_zz"]), 2), 0.9, rtol=1e-5)
    np.testing.assert_allclose(capped["w_zz"], params["w_zz"] * (0.9 / 1.7), rtol=1e-5)
    assert eq.bound_feedback(params, 2.0)["w_zz"] is params["w_zz"] or np.array_equal(
        eq.bound_feedback(params, 2.0)["w_zz"], params["w_zz"]
    )
    # The layer runs the bounded map: it equals the layer given the capped matrix itself.
    xs = jax.random.normal(key, (BATCH, TIME, INPUT))
    bounded = layers.Recurrent(
        cell="equilibrium", hidden_size=8, options={"max_feedback_norm": 0.9}
    )
    plain = layers.Recurrent(cell="equilibrium", hidden_size=8)
    _, got = bounded.apply({"params": params}, xs)
    _, want = plain.apply({"params": capped}, xs)
    np.testing.assert_array_equal(got, want)
    grads = jax.grad(lambda p: jnp.sum(bounded.apply({"params": p}, xs)[1]))(params)
    assert float(jnp.abs(grads["w_zz"]).max()) > 0


def test_the_layer_sows_the_solver_statistics_of_the_valid_steps(key):
    xs = jax.random.normal(key, (3, 6, INPUT))
    lengths = jnp.array([6, 2, 4], jnp.int32)
    layer = layers.Recurrent(cell="equilibrium", hidden_size=HIDDEN)
    params = layer.init(key, xs, lengths)["params"]
    (carry, _), sown = layer.apply({"params": params}, xs, lengths, mutable=["diagnostics"])
    (summary,) = sown["diagnostics"]["solver"]
    assert int(summary["solves"]) == 12  # 6 + 2 + 4: padding is not solved
    assert int(summary["iterations"]) == int(jnp.sum(carry.stats.iterations))
    assert int(summary["max_iterations"]) == int(jnp.max(carry.stats.max_iterations))
    assert int(summary["unconverged"]) == 0 and float(summary["max_residual"]) < 2e-5
    # The stats count real work: each sequence alone reports the same iterations.
    for b, n in enumerate(lengths.tolist()):
        alone, _ = layer.apply({"params": params}, xs[b : b + 1, :n])
        assert int(alone.stats.iterations[0]) == int(carry.stats.iterations[b])


def test_bad_solver_settings_are_errors_naming_the_field():
    with pytest.raises(ValueError, match=r"Solver\.name='newton' is not valid; valid choices"):
        fp.Solver(name="newton")
    with pytest.raises(ValueError, match=r"Solver\.tol must be > 0; got 0"):
        fp.Solver(tol=0)
    with pytest.raises(ValueError, match=r"Solver\.max_iter must be an int >= 1; got 0"):
        fp.Solver(max_iter=0)
    with pytest.raises(ValueError, match=r"Solver\.on_nonconvergence='loud' is not valid"):
        fp.Solver(on_nonconvergence="loud")


@pytest.mark.slow
def test_a_run_logs_solver_diagnostics_and_an_lstm_run_does_not(tmp_path):
    from fnn_jax.train import train_and_evaluate
    from tests.test_reliability import _config

    records = {}
    for cell in ("equilibrium", "lstm"):
        config = _config()
        with config.unlocked():
            config.model.cell = cell
        report = train_and_evaluate(config, tmp_path / cell)
        lines = (tmp_path / cell / "metrics.jsonl").read_text().splitlines()
        records[cell] = [json.loads(line) for line in lines]
        records[cell + "_report"] = report["results"]["test"]
    solver_keys = {
        "solver_iterations_mean",
        "solver_iterations_max",
        "solver_residual_max",
        "solver_converged_fraction",
    }
    for record in records["equilibrium"]:
        if record["split"] in ("train", "validation"):
            assert solver_keys <= set(record), record
            assert record["solver_converged_fraction"] == 1.0
            assert 1 <= record["solver_iterations_mean"] <= record["solver_iterations_max"] <= 50
            assert record["solver_residual_max"] <= 2e-5  # tol + rtol * |z| with |z| <= 1
    assert solver_keys <= set(records["equilibrium_report"])
    assert not any(solver_keys & set(r) for r in records["lstm"])
    assert cells.get("lstm").summarize is None
