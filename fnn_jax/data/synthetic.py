"""Synthetic long-memory benchmarks: the adding problem and the copy-memory task."""

from __future__ import annotations

import math

import numpy as np

from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import register, stream

_ADDING, _COPY = 1, 2  # stream tags, so the two tasks never share random draws
COPY_SYMBOLS = 10  # symbols to remember per row
BLANK, DELIMITER = 0, 9


def _sizes(num_train: int, num_validation: int, num_test: int) -> dict[str, int]:
    sizes = dict(zip(SPLITS, (num_train, num_validation, num_test), strict=True))
    if min(sizes.values()) < 1:
        raise ValueError(f"every split needs at least one row; got {sizes}")
    return sizes


def _adding_split(n: int, length: int, rng: np.random.Generator) -> Split:
    values = rng.uniform(0.0, 1.0, size=(n, length)).astype(np.float32)
    half = length // 2
    # One marker in each half, as in Hochreiter & Schmidhuber (1997).
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    rows = np.arange(n)
    markers = np.zeros((n, length), np.float32)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (values[rows, first] + values[rows, second])[:, None].astype(np.float32)
    return Split(np.stack([values, markers], axis=-1), targets)


@register("adding")
def adding(
    *,
    length: int = 100,
    num_train: int = 10000,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
) -> Dataset:
    """The adding problem (regression).

    inputs [n, length, 2]: channel 0 uniform values in [0, 1), channel 1 a marker with exactly
    two 1s (one in each half); targets [n, 1] the sum of the two marked values. Predicting 1.0
    always gives MSE = Var(U1 + U2) = 1/6, the bar a model has to beat.
    """
    if length < 2:
        raise ValueError(f"length must be >= 2; got {length}")
    sizes = _sizes(num_train, num_validation, num_test)
    splits = {
        name: _adding_split(n, length, stream(seed, _ADDING, i))
        for i, (name, n) in enumerate(sizes.items())
    }
    err = splits["test"].targets.astype(np.float64) - 1.0
    baselines = {"mse_predict_one": float(np.mean(err**2)), "mse_predict_one_theory": 1.0 / 6.0}
    return Dataset(
        name="adding",
        task="regression",
        **splits,
        baselines=baselines,
        info={"length": length, "seed": seed},
    )


def _copy_split(n: int, delay: int, rng: np.random.Generator) -> Split:
    total = delay + 2 * COPY_SYMBOLS
    symbols = rng.integers(1, DELIMITER, size=(n, COPY_SYMBOLS)).astype(np.int32)  # 1..8
    inputs = np.full((n, total), BLANK, np.int32)
    inputs[:, :COPY_SYMBOLS] = symbols
    inputs[:, COPY_SYMBOLS + delay - 1] = DELIMITER  # after delay-1 blanks
    targets = np.full((n, total), BLANK, np.int32)
    targets[:, -COPY_SYMBOLS:] = symbols
    return Split(inputs, targets)


@register("copy_memory")
def copy_memory(
    *,
    delay: int = 100,
    num_train: int = 10000,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
) -> Dataset:
    """The copy-memory task (tagging), alphabet 0 = blank, 1..8 = symbols, 9 = delimiter.

    inputs [n, delay+20] int32 tokens: 10 random symbols, delay-1 blanks, the delimiter, then
    10 blanks. targets [n, delay+20] int32: blank everywhere except the last 10 steps, which
    repeat the 10 symbols. A memoryless model that outputs blank until the delimiter and then
    uniform over the 8 symbols scores cross entropy 10*log(8)/(delay+20) per step.
    """
    if delay < 1:
        raise ValueError(f"delay must be >= 1; got {delay}")
    sizes = _sizes(num_train, num_validation, num_test)
    splits = {
        name: _copy_split(n, delay, stream(seed, _COPY, i))
        for i, (name, n) in enumerate(sizes.items())
    }
    total = delay + 2 * COPY_SYMBOLS
    return Dataset(
        name="copy_memory",
        task="tagging",
        **splits,
        num_classes=10,
        baselines={"cross_entropy_memoryless": COPY_SYMBOLS * math.log(8) / total},
        info={"delay": delay, "seed": seed, "vocab": ["_", *"12345678", ":"]},
    )
