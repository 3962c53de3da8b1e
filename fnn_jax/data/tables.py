"""Tables and series from your own CSV or Parquet files (read through pyarrow):

    table   a long table: one row per (sequence, step), an id and a time column
    series  numeric columns as a time series, split chronologically

Errors are DataErrors naming the file, the column or row and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fnn_jax.data import series as series_lib
from fnn_jax.data.arrays import DataError, from_arrays, split_rows
from fnn_jax.data.base import Dataset, Split
from fnn_jax.data.registry import check_positive, register
from fnn_jax.data.sources import files_of, hashes, stem


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A CSV or Parquet file (by suffix) -> {column: array}, through pyarrow."""
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError(
            f"{path}: CSV and Parquet files are read through pyarrow: "
            "pip install -e '.[files]' (or pip install pyarrow)"
        ) from None
    from pyarrow import csv, parquet

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = parquet.read_table(path)
        else:
            table = csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as error:
        text = str(error).splitlines()[0]
        if "UTF8" in text or "utf8" in text.lower():
            raise DataError(f"{path}: the text is not UTF-8 ({text})") from None
        raise DataError(f"{path}: cannot read the table: {text}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: the table has no rows")
    for name, kind in zip(table.column_names, table.schema.types, strict=True):
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            raise DataError(f"{path}: column {name!r}: the text is not UTF-8")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def read_tables(path: str) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """All files' columns, with a "__split__" column when there is one file per split."""
    files = files_of(path)
    tables = {s: read_table(p) for s, p in files.items()}
    if "all" in tables:
        return tables["all"], files
    columns = {s: sorted(t) for s, t in tables.items()}
    if len({tuple(c) for c in columns.values()}) > 1:
        raise DataError(f"the split files have different columns: {columns}")
    joined = {c: np.concatenate([t[c] for t in tables.values()]) for c in tables["train"]}
    joined["__split__"] = np.concatenate(
        [np.full(len(next(iter(t.values()))), s) for s, t in tables.items()]
    )
    return joined, files


def column(table: dict[str, np.ndarray], name: str, where: str) -> np.ndarray:
    if name not in table:
        raise DataError(f"{where}: column {name!r} is missing; columns are {sorted(table)}")
    return table[name]


def _numeric(table: dict[str, np.ndarray], names: Sequence[str], where: str) -> np.ndarray:
    """[rows, len(names)] float64 of those columns; a non-numeric column is named."""
    out = []
    for name in names:
        col = column(table, name, where)
        if not np.issubdtype(col.dtype, np.number):
            raise DataError(
                f"{where}: column {name!r} must be numeric; got {col.dtype} "
                f"(first value {col[0]!r})"
            )
        out.append(col.astype(np.float64))
    return np.stack(out, axis=1)


def check_complete(values: np.ndarray, name: str, where: str) -> None:
    """DataError naming the first row where column ``name`` has no value (null, NaN or an
    empty string)."""
    if values.dtype.kind == "f":
        missing = np.isnan(values)
    elif values.dtype.kind == "O":
        missing = np.array(
            [v is None or v == "" or (isinstance(v, float) and v != v) for v in values]
        )
    elif values.dtype.kind == "U":
        missing = values == ""
    else:
        return
    if missing.any():
        raise DataError(
            f"{where}: row {int(np.flatnonzero(missing)[0])} has no value in column {name!r}"
        )


def _time_order(data: dict[str, np.ndarray], name: str, where: str) -> np.ndarray:
    """The time column as numbers to sort by; refused unless it holds numbers or dates (text
    would sort "10" before "2")."""
    values = column(data, name, where)
    if values.dtype.kind in "iufM":
        return values
    numbers = [isinstance(v, int | float) and not isinstance(v, bool) for v in values]
    if all(numbers):
        return values.astype(np.float64)
    bad = numbers.index(False)
    raise DataError(
        f"{where}: column {name!r} must hold numbers or dates; row {bad} holds {values[bad]!r}"
    )


