"""Baselines for configs/japanese_vowels.py, on the splits its loader makes.

    python experiments/japanese_vowels_baselines.py

Needs sktime (pip install -e '.[timeseries]'). The loader (fnn_jax.data, "japanese_vowels")
keeps the official 370 test utterances as the test split and splits the official 270
training utterances into train (229) and validation (41), stratified with the config's
seed; every series is standardised per channel with train statistics and zero-padded to 29
frames. Each baseline is fitted twice: on the train split alone (what the network trains
on) and on train + validation (the official 270 training series, as in the literature),
and scored on the 370 test series:

- majority class: the most frequent speaker of the fitting set (the first on a tie), always;
- 1-NN Euclidean: scikit-learn's 1-nearest neighbour on the zero-padded series flattened
  to 29 x 12 values (a shorter series is compared with zeros, the train mean, where it has
  ended);
- 1-NN DTW: dynamic time warping between the unpadded series, full warping window, one
  warping path for all 12 channels (dependent DTW: the cost of matching two frames is their
  squared Euclidean distance), as sktime's "dtw" distance defines it. sktime's own 1-NN
  (KNeighborsTimeSeriesClassifier) refuses unequal-length series with its string
  distances, and its DTW transformers need numba, so ``dtw_distances`` computes it here in
  NumPy; tests/test_speech.py checks it against plain loops and against sktime's own
  ``dtw_distance`` on series of unequal length.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from fnn_jax import data  # noqa: E402
from fnn_jax.data.base import Dataset, Split  # noqa: E402

FITS = ("train", "train+validation")


def fitting_split(dataset: Dataset, fit: str) -> Split:
    """The rows a baseline is fitted on: the train split, or train + validation."""
    if fit == "train":
        return dataset.train
    if fit != "train+validation":
        raise ValueError(f"fit must be one of {FITS}; got {fit!r}")
    a, b = dataset.train, dataset.validation
    lengths = np.concatenate([_lengths(a), _lengths(b)])
    return Split(
        np.concatenate([a.inputs, b.inputs]), np.concatenate([a.targets, b.targets]), lengths
    )


def _lengths(split: Split) -> np.ndarray:
    n, steps = split.inputs.shape[:2]
    return np.full(n, steps, np.int32) if split.lengths is None else np.asarray(split.lengths)


def majority(train_y: np.ndarray, n: int) -> np.ndarray:
    """The most frequent train label (the smallest such label on a tie), n times."""
    return np.full(n, np.bincount(train_y).argmax(), train_y.dtype)


def nn1_euclidean(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """1-NN with Euclidean distance on padded [n, time, channels] series, flattened."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=1, algorithm="brute", metric="euclidean")
    knn.fit(train_x.reshape(len(train_x), -1), train_y)
    return knn.predict(test_x.reshape(len(test_x), -1))


def dtw_distances(
    a: np.ndarray, a_lengths: np.ndarray, b: np.ndarray, b_lengths: np.ndarray, chunk: int = 32
) -> np.ndarray:
    """[len(a), len(b)] dependent DTW distances (sum of squared frame distances along the
    cheapest warping path, full window) between padded [n, time, channels] series, each
    read up to its own length."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a_lengths, b_lengths = np.asarray(a_lengths), np.asarray(b_lengths)
    out = np.empty((len(a), len(b)))
    cols = np.arange(len(b))
    for start in range(0, len(a), chunk):
        x, x_len = a[start : start + chunk], a_lengths[start : start + chunk]
        # cost[p, q, i, j] = |x[p, i] - b[q, j]|^2
        cost = (
            (x**2).sum(-1)[:, None, :, None]
            + (b**2).sum(-1)[None, :, None, :]
            - 2 * np.einsum("pic,qjc->pqij", x, b)
        )
        cost = np.maximum(cost, 0.0)
        acc = np.full_like(cost, np.inf)
        steps_a, steps_b = cost.shape[2:]
        for i in range(steps_a):
            for j in range(steps_b):
                if i == 0 and j == 0:
                    best = 0.0
                else:
                    best = np.full(cost.shape[:2], np.inf)
                    if i > 0:
                        best = np.minimum(best, acc[:, :, i - 1, j])
                    if j > 0:
                        best = np.minimum(best, acc[:, :, i, j - 1])
                    if i > 0 and j > 0:
                        best = np.minimum(best, acc[:, :, i - 1, j - 1])
                acc[:, :, i, j] = cost[:, :, i, j] + best
        rows = np.arange(len(x))[:, None]
        out[start : start + len(x)] = acc[rows, cols[None, :], x_len[:, None] - 1, b_lengths - 1]
    return out


def nn1_dtw(train: Split, test: Split) -> np.ndarray:
    """1-NN with dependent DTW (full window) on the unpadded series."""
    distances = dtw_distances(test.inputs, _lengths(test), train.inputs, _lengths(train))
    return train.targets[distances.argmin(axis=1)]


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
    }


def predict(method: str, train: Split, test: Split) -> np.ndarray:
    """Test predictions of one baseline fitted on ``train``."""
    if method == "majority class":
        return majority(train.targets, len(test.targets))
    if method == "1-NN Euclidean (padded)":
        return nn1_euclidean(train.inputs, train.targets, test.inputs)
    if method == "1-NN DTW (dependent, full window)":
        return nn1_dtw(train, test)
    raise ValueError(f"unknown baseline {method!r}")


METHODS = ("majority class", "1-NN Euclidean (padded)", "1-NN DTW (dependent, full window)")


def run(seed: int = 0, dtw: bool = True) -> list[dict]:
    dataset = data.load("japanese_vowels", seed=seed)
    test = dataset.test
    rows = []
    for fit in FITS:
        train = fitting_split(dataset, fit)
        for method in METHODS if dtw else METHODS[:2]:
            start = time.perf_counter()
            predicted = predict(method, train, test)
            seconds = time.perf_counter() - start
            rows.append(
                {"method": method, "fit": fit, "n_fit": len(train.targets), "seconds": seconds}
                | scores(test.targets, predicted)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the loader's split seed")
    parser.add_argument("--no_dtw", action="store_true", help="skip 1-NN DTW")
    args = parser.parse_args()
    rows = run(seed=args.seed, dtw=not args.no_dtw)
    dataset = data.load("japanese_vowels", seed=args.seed)
    test_y = dataset.test.targets
    print(f"JapaneseVowels, seed {args.seed}: test = the official {len(test_y)} test series")
    print("| method | fitted on | test accuracy | test macro F1 | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['fit']} ({r['n_fit']}) | {r['accuracy']:.4f} | "
            f"{r['macro_f1']:.4f} | {r['seconds']:.1f} |"
        )
    counts = np.bincount(test_y)
    speaker = dataset.info["class_names"][counts.argmax()]
    print(
        f"Train is balanced (25-26 per speaker, 30 in train + validation), so its majority is a "
        f"tie; the best constant answer, chosen on test itself (speaker {speaker}), would "
        f"score accuracy {counts.max() / len(test_y):.4f}."
    )


if __name__ == "__main__":
    main()
