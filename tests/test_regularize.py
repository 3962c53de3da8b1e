"""Recurrent (variational) dropout and zoneout: masks per sequence or per step as the papers
say, off at evaluation, and the plain cell at rate 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn_jax
from fnn_jax import cells, layers
from fnn_jax.cells import regularize
from fnn_jax.config import ConfigError, validate
from tests.test_reliability import _config

BATCH, TIME, SIZE = 4, 6, 5
RATE = 0.4


def _linear_elman(w_ih, w_hh, bias):
    """An identity-activation Elman layer with the given weights, recurrent dropout on."""
    layer = layers.Recurrent(
        cell="elman",
        hidden_size=SIZE,
        options={"activation": "identity"},
        recurrent_dropout=RATE,
        unroll=1,
    )
    params = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": bias, "b_hh": jnp.zeros(SIZE)}
    return lambda xs, key: layer.apply(
        {"params": params}, xs, deterministic=False, rngs={"dropout": key}
    )[1]


def _only_zero_or_scaled_one(mask):
    """Inverted dropout: every entry is 0 or 1 / (1 - rate)."""
    return np.all(np.isclose(mask, 0.0, atol=1e-6) | np.isclose(mask, 1 / (1 - RATE)))


def test_the_input_mask_is_the_same_at_every_step_and_differs_across_sequences(key):
    """h_t = (x_t * m_x) @ I with no feedback: y_t / x_t reads the mask at every step."""
    run = _linear_elman(jnp.eye(SIZE), jnp.zeros((SIZE, SIZE)), jnp.zeros(SIZE))
    xs = 1.0 + jax.random.uniform(key, (BATCH, TIME, SIZE))
    masks = np.asarray(run(xs, jax.random.key(7)) / xs)  # [batch, time, size]
    np.testing.assert_allclose(masks, np.broadcast_to(masks[:, :1], masks.shape), rtol=1e-6)
    assert _only_zero_or_scaled_one(masks)
    assert len({tuple(row) for row in masks[:, 0]}) > 1, "each sequence draws its own mask"


def test_the_state_mask_is_the_same_at_every_step_and_differs_across_sequences(key):
    """h_t = (h_{t-1} * m_h) + 1 with no input: h_t = 1 + m + ... + m^(t-1) per unit."""
    run = _linear_elman(jnp.zeros((SIZE, SIZE)), jnp.eye(SIZE), jnp.ones(SIZE))
    ys = np.asarray(run(jnp.zeros((BATCH, TIME, SIZE)), jax.random.key(3)))
    m = ys[:, 1] - 1.0  # [batch, size]: the mask
    want = np.stack([sum(m**k for k in range(t + 1)) for t in range(TIME)], axis=1)
    np.testing.assert_allclose(ys, want, rtol=1e-5)
    assert _only_zero_or_scaled_one(m)
    assert len({tuple(row) for row in m}) > 1, "each sequence draws its own mask"


@pytest.mark.parametrize("options", [{"recurrent_dropout": RATE}, {"zoneout": 0.0}])
def test_evaluation_runs_the_plain_cell(options, key):
    xs = jax.random.normal(key, (BATCH, TIME, 3))
    plain = layers.Recurrent(cell="lstm", hidden_size=SIZE)
    variables = plain.init(key, xs)
    regularized = layers.Recurrent(cell="lstm", hidden_size=SIZE, **options)
    _, want = plain.apply(variables, xs)
    _, got = regularized.apply(variables, xs)  # deterministic by default
    np.testing.assert_array_equal(got, want)


def _lstm_loop(params, xs, keep_old=None, rate=None):
    """A Python loop over lstm.step with zoneout: the given keep-old masks (h's then c's,
    [batch, time, 2 * size]), or (rate) the expectation."""
    carry = cells.lstm.init_carry((xs.shape[0],), SIZE)
    ys = []
    for t in range(xs.shape[1]):
        new, _ = cells.lstm.step(params, carry, xs[:, t])
        if keep_old is None:
            carry = jax.tree.map(lambda o, n: rate * o + (1 - rate) * n, carry, new)
        else:
            keep_h, keep_c = keep_old[:, t, :SIZE] > 0, keep_old[:, t, SIZE:] > 0
            carry = cells.lstm.LSTMCarry(
                jnp.where(keep_h, carry.h, new.h), jnp.where(keep_c, carry.c, new.c)
            )
        ys.append(carry.h)
    return jnp.stack(ys, axis=1)


def test_zoneout_keeps_each_unit_where_its_step_mask_says(key):
    params = cells.lstm.init_params(key, 3, SIZE)
    xs = jax.random.normal(key, (BATCH, TIME, 3))
    packed = regularize.pack_zoneout_masks(jax.random.key(5), xs, (SIZE, SIZE), RATE)
    keep_old = packed[..., 3:]
    assert keep_old.shape == (BATCH, TIME, 2 * SIZE)  # h's mask, then c's
    assert 0.2 < float(keep_old.mean()) < 0.6  # about RATE, fresh at every step
    assert not np.array_equal(keep_old[:, 0], keep_old[:, 1])
    step = regularize.with_zoneout(cells.lstm.step, RATE, input_size=3)
    _, got = fnn_jax.scan(step, params, cells.lstm.init_carry((BATCH,), SIZE), packed)
    np.testing.assert_allclose(got, _lstm_loop(params, xs, keep_old=keep_old), atol=1e-6)


def test_zoneout_masks_of_h_and_c_are_independent_draws():
    """Rate 0.5 over 16 x 50 x 32 positions: independent masks differ at about half of
    them (2 p (1 - p)), a shared one nowhere; per-leaf rates give each leaf its own."""
    xs = jnp.zeros((16, 50, 3))
    masks = regularize.pack_zoneout_masks(jax.random.key(0), xs, (32, 32), 0.5)[..., 3:]
    keep_h, keep_c = np.asarray(masks[..., :32]), np.asarray(masks[..., 32:])
    assert 0.45 < keep_h.mean() < 0.55 and 0.45 < keep_c.mean() < 0.55
    assert 0.45 < np.mean(keep_h != keep_c) < 0.55
    masks = regularize.pack_zoneout_masks(jax.random.key(0), xs, (32, 32), (0.05, 0.5))
    assert 0.03 < float(masks[..., 3:35].mean()) < 0.07
    assert 0.45 < float(masks[..., 35:].mean()) < 0.55


def test_a_layer_in_training_zones_out_h_and_c_with_separate_masks(key):
    """Which units of h and of c kept their previous value, read off the layer's own carry
    at every step (runs over the first t steps share the masks: they are drawn for the
    whole [batch, time] and lengths only pick where the final carry is read)."""
    batch, time, size, rate = 8, 12, 16, 0.5
    xs = jax.random.normal(key, (batch, time, 3))
    layer = layers.Recurrent(cell="lstm", hidden_size=size, zoneout=rate)
    variables = layer.init(key, xs)
    carries = [layer.initial_carry(batch)]
    for t in range(1, time + 1):
        lengths = jnp.full((batch,), t, jnp.int32)
        carry, _ = layer.apply(
            variables, xs, lengths, deterministic=False, rngs={"dropout": jax.random.key(9)}
        )
        carries.append(carry)
    h = np.stack([np.asarray(c.h) for c in carries])  # [time + 1, batch, size]
    c = np.stack([np.asarray(c.c) for c in carries])
    kept_h, kept_c = h[1:] == h[:-1], c[1:] == c[:-1]  # a new value never equals the old
    assert 0.35 < kept_h.mean() < 0.65 and 0.35 < kept_c.mean() < 0.65
    assert np.any(kept_h != kept_c), "h and c kept their values at the same units"
    assert 0.35 < np.mean(kept_h != kept_c) < 0.65  # independent: 2 p (1 - p) = 0.5


def test_a_mask_for_one_leaf_only_is_refused_for_the_lstm(key):
    params = cells.lstm.init_params(key, 3, SIZE)
    xs = jax.random.normal(key, (BATCH, TIME, 3))
    packed = regularize.pack_zoneout_masks(jax.random.key(5), xs, SIZE, RATE)
    step = regularize.with_zoneout(cells.lstm.step, RATE, input_size=3)
    with pytest.raises(ValueError, match=r"one independent mask per leaf: .*\(5, 5\)"):
        fnn_jax.scan(step, params, cells.lstm.init_carry((BATCH,), SIZE), packed)


def test_zoneout_at_evaluation_takes_the_expectation(key):
    xs = jax.random.normal(key, (BATCH, TIME, 3))
    layer = layers.Recurrent(cell="lstm", hidden_size=SIZE, zoneout=RATE)
    params = layer.init(key, xs)["params"]
    _, got = layer.apply({"params": params}, xs)
    np.testing.assert_allclose(got, _lstm_loop(params, xs, rate=RATE), atol=1e-6)


def test_zoneout_at_rate_0_equals_the_plain_cell(key):
    params = cells.gru.init_params(key, 3, SIZE)
    xs = jax.random.normal(key, (BATCH, TIME, 3))
    carry0 = cells.gru.init_carry((BATCH,), SIZE)
    packed = regularize.pack_zoneout_masks(jax.random.key(5), xs, SIZE, 0.0)
    zoned = regularize.with_zoneout(cells.gru.step, 0.0, input_size=3)
    _, got = fnn_jax.scan(zoned, params, carry0, packed)
    _, want = fnn_jax.scan(cells.gru.step, params, carry0, xs)
    np.testing.assert_array_equal(got, want)


def test_training_draws_new_masks_per_step_key_and_the_same_for_the_same_key(key):
    xs = jax.random.normal(key, (BATCH, TIME, 3))
    layer = layers.Recurrent(cell="gru", hidden_size=SIZE, recurrent_dropout=0.2, zoneout=0.2)
    variables = layer.init(key, xs)
    run = lambda k: layer.apply(variables, xs, deterministic=False, rngs={"dropout": k})[1]
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    assert not np.array_equal(run(jax.random.key(1)), run(jax.random.key(2)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.cell": "elman", "model.zoneout": 0.1}, r"zoneout=0\.1 applies to lstm and gru"),
        (
            {
                "model.cell": "mingru",
                "model.recurrent_dropout": 0.1,
                "model.scan_impl": "associative",
            },
            r"set config\.model\.scan_impl to 'sequential' or 'auto'",
        ),
        ({"model.recurrent_dropout": 1.0}, r"recurrent_dropout must be in \[0\.0, 0\.99\]"),
    ],
)
def test_a_bad_regularization_setting_is_refused_naming_the_key(overrides, message):
    config = _config()
    with config.unlocked():
        for dotted, value in overrides.items():
            section, name = dotted.split(".")
            config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_the_cached_features_shortcut_is_off_when_the_encoder_is_random():
    from fnn_jax import models

    assert models.SequenceClassifier(cell="lstm").features_are_deterministic
    for options in ({"recurrent_dropout": 0.1}, {"zoneout": 0.1}):
        assert not models.SequenceClassifier(cell="lstm", **options).features_are_deterministic
