"""config.train.profile_steps: a ``jax.profiler`` trace of N training steps.

The trace starts once the run's first dispatch has finished (so it shows steps, not the
compilation) and covers the next N steps; the loop ends a dispatch where the trace starts
and stops, on every process alike, and only the first process traces. It is written to
``<workdir>/profile/plugins/profile/<date>/``: open the folder with TensorBoard's profile
plugin (``tensorboard --logdir <workdir>/profile``), or its ``*.trace.json.gz`` in
https://ui.perfetto.dev.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import jax

from fnn_jax.train import distributed

log = logging.getLogger("fnn_jax")


class Profile:
    """The trace's window, in steps run by this process (``ran``)."""

    def __init__(self, steps: int, folder: Path):
        self.steps, self.folder = steps, folder
        self.start_at: int | None = None  # ``ran`` when the trace started
        self.tracing = False

    def steps_to_next(self, ran: int) -> int | None:
        """Steps until the trace stops (a dispatch must end there), or None."""
        if self.start_at is None or ran >= self.start_at + self.steps:
            return None
        return self.start_at + self.steps - ran

    def after_dispatch(self, ran: int, wait: Callable[[], None]) -> None:
        """Starts the trace after the first dispatch; stops it ``steps`` steps later.
        ``wait`` blocks until the dispatched steps are done (so the trace holds them)."""
        if not self.steps:
            return
        if self.start_at is None:
            self.start_at = ran
            if distributed.is_primary():
                wait()
                jax.profiler.start_trace(str(self.folder))
                self.tracing = True
        elif ran >= self.start_at + self.steps:
            self.stop(wait)

    def stop(self, wait: Callable[[], None] = lambda: None) -> None:
        """Ends the trace (also when training ends before the window does)."""
        if self.tracing:
            wait()
            jax.profiler.stop_trace()
            self.tracing = False
            log.info("profile of %d steps written to %s", self.steps, self.folder)
