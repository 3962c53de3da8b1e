"""Your own sequences as a Dataset: padding, labels, splits and train-only normalisation.

    ds = from_arrays(sequences, labels=labels)          # ragged list of [time_i, features]
    ds = from_arrays(x, lengths=lengths, targets=y)     # padded [n, time, features]

Every file source (fnn_jax.data.sources) ends here, so an .npz, a CSV table and Python
arrays go through one set of checks with one set of messages. Errors are ``DataError``s
naming ``where`` (the file, or "inputs"), the row or column, and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import plain, select_classes, stratified_indices, stream

TASKS = ("auto", "classification", "regression", "forecast", "step_forecast")
_SPLIT_TAG = 11  # stream tag of a seeded random (unstratified) split


class DataError(ValueError):
    """User data that cannot become a Dataset; the message names the file, row or column."""


def pad(sequences: Sequence[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """A ragged list of [time_i, features] (or [time_i]) arrays -> (float64 [n, time,
    features] zero-padded, int32 [n] lengths)."""
    rows = [np.asarray(s, np.float64) for s in sequences]
    if not rows:
        raise DataError(f"{where}: no sequences")
    rows = [r[:, None] if r.ndim == 1 else r for r in rows]
    for i, r in enumerate(rows):
        if r.ndim != 2 or len(r) == 0:
            raise DataError(
                f"{where}: sequence {i} must be [time, features] with time >= 1; "
                f"got shape {r.shape}"
            )
        if r.shape[1] != rows[0].shape[1]:
            raise DataError(
                f"{where}: sequence {i} has {r.shape[1]} features, sequence 0 has "
                f"{rows[0].shape[1]}"
            )
    lengths = np.array([len(r) for r in rows], np.int32)
    out = np.zeros((len(rows), lengths.max(), rows[0].shape[1]))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths


def padded(inputs: Any, lengths: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Padded inputs [n, time, features] (or [n, time]) and optional lengths [n] -> float64
    inputs with zeros past each length, int32 lengths. NaN/inf are refused inside a
    sequence and allowed (then zeroed) in its padding; without lengths a NaN tail is read
    as padding nobody declared, and refused as such."""
    if isinstance(inputs, list | tuple):
        return pad(inputs, where)
    x = np.asarray(inputs)
    if x.dtype == object:
        return pad(list(x), where)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where}: inputs must be numeric; got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or 0 in x.shape:
        raise DataError(
            f"{where}: inputs must be [n, time, features] with no empty axis, or "
            f"a ragged list of [time, features]; got shape {np.shape(inputs)}"
        )
    n, time = x.shape[:2]
    if lengths is None:
        lengths = np.full(n, time, np.int32)
        missing = "; if rows are padded, give their lengths"
    else:
        lengths = np.asarray(lengths)
        if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
            raise DataError(
                f"{where}: lengths must be integers [n]=({n},); got {lengths.dtype} {lengths.shape}"
            )
        if n and (lengths.min() < 1 or lengths.max() > time):
            bad = int(np.flatnonzero((lengths < 1) | (lengths > time))[0])
            raise DataError(f"{where}: lengths[{bad}]={lengths[bad]} is outside [1, time={time}]")
        lengths = lengths.astype(np.int32)
        missing = ""
    valid = np.arange(time)[None, :] < lengths[:, None]
    bad = ~np.isfinite(x) & valid[..., None]
    if bad.any():
        row, step, feature = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: inputs[{row}, {step}, {feature}] is {x[row, step, feature]} "
            f"(NaN or inf inside sequence {row}, length {lengths[row]}){missing}"
        )
    return np.where(valid[..., None], x, 0.0), lengths


