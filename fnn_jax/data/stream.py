"""A packed corpus (fnn_jax.data.corpus) streamed through grain, batch for batch what the
engine would see with the rows in memory.

``train_stream`` is indexed by global step: step s reads the rows ``row_indices(s)`` names
([batch] ids of the global batch; ``EpochOrder`` is the engine's order,
``Setup.train_indices``), and each process reads only its contiguous slice of them. Nothing
in it depends on what was read before, so a stream started at any step, with any number of
worker processes, yields the same batches. Its iterator's position is grain's state
(``get_state`` / ``set_state``), saved as an item of an Orbax checkpoint with
``save_args`` / ``restore_args``.

``eval_stream`` yields a validation or test split in order, in the padded batches of
``fnn_jax.train.steps.eval_batches`` (its fields and its "weights").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags

try:
    import grain
except ImportError as error:
    raise ImportError("fnn_jax.data.stream needs grain: pip install 'fnn_jax[stream]'") from error

from fnn_jax.data.base import epoch_order
from fnn_jax.data.corpus import CorpusError, CorpusSplit

RowIndices = Callable[[int], np.ndarray]


class EpochOrder:
    """step -> [batch_size] int32 rows of the global batch at that step: the order of
    ``Setup.train_indices`` (``data.epoch_order(rows, seed, epoch)``, the remainder of
    each epoch dropped; with truncated BPTT, ``windows`` consecutive steps share rows).

    Holds one epoch's order at a time: [rows] int64, 8 / (2 * row_length) of the corpus's
    size on disk. Picklable, so grain's worker processes can call it."""

    def __init__(self, rows: int, batch_size: int, *, seed: int, windows: int = 1):
        if batch_size < 1 or windows < 1:
            raise ValueError(f"batch_size and windows must be >= 1; got {batch_size}, {windows}")
        if rows < batch_size:
            raise ValueError(
                f"the train split has {rows} rows, fewer than one batch of {batch_size}; "
                "use a smaller batch_size, a smaller row_length or more text"
            )
        self.rows, self.batch_size, self.seed, self.windows = rows, batch_size, seed, windows
        self.batches_per_epoch = rows // batch_size
        self._epoch: tuple[int, np.ndarray] | None = None  # (epoch, its order): a cache

    def __call__(self, step: int) -> np.ndarray:
        epoch, position = divmod(step // self.windows, self.batches_per_epoch)
        # grain's threads call this at once: read the cache once, replace it whole.
        cached = self._epoch
        if cached is None or cached[0] != epoch:
            cached = self._epoch = (epoch, epoch_order(self.rows, seed=self.seed, epoch=epoch))
        start = position * self.batch_size
        return cached[1][start : start + self.batch_size].astype(np.int32)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_epoch": None}  # workers rebuild it; not sent to them


def process_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous rows of a global batch: [p*B/P, (p+1)*B/P). ValueError
    naming the numbers when the batch does not split evenly or leaves a process none."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in [0, {process_count}); got {process_index}")
    if batch_size < process_count:
        raise ValueError(
            f"a global batch of {batch_size} rows over {process_count} processes leaves "
            f"process {process_count - 1} no rows; use a batch of at least {process_count}"
        )
    if batch_size % process_count:
        raise ValueError(
            f"a global batch of {batch_size} rows does not split evenly over "
            f"{process_count} processes; use a multiple of {process_count}"
        )
    share = batch_size // process_count
    return slice(process_index * share, (process_index + 1) * share)


@dataclasses.dataclass(frozen=True)
class _ReadStep:
    """step -> this process's slice of the step's batch (grain maps it over steps)."""

    split: CorpusSplit
    row_indices: RowIndices
    process_index: int
    process_count: int

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rows = np.asarray(self.row_indices(step))
        if rows.ndim != 1:
            raise ValueError(f"row_indices({step}) must be [batch] row ids; got {rows.shape}")
        mine = rows[process_slice(len(rows), self.process_index, self.process_count)]
        try:
            batch = self.split.rows(mine)
        except CorpusError as error:
            # grain's iterator may count a failed step as read: the step is what resumes.
            raise CorpusError(f"{error} (reading step {step})") from None
        batch["index"] = mine.astype(np.int32)  # as data.batches: which rows these are
        batch["step"] = np.asarray(step, np.int64)  # a resumed feed can be checked against it
        return batch


