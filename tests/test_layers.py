"""Layers and models: padding, reverse, bidirectional pooling, recompilation, bad input."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn_jax
from fnn_jax import cells, layers, models

ALL_CELLS = sorted(cells.REGISTRY)
LENGTHS = (7, 3, 1, 5)


def _padded_batch(key, features=4):
    xs = jax.random.normal(key, (len(LENGTHS), max(LENGTHS), features))
    lengths = jnp.array(LENGTHS)
    valid = jnp.arange(xs.shape[1])[None, :, None] < lengths[:, None, None]
    # Garbage past each length: it must not leak into anything.
    return jnp.where(valid, xs, 1e3), lengths


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_padded_batch_equals_each_sequence_alone(cell, reverse, key):
    xs, lengths = _padded_batch(key)
    layer = layers.Recurrent(cell=cell, hidden_size=6, reverse=reverse)
    variables = layer.init(key, xs, lengths)
    carry, ys = layer.apply(variables, xs, lengths)
    for b, n in enumerate(LENGTHS):
        alone_carry, alone_ys = layer.apply(variables, xs[b : b + 1, :n])
        np.testing.assert_allclose(ys[b, :n], alone_ys[0], rtol=1e-5, atol=1e-5)
        assert not np.any(ys[b, n:]), "outputs past the length must be zero"
        # Every carry leaf, the equilibrium cell's solve counts too (padding is not solved).
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(alone_carry), strict=True):
            np.testing.assert_allclose(got[b], want[0], rtol=1e-5, atol=1e-5)


PARALLEL_CELLS = sorted(name for name, spec in cells.REGISTRY.items() if spec.parallel)


def test_the_cells_with_an_associative_scan_are_the_linear_recurrences():
    assert PARALLEL_CELLS == ["lru", "mingru"]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", PARALLEL_CELLS)
def test_associative_layer_equals_sequential_layer(cell, reverse, key):
    xs, lengths = _padded_batch(key)
    sequential = layers.Recurrent(cell=cell, hidden_size=6, reverse=reverse)
    associative = layers.Recurrent(
        cell=cell, hidden_size=6, reverse=reverse, scan_impl="associative"
    )
    variables = sequential.init(key, xs, lengths)
    _, seq_out = sequential.apply(variables, xs, lengths)
    jaxpr = str(jax.make_jaxpr(lambda v: associative.apply(v, xs, lengths))(variables))
    assert "while" not in jaxpr and "scan" not in jaxpr.replace("associative", "")
    _, assoc_out = associative.apply(variables, xs, lengths)
    np.testing.assert_allclose(assoc_out, seq_out, 1e-5, 1e-5)


@pytest.mark.parametrize("cell", sorted(set(cells.REGISTRY) - set(PARALLEL_CELLS)))
def test_associative_scan_on_a_nonlinear_cell_is_an_error_not_a_sequential_run(cell, key):
    layer = layers.Recurrent(cell=cell, hidden_size=6, scan_impl="associative")
    with pytest.raises(ValueError, match=f"cell '{cell}' has no associative-scan form"):
        layer.init(key, jnp.ones((2, 3, 4)))


def test_auto_scan_impl_is_sequential_on_cpu_and_checks_its_name():
    assert cells.resolve_scan_impl(cells.get("lru"), "auto") == "sequential"
    assert cells.resolve_scan_impl(cells.get("lstm"), "auto") == "sequential"
    with pytest.raises(ValueError, match="scan_impl='parallel' is not valid"):
        cells.resolve_scan_impl(cells.get("lru"), "parallel")


def test_hoisted_projection_equals_per_step_projection(key):
    xs, lengths = _padded_batch(key)
    hoisted = layers.Recurrent(cell="gru", hidden_size=6, hoist_inputs=True)
    per_step = layers.Recurrent(cell="gru", hidden_size=6, hoist_inputs=False)
    variables = hoisted.init(key, xs)
    np.testing.assert_allclose(
        hoisted.apply(variables, xs, lengths)[1],
        per_step.apply(variables, xs, lengths)[1],
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("cell", "tuning"),
    [("lstm", {"unroll": 3, "remat": True}), ("elman", {"unroll": 1})],
    ids=["lstm_unroll3_remat", "elman_default_unroll4_vs_1"],
)
def test_unroll_and_remat_do_not_change_outputs_or_gradients(key, cell, tuning):
    xs, _ = _padded_batch(key)
    plain = layers.Recurrent(cell=cell, hidden_size=6)
    tuned = layers.Recurrent(cell=cell, hidden_size=6, **tuning)
    variables = plain.init(key, xs)

    def loss(module, variables):
        return jnp.sum(module.apply(variables, xs)[1] ** 2)

    np.testing.assert_allclose(loss(plain, variables), loss(tuned, variables), rtol=1e-6)
    g_plain = jax.grad(lambda v: loss(plain, v))(variables)
    g_tuned = jax.grad(lambda v: loss(tuned, v))(variables)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_plain, g_tuned
    )


def test_bidirectional_backward_half_reads_each_sequence_from_its_own_end(key):
    xs, lengths = _padded_batch(key)
    stack = layers.Stacked(cell="gru", hidden_size=5, num_layers=2, bidirectional=True)
    variables = stack.init(key, xs, lengths)
    _, ys = stack.apply(variables, xs, lengths)
    assert ys.shape == (4, 7, 10)
    for b, n in enumerate(LENGTHS):
        _, alone = stack.apply(variables, xs[b : b + 1, :n])
        np.testing.assert_allclose(ys[b, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_stacked_dropout_is_active_only_in_training(key):
    xs, _ = _padded_batch(key)
    stack = layers.Stacked(cell="elman", hidden_size=8, num_layers=2, dropout=0.5)
    variables = stack.init(key, xs)
    _, eval_a = stack.apply(variables, xs)
    _, eval_b = stack.apply(variables, xs)
    np.testing.assert_array_equal(eval_a, eval_b)
    rngs = {"dropout": jax.random.key(1)}
    _, train = stack.apply(variables, xs, deterministic=False, rngs=rngs)
    assert not np.allclose(train, eval_a)


def test_last_pooling_takes_each_sequences_last_valid_step():
    ys = jnp.arange(2 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 2)
    pooled = models.pool(ys, jnp.array([4, 2]), "last")
    np.testing.assert_array_equal(pooled, np.stack([ys[0, 3], ys[1, 1]]))
    mean = models.pool(ys, jnp.array([4, 2]), "mean")
    np.testing.assert_allclose(mean, np.stack([ys[0].mean(0), ys[1, :2].mean(0)]))
    bidir = models.pool(ys, jnp.array([4, 2]), "last", bidirectional=True)
    np.testing.assert_array_equal(
        bidir, np.stack([[ys[0, 3, 0], ys[0, 0, 1]], [ys[1, 1, 0], ys[1, 0, 1]]])
    )


@pytest.mark.parametrize(
    ("model", "inputs", "shape"),
    [
        (models.SequenceClassifier(cell="lstm", hidden_size=8, num_classes=3), (2, 5, 4), (2, 3)),
        (
            models.Forecaster(cell="jordan", hidden_size=8, horizon=3, targets=4),
            (2, 5, 4),
            (2, 3, 4),
        ),
        (models.CharLM(cell="gru", hidden_size=8, vocab_size=11, embed_dim=4), (2, 5), (2, 5, 11)),
    ],
    ids=["classifier", "forecaster", "charlm"],
)
def test_models_end_in_a_head_of_the_task_size(model, inputs, shape, key):
    x = jnp.ones(inputs, jnp.int32) if len(inputs) == 2 else jnp.ones(inputs)
    variables = model.init(key, x)
    assert model.apply(variables, x).shape == shape
    assert "head" in variables["params"] and "encoder" in variables["params"]


def test_second_call_with_same_shapes_does_not_recompile(key):
    xs, lengths = _padded_batch(key)
    model = models.SequenceClassifier(cell="lstm", hidden_size=8, num_classes=3)
    variables = model.init(key, xs, lengths)
    traces = []

    @jax.jit
    def forward(variables, xs, lengths):
        traces.append(1)
        return model.apply(variables, xs, lengths)

    forward(variables, xs, lengths)
    forward(variables, xs + 1.0, lengths[::-1])
    assert len(traces) == 1
    assert forward._cache_size() == 1


@pytest.mark.parametrize(
    ("xs", "lengths", "message"),
    [
        (jnp.ones((7, 4)), None, r"xs must be \[batch, time, features\]; got shape \(7, 4\)"),
        (jnp.ones((2, 7, 3)), None, r"xs has shape \(2, 7, 3\); expected \[batch, time, 4\]"),
        (jnp.ones((2, 7, 4), jnp.int32), None, "xs must be a floating dtype; got int32"),
        (jnp.ones((2, 7, 4)), jnp.array([7, 8]), r"lengths must lie in \[0, 7\].*max 8"),
        (
            jnp.ones((2, 7, 4)),
            jnp.array([7]),
            r"lengths must have shape \[batch\] = \(2,\); got \(1,\)",
        ),
        (jnp.ones((2, 7, 4)), jnp.array([7.0, 2.0]), "lengths must be an integer array"),
    ],
    ids=[
        "missing_batch_axis",
        "feature_size",
        "int_dtype",
        "length_too_long",
        "lengths_shape",
        "float_lengths",
    ],
)
def test_bad_input_names_argument_and_shapes(xs, lengths, message, key):
    layer = layers.Recurrent(cell="lstm", hidden_size=6)
    variables = layer.init(key, jnp.ones((2, 7, 4)))
    with pytest.raises(ValueError, match=message):
        layer.apply(variables, xs, lengths)


def test_scan_rejects_unbatched_sequence(key):
    params = cells.gru.init_params(key, 4, 6)
    with pytest.raises(ValueError, match="rank 2, expected rank 3"):
        fnn_jax.scan(cells.gru.step, params, cells.gru.init_carry((), 6), jnp.ones((7, 4)))


def test_unknown_cell_lists_valid_choices(key):
    with pytest.raises(ValueError, match="unknown cell 'rnn'; valid choices: .*'elman'"):
        layers.Recurrent(cell="rnn").init(key, jnp.ones((1, 2, 3)))


@pytest.mark.parametrize("module", ["recurrent", "bidirectional", "stacked"])
def test_every_layer_returns_the_final_carry_and_the_outputs(module, key):
    xs = jnp.ones((2, 5, 3))
    layer = {
        "recurrent": layers.Recurrent(cell="gru", hidden_size=4),
        "bidirectional": layers.Bidirectional(cell="gru", hidden_size=4),
        "stacked": layers.Stacked(cell="gru", hidden_size=4, num_layers=2),
    }[module]
    carry, ys = layer.apply(layer.init(key, xs), xs)
    assert ys.shape[:2] == (2, 5)
    assert all(leaf.shape == (2, 4) for leaf in jax.tree.leaves(carry))


def test_a_time_major_input_with_a_batch_carry_names_the_carry_and_the_layout(key):
    params = cells.gru.init_params(key, 3, 6)
    time_major = jnp.ones((7, 2, 3))  # [time, batch, features]
    with pytest.raises(ValueError, match=r"carry0.*has shape \(2, 6\); expected \[batch = 7"):
        fnn_jax.scan(cells.gru.step, params, cells.gru.init_carry((2,), 6), time_major)


@pytest.mark.parametrize("cell", ["lstm", "jordan"])
def test_a_wrong_size_initial_carry_names_its_shapes(cell, key):
    layer = layers.Recurrent(cell=cell, hidden_size=6, output_size=4 if cell == "jordan" else None)
    xs = jnp.ones((2, 5, 3))
    variables = layer.init(key, xs)
    wrong = jax.tree.map(lambda a: jnp.zeros((2, 5)), layer.initial_carry(2))
    want = [(2, 4)] if cell == "jordan" else [(2, 6), (2, 6)]  # jordan's carry: its output
    with pytest.raises(ValueError, match=re.escape(f"expected {want}")):
        layer.apply(variables, xs, None, wrong)


def _scan_unrolls(module, xs):
    variables = module.init(jax.random.key(0), xs)
    jaxpr = jax.make_jaxpr(lambda v: module.apply(v, xs))(variables)
    return [e.params["unroll"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]


@pytest.mark.parametrize(
    ("cell", "unroll", "expected"),
    [("elman", None, 4), ("lstm", None, 1), ("elman", 2, 2)],
    ids=["elman_own", "lstm_own", "elman_told_2"],
)
def test_the_time_loop_unrolls_as_the_cell_says_unless_told(cell, unroll, expected):
    xs = jnp.ones((2, 8, 3))
    layer = layers.Recurrent(cell=cell, hidden_size=4, unroll=unroll)
    assert _scan_unrolls(layer, xs) == [expected]
