"""Orbax checkpoints of a training run: the latest N steps plus the best one.

Each step holds the train state (params, optimizer state, step, running metric sums) and a
JSON ``progress`` record (data position, early-stopping counters, fine-tuning stage).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def _score(metrics: dict[str, float]) -> float:
    """Higher is better; NaN ranks last, so a diverged step never becomes the best."""
    value = metrics["score"]
    return -math.inf if math.isnan(value) else value


class Checkpoints:
    """Saves and restores steps under ``directory``.

    ``mode`` is "max" or "min": which direction of the validation metric is better.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, mode: str = "max"):
        self.directory = Path(directory).absolute()
        self.sign = 1.0 if mode == "max" else -1.0
        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=max(keep, 1)),
                policies.BestN(get_metric_fn=_score, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation, enable_async_checkpointing=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, progress: dict, metric: float | None = None) -> None:
        """Starts an async save; ``wait`` (or the next save) finishes it."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
        )
        metrics = None if metric is None else {"score": self.sign * float(metric)}
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """The state at ``step`` shaped like ``like`` (a state or its abstract version)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.progress

    def restore_saved(self, step: int) -> tuple[Any, dict]:
        """The state at ``step`` as saved (nested dicts of arrays), with no target to shape it."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), progress=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.progress

    def restore_progress(self, step: int) -> dict:
        return self.manager.restore(
            step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())
        ).progress

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves; always call before the process exits."""
        self.manager.wait_until_finished()
        self.manager.close()
