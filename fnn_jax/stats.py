"""Intervals for test results: one helper every study uses.

    low, high = bootstrap_interval(squared_errors)             # a mean over test rows
    low, high = binomial_interval(correct.sum(), len(correct))  # an accuracy, exact
    paired_bootstrap(errors_model, errors_baseline)             # two systems, same rows
    paired_seeds(accuracy_finetuned, accuracy_scratch)          # two recipes, same seeds

The first three resample or count *test rows*: the interval says how much the number would
move on another test set drawn like this one, not how much it moves between training seeds.
``paired_seeds`` is the other question: over training seeds (each seed drawing the data and
the initialisation for both recipes), is one recipe better than the other?
Bootstraps are percentile bootstraps with a seeded NumPy generator, so the same call gives
the same interval on every machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["binomial_interval", "bootstrap_interval", "paired_bootstrap", "paired_seeds"]

Statistic = Callable[[np.ndarray], float]
_CHUNK = 1_000_000  # indices drawn at once: resamples x rows is cut into pieces of this size


def _check(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1; got {resamples}")


def _rows(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError(f"{name} must hold at least one row; got shape {values.shape}")
    return values


def _resampled(
    arrays: tuple[np.ndarray, ...], statistic: Statistic, resamples: int, seed: int
) -> np.ndarray:
    """[resamples, len(arrays)]: the statistic of each array on the same resampled rows."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(arrays)))
    per_chunk = max(1, _CHUNK // n)
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        index = rng.integers(0, n, size=(count, n))
        for r, rows in enumerate(index):
            for j, values in enumerate(arrays):
                out[start + r, j] = statistic(values[rows])
    return out


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(samples, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def bootstrap_interval(
    values_or_correct: np.ndarray,
    statistic: Statistic = np.mean,
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over test rows.

    values_or_correct: [rows] per-row values (squared errors, 0/1 correctness, ...) or
    [rows, ...] when the statistic needs more per row (e.g. [rows, 2] of truth and
    prediction for a macro F1). Rows are drawn with replacement ``resamples`` times (the
    same draws for the same ``seed``); ``statistic`` maps a resampled array of the same
    shape to a float. Returns (low, high), the (1 - level) / 2 and (1 + level) / 2
    quantiles of the resampled statistics.
    """
    _check(level, resamples)
    values = _rows(values_or_correct, "values_or_correct")
    samples = _resampled((values,), statistic, resamples, seed)[:, 0]
    return _percentiles(samples, level)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Statistic = np.mean,
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Two systems scored on the same test rows: the interval of their difference.

    a, b: [rows] (or [rows, ...]) per-row scores or errors of system A and system B, row i
    of both being the same test row. Each resample draws one set of rows and applies
    ``statistic`` to both systems on it, so what the rows share (hard rows, easy rows)
    cancels. Returns {"mean_difference": statistic(a) - statistic(b), "low", "high"}: the
    difference on the whole test set and the percentile interval of the resampled
    differences. An interval that excludes 0 says the test set separates the two systems.
    """
    _check(level, resamples)
    a, b = _rows(a, "a"), _rows(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must score the same rows; got {a.shape[0]} and {b.shape[0]}")
    samples = _resampled((a, b), statistic, resamples, seed)
    low, high = _percentiles(samples[:, 0] - samples[:, 1], level)
    return {
        "mean_difference": float(statistic(a)) - float(statistic(b)),
        "low": low,
        "high": high,
    }


def binomial_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion such as an accuracy, ``successes``
    of ``n`` test rows: never narrower than its nominal level. Returns (low, high), with
    low = 0 when successes = 0 and high = 1 when successes = n."""
    from scipy.stats import beta  # scipy comes with scikit-learn, a core dependency

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    successes, n = int(successes), int(n)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1; got {successes} of {n}")
    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1.0 - tail, successes + 1, n - successes))
    return low, high


def paired_seeds(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Two recipes run with the same seeds: the mean of their per-seed differences a - b
    and its Student-t interval (scipy's paired t-test, ``ttest_rel``), with its p-value.

    a, b: [seeds] one score per seed, seed i the same draw for both. With few seeds the
    interval is wide: it is what a claim resting on the spread of 3 or 5 seeds can say.
    Returns {"mean_difference", "low", "high", "p_value", "seeds"}.
    """
    from scipy.stats import ttest_rel

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.shape[0] < 2:
        raise ValueError(
            f"a and b must be [seeds] with the same seeds (>= 2); got {a.shape}, {b.shape}"
        )
    difference = a - b
    if np.all(difference == difference[0]):  # no spread: the t statistic is undefined
        d = float(difference[0])
        return {
            "mean_difference": d,
            "low": d,
            "high": d,
            "p_value": float(d == 0),
            "seeds": a.size,
        }
    test = ttest_rel(a, b)
    interval = test.confidence_interval(level)
    return {
        "mean_difference": float(difference.mean()),
        "low": float(interval.low),
        "high": float(interval.high),
        "p_value": float(test.pvalue),
        "seeds": int(a.size),
    }
