"""Each cell's step equals an independent NumPy implementation of its formula, and its
gradients pass finite-difference checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn_jax
from fnn_jax import cells
from tests import numpy_reference as ref

INPUT, HIDDEN, BATCH = 5, 7, 3

# (cell module, step options, numpy reference)
CASES = {
    "elman_tanh": (cells.elman, {}, ref.elman),
    "elman_relu": (
        cells.elman,
        {"activation": "relu"},
        functools.partial(ref.elman, activation="relu"),
    ),
    "elman_leaky_relu": (
        cells.elman,
        {"activation": "leaky_relu"},
        functools.partial(ref.elman, activation="leaky_relu"),
    ),
    "elman_sigmoid": (
        cells.elman,
        {"activation": "sigmoid"},
        functools.partial(ref.elman, activation="sigmoid"),
    ),
    "jordan": (cells.jordan, {}, ref.jordan),
    "jordan_relu_identity": (
        cells.jordan,
        {"activation": "relu", "output_activation": "identity"},
        functools.partial(ref.jordan, activation="relu", output_activation="identity"),
    ),
    "lstm": (cells.lstm, {}, ref.lstm),
    "gru": (cells.gru, {}, ref.gru),
    "lru": (cells.lru, {}, ref.lru),
    "mingru": (cells.mingru, {}, ref.mingru),
    # Solved to 1e-6 (the default 1e-5 leaves errors up to 2e-5 at ||W_zz|| = 0.5).
    "equilibrium": (
        cells.equilibrium,
        {"solver": cells.fixed_point.Solver(tol=1e-6, rtol=0.0)},
        ref.equilibrium,
    ),
}


def _random_params(module, key):
    """Initialised parameters with every leaf perturbed, so zero biases test nothing away."""
    params = module.init_params(key, INPUT, HIDDEN)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    noisy = [
        x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
    ]
    params = jax.tree.unflatten(tree, noisy)
    if module is cells.equilibrium:  # keep the feedback a contraction
        params["w_zz"] = params["w_zz"] * (0.5 / jnp.linalg.norm(params["w_zz"], 2))
    return params


def _state(carry):
    """The recurrent state in a carry (the equilibrium cell's also counts its solves)."""
    return (carry.h,) if isinstance(carry, cells.equilibrium.EquilibriumCarry) else tuple(carry)


def _random_carry(module, key):
    carry = module.init_carry((BATCH,), HIDDEN)
    if module is cells.equilibrium:
        h = 0.5 * jax.random.normal(key, carry.h.shape)
        return carry._replace(h=h)
    leaves, tree = jax.tree.flatten(carry)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        0.5 * jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, noisy)


