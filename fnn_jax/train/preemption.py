"""SIGTERM as a request to stop at a step boundary with everything saved."""

from __future__ import annotations

import signal
import threading

EXIT_PREEMPTED = 75  # os.EX_TEMPFAIL: "try again"; what experiments/main.py exits with


class Preempted(RuntimeError):
    """SIGTERM arrived; the run saved its state at a step boundary and stopped."""


_SIGTERM_SEEN = threading.Event()  # set by request_preemption, e.g. in sweep workers


def request_preemption(signum=None, frame=None) -> None:
    """A SIGTERM handler for processes that run trials: the next (or current) run stops at
    a step boundary and saves, however early the signal came."""
    _SIGTERM_SEEN.set()


def clear_preemption() -> None:
    """Marks a SIGTERM as handled (its run saved and stopped): later runs start normally."""
    _SIGTERM_SEEN.clear()


class PreemptionFlag:
    """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, request_preemption)

    @property
    def requested(self) -> bool:
        return _SIGTERM_SEEN.is_set()

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
