"""A sweep's results: per-trial records, the best trial, seed averages, and the tables
(sweep.json, sweep.csv, sweep.md) people read."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fnn_jax.files import write_atomic
from fnn_jax.sweep.spec import _canonical
from fnn_jax.tasks import metric_mode

STATUSES = ("pending", "done", "failed", "pruned")  # pruned: by a search's pruner


@dataclasses.dataclass
class TrialResult:
    """What became of one trial. ``reused``: finished by an earlier invocation, not re-run."""

    name: str
    overrides: dict[str, Any]
    workdir: Path
    status: str = "pending"
    reused: bool = False
    report: dict[str, Any] | None = None
    error: str = ""  # "Type: message" of a failed trial; the traceback is in workdir/error.txt
    # A multi-objective search's finished trial: column name -> objective value, and
    # whether it is Pareto-optimal (no other finished trial as good in all, better in one).
    objectives: dict[str, float] = dataclasses.field(default_factory=dict)
    pareto: bool = False

    def value(self, split: str, metric: str | None) -> float:
        """The trial's ``metric`` on ``split`` at its best checkpoint; NaN if it has none."""
        if self.report is None or metric is None:
            return math.nan
        return float(self.report["results"][split].get(metric, math.nan))


@dataclasses.dataclass(frozen=True)
class SeedGroup:
    """Trials that differ only by ``seed``: mean and sample std (ddof=1) over the done ones."""

    overrides: dict[str, Any]  # without "seed"
    names: tuple[str, ...]
    validation: tuple[float, ...]  # done trials only
    test: tuple[float, ...]

    @staticmethod
    def mean_std(values: tuple[float, ...]) -> tuple[float, float]:
        if not values:
            return math.nan, math.nan
        std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        return float(np.mean(values)), std


@dataclasses.dataclass
class SweepResult:
    """Everything ``run`` learned; ``paths`` names the files it wrote."""

    workdir: Path
    trials: list[TrialResult]
    metric: str | None
    mode: str
    best: TrialResult | None
    seed_groups: list[SeedGroup]
    paths: dict[str, Path]
    objectives: dict[str, str] = dataclasses.field(default_factory=dict)  # column -> min|max

    @property
    def pareto(self) -> list[TrialResult]:
        """A multi-objective search's Pareto-optimal trials (empty for one objective)."""
        return [t for t in self.trials if t.pareto]

    @property
    def failed(self) -> list[TrialResult]:
        return [t for t in self.trials if t.status == "failed"]

    def table(self) -> str:
        """The markdown table of trials (as in sweep.md)."""
        return _markdown_table(self.trials, self.metric, self.best)

    def seed_table(self) -> str:
        """The markdown table of means ± std over seeds; empty when no trial sets a seed."""
        return _groups_table(self.seed_groups, self.metric) if self.seed_groups else ""


def sweep_metric(trials: list[TrialResult]) -> tuple[str | None, str]:
    """(metric, 'max'|'min'): the validation metric the first finished trial selected on."""
    for trial in trials:
        if trial.report is not None:
            metric = trial.report["metric"]
            return metric, trial.report.get("mode") or metric_mode(metric)
    return None, "max"


def best_trial(trials: list[TrialResult], metric: str | None, mode: str) -> TrialResult | None:
    """The done trial with the best validation metric (the first one on ties)."""
    value = lambda t: t.value("validation", metric)
    scored = [t for t in trials if t.status == "done" and math.isfinite(value(t))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=value)


def seed_groups(trials: list[TrialResult], metric: str | None) -> list[SeedGroup]:
    """Groups of trials equal but for ``seed``, in order of first appearance (empty when no
    trial sets a seed)."""
    if not any("seed" in t.overrides for t in trials):
        return []
    groups: dict[str, list[TrialResult]] = {}
    for trial in trials:
        rest = {k: v for k, v in trial.overrides.items() if k != "seed"}
        groups.setdefault(_canonical(rest), []).append(trial)
    out = []
    for members in groups.values():
        done = [t for t in members if t.status == "done"]
        out.append(
            SeedGroup(
                overrides={k: v for k, v in members[0].overrides.items() if k != "seed"},
                names=tuple(t.name for t in members),
                validation=tuple(t.value("validation", metric) for t in done),
                test=tuple(t.value("test", metric) for t in done),
            )
        )
    return out


def best_group(groups: list[SeedGroup], mode: str) -> SeedGroup | None:
    scored = [g for g in groups if g.validation and math.isfinite(g.mean_std(g.validation)[0])]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda g: g.mean_std(g.validation)[0])


# ---------------------------------------------------------------------------- tables


def _keys(overrides: list[dict[str, Any]]) -> list[str]:
    """Every overridden key, in order of first appearance."""
    return list(dict.fromkeys(key for o in overrides for key in o))


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, tuple | list):
        return json.dumps(list(value))
    return str(value)  # floats: shortest text that reads back exactly


def rows(trials: list[TrialResult], metric: str | None) -> list[dict[str, Any]]:
    """One dict per trial: name, status, overrides, metrics, steps, wall time, a
    multi-objective search's other objectives and Pareto mark, error."""
    keys = _keys([t.overrides for t in trials])
    objectives = _keys([t.objectives for t in trials])
    label = metric or "metric"  # None until a trial finishes
    out = []
    for t in trials:
        report = t.report or {}
        row = {
            "name": t.name,
            "status": t.status,
            **{key: t.overrides.get(key) for key in keys},
            f"validation_{label}": t.value("validation", metric),
            f"test_{label}": t.value("test", metric),
            "steps": report.get("steps"),
            "best_step": report.get("best_step"),
            "wall_time_s": report.get("wall_time_s"),
        }
        row |= {k: t.objectives.get(k) for k in objectives if k not in row}
        if objectives:
            row["pareto"] = t.pareto
        out.append(row | {"error": t.error})
    return out


