"""SIGTERM and Ctrl-C (SIGINT) as a request to stop at a step boundary with everything saved.

A second Ctrl-C aborts at once (KeyboardInterrupt): what was saved before stays intact.
"""

from __future__ import annotations

import signal
import sys
import threading

EXIT_PREEMPTED = 75  # os.EX_TEMPFAIL: "try again"; what experiments/main.py exits with


class Preempted(RuntimeError):
    """SIGTERM or Ctrl-C arrived; the run saved its state at a step boundary and stopped."""


_REQUESTED = threading.Event()  # set by request_preemption, e.g. in sweep workers
_BY: list[str] = []  # the name of the signal that asked, for the message


def request_preemption(signum: int | None = None, frame=None) -> None:
    """A SIGTERM handler for processes that run trials: the next (or current) run stops at
    a step boundary and saves, however early the signal came."""
    if not _REQUESTED.is_set():
        _BY[:] = [signal.Signals(signum).name if signum else "SIGTERM"]
    _REQUESTED.set()


def interrupt(signum: int, frame) -> None:
    """A SIGINT handler: the first Ctrl-C stops at the next step boundary with everything
    saved, as SIGTERM does; a second one aborts at once."""
    if _REQUESTED.is_set() and _BY == ["SIGINT"]:
        raise KeyboardInterrupt
    request_preemption(signum)
    print(
        "\nCtrl-C: stopping at the next step boundary with everything saved "
        "(Ctrl-C again to abort now)",
        file=sys.stderr,
        flush=True,
    )


def requested_by() -> str:
    """The signal that asked to stop: "SIGTERM" or "SIGINT"."""
    return _BY[0] if _BY else "SIGTERM"


def clear_preemption() -> None:
    """Marks a request as handled (its run saved and stopped): later runs start normally."""
    _REQUESTED.clear()
    _BY.clear()


class PreemptionFlag:
    """Turns SIGTERM and SIGINT into a flag the loop checks between steps (main thread
    only: elsewhere the process's own handlers stay)."""

    def __init__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum, handler in (
                (signal.SIGTERM, request_preemption),
                (signal.SIGINT, interrupt),
            ):
                self.previous[signum] = signal.signal(signum, handler)

    @property
    def requested(self) -> bool:
        return _REQUESTED.is_set()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
