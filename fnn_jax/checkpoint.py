"""Orbax checkpoints of a training run: the latest N steps plus the best one.

Each step holds the train state (params, optimizer state, step, running metric sums) and a
JSON ``progress`` record (data position, early-stopping counters, fine-tuning stage, and a
SHA-256 of every state leaf, or of every shard of a leaf split over devices:
fnn_jax.checksums). Orbax commits a step atomically but keeps no checksums, so
``restore_good`` re-hashes what it reads and falls back to the previous step when a file is
missing, truncated or bit-flipped; a corrupt step is moved aside, never deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from fnn_jax import checksums
from fnn_jax.tree import path_str

log = logging.getLogger("fnn_jax")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no readable checkpoint is left."""


class CorruptCheckpoint(CheckpointError):
    """A step's files are missing, unreadable or do not match their stored hashes."""


class ArchitectureMismatch(ValueError):
    """A readable checkpoint whose parameter shapes differ from the model's: another run's,
    not damage (it is never moved aside)."""


class StateMismatch(ValueError):
    """An intact checkpoint whose training state has another structure than the target's
    (e.g. another optimizer): changed settings, not damage (it is never moved aside)."""


# JSON files Orbax parses for every step when it opens a checkpoint directory.
_STEP_JSON_FILES = ("_CHECKPOINT_METADATA", "metrics/metrics")


@contextlib.contextmanager
def _absl_quiet():
    """Orbax's "Given directory is read only" warning, which every read of another run's
    checkpoints (fnn_jax.load, init_from) would print, is not news to the caller."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _OrbaxTracebacksDropped(logging.Filter):
    """Orbax logs a failed background save with its whole traceback, twice (the save thread,
    then the wait), before the CheckpointError naming the step, the folder and the cause
    reaches the caller: a disk-full run printed about 300 lines with the cause in the middle.
    Orbax's records keep their message; the traceback is the CheckpointError's (chained)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("absl").addFilter(_OrbaxTracebacksDropped())  # Orbax logs through absl


def _write_error(step: int | None, directory: Path, error: BaseException) -> CheckpointError:
    text = str(error)
    full = "No space left on device" in text or getattr(error, "errno", None) == errno.ENOSPC
    hint = "the disk is full: free space, then" if full else "once the cause is fixed,"
    return CheckpointError(
        f"could not write checkpoint step {step} to {directory}: {text}\n"
        f"the steps saved before it are intact; {hint} run the same command to resume"
    )


def _json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _best_rank(metrics: dict[str, float]) -> float:
    return metrics["best_rank"]


def _on_devices(tree: Any) -> bool:
    return any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(tree))


def _shapes(tree: Any) -> dict[str, tuple]:
    return {path_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _is_failed_read_noise(unraisable: Any) -> bool:
    """An error Python cannot raise anywhere, left behind by a failed Orbax read: a callback
    for its closed event loop, or one of its read coroutines collected unfinished."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
        return True
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _quiet_failed_read_noise() -> None:
    """Python prints those errors as tracebacks, from other threads or at a later garbage
    collection, long after the failed read was handled (moved aside, reported). Once per
    process (and only those), they become debug lines."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_failed_read_noise", False):
        return

    def hook(unraisable: Any) -> None:
        if _is_failed_read_noise(unraisable):
            log.debug("ignored after a failed checkpoint read: %r", unraisable.exc_value)
        else:
            previous(unraisable)

    hook.quiets_failed_read_noise = True
    sys.unraisablehook = hook


@functools.cache
def _writer() -> futures.ThreadPoolExecutor:
    """The thread that starts every writable Checkpoints' saves, in the order asked."""
    return futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-save")


@dataclasses.dataclass
class StageEnds:
    """Orbax preservation policy: every step saved as the last of a fine-tuning stage (its
    metrics say ``stage_end``), whatever ``keep`` is: the natural starting points for
    fine-tuning from this run."""

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        return [bool((c.metrics or {}).get("stage_end", 0.0)) for c in checkpoints]


