"""Datasets from your own files, named in a config with no code:

    npz         arrays: inputs [n, time, features] (+ lengths) or a ragged object array,
                labels or targets, optionally a split key; or one file per split
    table       a long CSV/Parquet table: one row per (sequence, step)   (tables.py)
    series      numeric CSV/Parquet columns as a time series                (tables.py)
    text_files  a glob of UTF-8 files: a character language-model corpus   (text_sources.py)
    text_table  a CSV/Parquet table of (text, label): text classification  (text_sources.py)

This module holds the .npz source and what every file source shares.

A ``path`` holding ``{split}`` names one file per split (``data/x_{split}.npz``: train,
validation, test). Every source records the SHA-256 of the files it read in
``info["files"]``; the run's data fingerprint (fnn_jax.data.fingerprint) compares them on
resume. Errors are DataErrors naming the file, the column or row and what was expected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fnn_jax.data.arrays import DataError, from_arrays, padded
from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import register


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_of(path: str) -> dict[str, Path]:
    """{"all": file} or, for a path holding "{split}", {split: file}; each must exist."""
    if not isinstance(path, str) or not path:
        raise DataError(f"option path must be a file path; got {path!r}")
    named = {s: path.format(split=s) for s in SPLITS} if "{split}" in path else {"all": path}
    out = {}
    for key, name in named.items():
        p = Path(name).expanduser().absolute()
        if not p.is_file():
            raise DataError(f"{p}: no such file" + (f" (split {key!r})" if key != "all" else ""))
        if p.stat().st_size == 0:
            raise DataError(f"{p}: the file is empty")
        out[key] = p
    return out


def stem(path: str) -> str:
    """A dataset's name from its file: "gestures" for my_data/gestures_{split}.npz."""
    return Path(path.replace("_{split}", "").replace("{split}", "")).stem or "data"


def hashes(files: dict[str, Path] | Sequence[Path]) -> dict[str, str]:
    paths = files.values() if isinstance(files, dict) else files
    return {str(p): sha256_file(p) for p in paths}


# ---------------------------------------------------------------------------------- npz


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            raise DataError(f"{path}: not a readable .npz file (no zip archive)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise DataError(f"{path}: not a readable .npz file: {error}") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz file: {error}") from None
    # Object arrays (a ragged list of sequences, as np.savez writes it) are pickled: only
    # your own files belong here.
    with np.load(path, allow_pickle=True) as f:
        return {k: f[k] for k in f.files}


def _npz_part(arrays: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    if "train.inputs" in arrays:  # a whole Dataset, as save_npz writes it
        return arrays
    if "inputs" not in arrays:
        raise DataError(f"{path}: key 'inputs' is missing; keys are {sorted(arrays)}")
    has = [k for k in ("labels", "targets") if k in arrays]
    if len(has) != 1:
        raise DataError(
            f"{path}: needs exactly one of the keys 'labels' (classification) and "
            f"'targets' (regression, forecasting); keys are {sorted(arrays)}"
        )
    known = {"inputs", "lengths", "labels", "targets", "split", "class_names"}
    extra = sorted(set(arrays) - known)
    if extra:
        raise DataError(f"{path}: unexpected keys {extra}; valid keys: {sorted(known)}")
    x, lengths = padded(arrays["inputs"], arrays.get("lengths"), f"{path}")
    y = arrays[has[0]]
    if len(y) != len(x):
        raise DataError(f"{path}: {len(x)} sequences in 'inputs' but {len(y)} in {has[0]!r}")
    return {
        "inputs": x,
        "lengths": lengths,
        has[0]: y,
        **{k: arrays[k] for k in ("split", "class_names") if k in arrays},
    }


def _joined(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One file per split -> one set of arrays with a split column."""
    features = {s: p["inputs"].shape[2] for s, p in parts.items()}
    if len(set(features.values())) > 1:
        raise DataError(f"the split files differ in feature count: {features}")
    kinds = {s: "labels" if "labels" in p else "targets" for s, p in parts.items()}
    if len(set(kinds.values())) > 1:
        raise DataError(f"the split files differ in what they hold: {kinds}")
    time = max(p["inputs"].shape[1] for p in parts.values())
    x = [
        np.pad(p["inputs"], ((0, 0), (0, time - p["inputs"].shape[1]), (0, 0)))
        for p in parts.values()
    ]
    kind = kinds["train"]
    out = {
        "inputs": np.concatenate(x),
        "lengths": np.concatenate([p["lengths"] for p in parts.values()]),
        kind: np.concatenate([p[kind] for p in parts.values()]),
        "split": np.concatenate([np.full(len(p["inputs"]), s) for s, p in parts.items()]),
    }
    if "class_names" in parts["train"]:
        out["class_names"] = parts["train"]["class_names"]
    return out


@register("npz")
def npz(
    *,
    path: str,
    task: str = "auto",
    classes: Sequence[Any] | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
) -> Dataset:
    """Sequences from an .npz: keys 'inputs' ([n, time, features] with 'lengths' [n] when
    padded, or a ragged object array of [time_i, features]), 'labels' [n] or 'targets',
    and optionally 'split' [n] ("train"/"validation"/"test") and 'class_names'. A path
    with "{split}" reads one file per split. See ``arrays.from_arrays`` for the rest."""
    files = files_of(path)
    parts = {s: _npz_part(_read_npz(p), p) for s, p in files.items()}
    if "train.inputs" in next(iter(parts.values())):
        return load_npz_dataset(next(iter(files.values())), parts)
    arrays = parts["all"] if "all" in parts else _joined(parts)
    where = str(next(iter(files.values())) if len(files) == 1 else path)
    return from_arrays(
        arrays["inputs"],
        lengths=arrays["lengths"],
        labels=arrays.get("labels"),
        targets=arrays.get("targets"),
        split=arrays.get("split"),
        task=task,
        classes=classes,
        class_names=arrays.get("class_names"),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=normalize,
        name=stem(path),
        where=where,
        info={"files": hashes(files)},
    )


def save_npz(dataset: Dataset, path: str | Path) -> Path:
    """Writes a whole Dataset (its splits as they are, no normalisation again) to one .npz
    that ``npz(path=...)`` reads back equal, array for array."""
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        s = dataset.split(split)
        arrays |= {f"{split}.inputs": s.inputs, f"{split}.targets": s.targets}
        if s.lengths is not None:
            arrays[f"{split}.lengths"] = s.lengths
        if s.resets is not None:
            arrays[f"{split}.resets"] = s.resets
    meta = {
        "name": dataset.name,
        "task": dataset.task,
        "num_classes": dataset.num_classes,
        "baselines": dataset.baselines,
        "info": {k: v for k, v in dataset.info.items() if _is_json(v)},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def load_npz_dataset(file: Path, parts: dict[str, dict[str, np.ndarray]]) -> Dataset:
    (arrays,) = parts.values()
    meta = json.loads(str(arrays["meta"]))
    splits = {
        s: Split(
            arrays[f"{s}.inputs"],
            arrays[f"{s}.targets"],
            arrays.get(f"{s}.lengths"),
            arrays.get(f"{s}.resets"),
        )
        for s in SPLITS
    }
    info = {**meta["info"], "files": hashes({"all": file})}
    return Dataset(
        name=meta["name"],
        task=meta["task"],
        **splits,
        num_classes=meta["num_classes"],
        baselines=meta["baselines"],
        info=info,
    )


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True
