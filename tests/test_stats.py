"""fnn_jax.stats: intervals against published values and exact cases."""

import numpy as np
import pytest

from fnn_jax import stats
from fnn_jax.stats import binomial_interval, bootstrap_interval, paired_bootstrap


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Clopper & Pearson (1934) / e.g. Brown, Cai & DasGupta (2001): 95%, two-sided.
        (0, 10, 0.0, 0.3085),
        (5, 10, 0.1871, 0.8129),
        (10, 10, 0.6915, 1.0),
        (1, 10, 0.0025, 0.4450),
    ],
)
def test_clopper_pearson_matches_published_values(successes, n, low, high):
    got = binomial_interval(successes, n, 0.95)
    np.testing.assert_allclose(got, (low, high), atol=5e-5)


def test_clopper_pearson_zero_successes_has_the_closed_form():
    # With no successes the upper limit solves (1 - p)^n = alpha / 2.
    _, high = binomial_interval(0, 25, 0.9)
    assert high == pytest.approx(1 - 0.05 ** (1 / 25), rel=1e-10)


def test_clopper_pearson_refuses_impossible_counts():
    for successes, n in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError):
            binomial_interval(successes, n)
    with pytest.raises(ValueError, match="level"):
        binomial_interval(1, 2, level=95)


def test_bootstrap_of_a_large_bernoulli_sample_is_close_to_the_normal_interval():
    correct = (np.random.default_rng(1).random(4000) < 0.3).astype(np.float64)
    p, n = correct.mean(), len(correct)
    half = 1.959964 * np.sqrt(p * (1 - p) / n)  # about 0.0142
    low, high = bootstrap_interval(correct, resamples=4000)
    assert low == pytest.approx(p - half, abs=0.002)
    assert high == pytest.approx(p + half, abs=0.002)


def test_bootstrap_is_deterministic_with_the_seed_and_moves_with_it():
    values = np.random.default_rng(2).normal(size=300)
    first = bootstrap_interval(values, resamples=500, seed=7)
    assert bootstrap_interval(values, resamples=500, seed=7) == first
    assert bootstrap_interval(values, resamples=500, seed=8) != first


def test_bootstrap_takes_any_statistic_of_rows():
    # [rows, 2] pairs: the statistic sees whole rows, resampled together.
    pairs = np.stack([np.arange(50), np.arange(50)], 1)
    low, high = bootstrap_interval(pairs, lambda s: float(np.mean(s[:, 0] == s[:, 1])))
    assert (low, high) == (1.0, 1.0)
    low, high = bootstrap_interval(np.arange(100.0), np.median, level=0.9, resamples=2000)
    assert low < 49.5 < high


def test_paired_bootstrap_of_identical_systems_is_exactly_zero():
    errors = np.random.default_rng(3).normal(size=200) ** 2
    out = paired_bootstrap(errors, errors.copy(), resamples=1000)
    assert out == {"mean_difference": 0.0, "low": 0.0, "high": 0.0}


def test_paired_bootstrap_of_a_constant_shift_is_exactly_that_shift():
    # Integer scores on 256 rows: every mean and difference below is exact in float64.
    b = np.random.default_rng(4).integers(0, 10, size=256).astype(np.float64)
    out = paired_bootstrap(b + 3.0, b, resamples=1000)
    assert out == {"mean_difference": 3.0, "low": 3.0, "high": 3.0}


def test_paired_bootstrap_separates_a_real_difference_and_not_noise():
    rng = np.random.default_rng(5)
    hard = rng.normal(size=400) ** 2  # what both systems share per row
    a = hard + rng.normal(0.0, 0.05, size=400)
    out = paired_bootstrap(a + 0.1, a, resamples=2000)
    assert out["low"] > 0  # shared difficulty cancels: a small gap is seen
    unpaired_low, unpaired_high = bootstrap_interval(a + 0.1, resamples=2000)
    assert unpaired_high - unpaired_low > 5 * (out["high"] - out["low"])
    noise = paired_bootstrap(a, hard, resamples=2000)
    assert noise["low"] < 0 < noise["high"]


def test_paired_bootstrap_refuses_different_rows():
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def test_paired_seeds_is_the_t_interval_of_the_per_seed_differences():
    """mean ± t(0.975, 4) * sd / sqrt(5), with t from a printed table (2.7764)."""
    a = np.array([0.70, 0.72, 0.69, 0.71, 0.73])
    b = np.array([0.66, 0.70, 0.68, 0.65, 0.69])
    d = a - b  # 0.04, 0.02, 0.01, 0.06, 0.04
    half = 2.7764 * d.std(ddof=1) / np.sqrt(5)
    out = stats.paired_seeds(a, b)
    assert out["mean_difference"] == pytest.approx(0.034, abs=1e-12)
    assert (out["low"], out["high"]) == pytest.approx((0.034 - half, 0.034 + half), abs=1e-4)
    assert out["seeds"] == 5 and 0.0 < out["p_value"] < 0.05
    swapped = stats.paired_seeds(b, a)
    assert (swapped["low"], swapped["high"]) == pytest.approx((-out["high"], -out["low"]))


def test_paired_seeds_of_a_constant_difference_is_that_difference_and_refuses_one_seed():
    out = stats.paired_seeds([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert out["low"] == out["high"] == pytest.approx(0.1)
    same = stats.paired_seeds([0.5, 0.6], [0.5, 0.6])
    assert same["mean_difference"] == same["low"] == same["high"] == 0.0
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_seeds([0.5], [0.4])
