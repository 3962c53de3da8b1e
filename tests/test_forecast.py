"""Closed-loop forecasting against a NumPy AR(1) reference, and in a forecasting run's report."""

import json

import numpy as np
import pytest

from fnn_jax import forecast
from fnn_jax.train import train_and_evaluate
from tests.test_configs import _load, _shrink

WINDOW, STEPS = 5, 4


def test_closed_loop_equals_an_ar1_model_rolled_by_hand():
    """predict(window) = a * last value: k steps on its own output give a^k * last value."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=40).astype(np.float32)
    n = len(x) - WINDOW
    inputs = np.stack([x[i : i + WINDOW] for i in range(n)])[..., None]
    targets = x[WINDOW:][:, None, None]
    a = np.float32(0.8)
    result = forecast.closed_loop(lambda w: a * w[:, -1:, :], inputs, targets, STEPS)

    starts = n - STEPS + 1
    assert result["steps"] == STEPS and result["windows"] == starts
    last = x[WINDOW - 1 : WINDOW - 1 + starts]  # each start window's last value
    for k in range(1, STEPS + 1):
        truth = x[WINDOW - 1 + k : WINDOW - 1 + k + starts]
        closed = a**k * last
        teacher = a * x[WINDOW - 2 + k : WINDOW - 2 + k + starts]
        np.testing.assert_allclose(
            result["mse_closed_loop"][k - 1], np.mean((closed - truth) ** 2), rtol=1e-5
        )
        np.testing.assert_allclose(
            result["mse_teacher_forced"][k - 1], np.mean((teacher - truth) ** 2), rtol=1e-5
        )
    np.testing.assert_allclose(
        np.asarray(result["example_forecast"])[:, 0],
        a ** np.arange(1, STEPS + 1) * x[WINDOW - 1],
        rtol=1e-5,
    )


def test_a_forecasting_run_reports_the_closed_loop_and_draws_it(tmp_path):
    config = _shrink(_load("sunspots_jordan"))
    with config.unlocked():
        config.train.closed_loop_steps = 3
    report = train_and_evaluate(config, tmp_path / "on")
    loop = report["closed_loop"]
    assert loop["steps"] == 3 and len(loop["mse_closed_loop"]) == 3
    # One step ahead, the model's own predictions are not fed back yet: both agree.
    assert loop["mse_closed_loop"][0] == loop["mse_teacher_forced"][0]
    assert (tmp_path / "on" / "forecast.png").stat().st_size > 0
    assert (
        "| steps ahead | MSE, own predictions fed back |"
        in (tmp_path / "on" / "report.md").read_text()
    )
    saved = json.loads((tmp_path / "on" / "report.json").read_text())
    assert saved["closed_loop"] == loop

    with config.unlocked():
        config.train.closed_loop_steps = 0
    report = train_and_evaluate(config, tmp_path / "off")
    assert "closed_loop" not in report and not (tmp_path / "off" / "forecast.png").exists()


def test_a_classifier_has_no_closed_loop(tmp_path):
    report = train_and_evaluate(_shrink(_load("digits_lstm")), tmp_path)
    assert "closed_loop" not in report and not (tmp_path / "forecast.png").exists()


def test_seasonal_naive_baseline_is_the_value_one_season_earlier():
    """On a period-12 wave with a trend of 0.01 per step, forecasting one season back
    misses by exactly the trend over the seasons skipped: 0.12 one to twelve steps ahead,
    0.24 for thirteen to twenty-four (in standardised units: divided by the train std)."""
    from fnn_jax.data.forecasting import FRACTIONS, forecast_dataset

    t = np.arange(400, dtype=np.float64)
    series = np.sin(2 * np.pi * t / 12) + 0.01 * t
    std = series[: int(round(FRACTIONS[0] * len(t)))].std()
    for horizon, misses in ((1, [0.12]), (24, [0.12] * 12 + [0.24] * 12)):
        data = forecast_dataset("wave", series, window=36, horizon=horizon, info={}, season=12)
        want = np.mean((np.array(misses) / std) ** 2)
        assert data.baselines["mse_seasonal_naive"] == pytest.approx(want, rel=1e-9)
    assert (
        "mse_seasonal_naive"
        not in forecast_dataset("wave", series, window=36, horizon=1, info={}).baselines
    )
