"""The end of a trial: which parameters its report and export use (the best checkpoint,
verified, or the best intact one when it was lost) and how many of them each stage trained."""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np

from fnn_jax import finetune
from fnn_jax.checkpoint import CorruptCheckpoint
from fnn_jax.finetune import Stage
from fnn_jax.train.trial import Trial
from fnn_jax.tree import count_params

log = logging.getLogger("fnn_jax")


def best_params(trial: Trial, metric: str, mode: str) -> tuple[int, Any, dict[str, Any] | None]:
    """(step, params) of the best checkpoint, verified against its hashes, and None; or,
    when that step is gone or damaged (it is moved aside), the intact step with the best
    logged validation metric, and what went wrong, said loudly in the log."""
    wanted = trial.progress.best_step
    if wanted is None:  # never evaluated
        return trial.step, trial.state.params, None
    checkpoints = trial.checkpoints
    reason = "it is missing from the checkpoints folder"
    ranked = [wanted] + _ranked_steps(trial, metric, mode, exclude=wanted)
    for step in ranked:
        if step not in checkpoints.steps():
            continue
        try:
            saved, _ = checkpoints.restore_saved(step)
        except CorruptCheckpoint as error:
            checkpoints.set_aside(step, str(error))
            reason = reason if step != wanted else str(error)
            continue
        # Host copies: committed arrays straight from Orbax would make eval_step recompile.
        params = jax.tree.map(np.asarray, saved["params"])
        if step == wanted:
            return step, params, None
        return step, params, _lost_best(trial, wanted, step, reason)
    return trial.step, trial.state.params, _lost_best(trial, wanted, trial.step, reason)


def _ranked_steps(trial: Trial, metric: str, mode: str, exclude: int) -> list[int]:
    """Checkpointed steps by their logged validation metric, best first."""
    values = {
        r["step"]: r[metric]
        for r in trial.metrics_log.records
        if r["split"] == "validation" and r["step"] != exclude
    }
    steps = [s for s in trial.checkpoints.steps() if s in values and not np.isnan(values[s])]
    return sorted(steps, key=lambda s: values[s], reverse=mode == "max")


def _lost_best(trial: Trial, wanted: int, used: int, reason: str) -> dict[str, Any]:
    log.error(
        "%sthe best checkpoint (step %d) is unusable: %s. Evaluating and exporting step "
        "%d instead, the best intact one",
        trial.label,
        wanted,
        reason,
        used,
    )
    return {"best_step": wanted, "used_step": used, "reason": reason}


def trainable_counts(stages: list[Stage], params: Any) -> dict[str, int]:
    """Per stage, how many parameter values the optimizer updates."""
    counts = {}
    for stage in stages:
        frozen = finetune.frozen_tree(params, stage.rules)
        if frozen is None:
            counts[stage.name] = count_params(params)
        else:
            leaves = zip(jax.tree.leaves(params), jax.tree.leaves(frozen), strict=True)
            counts[stage.name] = int(sum(np.size(p) for p, f in leaves if not f))
    return counts
