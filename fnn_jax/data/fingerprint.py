"""What a run's data was: a description that rebuilds it and a fingerprint that tells
whether the rebuilt data is the same.

A run writes ``<workdir>/data.json``; a resume compares the rebuilt data's fingerprint with
it and refuses a difference (config.data.allow_changed lets it through), and
``fnn_jax.load`` warns. The fingerprint holds the rows per split, each array's shape and
dtype, a SHA-256 per split over its arrays' bytes, and the SHA-256 of every file read.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fnn_jax.data.base import SPLITS, Dataset
from fnn_jax.data.registry import import_root

FILE = "data.json"
_FIELDS = ("inputs", "targets", "lengths", "resets")


def fingerprint(dataset: Dataset) -> dict[str, Any]:
    """{"rows": {split: n}, "arrays": {split: {field: "dtype[shape]"}}, "sha256": {split:
    hex}, "files": {path: hex}} of a dataset."""
    out: dict[str, Any] = {"rows": {}, "arrays": {}, "sha256": {}}
    for split in SPLITS:
        s = dataset.split(split)
        digest = hashlib.sha256()
        shapes = {}
        for field in _FIELDS:
            a = getattr(s, field)
            if a is None:
                continue
            a = np.ascontiguousarray(a)
            shapes[field] = f"{a.dtype}{list(a.shape)}"
            digest.update(f"{field}:{shapes[field]};".encode())
            digest.update(a.tobytes())
        out["rows"][split] = dataset.num_rows(split)  # on disk for a streamed dataset
        out["arrays"][split] = shapes
        out["sha256"][split] = digest.hexdigest()
    out["files"] = dict(dataset.info.get("files", {}))
    return out


def describe(name: str, options: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """data.json's content: what rebuilds the data (loader, options, the folder to import
    a "module:function" loader from), its fingerprint, and facts a reader wants."""
    facts = {k: dataset.info[k] for k in ("class_names", "normalization") if k in dataset.info}
    return {
        "name": name,
        "options": options,
        "import_root": import_root(name),
        "task": dataset.task,
        "num_classes": dataset.num_classes,
        **facts,
        "fingerprint": fingerprint(dataset),
    }


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one readable line each ("rows.train: 315 ->
    140", "file /x/g.npz: sha256 1a2b3c4d... -> 5e6f7a8b..."). A ``new`` whose "files" is
    None (arrays in memory) is compared by its arrays alone."""
    lines = []
    for split in SPLITS:
        a, b = old.get("rows", {}).get(split), new.get("rows", {}).get(split)
        if a != b:
            lines.append(f"rows.{split}: {a} -> {b}")
            continue  # its arrays' shapes and hash differ too: one line says it
        shapes_old = old.get("arrays", {}).get(split, {})
        shapes_new = new.get("arrays", {}).get(split, {})
        for field in sorted(set(shapes_old) | set(shapes_new)):
            a, b = shapes_old.get(field), shapes_new.get(field)
            if a != b:
                lines.append(f"arrays.{split}.{field}: {a} -> {b}")
        a, b = old.get("sha256", {}).get(split), new.get("sha256", {}).get(split)
        if a != b:
            lines.append(f"sha256.{split}: {str(a)[:12]}... -> {str(b)[:12]}...")
    files_old, files_new = old.get("files") or {}, new.get("files")
    if files_new is None:  # arrays held in memory, compared by their content alone
        return lines
    if sorted(files_old.values()) == sorted(files_new.values()):
        return lines  # the same files, read from another folder (a moved project)
    for path in sorted(set(files_old) | set(files_new)):
        a, b = files_old.get(path), files_new.get(path)
        if a != b:
            lines.append(f"file {path}: sha256 {(a or 'none')[:12]} -> {(b or 'none')[:12]}")
    return lines


def read(workdir: Path) -> dict[str, Any] | None:
    path = Path(workdir) / FILE
    return json.loads(path.read_text()) if path.is_file() else None


def make_importable(description: dict[str, Any] | None) -> None:
    """Puts a saved "module:function" loader's folder on sys.path (at the end: nothing the
    process already imports is shadowed), so a new process can rebuild the data."""
    root = (description or {}).get("import_root")
    if root and root not in sys.path:
        sys.path.append(root)
