"""The end of a trial: which parameters its report and export use (the best checkpoint,
verified, or the best intact one when it was lost), how many of them each stage trained,
and the report, export and plots themselves (finish_trial)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fnn_jax import finetune, forecast, reporting
from fnn_jax.checkpoint import CorruptCheckpoint, export_params
from fnn_jax.finetune import Stage
from fnn_jax.train import distributed
from fnn_jax.train.trial import Setup, Trial
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


def _named(details: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """``details`` with the class names, where the dataset has them."""
    names = dataset.info.get("class_names")
    if not details or names is None:
        return details
    return {"class_names": [str(n) for n in names], **details}


def finish_trial(  # noqa: PLR0913 (one call site: the engine)
    trial: Trial,
    plan: Setup,
    evaluate: Callable[[Any, str], tuple[dict[str, float], dict[str, Any]]],
    to_model: Callable[[Any], Any],
    *,
    wall_time_s: float,
    group_size: int,
) -> dict[str, Any]:
    """Restores the best checkpoint, evaluates it on validation and test (``evaluate(params,
    split) -> (metrics, details)``), exports its merged parameters (``to_model``) and writes the
    report (``wall_time_s``: from the engine's start to the end of training, the same for
    every trial of a group; ``group_size``: the trials that trained together)."""
    config, workdir, dataset = trial.config, trial.workdir, plan.dataset
    progress, step = trial.progress, trial.step
    evaluated_step, params, problem = best_params(trial, plan.metric, plan.mode)
    best_step = progress.best_step if progress.best_step is not None else step
    stages = stage_summaries(trial, params, plan.metric, plan.mode)
    evaluated = {split: evaluate(params, split) for split in ("validation", "test")}
    results = {split: values for split, (values, _) in evaluated.items()}
    exported = to_model(params)
    report = {
        "name": f"{dataset.name} / {config.model.cell}",
        "workdir": str(workdir),
        "steps": step,
        "best_step": best_step,
        "evaluated_step": evaluated_step,  # best_step, unless that checkpoint was lost
        "metric": plan.metric,
        "mode": plan.mode,  # which way the metric improves
        "stopped_early": bool(progress.stopped),
        "nonfinite_steps": progress.nonfinite_steps,
        "results": results,
        "baselines": {**plan.task.baselines(dataset), **dataset.baselines},
        # The test split's confusion matrix (rows: true class) and per-class scores.
        "test_details": _named(evaluated["test"][1], dataset),
        # What rebuilds the data and its fingerprint (data.json), and a loader's own facts.
        "data": {**plan.data_description, **dataset.info.get("report", {})},
        "parameters": count_params(exported),
        "trainable_parameters": {s["name"]: s["trainable_parameters"] for s in stages},
        # The step it loaded, and config.init_step ("best", "latest" or a number).
        "init_from": {
            "workdir": config.init_from,
            "step": progress.init_step,
            "asked": config.init_step,
        }
        if config.init_from
        else None,
        "stages": stages,
        "wall_time_s": round(wall_time_s, 1),
        "paths": {
            "curves": str(workdir / "curves.png"),
            "report": str(workdir / "report.md"),
            "checkpoints": str(workdir / "checkpoints"),
            "export": str(workdir / "export"),
            "tensorboard": str(workdir / "tensorboard"),
        },
    }
    if problem is not None:
        report["best_checkpoint_problem"] = problem
    if group_size > 1:
        report["vectorized_with"] = group_size
    export_params(workdir / "export", exported)  # Orbax: every process takes part
    if not distributed.is_primary():  # process 0 writes the other files
        return report
    closed_loop = forecast.report(
        plan.task, plan.model, exported, dataset.split("test"), config, workdir
    )
    if closed_loop is not None:
        report["closed_loop"] = closed_loop
        report["paths"]["forecast"] = str(workdir / "forecast.png")
    reporting.plot_curves(
        trial.metrics_log.records,
        plan.metric,
        workdir / "curves.png",
        stage_ends=progress.stage_ends,
        best_step=progress.best_step,
    )
    if reporting.plot_confusion(report["test_details"], workdir / "confusion.png"):
        report["paths"]["confusion"] = str(workdir / "confusion.png")
    reporting.write_report(workdir, report)
    return report
