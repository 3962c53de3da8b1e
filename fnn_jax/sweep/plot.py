"""sweep.png: the validation metric against each swept value, and every trial's curve."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
from matplotlib.ticker import NullFormatter

from fnn_jax.files import write_atomic
from fnn_jax.reporting import MetricsLog
from fnn_jax.sweep.results import SweepResult, _keys

MAX_LEGEND = 12  # more curves than this: no legend, it would hide the plot


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _label(value: Any) -> str:
    return format(value, ".4g") if isinstance(value, float) else str(value)


def _axis(ax: Any, values: list[Any]) -> Any:
    """Sets up ``ax``'s x axis for the swept ``values``; returns value -> x position. A log
    axis for positive numbers spanning a decade, categories (in order of first appearance)
    for strings, bools and tuples."""
    if _numeric(values):
        if values and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-4 ... labels overlap
        return lambda value: value
    labels = list(dict.fromkeys(_label(v) for v in values))
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
    return lambda value: labels.index(_label(value))


def plot_sweep(result: SweepResult, path: Path) -> None:
    """One subplot per swept key (validation and test metric against its value; categorical
    axis for strings, bools and tuples; log axis for positive numbers spanning a decade),
    and one with the validation curves of all trials overlaid."""
    metric = result.metric
    done = [t for t in result.trials if t.status == "done"]
    keys = [
        k
        for k in _keys([t.overrides for t in result.trials])
        if k != "seed" and len({repr(t.overrides.get(k)) for t in result.trials}) > 1
    ]  # seeds are not a setting: their spread shows in each panel and in the seed table
    panels = len(keys) + 1
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()

    for ax, key in zip(axes, keys, strict=False):
        have = [t for t in done if key in t.overrides]
        position = _axis(ax, [t.overrides[key] for t in have])
        xs = [position(t.overrides[key]) for t in have]
        groups = [g for g in result.seed_groups if key in g.overrides and g.validation]
        for split, marker, color in (("validation", "o", "C0"), ("test", "x", "C1")):
            ys = [t.value(split, metric) for t in have]
            # With seeds, each trial is a faint point and each setting its mean +- std.
            ax.plot(xs, ys, marker, color=color, alpha=0.35 if groups else 0.8, label=split)
            if groups:
                stats = [g.mean_std(getattr(g, split)) for g in groups]
                ax.errorbar(
                    [position(g.overrides[key]) for g in groups],
                    [mean for mean, _ in stats],
                    yerr=[0.0 if math.isnan(std) else std for _, std in stats],
                    fmt="D",
                    color=color,
                    capsize=4,
                    label=f"{split} mean ± std over seeds",
                )
        ax.set(xlabel=key, ylabel=metric or "", title=f"{metric} vs {key.rsplit('.', 1)[-1]}")
        if have:
            ax.legend(fontsize="x-small", loc="best", framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no finished trials", ha="center", transform=ax.transAxes)

    ax = axes[len(keys)]
    for trial in result.trials:
        records = MetricsLog.read(trial.workdir)
        points = [r for r in records if r["split"] == "validation" and metric in r]
        if points:
            steps = [r["step"] for r in points]
            ax.plot(steps, [r[metric] for r in points], ".-", label=trial.name, alpha=0.8)
    ax.set(xlabel="step", ylabel=metric or "", title=f"validation {metric}, all trials")
    if 0 < len(ax.get_lines()) <= MAX_LEGEND:  # beside the curves, never over them
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for extra in axes[panels:]:
        extra.set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
