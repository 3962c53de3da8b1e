"""Dataset containers, deterministic batching and host-side batch checks.

Every array is batch-major: ``inputs`` is [n, time, features] float32 (or [n, time] int32
tokens), ``lengths`` is [n] int32. Targets depend on the task:

- classification: int32 [n] class ids in [0, num_classes)
- regression:     float32 [n, 1]
- forecast:       float32 [n, horizon, targets]
- step_forecast:  float32 [n, time, targets], the next value at every step
- tagging:        int32 [n, time] per-step labels in [0, num_classes), -1 = ignore (padding)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from fnn_jax import tasks

TASKS = tuple(tasks.REGISTRY)
SPLITS = ("train", "validation", "test")

# One field of a batch spec: {"shape": (None, time, ...), "dtype": np.dtype, "range": (lo, hi)}.
# None in "shape" matches any size (the batch axis); "range" (optional) means lo <= v < hi.
FieldSpec = dict[str, Any]


def _readonly(x: np.ndarray) -> np.ndarray:
    # Datasets are shared by every epoch and every consumer; in-place edits would be silent bugs.
    # A view, so the caller's own array stays writeable.
    x = np.asarray(x).view()
    x.flags.writeable = False
    return x


def _checked_lengths(lengths: Any, n: int, time: int) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or lengths.dtype != np.int32:
        raise ValueError(f"lengths must be int32 [n]=({n},); got {lengths.dtype} {lengths.shape}")
    if n and (lengths.min() < 1 or lengths.max() > time):
        raise ValueError(
            f"lengths must lie in [1, time={time}]; got [{lengths.min()}, {lengths.max()}]"
        )
    return lengths


def _checked_resets(resets: Any, n: int, time: int) -> np.ndarray:
    resets = np.asarray(resets)
    if resets.shape != (n, time) or resets.dtype != np.bool_:
        raise ValueError(
            f"resets must be bool [n, time]=({n}, {time}); got {resets.dtype} {resets.shape}"
        )
    return resets


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset.

    inputs: [n, time, features] float32, or [n, time] int32 tokens.
    targets: task dependent (see module docstring); leading axis n.
    lengths: [n] int32 valid steps per row (1..time), or None when all rows are full length.
    resets: [n, time] bool, True at a step where a new document or series starts: the
        recurrent state restarts from zeros before reading it (several documents packed in
        a row, or cut into windows by truncated BPTT). None: only at each row's start.
    """

    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray | None = None
    resets: np.ndarray | None = None

    def __post_init__(self) -> None:
        inputs, targets = np.asarray(self.inputs), np.asarray(self.targets)
        if inputs.ndim == 3:
            if inputs.dtype != np.float32:
                raise ValueError(f"[n, time, features] inputs must be float32; got {inputs.dtype}")
        elif inputs.ndim == 2:
            if inputs.dtype != np.int32:
                raise ValueError(f"[n, time] token inputs must be int32; got {inputs.dtype}")
        else:
            raise ValueError(
                f"inputs must be [n, time, features] or [n, time]; got shape {inputs.shape}"
            )
        n, time = inputs.shape[:2]
        if targets.ndim < 1 or targets.shape[0] != n:
            raise ValueError(f"targets must have leading axis n={n}; got shape {targets.shape}")
        object.__setattr__(self, "inputs", _readonly(inputs))
        object.__setattr__(self, "targets", _readonly(targets))
        if self.lengths is not None:
            object.__setattr__(self, "lengths", _readonly(_checked_lengths(self.lengths, n, time)))
        if self.resets is not None:
            object.__setattr__(self, "resets", _readonly(_checked_resets(self.resets, n, time)))

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def full_lengths(self) -> np.ndarray:
        """[n] int32 lengths, with the full time length filled in when ``lengths`` is None."""
        if self.lengths is not None:
            return self.lengths
        return np.full(len(self), self.inputs.shape[1], dtype=np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset: three splits plus task metadata.

    num_classes: number of classes (classification) or label vocabulary size (tagging).
    baselines: reference metric values, e.g. {"mse_predict_one": 0.1667}.
    info: anything else (normalisation mean/std, class names, vocab, split bookkeeping).
    streams: a dataset larger than memory (fnn_jax.data.corpus): {split: its rows on disk,
        read on demand}; ``train``, ``validation`` and ``test`` then hold only each
        split's first rows (shapes, checks, a sample), and the engine reads the streams
        (fnn_jax.train.feeds). ``num_rows`` counts either.

    Construction validates every split against ``batch_spec(self)``, so a loader bug (wrong
    dtype, NaN, label out of range, splits with different shapes) fails at load time.
    """

    name: str
    task: str
    train: Split
    validation: Split
    test: Split
    num_classes: int | None = None
    baselines: dict[str, float] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    streams: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"dataset {self.name!r}: task must be one of {TASKS}; got {self.task!r}"
            )
        if tasks.REGISTRY[self.task].needs_classes and (
            self.num_classes is None or self.num_classes < 1
        ):
            raise ValueError(f"dataset {self.name!r}: task {self.task!r} needs num_classes >= 1")
        spec = batch_spec(self)
        for split in SPLITS:
            s = self.split(split)
            arrays = {"inputs": s.inputs, "targets": s.targets, "lengths": s.full_lengths}
            _check_arrays(arrays, f"dataset {self.name!r}, split {split!r} (whole split)", spec)

    def split(self, name: str) -> Split:
        """The split called ``name`` (one of SPLITS)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {name!r}")
        return getattr(self, name)

    def num_rows(self, name: str) -> int:
        """Rows of the split called ``name``: on disk when it streams, else in memory."""
        if self.streams is not None:
            return len(self.streams[name])
        return len(self.split(name))


def batch_spec(dataset: Dataset) -> dict[str, FieldSpec]:
    """``check_batch``'s ``expected`` for this dataset (sizes taken from its train split)."""
    x = dataset.train.inputs
    time = int(x.shape[1])
    spec: dict[str, FieldSpec] = {}
    if x.ndim == 3:
        spec["inputs"] = {"shape": (None, time, int(x.shape[2])), "dtype": np.dtype(np.float32)}
    else:
        spec["inputs"] = {"shape": (None, time), "dtype": np.dtype(np.int32)}
        vocab = dataset.info.get("input_vocab_size", dataset.num_classes)
        if vocab is not None:
            spec["inputs"]["range"] = (0, int(vocab))
    spec["targets"] = tasks.for_dataset(dataset).target_spec(dataset)
    spec["lengths"] = {"shape": (None,), "dtype": np.dtype(np.int32), "range": (1, time + 1)}
    return spec


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """[n] row order for one epoch: a pure function of (seed, epoch), no hidden state."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0; got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch]).permutation(n)


def num_batches(split: Split, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches ``batches`` yields for this split (0 if drop_remainder and n < size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    n = len(split)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(
    split: Split,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields batches {"inputs", "targets", "lengths", "index"} (and "resets" when the split
    has them) of one epoch.

    inputs [b, time, features] (or [b, time] tokens), targets [b, ...], lengths [b] int32
    (full length when the split has none), index [b] int32 row indices into the split,
    resets [b, time] bool.
    The order is ``epoch_order(n, seed=seed, epoch=epoch)`` (or 0..n-1 without shuffle), so
    resuming at any (seed, epoch) reproduces the same batches.
    """
    count = num_batches(split, batch_size, drop_remainder)
    order = epoch_order(len(split), seed=seed, epoch=epoch) if shuffle else np.arange(len(split))
    order = order.astype(np.int32)
    lengths = split.full_lengths
    for b in range(count):
        idx = order[b * batch_size : (b + 1) * batch_size]
        batch = {
            "inputs": split.inputs[idx],
            "targets": split.targets[idx],
            "lengths": lengths[idx],
            "index": idx,
        }
        if split.resets is not None:
            batch["resets"] = split.resets[idx]
        yield batch


def _fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"


def _check_arrays(arrays: Mapping[str, Any], where: str, expected: Mapping[str, FieldSpec]) -> None:
    """Checks each expected field's rank, sizes, dtype, finiteness, value range and batch size."""
    batch_size: int | None = None
    for field, spec in expected.items():
        if field not in arrays:
            raise ValueError(f"{where}: field {field!r} is missing; got fields {sorted(arrays)}")
        a = np.asarray(arrays[field])
        name = f"{where}: field {field!r}"
        _check_field_layout(a, name, spec)
        if batch_size is None:
            batch_size = a.shape[0]
        elif a.shape[0] != batch_size:
            raise ValueError(
                f"{name} has batch size {a.shape[0]} but earlier fields have {batch_size}; "
                f"got shape {a.shape} dtype {a.dtype}"
            )
        _check_field_values(a, name, spec)


def _check_field_layout(a: np.ndarray, name: str, spec: FieldSpec) -> None:
    """Rank, sizes (None = any) and dtype."""
    want_shape = tuple(spec["shape"])
    want_dtype = np.dtype(spec["dtype"])
    got = f"got shape {a.shape} dtype {a.dtype}"
    want = f"expected shape {_fmt_shape(want_shape)} dtype {want_dtype}"
    if a.ndim != len(want_shape):
        raise ValueError(
            f"{name} has rank {a.ndim}, expected rank {len(want_shape)}; {got}, {want}"
        )
    if any(w is not None and g != w for g, w in zip(a.shape, want_shape, strict=True)):
        raise ValueError(f"{name} has the wrong shape; {got}, {want}")
    if a.dtype != want_dtype:
        raise ValueError(f"{name} has the wrong dtype; {got}, {want}")


def _check_field_values(a: np.ndarray, name: str, spec: FieldSpec) -> None:
    """Finite floats; integers inside ``spec["range"]`` = [lo, hi)."""
    got = f"got shape {a.shape} dtype {a.dtype}"
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite values (NaN/inf), first at {first}; {got}"
            )
    if "range" in spec and a.size:
        lo, hi = spec["range"]
        if a.min() < lo or a.max() >= hi:
            raise ValueError(
                f"{name} has values in [{a.min()}, {a.max()}], expected [{lo}, {hi - 1}]; {got}"
            )


def check_batch(
    batch: Mapping[str, Any],
    *,
    dataset: str,
    split: str,
    index: int,
    expected: Mapping[str, FieldSpec],
) -> None:
    """Host-side check of one batch before it goes to the device.

    ``expected`` maps field name -> {"shape": (None, time, ...), "dtype": ..., "range": (lo, hi)}
    (``batch_spec(dataset)`` builds it). Raises ValueError naming the dataset, split, batch
    index, field, and the shape/dtype it got and expected, for: a missing field, wrong rank,
    wrong size, wrong dtype, inconsistent batch sizes, NaN/inf, or values out of range.
    Fields not in ``expected`` (e.g. "index") are not checked.
    """
    _check_arrays(batch, f"dataset {dataset!r}, split {split!r}, batch {index}", expected)