def csv_text(trials: list[TrialResult], metric: str | None) -> str:
    table = rows(trials, metric)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]) if table else ["name"])
    writer.writeheader()
    for row in table:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue()


def _md(value: Any, digits: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return format(value, digits)
    text = " ".join(str(value).split())  # one line
    text = text if len(text) <= 160 else text[:157] + "..."
    return text.replace("|", "\\|")


def _pm(values: tuple[float, ...]) -> str:
    mean, std = SeedGroup.mean_std(values)
    if math.isnan(mean):
        return ""
    return f"{mean:.4f} ± {std:.4f}" if math.isfinite(std) else f"{mean:.4f}"


def _cell(column: str, value: Any) -> str:
    if column == "pareto":
        return "✓" if value else ""
    return _md(value, ".4f" if column.startswith(("validation_", "test_")) else ".4g")


def _markdown_table(trials: list[TrialResult], metric: str | None, best: TrialResult | None) -> str:
    table = rows(trials, metric)
    if not table:
        return ""
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for trial, row in zip(trials, table, strict=True):
        cells = [_cell(c, v) for c, v in row.items()]
        if trial is best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _groups_table(groups: list[SeedGroup], metric: str | None) -> str:
    keys = _keys([g.overrides for g in groups])
    columns = [*keys, "seeds", f"validation_{metric} (mean ± std)", f"test_{metric} (mean ± std)"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for g in groups:
        cells = [_md(g.overrides.get(k)) for k in keys]
        cells += [f"{len(g.validation)}/{len(g.names)}", _pm(g.validation), _pm(g.test)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: SweepResult) -> str:
    """sweep.md: counts, the best trial, the trial table, seed averages, failures, the plot."""
    counts = {s: sum(t.status == s for t in result.trials) for s in STATUSES}
    metric = result.metric
    parts = [
        f"# Sweep: {len(result.trials)} trials "
        f"({counts['done']} done, {counts['failed']} failed, {counts['pending']} pending"
        + (f", {counts['pruned']} pruned)" if counts["pruned"] else ")"),
        "",
        f"Selection: validation {metric} ({result.mode}imised), each trial at its best "
        "checkpoint; the test column is that same checkpoint.",
        "",
    ]
    if result.best is not None:
        b = result.best
        parts += [
            f"Best trial: **{b.name}** — validation {metric} "
            f"{b.value('validation', metric):.4f}, test {b.value('test', metric):.4f} "
            f"(trials/{b.name})",
            "",
        ]
    if result.objectives:
        wanted = ", ".join(f"{k} ({d}imised)" for k, d in result.objectives.items())
        parts += [
            f"Objectives: {wanted}. Pareto-optimal (no other finished trial as good in every "
            f"objective and better in one): {len(result.pareto)} trials, ✓ in the pareto column.",
            "",
        ]
    parts += [_markdown_table(result.trials, metric, result.best), ""]
    if result.seed_groups:
        parts += ["## Over seeds (mean ± sample std, ddof=1)", ""]
        parts += [_groups_table(result.seed_groups, metric), ""]
        top = best_group(result.seed_groups, result.mode)
        if top is not None:
            setting = ", ".join(f"{k}={_md(v)}" for k, v in top.overrides.items())
            parts += [f"Best setting over seeds: {setting or 'the base config'}", ""]
    if result.failed:
        parts += ["## Failed trials", ""]
        parts += [f"- {t.name}: {_md(t.error)} (trials/{t.name}/error.txt)" for t in result.failed]
        parts += [""]
    if "plot" in result.paths:
        parts += ["![sweep](sweep.png)", ""]
    if "pareto" in result.paths:
        parts += ["![Pareto front](search_pareto.png)", ""]
    return "\n".join(parts)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def json_record(result: SweepResult, spec: dict[str, Any]) -> dict[str, Any]:
    """sweep.json: the spec (checked on re-runs) and every trial's outcome."""
    metric = result.metric
    record = {
        "spec": spec,
        "metric": metric,
        "mode": result.mode,
        "best": result.best.name if result.best else None,
        "trials": [
            {
                "name": t.name,
                "overrides": t.overrides,
                "status": t.status,
                "reused": t.reused,
                "error": t.error,
                "validation": _finite(t.value("validation", metric)),
                "test": _finite(t.value("test", metric)),
                "steps": (t.report or {}).get("steps"),
                "wall_time_s": (t.report or {}).get("wall_time_s"),
                "workdir": str(t.workdir),
            }
            for t in result.trials
        ],
        "seed_groups": [
            {
                "overrides": g.overrides,
                "trials": list(g.names),
                "validation_mean_std": [_finite(v) for v in g.mean_std(g.validation)],
                "test_mean_std": [_finite(v) for v in g.mean_std(g.test)],
            }
            for g in result.seed_groups
        ],
    }
    if result.objectives:  # a multi-objective search
        record["objectives"] = result.objectives
        for row, t in zip(record["trials"], result.trials, strict=True):
            row |= {"objectives": t.objectives, "pareto": t.pareto}
    return record


def write_tables(result: SweepResult, spec: dict[str, Any]) -> None:
    """sweep.json, sweep.csv and sweep.md, each written whole or not at all."""
    workdir = result.workdir
    write_atomic(workdir / "sweep.json", json.dumps(json_record(result, spec), indent=2) + "\n")
    write_atomic(workdir / "sweep.csv", csv_text(result.trials, result.metric))
    write_atomic(workdir / "sweep.md", markdown(result))
