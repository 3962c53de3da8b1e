"""sweep.png: the validation metric against the swept settings, and every trial's curve.

The first panel depends on what was swept: one setting, a line of the metric against it; a
full grid of two, a heatmap (x: the first setting, y: the second); more, or a partial grid
(zipped lists), one labelled line per combination of the other settings; so many
combinations that a legend cannot name them (a random search), one scatter per setting.
Seeds are not a setting: a setting's trials over seeds give its mean ± std.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from fnn_jax.files import write_atomic
from fnn_jax.reporting import MetricsLog
from fnn_jax.sweep.results import SeedGroup, SweepResult, TrialResult, _keys

MAX_LEGEND = 12  # more curves than this: no legend, it would hide the plot


@dataclasses.dataclass
class _Setting:
    """The trials that share one value per swept key (and differ only by seed)."""

    values: tuple[Any, ...]  # one per swept key
    trials: list[TrialResult]

    def scores(self, split: str, metric: str | None) -> tuple[float, ...]:
        """The finished trials' finite values of ``metric`` on ``split``."""
        values = (t.value(split, metric) for t in self.trials if t.status == "done")
        return tuple(v for v in values if math.isfinite(v))


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _label(value: Any) -> str:
    return format(value, ".4g") if isinstance(value, float) else str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _distinct(values: list[Any]) -> list[Any]:
    """One of each value: sorted when numeric, else in order of first appearance."""
    unique = list({_label(v): v for v in values}.values())
    return sorted(unique) if _numeric(unique) else unique


def _axis(ax: Any, values: list[Any]) -> Any:
    """Sets up ``ax``'s x axis for the swept ``values``; returns value -> x position. A log
    axis for positive numbers spanning a decade, categories (in order of first appearance)
    for strings, bools and tuples."""
    if _numeric(values):
        if values and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-4 ... labels overlap
        return lambda value: value
    labels = [_label(v) for v in _distinct(values)]
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
    return lambda value: labels.index(_label(value))


def _swept_keys(result: SweepResult) -> list[str]:
    """The overridden keys that take more than one value, seed excluded."""
    return [
        k
        for k in _keys([t.overrides for t in result.trials])
        if k != "seed" and len({repr(t.overrides.get(k)) for t in result.trials}) > 1
    ]


def _settings(result: SweepResult, keys: list[str]) -> list[_Setting]:
    """The trials grouped by their values of ``keys``, in order of first appearance."""
    settings: dict[tuple[str, ...], _Setting] = {}
    for trial in result.trials:
        values = tuple(trial.overrides.get(k) for k in keys)
        group = settings.setdefault(tuple(map(_label, values)), _Setting(values, []))
        group.trials.append(trial)
    return list(settings.values())


def _is_grid(settings: list[_Setting]) -> bool:
    """Whether two keys' settings hold every combination of their values."""
    columns = {_label(s.values[0]) for s in settings}
    rows = {_label(s.values[1]) for s in settings}
    return len(settings) == len(columns) * len(rows)


def _heatmap(
    fig: Figure, ax: Any, result: SweepResult, keys: list[str], settings: list[_Setting]
) -> None:
    """Cells [len(y values), len(x values)]: x = keys[0], y = keys[1] (lowest value at the
    bottom); each cell the mean validation metric over seeds, annotated with mean ± std,
    brighter is better, the best cell outlined."""
    metric = result.metric
    xs, ys = (_distinct([s.values[i] for s in settings]) for i in (0, 1))
    xl, yl = [_label(v) for v in xs], [_label(v) for v in ys]
    mean, std = np.full((len(ys), len(xs)), np.nan), np.full((len(ys), len(xs)), np.nan)
    for s in settings:
        i, j = yl.index(_label(s.values[1])), xl.index(_label(s.values[0]))
        mean[i, j], std[i, j] = SeedGroup.mean_std(s.scores("validation", metric))
    cmap = colormaps["viridis" if result.mode == "max" else "viridis_r"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(mean), cmap=cmap, origin="lower", aspect="auto")
    for (i, j), value in np.ndenumerate(mean):
        if math.isnan(value):
            text, color = "no result", "black"
        else:
            text = f"{value:.4g}" + (f"\n± {std[i, j]:.2g}" if math.isfinite(std[i, j]) else "")
            r, g, b, _ = cmap(image.norm(value))
            color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize="small")
    if np.isfinite(mean).any():
        i, j = np.unravel_index(
            np.nanargmax(mean) if result.mode == "max" else np.nanargmin(mean), mean.shape
        )
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=3))
    ax.set_xticks(range(len(xl)), xl, rotation=30 if len(xl) > 4 else 0)
    ax.set_yticks(range(len(yl)), yl)
    seeds = any(len(s.trials) > 1 for s in settings)
    ax.set(xlabel=keys[0], ylabel=keys[1])
    ax.set_title(
        f"validation {metric}" + (", mean ± std over seeds" if seeds else "") + "\n"
        f"best ({result.mode}) outlined in red"
    )
    better = "higher" if result.mode == "max" else "lower"
    label = f"validation {metric}" + (" (mean)" if seeds else "") + f", {better} is better"
    fig.colorbar(image, ax=ax, label=label)