def train_stream(
    split: CorpusSplit,
    *,
    row_indices: RowIndices,
    start_step: int,
    num_steps: int,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """The batches of global steps start_step .. start_step + num_steps - 1, this
    process's slice of each: {"inputs" int32 [b, T], "targets" int32 [b, T], "lengths"
    int32 [b], "resets" bool [b, T], "index" int32 [b] (row ids), "step" int64 []} with
    b = batch / process_count.

    prefetch: batches read ahead, each by its own thread (0: read when asked); workers:
    processes that read (0: this one). A restored iterator must be built with the same
    start_step and num_steps as the saved one (grain's state is a position in them).
    A CorpusError names the file and the step it was reading; with prefetch the
    iterator's state may already count that step, so resume from a checkpoint or from
    that step, not from the failed iterator's state."""
    if start_step < 0 or num_steps < 1:
        raise ValueError(f"need start_step >= 0 and num_steps >= 1; got {start_step}, {num_steps}")
    first = np.asarray(row_indices(start_step))
    process_slice(len(first), process_index, process_count)  # refuse now, not in a worker
    read = _ReadStep(split, row_indices, process_index, process_count)
    ds = grain.MapDataset.range(start_step, start_step + num_steps).map(read)
    return _iterate(ds, workers, prefetch)


def eval_stream(
    split: CorpusSplit,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    *,
    rows: int | None = None,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """The whole split in order, as ``steps.eval_batches(split, batch_size, process_count)``
    makes global batches (of ``rows`` when given), this process's slice of each:
    {"inputs", "targets", "lengths", "weights" float32 [b] (0: a padding row, a repeat of
    the batch's first rows), "resets"}."""
    # The one rule for the batch size, imported here: the data layer does not import the
    # training code at its top (fnn_jax.train imports fnn_jax.data).
    from fnn_jax.train.steps import eval_batch_rows

    n = len(split)
    size = eval_batch_rows(n, batch_size, process_count) if rows is None else rows
    read = _ReadEvalBatch(split, size, n, process_slice(size, process_index, process_count))
    ds = grain.MapDataset.range(-(-n // size)).map(read)
    return _iterate(ds, 0, prefetch)


@dataclasses.dataclass(frozen=True)
class _ReadEvalBatch:
    split: CorpusSplit
    size: int  # rows of a global batch
    n: int  # rows of the split
    mine: slice

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        idx = np.arange(b * self.size, min((b + 1) * self.size, self.n))
        real = len(idx)
        weights = np.ones(self.size, np.float32)
        weights[real:] = 0.0
        idx = np.concatenate([idx, idx[np.arange(self.size - real) % real]])
        batch = self.split.rows(idx[self.mine])
        order = ("inputs", "targets", "lengths")  # steps.to_device_batch's fields
        return {
            **{k: batch[k] for k in order},
            "weights": weights[self.mine],
            "resets": batch["resets"],
        }


def _iterate(ds: grain.MapDataset, workers: int, prefetch: int) -> grain.DatasetIterator:
    if workers < 0 or prefetch < 0:
        raise ValueError(f"workers and prefetch must be >= 0; got {workers}, {prefetch}")
    read = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
    it_ds = ds.to_iter_dataset(read)
    if workers:
        # grain reads its absl flags when it starts workers: in a library call (a test, a
        # notebook) rather than an absl app, they stand at their defaults, as parsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it_ds)


def save_args(iterator: grain.DatasetIterator) -> Any:
    """The Orbax item that saves ``iterator``'s position (its grain state, one JSON file
    per process) beside the others in an ``ocp.args.Composite``."""
    return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator: grain.DatasetIterator) -> Any:
    """The Orbax item that restores a saved position into ``iterator`` (built as the
    saved one was); ``manager.restore`` returns the same iterator, positioned."""
    return grain.checkpoint.CheckpointRestore(iterator)
