"""Where the engine's batches come from, in one place, whatever holds the rows.

- Rows in memory, on every device (``steppers.train_table``): a dispatch sends row indices
  and the program gathers its batches (small data: the fast path).
- ``steppers.RowsOnHost``: rows in memory on the host; a dispatch sends its batches, each
  process its slice (several processes).
- ``StreamedRows``: rows on disk (a dataset with ``streams``, fnn_jax.data.corpus), read
  through a grain pipeline ahead of the dispatches (fnn_jax.data.stream), each process
  its slice; its position is saved with every checkpoint (``position``) and restored
  (``seek``), so a resumed run reads exactly the batches an uninterrupted one would.
  ``StreamedGroup``: one per trial of a vectorised group, sent together.

The two host feeds answer ``sent(layout, rows, count)``; ``eval_batches`` is the
validation / test side: batches on the devices once, or read from disk at every pass.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from fnn_jax import data as data_lib
from fnn_jax.train import mesh
from fnn_jax.train.steppers import pad_time
from fnn_jax.train.steps import device_eval_batches, eval_batch_rows
from fnn_jax.train.steps import eval_batches as host_eval_batches

FIELDS = ("inputs", "targets", "lengths", "resets")  # a train batch's fields
_POSITIONS_KEPT = 256  # recent positions: a best step saved late finds its own


class StreamedRows:
    """The train batches of one trial read from disk, in the engine's order.

    split: the train split's rows on disk (fnn_jax.data.corpus.CorpusSplit); order: step ->
    [batch] row ids of the global batch (fnn_jax.data.stream.EpochOrder, the order of
    ``Setup.train_indices``); total_steps: the run's steps (the stream's length)."""

    def __init__(
        self,
        split: Any,
        order: Any,
        total_steps: int,
        *,
        workers: int = 0,
        prefetch: int = 2,
        time: int | None = None,
    ):
        from fnn_jax.data import stream  # grain: the stream extra, imported when used

        # time: rows padded to this length (truncated BPTT's whole windows), as in memory.
        self.batch, self.time = order.batch_size, max(time or 0, split.row_length)
        self.iterator = stream.train_stream(
            split,
            row_indices=order,
            start_step=0,
            num_steps=max(total_steps, 1),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            workers=workers,
            prefetch=prefetch,
        )
        self.mine = stream.process_slice(self.batch, jax.process_index(), jax.process_count())
        self.next_step = 0
        self.positions: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._remember()

    def seek(self, step: int, saved: dict | None = None) -> None:
        """Continue at ``step``: from the position a checkpoint saved with it, or (a
        checkpoint without one) from the step's own position."""
        self.iterator.set_state(dict(saved) if saved is not None else {"next_index": step})
        self.next_step = step
        self._remember()

    def position(self, step: int) -> dict | None:
        """grain's iterator state once the batches of the steps before ``step`` were read
        (what a checkpoint of ``step`` saves), or None if it was not kept."""
        return self.positions.get(step)

    def sent(self, layout: mesh.Layout, rows: np.ndarray, count: int) -> dict[str, jax.Array]:
        """The next ``count`` batches, [capacity, batch, ...] global arrays (past ``count``:
        zeros, never trained on). ``rows`` [capacity, batch] are the engine's row ids for
        them: a stream that reads other rows stops the run (it would train on other data)."""
        return layout.put_local_rows(self.local(rows, count), self.batch, axis=1)

    def local(self, rows: np.ndarray, count: int) -> dict[str, np.ndarray]:
        """``sent``'s batches before placing: this process's rows, [capacity, rows, ...]."""
        capacity = rows.shape[0]
        local = {name: [] for name in FIELDS}
        for i in range(count):
            batch = next(self.iterator)
            step = self.next_step + i
            if int(batch["step"]) != step or not np.array_equal(batch["index"], rows[i][self.mine]):
                raise RuntimeError(
                    f"the data stream's batch of its step {int(batch['step'])} holds other rows "
                    "than the engine asked for: the checkpoint's data position and its step "
                    "disagree"
                )
            padded = pad_time({name: batch[name] for name in FIELDS}, self.time)
            for name in FIELDS:
                local[name].append(padded[name])
        self.next_step += count
        self._remember()
        shapes = self._shapes()
        return {
            name: np.stack(local[name] + [np.zeros(shape, dtype)] * (capacity - count))
            if count
            else np.zeros((capacity, *shape), dtype)
            for name, (shape, dtype) in shapes.items()
        }

    def _shapes(self) -> dict[str, tuple[tuple, Any]]:
        rows = self.mine.stop - self.mine.start
        time = self.time
        return {
            "inputs": ((rows, time), np.int32),
            "targets": ((rows, time), np.int32),
            "lengths": ((rows,), np.int32),
            "resets": ((rows, time), np.bool_),
        }

    def _remember(self) -> None:
        self.positions[self.next_step] = dict(self.iterator.get_state())
        while len(self.positions) > _POSITIONS_KEPT:
            self.positions.popitem(last=False)


class StreamedGroup:
    """The train batches of a vectorised group's trials, each read from disk in its own
    order (a ``StreamedRows`` per trial: its seed's order, its own position saved with its
    own checkpoints). A trial that is not training reads nothing."""

    def __init__(self, members: list[StreamedRows]):
        self.members = members
        self.batch = members[0].batch

    def sent(
        self, layout: mesh.Layout, indices: list[np.ndarray | None], count: int
    ) -> dict[str, jax.Array]:
        """The next ``count`` batches of every trial, [trials, capacity, batch, ...] global
        arrays; ``indices``: per trial its row ids [capacity, batch], None for a trial not
        training (zeros, masked out)."""
        local = [
            None if rows is None else member.local(rows, count)
            for member, rows in zip(self.members, indices, strict=True)
        ]
        first = next(batches for batches in local if batches is not None)
        stacked = {
            name: np.stack([np.zeros_like(first[name]) if v is None else v[name] for v in local])
            for name in first
        }
        return layout.put_local_rows(stacked, self.batch, axis=2)


class StreamedEval:
    """A validation or test split read from disk at every pass, in the padded batches of
    ``steps.eval_batches`` (``rows`` each), placed on the devices one at a time."""

    def __init__(self, split: Any, rows: int, layout: mesh.Layout):
        self.split, self.rows, self.layout = split, rows, layout

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        from fnn_jax.data import stream

        batches = stream.eval_stream(
            self.split, self.rows, jax.process_index(), jax.process_count(), rows=self.rows
        )
        for batch in batches:
            yield self.layout.put_local_rows(batch, self.rows)


def eval_batches(
    dataset: data_lib.Dataset,
    split: str,
    batch_size: int,
    layout: mesh.Layout,
    rows: int | None = None,
) -> Iterable[dict]:
    """The split's evaluation batches: on the devices once (in memory), or read from disk
    at every pass (a streamed dataset). ``rows``: another split's batch size (the eval
    step compiles once)."""
    if dataset.streams is None:
        if rows is None:
            return device_eval_batches(dataset.split(split), batch_size, layout)
        # sent a batch at a time: evaluated once
        whole = host_eval_batches(dataset.split(split), rows, layout.data_size, rows=rows)
        return map(layout.put_rows, whole)
    on_disk = dataset.streams[split]
    if rows is None:
        rows = eval_batch_rows(len(on_disk), batch_size, layout.data_size)
    return StreamedEval(on_disk, rows, layout)


def batch_rows(batches: Iterable[dict]) -> int:
    """The rows of each batch of ``eval_batches``."""
    if isinstance(batches, StreamedEval):
        return batches.rows
    return int(batches[0]["weights"].shape[0])