def _lines(ax: Any, result: SweepResult, keys: list[str], settings: list[_Setting]) -> None:
    """The metric against keys[0]: one labelled line per combination of the other keys
    (validation only), or, with one key, validation and test. Each point is a setting's
    mean, error bars its std over seeds, faint dots its trials."""
    metric = result.metric
    position = _axis(ax, [s.values[0] for s in settings])
    seeds = any(len(s.trials) > 1 for s in settings)
    series: dict[str, list[_Setting]] = {}
    for s in settings:
        pairs = zip(keys[1:], s.values[1:], strict=True)
        name = ", ".join(f"{_short(k)}={_label(v)}" for k, v in pairs)
        series.setdefault(name, []).append(s)
    lines = [
        (name, members, split, f"C{n}" if len(keys) > 1 else f"C{m}")
        for n, (name, members) in enumerate(series.items())
        for m, split in enumerate(("validation",) if len(keys) > 1 else ("validation", "test"))
    ]
    for name, members, split, color in lines:
        members = sorted(members, key=lambda s: position(s.values[0]))
        xs = [position(s.values[0]) for s in members]
        stats = [SeedGroup.mean_std(s.scores(split, metric)) for s in members]
        label = name or split + (" (mean ± std over seeds)" if seeds else "")
        ax.errorbar(
            xs,
            [m for m, _ in stats],
            yerr=[0.0 if math.isnan(sd) else sd for _, sd in stats] if seeds else None,
            fmt="o-" if _numeric([s.values[0] for s in members]) else "o:",  # categories: dotted
            color=color,
            capsize=3,
            label=label,
        )
        if seeds:
            for x, s in zip(xs, members, strict=True):
                scores = s.scores(split, metric)
                ax.plot([x] * len(scores), scores, ".", color=color, alpha=0.35)
    ax.set(xlabel=keys[0], ylabel=f"{'validation ' if len(keys) > 1 else ''}{metric}")
    ax.set_title(f"{metric} against {_short(keys[0])}")
    ax.legend(
        fontsize="small",
        title=f"validation {metric}" if len(keys) > 1 else None,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),  # beside the plot, never over the error bars
    )


def _scatter(ax: Any, result: SweepResult, key: str) -> None:
    """Every finished trial's validation metric against its value of ``key``."""
    done = [t for t in result.trials if t.status == "done" and key in t.overrides]
    position = _axis(ax, [t.overrides[key] for t in done])
    xs = [position(t.overrides[key]) for t in done]
    ax.plot(xs, [t.value("validation", result.metric) for t in done], "o", alpha=0.7)
    ax.set(xlabel=key, ylabel=f"validation {result.metric}", title=f"against {_short(key)}")


def _curves(ax: Any, result: SweepResult) -> None:
    """Every trial's validation curve (from its metrics.jsonl) against step."""
    metric = result.metric
    for trial in result.trials:
        records = MetricsLog.read(trial.workdir)
        points = [r for r in records if r["split"] == "validation" and metric in r]
        if points:
            steps = [r["step"] for r in points]
            ax.plot(steps, [r[metric] for r in points], ".-", label=trial.name, alpha=0.8)
    ax.set(xlabel="step", ylabel=metric or "", title=f"validation {metric}, all trials")
    if 0 < len(ax.get_lines()) <= MAX_LEGEND:  # beside the curves, never over them
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def sweep_figure(result: SweepResult) -> Figure:
    """The figure of sweep.png: a summary of the metric against the swept settings (see the
    module docstring) and, last, every trial's validation curve."""
    keys = _swept_keys(result)
    settings = _settings(result, keys)
    if len(keys) == 2 and _is_grid(settings):
        kind = "heatmap"
    elif keys and len({tuple(map(_label, s.values[1:])) for s in settings}) <= MAX_LEGEND:
        kind = "lines"
    else:
        kind = "scatter" if keys else "none"
    panels = (len(keys) if kind == "scatter" else int(bool(keys))) + 1
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(6 * cols, 4.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    if kind == "heatmap":
        _heatmap(fig, axes[0], result, keys, settings)
    elif kind == "lines":
        _lines(axes[0], result, keys, settings)
    elif kind == "scatter":
        for ax, key in zip(axes, keys, strict=False):
            _scatter(ax, result, key)
    _curves(axes[panels - 1], result)
    for extra in axes[panels:]:
        extra.set_visible(False)
    fig.tight_layout()
    return fig


def plot_sweep(result: SweepResult, path: Path) -> None:
    """sweep.png (see ``sweep_figure``), written whole or not at all."""
    buffer = io.BytesIO()
    sweep_figure(result).savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
