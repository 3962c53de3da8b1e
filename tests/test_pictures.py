"""What the pictures show: sweep.png, forecast.png and curves.png, built from small
hand-made records (no training) and read back from their matplotlib figures."""

import itertools
import json
import math

import numpy as np
import pytest

from fnn_jax import forecast, reporting
from fnn_jax.sweep import plot as sweep_plot
from fnn_jax.sweep.results import SweepResult, TrialResult, best_trial, seed_groups

LR, HIDDEN, CELL = "optimizer.learning_rate", "model.hidden_size", "model.cell"


def _score(overrides):
    """A made-up validation accuracy, different for every setting and seed."""
    lr, hidden = overrides.get(LR, 1e-3), overrides.get(HIDDEN, 8)
    cell = {"lstm": 0.02, "gru": 0.0}.get(overrides.get(CELL), 0.01)
    return 0.6 + 0.05 * math.log10(lr * 1e4) + hidden / 1000 + cell + overrides.get("seed", 0) / 97


def sweep_result(tmp_path, grid, *, seeds=0, metric="accuracy", mode="max", failed=()):
    """A SweepResult of one done trial per combination of ``grid`` (times ``seeds``), each
    with a two-point validation curve in its metrics.jsonl; names in ``failed`` failed."""
    keys = list(grid)
    combos = [dict(zip(keys, v, strict=True)) for v in itertools.product(*grid.values())]
    if seeds:
        combos = [{**c, "seed": s} for c in combos for s in range(seeds)]
    trials = []
    for overrides in combos:
        name = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())
        workdir = tmp_path / name
        workdir.mkdir()
        value = _score(overrides)
        if name in failed:
            trials.append(TrialResult(name, overrides, workdir, "failed", error="boom"))
            continue
        curve = [{"step": s, "split": "validation", metric: value * s / 4} for s in (2, 4)]
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        report = {"metric": metric, "results": {"validation": {metric: value}, "test": {}}}
        report["results"]["test"][metric] = value / 2
        trials.append(TrialResult(name, overrides, workdir, "done", report=report))
    best = best_trial(trials, metric, mode)
    return SweepResult(tmp_path, trials, metric, mode, best, seed_groups(trials, metric), {})


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def _series(ax):
    """label -> (x, y) of each error-bar line in ``ax``."""
    return {
        c.get_label(): tuple(np.asarray(xy, float) for xy in c.lines[0].get_data())
        for c in ax.containers
    }


def _ticks(labels):
    return [t.get_text() for t in labels]


# ---------------------------------------------------------------------------- sweep.png


def test_two_swept_settings_draw_a_heatmap_of_the_mean_over_seeds(tmp_path):
    lrs, hiddens = [1e-3, 1e-2, 1e-1], [16, 32]
    result = sweep_result(tmp_path, {LR: lrs, HIDDEN: hiddens}, seeds=3)
    fig = sweep_plot.sweep_figure(result)
    ax = fig.axes[0]
    scores = np.array(
        [
            [[_score({LR: lr, HIDDEN: h, "seed": s}) for s in range(3)] for lr in lrs]
            for h in hiddens
        ]
    )  # [hidden, lr, seed]: rows y = hidden size, columns x = learning rate
    np.testing.assert_allclose(ax.images[0].get_array(), scores.mean(-1), rtol=1e-12)
    assert _ticks(ax.get_xticklabels()) == ["0.001", "0.01", "0.1"]
    assert _ticks(ax.get_yticklabels()) == ["16", "32"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == (LR, HIDDEN)
    i, j = 1, 2
    mean, std = scores[i, j].mean(), scores[i, j].std(ddof=1)
    assert f"{mean:.4g}\n± {std:.2g}" in _texts(ax)
    (outline,) = ax.patches  # the best cell: the highest mean
    assert outline.get_xy() == (j - 0.5, i - 0.5)
    assert ax.images[0].colorbar.ax.get_ylabel() == "validation accuracy (mean), higher is better"
    assert fig.axes[1].get_title() == "validation accuracy, all trials"
    assert len(fig.axes[1].get_lines()) == 18


def test_a_minimised_metric_outlines_the_lowest_cell_and_a_failed_one_says_so(tmp_path):
    failed = {"learning_rate=0.01,cell=gru"}
    result = sweep_result(
        tmp_path, {LR: [1e-3, 1e-2], CELL: ["lstm", "gru"]}, metric="mse", mode="min", failed=failed
    )
    ax = sweep_plot.sweep_figure(result).axes[0]
    grid = ax.images[0].get_array()
    assert grid.mask.tolist() == [[False, False], [False, True]]  # no result: masked
    assert _ticks(ax.get_yticklabels()) == ["lstm", "gru"]  # categories in order of appearance
    assert "no result" in _texts(ax)
    (outline,) = ax.patches
    assert outline.get_xy() == (-0.5, 0.5)  # lr=1e-3, gru: the lowest mse
    assert f"{_score({LR: 1e-3, CELL: 'gru'}):.4g}" in _texts(ax)  # one trial: no ± std


def test_one_swept_setting_draws_a_line_on_a_log_axis(tmp_path):
    result = sweep_result(tmp_path, {LR: [1e-4, 1e-3, 1e-2]}, seeds=2)
    ax = sweep_plot.sweep_figure(result).axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == LR and not ax.images
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "validation (mean ± std over seeds)",
        "test (mean ± std over seeds)",
    ]
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # beside the axes
    xs, ys = _series(ax)["validation (mean ± std over seeds)"]
    means = [np.mean([_score({LR: lr, "seed": s}) for s in (0, 1)]) for lr in (1e-4, 1e-3, 1e-2)]
    np.testing.assert_allclose(xs, [1e-4, 1e-3, 1e-2])
    np.testing.assert_allclose(ys, means, rtol=1e-12)


