"""Orbax checkpoints of a training run: the latest N steps plus the best one.

Each step holds the train state (params, optimizer state, step, running metric sums) and a
JSON ``progress`` record (data position, early-stopping counters, fine-tuning stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def _best_rank(metrics: dict[str, float]) -> float:
    return metrics["best_rank"]


class Checkpoints:
    """Saves and restores steps under ``directory``: the latest ``keep`` plus the best.

    The runner decides which step is best (it tracks the validation metric, and a NaN never
    wins); a best step is saved with rank = its step, any other with rank -1, so Orbax keeps
    exactly the runner's best.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=max(keep, 1)),
                policies.BestN(
                    get_metric_fn=_best_rank, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            # best_fn only makes Orbax write each step's metrics to disk, so the best step
            # is still known (and kept) after a restart; the policy above decides.
            best_fn=_best_rank,
            enable_async_checkpointing=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, progress: dict, is_best: bool = False) -> None:
        """Starts an async save; ``wait`` (or the next save) finishes it."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
        )
        metrics = {"best_rank": float(step) if is_best else -1.0}
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
