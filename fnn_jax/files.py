"""Small file helpers: atomic writes and the one-run-per-workdir lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes a whole file or nothing: a temporary file in the same folder, then a rename.

    A crash (or a full disk) mid-write leaves the previous version intact.
    """
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


class WorkdirLocked(RuntimeError):
    """Another live process is running in this workdir."""


class WorkdirUnusable(OSError):
    """The workdir cannot be created or written (a file is in the way, a read-only disk)."""


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``workdir/.lock`` for the life of the run.

    The kernel drops the lock when the process dies (even on kill -9), so a stale lock
    file never blocks a resume. A second live process fails at once and touches nothing.
    """
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirUnusable(f"cannot use workdir {workdir}: it is a file, not a directory")
    if workdir.is_symlink() and not workdir.exists():  # exists() follows the link
        problem = f"a symbolic link to {os.readlink(workdir)}, which does not exist"
        try:
            workdir.resolve(strict=True)
        except RuntimeError:  # Python 3.11's "Symlink loop from ..."
            problem = "a symbolic link that loops back on itself"
        except OSError as error:
            if error.errno == errno.ELOOP:
                problem = "a symbolic link that loops back on itself"
        raise WorkdirUnusable(f"cannot use workdir {workdir}: it is {problem}")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        handle = open(workdir / ".lock", "a+")  # noqa: SIM115 (closed below)
    except OSError as error:
        reason = error.strerror or str(error)
        raise WorkdirUnusable(f"cannot use workdir {workdir}: {reason}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise WorkdirLocked(f"workdir {workdir} is locked by pid {owner}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
