"""What a run leaves for people: metrics.jsonl, TensorBoard events, a progress bar, the loss
curves and the final report."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fnn_jax.files import WorkdirUnusable, write_atomic, write_json


def _summary_writer() -> type:
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch,
    when installed, only to accept torch tensors (we log floats), and that import takes
    about 2 s. A process that already has torch keeps it."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """Appends ``{"step", "split", **metrics}`` lines to metrics.jsonl and to TensorBoard.

    On resume from ``step``, lines after it are dropped first, so the log of an interrupted
    run ends identical to an uninterrupted one.
    """

    def __init__(self, workdir: Path, resume_step: int = 0, *, writes: bool = True):
        """``writes=False`` keeps the records in memory only (a distributed run's other
        processes: process 0 writes the files)."""
        self.path = workdir / "metrics.jsonl"
        self.records = [r for r in self.read(workdir) if r["step"] <= resume_step]
        self.writer = self._file = None
        if writes:
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
            self.writer = _summary_writer()(str(workdir / "tensorboard"))
            self._file = open(self.path, "a")  # noqa: SIM115 (kept open for the run)

    @staticmethod
    def read(workdir: Path, *, times: bool = True) -> list[dict[str, Any]]:
        """The records of ``workdir``'s metrics.jsonl; without their wall-clock ``time``
        when ``times`` is False (to compare two runs)."""
        path = Path(workdir) / "metrics.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed process
        if not times:
            records = [{k: v for k, v in r.items() if k != "time"} for r in records]
        return records

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """One record; ``time`` (Unix seconds) goes to metrics.jsonl only (TensorBoard keeps
        its own wall time)."""
        record = {"step": step, "split": split, **metrics, "time": round(time.time(), 3)}
        self.records.append(record)
        if self._file is None:
            return
        self.check_in_place()
        self._file.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            self.writer.add_scalar(f"{split}/{name}", value, step)

    def check_in_place(self) -> None:
        """WorkdirUnusable when metrics.jsonl (with its workdir) was deleted or replaced
        since the run opened it: its records would go to a file nobody can read."""
        if self._file is None:
            return
        opened = os.fstat(self._file.fileno())
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev):
            raise WorkdirUnusable(
                f"{self.path} was deleted or replaced while the run wrote it (was the workdir "
                f"{self.path.parent} removed?): stopping, nothing more is written there"
            )

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self.writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.writer.close()


class Progress:
    """A bar with rate and ETA on a terminal; plain periodic lines otherwise (logs, CI)."""

    def __init__(self, total: int, initial: int, every: int):
        self.interactive = sys.stderr.isatty()
        self.total, self.every = total, max(every, 1)
        self.start, self.start_step = time.time(), initial
        self.bar = tqdm(total=total, initial=initial, unit="step", disable=not self.interactive)

    def update(self, step: int, summary: str = "") -> None:
        if self.interactive:
            self.bar.update(step - self.bar.n)
            if summary:
                self.bar.set_postfix_str(summary)
        elif step % self.every == 0 or step == self.total:
            rate = (step - self.start_step) / max(time.time() - self.start, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else math.inf
            print(f"step {step}/{self.total}  {rate:.1f} steps/s  eta {eta:.0f}s  {summary}")

    def close(self) -> None:
        self.bar.close()


def curves_figure(
    records: list[dict[str, Any]],
    metric: str,
    *,
    stage_ends: Sequence[int] = (),
    best_step: int | None = None,
) -> Any:
    """The figure of curves.png from metrics.jsonl's ``records`` (dicts with step, split
    and metrics): train and validation loss, the validation ``metric`` (the best step
    starred) and, when it changes over the run, the learning rate (a constant one is noted
    in the loss panel's title), against step; dashed lines where a stage ended."""
    # Imported here: matplotlib takes 0.3 s to import, and the plot comes at the end.
    from matplotlib.figure import Figure

    rows = [r for r in records if r["split"] == "train" and "learning_rate" in r]
    steps, rates = [r["step"] for r in rows], [r["learning_rate"] for r in rows]
    scheduled = len(set(rates)) > 1
    # A bare Figure (no pyplot state) with fixed margins: a third of the time of
    # plt.subplots + tight_layout, which matters when a sweep draws one per trial.
    width = 5.0 * (2 + scheduled)
    fig = Figure(figsize=(width, 4))
    fig.subplots_adjust(left=0.75 / width, right=0.99, bottom=0.13, top=0.92, wspace=0.25)
    axes = fig.subplots(1, 2 + scheduled)
    ax_loss, ax_metric = axes[:2]
    for split, style in (("train", "-"), ("validation", "o-")):
        rows = [r for r in records if r["split"] == split and "loss" in r]
        if rows:
            ax_loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=split)
    constant = f" (constant learning rate {rates[0]:.3g})" if rates and not scheduled else ""
    ax_loss.set(xlabel="step", ylabel="loss", title="loss" + constant)
    ax_loss.legend()
    rows = [r for r in records if r["split"] == "validation" and metric in r]
    ax_metric.plot([r["step"] for r in rows], [r[metric] for r in rows], "o-", color="C1")
    best = [r for r in rows if r["step"] == best_step]
    if best:
        ax_metric.plot([best_step], [best[0][metric]], "*", ms=16, color="C3", label="best")
        ax_metric.legend(loc="best")
    ax_metric.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    if scheduled:
        ax_lr = axes[2]
        ax_lr.plot(steps, rates, "-", color="C2", drawstyle="steps-pre")  # holds until logged
        ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    last = max((r["step"] for r in records), default=0)
    for ax in axes:
        for end in stage_ends:
            if end < last:  # the last stage's end is the end of the run
                ax.axvline(end, color="0.5", ls="--", lw=1)
    return fig