def class_ids(
    labels: Any, classes: Sequence[Any] | None, class_names: Sequence[Any] | None, where: str
) -> tuple[np.ndarray, np.ndarray, tuple[Any, ...]]:
    """(rows kept [m], int32 ids [m], class names in id order). ``class_names`` declares the
    labels a file may hold (ints index into it); ``classes`` keeps and orders a subset."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be [n]; got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            row = int(np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))[0])
            raise DataError(
                f"{where}: labels[{row}]={labels[row]} is not a class (an integer "
                f"or a string); for real-valued targets give 'targets'"
            )
        labels = labels.astype(np.int64)
    if class_names is not None:
        names = [str(c) for c in class_names]
        if labels.dtype.kind in "iu":
            outside = (labels < 0) | (labels >= len(names))
            if outside.any():
                row = int(np.flatnonzero(outside)[0])
                raise DataError(
                    f"{where}: labels[{row}]={labels[row]} is outside the declared "
                    f"classes 0..{len(names) - 1} ({names})"
                )
            labels = np.asarray(names)[labels]
        else:
            labels = labels.astype(str)
            unknown = ~np.isin(labels, names)
            if unknown.any():
                row = int(np.flatnonzero(unknown)[0])
                raise DataError(
                    f"{where}: labels[{row}]={plain(labels[row])!r} is not one of the "
                    f"declared classes {names}"
                )
        classes = classes if classes is not None else names
    try:
        return select_classes(labels, classes)
    except ValueError as error:
        raise DataError(f"{where}: {error}") from None


def split_rows(
    given: Any,
    n: int,
    *,
    stratify: np.ndarray | None,
    chronological: bool,
    validation: float,
    test: float,
    seed: int,
    where: str,
) -> dict[str, np.ndarray]:
    """Row indices per split: from ``given`` ([n] of "train"/"validation"/"test" or 0/1/2),
    else stratified by ``stratify``, chronological, or a seeded shuffle."""
    if given is not None:
        return _given_split(np.asarray(given), n, where)
    if not (validation > 0 and test > 0 and validation + test < 1):
        raise DataError(
            f"{where}: need 0 < validation_fraction, test_fraction and their sum "
            f"< 1; got {validation}, {test}"
        )
    if stratify is not None:
        try:
            return stratified_indices(stratify, validation=validation, test=test, seed=seed)
        except ValueError as error:  # e.g. a class with one row
            raise DataError(f"{where}: cannot split stratified by class: {error}") from None
    order = np.arange(n) if chronological else stream(seed, _SPLIT_TAG).permutation(n)
    b1, b2 = int(round((1 - validation - test) * n)), int(round((1 - test) * n))
    parts = {"train": order[:b1], "validation": order[b1:b2], "test": order[b2:]}
    return {s: np.sort(r) if not chronological else r for s, r in parts.items()}


def _given_split(given: np.ndarray, n: int, where: str) -> dict[str, np.ndarray]:
    """Rows per split from a split column of names ("train", "validation", "test") or
    ids (0, 1, 2, as numbers or text); DataError naming the first row holding anything else."""
    if given.shape != (n,):
        raise DataError(f"{where}: the split column must be [n]=({n},); got {given.shape}")
    text = given.astype(str) if given.dtype.kind in "USO" else None
    ids = np.full(n, -1)
    for i, split in enumerate(SPLITS):
        if text is not None:
            ids[(text == split) | (text == str(i))] = i
        else:
            ids[given == i] = i
    if (ids < 0).any():
        row = int(np.flatnonzero(ids < 0)[0])
        raise DataError(
            f"{where}: split[{row}]={plain(given[row])!r} is not one of {SPLITS} (or 0, 1, 2)"
        )
    return {split: np.flatnonzero(ids == i) for i, split in enumerate(SPLITS)}


def standardise(
    x: np.ndarray, lengths: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-feature (x - mean) / std with statistics of the train rows' valid steps only
    (ddof=0; a constant feature keeps std 1). Padding stays zero."""
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    steps = x[train][valid[train]]
    mean, std = steps.mean(axis=0), steps.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = np.where(valid[..., None], (x - mean) / std, 0.0)
    return z, {"mean": mean.tolist(), "std": std.tolist(), "fitted_on": "train"}


