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


def stage_summaries(trial: Trial, params: Any, metric: str, mode: str) -> list[dict[str, Any]]:
    """Per stage: name, planned and trained steps, rules, trainable parameters, optimizer
    and the best validation ``metric`` logged during it."""
    counts = trainable_counts(trial.stages, params)
    ends = trial.progress.stage_ends
    pick = max if mode == "max" else min
    summaries = []
    for i, stage in enumerate(trial.stages):
        start = ends[i - 1] if i else 0
        end = ends[i] if i < len(ends) else trial.step
        values = [
            r[metric]
            for r in trial.metrics_log.records
            if r["split"] == "validation" and start < r["step"] <= end and not np.isnan(r[metric])
        ]
        summaries.append(
            {
                "name": stage.name,
                "steps": end - start,
                "planned_steps": stage.num_steps,
                "rules": None if stage.rules is None else [list(rule) for rule in stage.rules],
                "trainable_parameters": counts[stage.name],
                "optimizer": stage.optimizer.to_dict(),
                f"best_validation_{metric}": pick(values) if values else None,
            }
        )
    return summaries