class Checkpoints:
    """Saves and restores steps under ``directory``: the latest ``keep``, the best, and the
    last step of every stage.

    The runner decides which step is best (it tracks the validation metric, and a NaN never
    wins); a best step is saved with rank = its step, any other with rank -1, so Orbax keeps
    exactly the runner's best. ``read_only`` opens another run's checkpoints (e.g. a
    pretrained run on shared storage) without writing, moving or deleting anything.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=max(keep, 1)),
                policies.BestN(
                    get_metric_fn=_best_rank, n=1, keep_checkpoints_without_metrics=False
                ),
                StageEnds(),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            # best_fn only makes Orbax write each step's metrics to disk, so the best step
            # is still known (and kept) after a restart; the policy above decides.
            best_fn=_best_rank,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,  # half-written steps of a killed process
            read_only=read_only,
            # What read_only implies anyway (Orbax logs a warning for each it has to change).
            **({"save_interval_steps": 0, "create": False} if read_only else {}),
        )
        self._manager = None
        self._pending: int | None = None  # the step an unfinished async save writes
        # One process: saves start on a thread of their own, so the training loop does not
        # wait for Orbax's bookkeeping (tens of ms a save, bench --section checkpoint); the
        # states it gets are host copies.
        # One such thread for all managers: Orbax's save contract breaks when two threads
        # start saves at once (a vectorised group's trials). Several processes keep saves on
        # the main thread, in step with the collectives.
        self._writer = _writer() if not read_only and jax.process_count() == 1 else None
        self._started: futures.Future | None = None
        _quiet_failed_read_noise()  # before any read: the noise comes from other threads
        if not read_only:
            self._check_writable()
            self._set_aside_unreadable_steps()
        with _absl_quiet() if read_only else contextlib.nullcontext():
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    def _check_writable(self) -> None:
        """CheckpointError now, not at the first save: a save Orbax cannot start leaves
        threads waiting minutes for a folder that never appears, and the process with them."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=self.directory))
        except OSError as error:
            reason = error.strerror or str(error)
            message = f"cannot write checkpoints to {self.directory}: {reason}"
            raise CheckpointError(message) from None

    def _set_aside_unreadable_steps(self) -> None:
        """Moves aside each committed step whose metadata or metrics file is missing or not
        JSON: Orbax would stop at it with a bare JSONDecodeError naming no file, or (no
        metrics) silently delete it at the next save; and each step entry that is not a
        folder (Orbax would ignore it and the run silently start earlier)."""
        if not self.directory.is_dir():
            return
        for folder in sorted(self.directory.iterdir()):
            if folder.name.isdigit() and not folder.is_dir():  # Orbax would skip it silently
                log.warning(
                    "checkpoint step %s is unusable: %s is not a folder; moving it aside",
                    folder.name,
                    folder,
                )
                self._move_aside(int(folder.name))
                continue
            if not (folder.name.isdigit() and (folder / "commit_success.txt").exists()):
                continue
            for name in _STEP_JSON_FILES:
                try:
                    json.loads((folder / name).read_text())
                except (OSError, ValueError) as error:
                    log.warning(
                        "checkpoint step %s is unusable: %s is unreadable (%s); moving it aside",
                        folder.name,
                        folder / name,
                        error,
                    )
                    self._move_aside(int(folder.name))
                    break

    @property
    def manager(self) -> ocp.CheckpointManager:
        """Orbax's manager, once a save started on the writer thread is in its hands (two
        threads never use it at once; that save's error, if any, comes from ``wait``)."""
        if self._started is not None:
            futures.wait([self._started])
        return self._manager

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        progress: dict,
        *,
        is_best: bool = False,
        stage_end: bool = False,
        data: dict | None = None,
    ) -> None:
        """Starts an async save; ``wait`` (or the next save) finishes it. ``state``: host
        copies, or the arrays where they lie on the devices (saved and hashed shard by
        shard, never gathered whole). ``data``: a data reader's position at this step (a
        streamed dataset's grain iterator state), saved as the item "data" with its SHA-256
        in the progress (``restore_data``).

        Raises CheckpointError naming the folder when the write fails (e.g. a full disk);
        the previous steps stay intact because Orbax renames a step into place only once
        it is complete.
        """
        # The previous save first: its failure is reported under its own step, and no new
        # save starts (Orbax would leave a thread waiting minutes for a folder it never makes).
        self.wait()
        metrics = {"best_rank": float(step) if is_best else -1.0}
        metrics["stage_end"] = float(stage_end)
        self._pending = step
        if self._writer is None:
            self._start_save(step, state, progress, metrics, data)
            return
        started = self._writer.submit(self._start_save, step, state, progress, metrics, data)
        if _on_devices(state):
            # Arrays on the devices: hashed and handed to Orbax (which copies them to the
            # host shard by shard) before the next step donates their buffers. Still on
            # the one writer thread: Orbax's saves must not start from two threads at once.
            started.result()
        else:
            self._started = started

    def _start_save(
        self, step: int, state: Any, progress: dict, metrics: dict, data: dict | None = None
    ) -> None:
        progress = {**progress, "hashes": checksums.saved_shard_hashes(state)}
        items = {"state": ocp.args.StandardSave(state)}
        if data is not None:
            progress["data_sha256"] = _json_sha256(data)
            items["data"] = ocp.args.JsonSave(data)
        args = ocp.args.Composite(progress=ocp.args.JsonSave(progress), **items)
        try:
            self._manager.save(step, args=args, metrics=metrics, force=True)  # not .manager
        except Exception as error:  # Orbax and TensorStore wrap OS errors in their own types
            raise _write_error(step, self.directory, error) from error

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """The state at ``step`` shaped like ``like``, checked against its stored hashes.

        Raises CorruptCheckpoint for damage; ArchitectureMismatch (parameter shapes) or
        StateMismatch (another state structure) for an intact step that does not fit.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:
            self._explain_failed_restore(step, like, error)
        self._verify(step, restored.state, restored.progress)
        return restored.state, restored.progress

    def _verify(self, step: int, state: Any, progress: dict) -> None:
        """A targeted restore: the same leaves as saved (else StateMismatch), each intact."""
        stored = progress.get("hashes", {})
        wanted = set(_shapes(state))
        saved = checksums.leaf_paths(stored, wanted)
        if saved != wanted:
            self._raise_state_mismatch(step, saved, wanted)
        self._check_hashes(step, state, stored)

    def _check_hashes(self, step: int, state: Any, stored: dict[str, str]) -> None:
        """CorruptCheckpoint naming the first leaf (or shard) whose SHA-256 differs from
        the stored one. With several processes each checks the shards it holds, and all
        raise if any finds damage."""
        bad = checksums.mismatches(state, stored)
        if jax.process_count() > 1:
            from fnn_jax.train.distributed import on_any_process

            if on_any_process(bool(bad)) and not bad:
                bad = ["a shard another process checked"]
        if bad:
            raise CorruptCheckpoint(
                f"step {step} in {self.directory}: {bad[0]!r} does not match its stored "
                f"SHA-256 (files under {self.directory / str(step) / 'state'})"
            )

    def _explain_failed_restore(self, step: int, like: Any, error: Exception) -> None:
        """Raises what a failed targeted restore means: damage, or an intact step of
        another architecture or state structure."""
        try:
            saved, _ = self.restore_saved(step)
        except CorruptCheckpoint:
            raise
        except Exception:
            raise CorruptCheckpoint(
                f"step {step} in {self.directory} could not be read: {error}"
            ) from error
        want = _shapes(like.params if hasattr(like, "params") else like["params"])
        got = _shapes(saved["params"])
        differ = [
            f"{p!r}: checkpoint {got.get(p)}, model {s}" for p, s in want.items() if got.get(p) != s
        ]
        if differ:
            raise ArchitectureMismatch(
                f"checkpoint step {step} in {self.directory} was written by another "
                f"architecture; shapes differ for:\n  " + "\n  ".join(differ)
            )
        self._raise_state_mismatch(step, set(_shapes(saved)), set(_shapes(like)))

    def _raise_state_mismatch(self, step: int, saved: set[str], wanted: set[str]) -> None:
        def listed(paths: set[str]) -> str:
            shown = sorted(paths)[:6]
            return ", ".join(shown) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")

        raise StateMismatch(
            f"checkpoint step {step} in {self.directory} is intact, but its training state "
            f"has another structure than this config's (optimizer settings changed?): only in "
            f"the checkpoint: {listed(saved - wanted) or '-'}; only in this config: "
            f"{listed(wanted - saved) or '-'}. Resume with the settings it was saved with, "
            "or set config.train.reset_optimizer=True to keep its parameters and progress "
            "and start a fresh optimizer state"
        )

    def restore_good(self, like_for: Callable[[dict], Any]) -> tuple[int, Any, dict] | None:
        """The newest step that reads back intact, as (step, state, progress); None if there
        are no steps. ``like_for(progress)`` gives the target state for a step's progress.

        A corrupt step is logged with the reason, moved to ``<directory>-corrupt/`` and the
        previous one is tried. No intact step left is a CheckpointError.
        """
        steps = self.steps()
        if not steps:
            return None
        problems = []
        for step in reversed(steps):
            try:
                progress = self.restore_progress(step)
                state, progress = self.restore(step, like_for(progress))
                return step, state, progress
            except (ArchitectureMismatch, StateMismatch):
                raise
            except (CorruptCheckpoint, ValueError, OSError, KeyError) as error:
                log.warning(
                    "checkpoint step %d is unusable, trying the previous one: %s", step, error
                )
                problems.append(f"step {step}: {error}")
                self._move_aside(step)
        raise CheckpointError(
            f"no intact checkpoint left in {self.directory}:\n  " + "\n  ".join(problems)
        )

    def _move_aside(self, step: int) -> None:
        """Moves a damaged step to ``<directory>-corrupt/`` (kept for inspection)."""
        aside = self.directory.parent / f"{self.directory.name}-corrupt"
        aside.mkdir(exist_ok=True)
        target = aside / str(step)
        if target.exists():  # the same step number damaged before: keep both
            target = aside / f"{step}.{len(list(aside.glob(f'{step}.*'))) + 1}"
        shutil.move(str(self.directory / str(step)), str(target))
        if self._manager is not None:
            self.manager.reload()

    def restore_saved(self, step: int) -> tuple[Any, dict]:
        """The state at ``step`` as saved (nested dicts of NumPy arrays, whatever devices
        saved it), checked against its stored hashes; CorruptCheckpoint when it is damaged."""
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(self._host_target(step)),
                    progress=ocp.args.JsonRestore(),
                ),
            )
        except Exception as error:
            raise CorruptCheckpoint(
                f"step {step} in {self.directory} could not be read: {error}"
            ) from error
        self._check_hashes(step, restored.state, restored.progress.get("hashes", {}))
        return restored.state, restored.progress

    def _host_target(self, step: int) -> Any:
        """Host arrays shaped as the step's saved state: a state saved from devices (with
        their mesh in its metadata) reads back on a machine with other devices too."""
        # Quiet: Orbax warns that the item folder has no step metadata file (the step has).
        with _absl_quiet(), ocp.StandardCheckpointer() as reader:
            saved = reader.metadata(self.directory / str(step) / "state").item_metadata
        return jax.tree.map(lambda leaf: np.empty(leaf.shape, leaf.dtype), saved)

    def set_aside(self, step: int, reason: str) -> None:
        """Logs why ``step`` is unusable and moves it aside (if it is still here)."""
        log.warning("checkpoint step %d is unusable, moving it aside: %s", step, reason)
        if (self.directory / str(step)).exists():
            self._move_aside(step)

    def restore_data(self, step: int) -> dict | None:
        """The data reader's position saved with ``step`` (``save(data=...)``), checked
        against its SHA-256; None for a step saved without one."""
        progress = self.restore_progress(step)
        if "data_sha256" not in progress:
            return None
        try:
            data = self.manager.restore(
                step, args=ocp.args.Composite(data=ocp.args.JsonRestore())
            ).data
        except Exception as error:
            raise CorruptCheckpoint(
                f"step {step} in {self.directory}: its data position could not be read: {error}"
            ) from error
        if _json_sha256(data) != progress["data_sha256"]:
            raise CorruptCheckpoint(
                f"step {step} in {self.directory}: its data position does not match its "
                f"stored SHA-256 (files under {self.directory / str(step) / 'data'})"
            )
        return data

    def restore_progress(self, step: int) -> dict:
        return self.manager.restore(
            step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())
        ).progress

    def wait(self) -> None:
        """Blocks until pending saves are on disk; a failed write raises CheckpointError."""
        started, self._started = self._started, None
        if started is not None:
            started.result()  # a save that failed to start raises its CheckpointError here
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # Orbax and TensorStore wrap OS errors in their own types
            raise _write_error(self._pending, self.directory, error) from error

    def close(self) -> None:
        """Finishes pending saves; always call before the process exits. A failed save's
        CheckpointError is what it raises, even when Orbax then fails to close too."""
        try:
            self.wait()
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one that matters
                self._manager.close()
            raise
        self._manager.close()


def export_params(directory: Path, params: Any) -> None:
    """Plain model parameters (LoRA merged) for use outside the runner; replaced atomically."""
    directory = Path(directory).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, params, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()


def load_exported(directory: Path) -> Any:
    """Parameters written by ``export_params``."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(directory).absolute())