def from_arrays(  # noqa: PLR0913 (one call from arrays to a Dataset: every choice a keyword)
    inputs: Any,
    *,
    labels: Any = None,
    targets: Any = None,
    lengths: Any = None,
    split: Any = None,
    task: str = "auto",
    classes: Sequence[Any] | None = None,
    class_names: Sequence[Any] | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
    name: str = "arrays",
    where: str = "inputs",
    info: dict[str, Any] | None = None,
) -> Dataset:
    """A Dataset from NumPy arrays, in one call.

    inputs: padded [n, time, features] (with ``lengths`` [n] when rows are padded), or a
        ragged list of [time_i, features] arrays.
    labels: [n] class labels (ints or strings) -> task "classification"; or
    targets: [n] or [n, 1] -> "regression", [n, horizon, k] -> "forecast", and with
        task="step_forecast" [n, time, k], one target per step.
    split: [n] of "train"/"validation"/"test" (or 0/1/2); else a seeded split with
        ``validation_fraction`` and ``test_fraction`` (stratified by class).
    classes: keep and order these labels; class_names: the labels integer ids stand for.
    normalize: standardise each feature with the train split's statistics (recorded in
        info["normalization"]).
    """
    if (labels is None) == (targets is None):
        raise DataError(
            f"{where}: give exactly one of labels (classification) and targets "
            "(regression, forecasting)"
        )
    if task not in TASKS:
        raise DataError(f"{where}: task must be one of {TASKS}; got {task!r}")
    x, lengths = padded(inputs, lengths, where)
    n = len(x)
    info = dict(info or {})
    kept = np.arange(n)
    if labels is not None:
        if len(labels) != n:
            raise DataError(f"{where}: {n} sequences but {len(labels)} labels")
        kept, y, names = class_ids(labels, classes, class_names, where)
        task, info["class_names"] = "classification", [str(c) for c in names]
    else:
        y, task = _targets(targets, n, x.shape[1], task, where)
    x, lengths = x[kept], lengths[kept]
    given = None if split is None else np.asarray(split)[kept]
    rows = split_rows(
        given,
        len(x),
        stratify=y if task == "classification" else None,
        chronological=False,
        validation=validation_fraction,
        test=test_fraction,
        seed=seed,
        where=where,
    )
    if task == "classification":
        _check_every_class(y, rows, info["class_names"], where)
    if normalize:
        x, info["normalization"] = standardise(x, lengths, rows["train"])
    full = bool((lengths == x.shape[1]).all())
    splits = {}
    for s, r in rows.items():
        if len(r) == 0:
            raise DataError(f"{where}: split {s!r} has no rows")
        splits[s] = Split(x[r].astype(np.float32), y[r], None if full else lengths[r])
    info["split_index"] = {s: kept[r] for s, r in rows.items()}
    num_classes = len(info["class_names"]) if task == "classification" else None
    return Dataset(name=name, task=task, **splits, num_classes=num_classes, info=info)


def _targets(targets: Any, n: int, time: int, task: str, where: str) -> tuple[np.ndarray, str]:
    t = np.asarray(targets)
    if len(t) != n or not np.issubdtype(t.dtype, np.number):
        raise DataError(
            f"{where}: targets must be numeric with one row per sequence ({n}); "
            f"got dtype {t.dtype} shape {t.shape}"
        )
    t = t.astype(np.float32)
    if task == "auto":
        task = "regression" if t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1) else "forecast"
    if task not in _TARGET_SHAPES:
        raise DataError(f"{where}: task {task!r} needs labels, not targets")
    want, shape = _TARGET_SHAPES[task](t, time)
    if shape is None:
        raise DataError(f"{where}: {task} targets must be {want}; got {np.shape(targets)}")
    t = t.reshape(shape)
    if not np.isfinite(t).all():
        row = int(np.flatnonzero(~np.isfinite(t.reshape(n, -1)).all(axis=1))[0])
        raise DataError(f"{where}: targets of row {row} hold NaN or inf")
    return t, task


def _regression_shape(t: np.ndarray, time: int):
    ok = t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1)
    return "[n] or [n, 1]", (len(t), 1) if ok else None


def _forecast_shape(t: np.ndarray, time: int):
    return "[n, horizon] or [n, horizon, k]", (*t.shape, 1) if t.ndim == 2 else (
        t.shape if t.ndim == 3 else None
    )


def _step_forecast_shape(t: np.ndarray, time: int):
    shape = (*t.shape, 1) if t.ndim == 2 else t.shape
    ok = len(shape) == 3 and shape[1] == time
    return f"[n, time={time}] or [n, time={time}, k]", shape if ok else None


_TARGET_SHAPES = {
    "regression": _regression_shape,
    "forecast": _forecast_shape,
    "step_forecast": _step_forecast_shape,
}


def _check_every_class(y: np.ndarray, rows: dict[str, np.ndarray], names: list, where: str):
    for s, r in rows.items():
        present = np.bincount(y[r], minlength=len(names))
        if (present == 0).any():
            absent = [names[c] for c in np.flatnonzero(present == 0)]
            raise DataError(
                f"{where}: class {absent[0]!r} has no rows in split {s!r} "
                f"({len(r)} rows); every split needs every class"
            )