def test_a_narrow_numeric_range_keeps_a_linear_axis(tmp_path):
    result = sweep_result(tmp_path, {HIDDEN: [16, 32, 64]})
    assert sweep_plot.sweep_figure(result).axes[0].get_xscale() == "linear"


def test_three_swept_settings_draw_one_labelled_line_per_combination(tmp_path):
    grid = {LR: [1e-3, 1e-2], HIDDEN: [16, 32], CELL: ["lstm", "gru"]}
    ax = sweep_plot.sweep_figure(sweep_result(tmp_path, grid)).axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "hidden_size=16, cell=lstm",
        "hidden_size=16, cell=gru",
        "hidden_size=32, cell=lstm",
        "hidden_size=32, cell=gru",
    ]
    assert legend.get_title().get_text() == "validation accuracy"
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1
    assert ax.get_xlabel() == LR and ax.get_xscale() == "log"
    xs, ys = _series(ax)["hidden_size=16, cell=gru"]
    np.testing.assert_allclose(xs, [1e-3, 1e-2])
    expected = [_score({LR: lr, HIDDEN: 16, CELL: "gru"}) for lr in (1e-3, 1e-2)]
    np.testing.assert_allclose(ys, expected, rtol=1e-12)


def test_categorical_first_setting_and_a_partial_grid_draw_lines(tmp_path):
    result = sweep_result(tmp_path, {CELL: ["lstm", "gru"], HIDDEN: [16, 32]})
    result.trials.pop()  # gru with 32 units is missing: not a grid
    ax = sweep_plot.sweep_figure(result).axes[0]
    assert not ax.images
    assert _ticks(ax.get_xticklabels()) == ["lstm", "gru"]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["hidden_size=16", "hidden_size=32"]


def test_a_random_search_draws_one_scatter_per_setting(tmp_path):
    rng = np.random.default_rng(0)
    points = zip(10 ** rng.uniform(-4, -1, 20), rng.integers(8, 64, 20), strict=True)
    trials = [
        TrialResult(
            f"t{i}",
            {LR: float(lr), HIDDEN: int(h)},
            tmp_path,
            "done",
            report={"metric": "accuracy", "results": {"validation": {"accuracy": 0.5}}},
        )
        for i, (lr, h) in enumerate(points)
    ]
    result = SweepResult(tmp_path, trials, "accuracy", "max", None, [], {})
    fig = sweep_plot.sweep_figure(result)
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_visible()] == [LR, HIDDEN, "step"]
    assert fig.axes[0].get_xscale() == "log"


def test_plot_sweep_writes_the_png(tmp_path):
    result = sweep_result(tmp_path, {LR: [1e-3, 1e-2], HIDDEN: [16, 32]})
    sweep_plot.plot_sweep(result, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- forecast.png


def _forecast_result(steps=4):
    return {
        "steps": steps,
        "windows": 10,
        "mse_closed_loop": [0.1 * k for k in range(1, steps + 1)],
        "mse_teacher_forced": [0.1] * steps,
        "example_history": [[float(v)] for v in range(5)],
        "example_truth": [[5.0 + k] for k in range(steps)],
        "example_forecast": [[5.0 + 0.9 * k] for k in range(steps)],
    }


def test_forecast_names_both_curves_and_starts_the_error_at_zero(tmp_path):
    result = _forecast_result()
    error, example = forecast.forecast_figure(result).axes
    texts = [t.get_text() for t in error.get_legend().get_texts()]
    assert any("closed-loop" in t for t in texts) and any("teacher-forced" in t for t in texts)
    closed = error.get_lines()[[i for i, t in enumerate(texts) if "closed-loop" in t][0]]
    np.testing.assert_allclose(closed.get_ydata(), result["mse_closed_loop"])
    assert error.get_ylim()[0] == 0
    assert "horizon" in error.get_xlabel() and "MSE" in error.get_ylabel()
    assert any("closed-loop" in t.get_text() for t in example.get_legend().get_texts())
    forecast.plot(result, tmp_path / "forecast.png")
    assert (tmp_path / "forecast.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- curves.png


def _records(rates):
    """Train records with ``rates`` as the learning rate, a validation record every other."""
    out = []
    for step, rate in enumerate(rates, 1):
        out.append({"step": step, "split": "train", "loss": 1 / step, "learning_rate": rate})
        if step % 2 == 0:
            out.append({"step": step, "split": "validation", "loss": 1.2 / step, "accuracy": 0.1})
    return out


def _lr_axes(fig):
    return [ax for ax in fig.axes if ax.get_ylabel() == "learning rate"]


def test_a_constant_learning_rate_gets_no_panel_but_a_note(tmp_path):
    fig = reporting.curves_figure(_records([3e-3] * 6), "accuracy", best_step=4)
    assert len(fig.axes) == 2 and not _lr_axes(fig)
    assert "0.003" in fig.axes[0].get_title()
    reporting.plot_curves(_records([3e-3] * 6), "accuracy", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_learning_rate_schedule_gets_its_panel():
    rates = [1e-3 * k for k in range(1, 7)]
    fig = reporting.curves_figure(_records(rates), "accuracy", stage_ends=(3, 6))
    (ax,) = _lr_axes(fig)
    assert len(fig.axes) == 3
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), rates)
    assert "constant" not in fig.axes[0].get_title()


@pytest.mark.parametrize("rates", [[], [1e-3]])
def test_no_or_one_logged_rate_gets_no_panel(rates):
    records = _records(rates) + [{"step": 2, "split": "validation", "loss": 1.0, "accuracy": 0.5}]
    assert not _lr_axes(reporting.curves_figure(records, "accuracy"))
