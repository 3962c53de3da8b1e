"""Univariate forecasting datasets from statsmodels: yearly sunspots and monthly CO2."""

from __future__ import annotations

from typing import Any

import numpy as np

from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import register

FRACTIONS = (0.70, 0.15, 0.15)  # chronological train / validation / test


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """[start, end) positions of each chronological split in a series of n points."""
    b1 = int(round(FRACTIONS[0] * n))
    b2 = int(round((FRACTIONS[0] + FRACTIONS[1]) * n))
    return {"train": (0, b1), "validation": (b1, b2), "test": (b2, n)}


def forecast_dataset(
    name: str,
    series: np.ndarray,
    *,
    window: int,
    horizon: int,
    info: dict[str, Any],
    season: int | None = None,
) -> Dataset:
    """Sliding windows (stride 1) over a 1-D series, each kept inside its chronological split.

    inputs [n, window, 1] and targets [n, horizon, 1], both standardised with the mean/std
    (ddof=0) of the train segment only. info["window_starts"][split] holds each window's
    first position in the raw series; info["bounds"] the [start, end) of each split.
    Baselines on test: the last value repeated, and with a known ``season`` (in steps:
    12 for monthly data) the seasonal naive forecast, the value one season earlier.
    """
    series = np.asarray(series, np.float64)
    if series.ndim != 1 or not np.isfinite(series).all():
        raise ValueError(f"{name}: series must be 1-D and finite; got shape {series.shape}")
    if window < 1 or horizon < 1:
        raise ValueError(f"{name}: window and horizon must be >= 1; got {window}, {horizon}")
    bounds = split_bounds(len(series))
    train = series[slice(*bounds["train"])]
    mean, std = float(train.mean()), float(train.std())
    z = (series - mean) / std
    splits, starts = {}, {}
    for split in SPLITS:
        lo, hi = bounds[split]
        count = (hi - lo) - window - horizon + 1
        if count < 1:
            raise ValueError(
                f"{name}: split {split!r} has {hi - lo} points, fewer than window + horizon = "
                f"{window + horizon}; use a smaller window or horizon"
            )
        s = lo + np.arange(count)
        # The last target index is s + window + horizon - 1 <= hi - 1: no window crosses a bound.
        inputs = z[s[:, None] + np.arange(window)][..., None].astype(np.float32)
        targets = z[s[:, None] + window + np.arange(horizon)][..., None].astype(np.float32)
        splits[split] = Split(inputs, targets)
        starts[split] = s
    test = splits["test"]
    naive = test.inputs[:, -1:, :].astype(np.float64)  # last value, repeated over the horizon
    mse_naive = float(np.mean((test.targets.astype(np.float64) - naive) ** 2))
    baselines = {"mse_naive_last_value": mse_naive}
    if season:
        baselines["mse_seasonal_naive"] = _seasonal_naive_mse(
            z, starts["test"], window, horizon, season
        )
    return Dataset(
        name=name,
        task="forecast",
        **splits,
        baselines=baselines,
        info={
            **info,
            "mean": mean,
            "std": std,
            "window": window,
            "horizon": horizon,
            "bounds": bounds,
            "window_starts": starts,
        },
    )


def sunspots_series() -> np.ndarray:
    """[309] yearly sunspot activity, 1700-2008 (statsmodels.datasets.sunspots)."""
    from statsmodels.datasets import sunspots

    return sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)


def co2_series() -> tuple[np.ndarray, list[str]]:
    """Monthly mean Mauna Loa CO2 (ppm) and the month labels (statsmodels.datasets.co2).

    The weekly source has gaps; monthly means smooth most away and the few empty months are
    linearly interpolated, giving a regular series.
    """
    from statsmodels.datasets import co2

    weekly = co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate(limit_direction="both")
    return monthly.to_numpy(np.float64), [d.strftime("%Y-%m") for d in monthly.index]


@register("sunspots")
def sunspots(*, window: int = 24, horizon: int = 1, seed: int = 0) -> Dataset:
    """Yearly sunspots forecasting: inputs [n, window, 1] -> targets [n, horizon, 1].

    ``seed`` is accepted for a uniform loader interface; the split is chronological.
    """
    series = sunspots_series()
    return forecast_dataset(
        "sunspots", series, window=window, horizon=horizon, info={"frequency": "yearly"}
    )


def _seasonal_naive_mse(
    z: np.ndarray, starts: np.ndarray, window: int, horizon: int, season: int
) -> float:
    """MSE of forecasting z[t] for the windows starting at ``starts`` by the latest value
    a whole number of seasons earlier that the window's forecaster has already seen."""
    first = starts[:, None] + window  # the first target's position
    ahead = np.arange(horizon)[None, :]
    known = first + ahead - season * (ahead // season + 1)  # at most first - 1
    return float(np.mean((z[first + ahead] - z[known]) ** 2))


@register("co2")
def co2(*, window: int = 36, horizon: int = 1, seed: int = 0) -> Dataset:
    """Monthly CO2 forecasting: inputs [n, window, 1] -> targets [n, horizon, 1].

    ``seed`` is accepted for a uniform loader interface; the split is chronological.
    """
    series, months = co2_series()
    return forecast_dataset(
        "co2",
        series,
        window=window,
        horizon=horizon,
        info={"frequency": "monthly", "months": months},
        season=12,
    )
