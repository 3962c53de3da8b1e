"""``fit``: train on a Dataset you built in Python (``fnn_jax.data.from_arrays``), with
nothing registered.

    ds = fnn_jax.data.from_arrays(sequences, labels=labels)   # ragged [time_i, features]
    report = fnn_jax.fit(ds, "runs/mine", {"train.num_steps": 300, "model.hidden_size": 32})
    run = fnn_jax.load("runs/mine")                           # in any later process

The dataset is written once into the workdir (``data/<sha256>.npz``, named by its content)
and the run reads it from there as an "npz" source: its resume, ``fnn_jax.load``,
experiments/evaluate.py and sweeps rebuild the same data in any process. Calling ``fit``
again with other arrays in the same workdir is refused, naming what changed (rows, hashes),
before anything is written.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from fnn_jax import config as config_lib
from fnn_jax.data import Dataset, fingerprint
from fnn_jax.data.sources import save_npz
from fnn_jax.train.loop import data_changes, train_and_evaluate


def fit(
    dataset: Dataset,
    workdir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    config: ml_collections.ConfigDict | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) a model on ``dataset`` in ``workdir``; returns the report
    (``train_and_evaluate``'s). ``config`` defaults to ``fnn_jax.config.default_config()``;
    ``overrides`` are dotted keys set on it ({"model.cell": "gru"}); config.data names the
    dataset's file, whatever it said. Other arrays than the workdir was trained on are
    refused (ConfigError naming what changed)."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"fit trains on a fnn_jax.data.Dataset; got {type(dataset).__name__}")
    from fnn_jax.sweep import apply_overrides  # late: the sweep package imports training

    base = copy.deepcopy(config if config is not None else config_lib.default_config())
    workdir = Path(workdir).absolute()
    found = fingerprint.fingerprint(dataset)
    changed = data_changes(workdir, {**found, "files": None})
    if changed:  # before a second file is written beside the first
        raise config_lib.ConfigError(
            f"workdir {workdir} was trained on other arrays; refusing to resume (train on "
            "these in a new workdir). What changed:\n  " + "\n  ".join(changed)
        )
    path = _stored(dataset, found, workdir / "data")
    with base.unlocked():
        base.data.name = "npz"
        base.data.options = ml_collections.ConfigDict({"path": str(path)})
    final = apply_overrides(base, dict(overrides or {}))
    final.lock()
    return train_and_evaluate(final, workdir, stop_after_steps=stop_after_steps)


def _stored(dataset: Dataset, found: dict[str, Any], folder: Path) -> Path:
    """The dataset's file in ``folder``, named by a hash of its arrays (``found``: its
    fingerprint), written once."""
    digest = hashlib.sha256("".join(found["sha256"].values()).encode()).hexdigest()[:16]
    path = folder / f"{digest}.npz"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            written = save_npz(dataset, Path(scratch) / "dataset.npz")
            written.replace(path)  # whole or absent: no half-written file for a resume
    return path