def _to_numpy(tree):
    return jax.tree.map(
        lambda a: np.asarray(a, np.complex128 if jnp.iscomplexobj(a) else np.float64), tree
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_step_matches_numpy_formula(name, key):
    module, options, reference = CASES[name]
    params = _random_params(module, key)
    carry = _random_carry(module, jax.random.fold_in(key, 2))
    x = jax.random.normal(jax.random.fold_in(key, 3), (BATCH, INPUT))

    new_carry, y = module.step(params, carry, x, **options)

    np_carry = _to_numpy(_state(carry) if len(_state(carry)) > 1 else _state(carry)[0])
    want_carry, want_y = reference(_to_numpy(params), np_carry, np.asarray(x, np.float64))
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    want_carry = want_carry if isinstance(want_carry, tuple) else (want_carry,)
    for got, want in zip(_state(new_carry), want_carry, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_scan_equals_python_loop_over_step(name, key):
    module, options, _ = CASES[name]
    params = _random_params(module, key)
    carry0 = _random_carry(module, jax.random.fold_in(key, 2))
    xs = jax.random.normal(jax.random.fold_in(key, 3), (BATCH, 6, INPUT))
    step = functools.partial(module.step, **options)

    carry, outputs = carry0, []
    for t in range(xs.shape[1]):
        carry, y = step(params, carry, xs[:, t])
        outputs.append(y)
    want_ys = jnp.stack(outputs, axis=1)

    got_carry, got_ys = fnn_jax.scan(step, params, carry0, xs)
    np.testing.assert_allclose(got_ys, want_ys, rtol=1e-5, atol=1e-6)
    for got, want in zip(got_carry, carry, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # The hoisted input projection computes the same thing.
    projected = functools.partial(module.step_projected, **options)
    _, hoisted_ys = fnn_jax.scan(projected, params, carry0, xs, project=module.project_inputs)
    np.testing.assert_allclose(hoisted_ys, want_ys, rtol=1e-5, atol=1e-6)


def test_scan_of_a_cells_own_step_runs_at_the_unroll_the_cell_declares(key):
    """Research code calling fnn_jax.scan(elman.step, ...) gets the layers' unroll of 4."""
    from fnn_jax.cells import elman, lstm

    def unrolls(module, step, **options):
        params = _random_params(module, key)
        carry0 = _random_carry(module, key)
        xs = jnp.zeros((BATCH, 8, INPUT))
        run = lambda xs: fnn_jax.scan(step, params, carry0, xs, **options)
        return [
            e.params["unroll"] for e in jax.make_jaxpr(run)(xs).eqns if e.primitive.name == "scan"
        ]

    assert elman.SPEC.unroll == 4 and lstm.SPEC.unroll == 1
    assert unrolls(elman, elman.step) == [4]
    assert unrolls(elman, functools.partial(elman.step, activation="relu")) == [4]
    assert unrolls(elman, elman.step_projected, project=elman.project_inputs) == [4]
    assert unrolls(elman, elman.step, unroll=2) == [2]  # an explicit unroll wins
    assert unrolls(lstm, lstm.step) == [1]
    assert unrolls(elman, lambda p, c, x: elman.step(p, c, x)) == [1]  # a step of your own


def test_every_registered_cell_has_a_numpy_reference_case():
    """A new cell in cells.REGISTRY needs a CASES entry (and a formula in numpy_reference)."""
    covered = {module.SPEC.name for module, _, _ in CASES.values()}
    assert set(cells.REGISTRY) <= covered, f"no CASES entry for {set(cells.REGISTRY) - covered}"


@pytest.mark.parametrize("cell", sorted(cells.REGISTRY))
def test_scan_gradients_match_finite_differences(cell, key):
    # The first case of each registered cell (its default options).
    module, options, _ = next(case for case in CASES.values() if case[0].SPEC.name == cell)
    with jax.enable_x64(True):
        to64 = lambda a: a.astype(jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64)
        params = jax.tree.map(to64, _random_params(module, key))
        carry0 = jax.tree.map(to64, module.init_carry((2,), HIDDEN))
        xs = jax.random.normal(jax.random.fold_in(key, 3), (2, 4, INPUT), jnp.float64)
        step = functools.partial(module.step, **options)
        if module is cells.equilibrium:
            solver = cells.fixed_point.Solver(tol=1e-13, rtol=0.0, max_iter=500)
            step = functools.partial(step, solver=solver)

        def loss(params, xs):
            _, ys = fnn_jax.scan(step, params, carry0, xs)
            return jnp.sum(ys**2)

        check_grads(loss, (params, xs), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("module", [cells.lru, cells.mingru], ids=["lru", "mingru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_parallel_scan_equals_sequential_scan(module, reverse, key):
    params = _random_params(module, key)
    carry0 = _random_carry(module, jax.random.fold_in(key, 2))
    xs = jax.random.normal(jax.random.fold_in(key, 3), (BATCH, 9, INPUT))
    lengths = jnp.array([9, 4, 0])
    want_carry, want_ys = fnn_jax.scan(
        module.step, params, carry0, xs, lengths=lengths, reverse=reverse
    )
    got_carry, got_ys = module.parallel(params, carry0, xs, lengths=lengths, reverse=reverse)
    np.testing.assert_allclose(got_ys, want_ys, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_carry.h, want_carry.h, rtol=1e-5, atol=1e-5)


def test_lru_eigenvalues_lie_inside_the_unit_circle(key):
    params = cells.lru.init_params(key, INPUT, 64, r_min=0.5, r_max=0.99)
    modulus = jnp.abs(cells.lru.eigenvalues(params))
    assert float(modulus.min()) >= 0.5 - 1e-6
    assert float(modulus.max()) <= 0.99 + 1e-6


def test_step_rejects_wrong_feature_size(key):
    params = cells.lstm.init_params(key, INPUT, HIDDEN)
    carry = cells.lstm.init_carry((BATCH,), HIDDEN)
    with pytest.raises(ValueError, match=r"x_t has shape \(3, 4\); expected \[\.\.\., 5\]"):
        cells.lstm.step(params, carry, jnp.ones((BATCH, 4)))


def test_unknown_activation_lists_valid_choices(key):
    params = cells.elman.init_params(key, INPUT, HIDDEN)
    carry = cells.elman.init_carry((BATCH,), HIDDEN)
    with pytest.raises(ValueError, match="unknown activation 'swish'.*leaky_relu"):
        cells.elman.step(params, carry, jnp.ones((BATCH, INPUT)), activation="swish")