def plot_curves(
    records: list[dict[str, Any]],
    metric: str,
    path: Path,
    *,
    stage_ends: Sequence[int] = (),
    best_step: int | None = None,
) -> None:
    """curves.png (see ``curves_figure``), written whole or not at all."""
    save_figure(curves_figure(records, metric, stage_ends=stage_ends, best_step=best_step), path)


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure written whole or not at all (a temporary file, renamed)."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def _fmt(value: Any) -> str:
    """Four decimals; a small non-zero value (a solver residual) in three significant digits."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """A table with one row per split and one column per metric."""
    columns = sorted({k for metrics in rows.values() for k in metrics})
    lines = ["| split | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for split, metrics in rows.items():
        lines.append(f"| {split} | " + " | ".join(_fmt(metrics.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _lost_best_lines(problem: dict[str, Any] | None) -> list[str]:
    if problem is None:
        return []
    return [
        f"**Warning:** the best checkpoint (step {problem['best_step']}) was unusable: "
        f"{problem['reason']}. The results are those of step {problem['used_step']}, the "
        "best intact one.",
        "",
    ]


def write_report(workdir: Path, report: dict[str, Any]) -> None:
    """report.json (everything) and report.md (the results table and baselines)."""
    write_json(workdir / "report.json", report)
    parts = [
        f"# {report['name']}",
        "",
        f"Best checkpoint: step {report['best_step']} of {report['steps']} "
        f"(validation {report['metric']}).",
        "",
        *_lost_best_lines(report.get("best_checkpoint_problem")),
        markdown_table(report["results"]),
    ]
    if report.get("baselines"):
        parts += ["", "Baselines (same test split):", ""]
        parts += [f"- {name}: {_fmt(value)}" for name, value in report["baselines"].items()]
    parts += _per_class_lines(report.get("test_details") or {})
    parts += _data_lines(report.get("data") or {})
    parts += ["", f"Parameters: {report['parameters']}", ""]
    parts += _stage_lines(report)
    parts += _closed_loop_lines(report.get("closed_loop"))
    write_atomic(workdir / "report.md", "\n".join(parts))


def _per_class_lines(details: dict[str, Any]) -> list[str]:
    """report.md's per-class table and confusion matrix of the test split (classifiers)."""
    if "confusion" not in details:
        return []
    count = len(details["confusion"])
    names = details.get("class_names") or [str(c) for c in range(count)]
    rows = sum(map(sum, details["confusion"]))
    lines = []
    if details.get("accuracy_interval"):
        low, high = details["accuracy_interval"]
        lines += [
            "",
            f"Test accuracy, 95% interval: {low:.4f} to {high:.4f} (exact binomial, "
            f"{rows} rows; fnn_jax.stats.binomial_interval).",
        ]
    lines += [
        "",
        "Test split per class (precision, recall and f1 in the table above are the "
        "unweighted means of these: macro averages):",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    for c, name in enumerate(names):
        scores = " | ".join(f"{details[k][c]:.4f}" for k in ("precision", "recall", "f1"))
        lines.append(f"| {name} | {scores} | {details['support'][c]} |")
    lines += ["", "Confusion matrix (rows: true class; columns: predicted):", ""]
    lines.append("| true \\ predicted | " + " | ".join(names) + " |")
    lines.append("|---" * (count + 1) + "|")
    for name, row in zip(names, details["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def plot_confusion(details: dict[str, Any], path: Path) -> bool:
    """confusion.png: the test split's confusion matrix, counts in the cells; False (and
    nothing written) when the task has none."""
    if "confusion" not in details:
        return False
    from matplotlib.figure import Figure

    confusion = np.asarray(details["confusion"])
    count = len(confusion)
    names = details.get("class_names") or [str(c) for c in range(count)]
    side = min(2.5 + 0.45 * count, 12)
    fig = Figure(figsize=(side * 1.1, side * 0.85), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    if count <= 20:
        for (i, j), v in np.ndenumerate(confusion):
            dark = v > confusion.max() / 2
            ax.text(j, i, str(v), ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(count), names, rotation=45 if count > 5 else 0, ha="right")
    ax.set_yticks(range(count), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("test split: confusion matrix")
    fig.colorbar(image, ax=ax, shrink=0.8)
    save_figure(fig, path)
    return True


def _data_lines(data: dict[str, Any]) -> list[str]:
    """report.md's data section: the source, rows per split, classes, files read (from
    data.json's description), then any facts the loader reports."""
    if not data:
        return []
    lines = ["", "Data:", ""]
    if "name" in data:
        lines.append(f"- source: {data['name']} {json.dumps(data.get('options', {}))}")
    found = data.get("fingerprint", {})
    if found.get("rows"):
        lines.append("- rows: " + ", ".join(f"{s} {n}" for s, n in found["rows"].items()))
    if data.get("class_names"):
        lines.append(f"- classes: {', '.join(map(str, data['class_names']))}")
    lines += [f"- file {path} (sha256 {h[:12]})" for path, h in found.get("files", {}).items()]
    described = {
        "name",
        "options",
        "import_root",
        "task",
        "num_classes",
        "class_names",
        "normalization",
        "fingerprint",
    }
    lines += [f"- {k}: {_fmt(v)}" for k, v in data.items() if k not in described]
    return lines


def _closed_loop_lines(result: dict[str, Any] | None) -> list[str]:
    """The closed-loop table (fnn_jax.forecast): test MSE by steps ahead."""
    if not result:
        return []
    lines = [
        "",
        f"Closed loop (test, {result['windows']} start windows; forecast.png):",
        "",
        "| steps ahead | MSE, own predictions fed back | MSE, teacher forced |",
        "|---|---|---|",
    ]
    pairs = zip(result["mse_closed_loop"], result["mse_teacher_forced"], strict=True)
    lines += [f"| {k} | {a:.4f} | {b:.4f} |" for k, (a, b) in enumerate(pairs, start=1)]
    return lines


def _stage_lines(report: dict[str, Any]) -> list[str]:
    """A table of the stages, for a fine-tuned (or staged) run."""
    stages, init = report.get("stages") or [], report.get("init_from")
    if len(stages) < 2 and not init:
        return []
    lines = []
    if init:  # the step loaded; which one config.init_step asked for, where it was a word
        which = f", its {init['asked']}" if init.get("asked") in ("best", "latest") else ""
        lines = [f"Fine-tuned from {init['workdir']} (step {init['step']}{which})."]
    best = f"best validation {report['metric']}"
    lines += ["", f"| stage | steps | trainable parameters | learning rate | {best} |"]
    lines += ["|---|---|---|---|---|"]
    for stage in stages:
        value = stage[f"best_validation_{report['metric']}"]
        lines.append(
            f"| {stage['name']} | {stage['steps']} of {stage['planned_steps']} "
            f"| {stage['trainable_parameters']} | {stage['optimizer']['learning_rate']:g} "
            f"| {'-' if value is None else _fmt(value)} |"
        )
    return [*lines, ""]