def _sequences(
    data: dict[str, np.ndarray], id_column: str, time_column: str | None, where: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(each row's sequence key [rows] str, the rows of each sequence in time order), the
    sequences in order of first appearance. With one file per split the key is
    "split/id": ids may restart in each file."""
    keys = column(data, id_column, where).astype(str)
    if "__split__" in data:
        keys = np.char.add(np.char.add(data["__split__"].astype(str), "/"), keys)
    order_by = [_time_order(data, time_column, where)] if time_column else []
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    sequence = np.argsort(np.argsort(first))[inverse]
    # By sequence, then time, then file order (lexsort's last key is its first).
    rows = np.lexsort((np.arange(len(keys)), *order_by, sequence))
    starts = np.flatnonzero(np.diff(sequence[rows], prepend=-1))
    return keys, np.split(rows, starts[1:])


def _one_per_sequence(
    values: np.ndarray, name: str, keys: np.ndarray, groups: list[np.ndarray], where: str
) -> np.ndarray:
    """A column that holds one value per sequence (its label, split): [sequences]."""
    for g in groups:
        if len(np.unique(values[g])) > 1:
            raise DataError(
                f"{where}: sequence {str(keys[g[0]])!r} has more than one value in column "
                f"{name!r}: {sorted({str(v) for v in values[g]})[:3]}"
            )
    return values[[g[0] for g in groups]]


def _features(table, feature_columns, used: Sequence[str], where: str) -> list[str]:
    """The feature columns: those named, or every other column; a column neither used nor
    named is refused (a typo, or a column meant as a feature)."""
    rest = [c for c in table if c not in used and c != "__split__"]
    if not feature_columns:
        return rest
    extra = [c for c in rest if c not in feature_columns]
    if extra:
        raise DataError(
            f"{where}: columns {extra} are neither features nor named options; "
            f"add them to feature_columns or drop them from the file"
        )
    return list(feature_columns)


@register("table")
def table(  # noqa: PLR0913 (a loader's keyword arguments are its config options)
    *,
    path: str,
    id_column: str = "id",
    time_column: str | None = "time",
    label_column: str | None = "label",
    target_column: str | None = None,
    feature_columns: Sequence[str] = (),
    split_column: str | None = None,
    classes: Sequence[Any] | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
) -> Dataset:
    """A long table (CSV or Parquet): one row per step of a sequence. Rows with the same
    ``id_column`` form a sequence, ordered by ``time_column`` (None: file order); the
    ``label_column`` (or, for regression, ``target_column``) and ``split_column`` hold one
    value per sequence."""
    data, files = read_tables(path)
    where = str(next(iter(files.values())) if len(files) == 1 else path)
    if target_column is not None:
        label_column = None
    answer = label_column or target_column
    if answer is None:
        raise DataError(f"{where}: set label_column (classification) or target_column")
    split_name = "__split__" if "__split__" in data else split_column
    used = [c for c in (id_column, time_column, answer, split_column) if c]
    names = _features(data, feature_columns, used, where)
    if not names:
        raise DataError(f"{where}: no feature columns remain besides {used}")
    for name in used:
        check_complete(column(data, name, where), name, where)
    values = _numeric(data, names, where)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = (int(k) for k in np.argwhere(bad)[0])
        raise DataError(f"{where}: row {r} column {names[c]!r} is {values[r, c]}")
    keys, groups = _sequences(data, id_column, time_column, where)
    per_sequence = {
        name: _one_per_sequence(column(data, name, where), name, keys, groups, where)
        for name in (answer, split_name)
        if name is not None
    }
    sequences = [values[g] for g in groups]
    return from_arrays(
        np.array(sequences + [None], dtype=object)[:-1],
        labels=per_sequence.get(label_column) if label_column else None,
        targets=per_sequence.get(target_column) if target_column else None,
        split=per_sequence.get(split_name),
        classes=classes,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=normalize,
        name=stem(path),
        where=where,
        info={
            "files": hashes(files),
            "features": names,
            # Row i of the inputs (before splitting) is the sequence with this id.
            "sequence_ids": keys[[g[0] for g in groups]].tolist(),
        },
    )


@register("series")
def series(  # noqa: PLR0913 (a loader's keyword arguments are its config options)
    *,
    path: str,
    columns: Sequence[str] = (),
    target_columns: Sequence[str] = (),
    time_column: str | None = None,
    window: int = 24,
    horizon: int = 1,
    row_length: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> Dataset:
    """Numeric columns of a CSV/Parquet file as one time series (rows in time order, or
    sorted by ``time_column``), split chronologically. ``row_length`` 0: windows of
    ``window`` steps predicting the next ``horizon`` values of ``target_columns`` (task
    "forecast", [n, window, columns] -> [n, horizon, targets]); > 0: rows of that many
    steps with the next value at every step (task "step_forecast", one column). Every
    column is standardised with the train segment's mean and std."""
    check_positive("window", window)
    check_positive("horizon", horizon)
    files = files_of(path)
    if "all" not in files:
        raise DataError(f"series: path {path!r} must name one file (splits are chronological)")
    where = str(files["all"])
    data = read_table(files["all"])
    names = list(columns) or [c for c in data if c != time_column]
    values = _numeric(data, names, where)
    if time_column:
        values = values[np.argsort(column(data, time_column, where), kind="stable")]
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{where}: row {int(r)} column {names[c]!r} is {values[r, c]}")
    targets = list(target_columns) or names
    missing = [t for t in targets if t not in names]
    if missing:
        raise DataError(f"{where}: target_columns {missing} are not among columns {names}")
    info = {"files": hashes(files), "columns": names, "target_columns": targets}
    bounds = chronological(len(values), validation_fraction, test_fraction, where)
    if row_length:
        if len(names) != 1:
            raise DataError(
                f"{where}: row_length > 0 (per-step forecasting) reads one column; "
                f"got columns {names}"
            )
        return series_lib.series_rows(
            stem(path), values[:, 0], row_length=row_length, stride=None, info=info, bounds=bounds
        )
    lo, hi = bounds["train"]
    mean, std = values[lo:hi].mean(axis=0), values[lo:hi].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = (values - mean) / std
    pick = [names.index(t) for t in targets]
    splits = {}
    for split, (lo, hi) in bounds.items():
        count = hi - lo - window - horizon + 1
        if count < 1:
            raise DataError(
                f"{where}: split {split!r} has {hi - lo} points, fewer than window "
                f"+ horizon = {window + horizon}; use a smaller window or horizon"
            )
        s = lo + np.arange(count)
        x = z[s[:, None] + np.arange(window)].astype(np.float32)
        y = z[s[:, None] + window + np.arange(horizon)][..., pick].astype(np.float32)
        splits[split] = Split(x, y)
    test = splits["test"]
    last = test.inputs[:, -1:, pick].astype(np.float64)
    mse = float(np.mean((test.targets - last) ** 2))
    info |= {"mean": mean.tolist(), "std": std.tolist(), "bounds": bounds}
    return Dataset(
        name=stem(path),
        task="forecast",
        **splits,
        baselines={"mse_naive_last_value": mse},
        info=info,
    )


def chronological(n: int, validation: float, test: float, where: str):
    rows = split_rows(
        None,
        n,
        stratify=None,
        chronological=True,
        validation=validation,
        test=test,
        seed=0,
        where=where,
    )
    return {s: (int(r[0]), int(r[-1]) + 1) if len(r) else (0, 0) for s, r in rows.items()}
