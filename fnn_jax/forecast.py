"""Closed-loop forecasting: a forecaster rolled forward on its own predictions.

The test split of a forecasting dataset holds consecutive windows (stride 1) of one series:
window i is x[s+i : s+i+W] and its first target x[s+i+W]. Rolled k steps from window i, the
model feeds its own first prediction back as the newest input k times (the output feedback
of the seeds' neuron, at inference); teacher-forced, it predicts each of those steps from
the true window instead. The error of both against the horizon k says how fast a model's
errors compound when nothing corrects them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]  # inputs [n, window, f] -> [n, horizon, f]


def applies(inputs: np.ndarray, targets: np.ndarray) -> bool:
    """Whether the model's targets are its inputs' next values (same features)."""
    return inputs.ndim == 3 and targets.ndim == 3 and inputs.shape[-1] == targets.shape[-1]


def closed_loop(
    predict: Predict, inputs: np.ndarray, targets: np.ndarray, steps: int
) -> dict[str, Any]:
    """Per step ahead k = 1..steps, the MSE of closed-loop and teacher-forced predictions
    over every window that has k true values after it.

    inputs [n, window, f] and targets [n, horizon, f]: consecutive windows of one series.
    Returns ``steps`` (used: at most n), ``mse_closed_loop`` and ``mse_teacher_forced``
    (lists over k), ``windows`` (how many start windows) and one example rolled from the
    first window: ``example_history``, ``example_truth``, ``example_forecast`` [*, f].
    """
    n = inputs.shape[0]
    steps = min(steps, n)
    starts = n - steps + 1
    one_step = np.asarray(predict(inputs))[:, 0]  # [n, f]: every window's next value
    truth = np.stack([targets[k : k + starts, 0] for k in range(steps)], axis=1)  # [m, k, f]
    teacher = np.stack([one_step[k : k + starts] for k in range(steps)], axis=1)
    window, rolled = inputs[:starts], []
    for _ in range(steps):
        y = np.asarray(predict(window))[:, 0]  # [m, f]
        rolled.append(y)
        window = np.concatenate([window[:, 1:], y[:, None]], axis=1).astype(inputs.dtype)
    rolled = np.stack(rolled, axis=1)  # [m, k, f]
    mse = lambda a: np.mean((a - truth) ** 2, axis=(0, 2)).astype(float).tolist()
    return {
        "steps": steps,
        "windows": starts,
        "mse_closed_loop": mse(rolled),
        "mse_teacher_forced": mse(teacher),
        "example_history": inputs[0].tolist(),
        "example_truth": truth[0].tolist(),
        "example_forecast": rolled[0].tolist(),
    }


def forecast_figure(result: dict[str, Any]) -> Any:
    """The figure of forecast.png from ``closed_loop``'s result: the test MSE against the
    horizon k = 1..steps (closed-loop and teacher-forced), and the first window's forecast
    (feature 0 of ``example_history`` [window, f], ``example_truth`` and
    ``example_forecast`` [steps, f])."""
    from matplotlib.figure import Figure  # imported here: matplotlib is slow to import
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4))
    error, example = figure.subplots(1, 2)
    k = np.arange(1, result["steps"] + 1)
    closed = "closed-loop: fed its own predictions"
    teacher = "teacher-forced: one step ahead from true inputs"
    error.plot(k, result["mse_closed_loop"], "o-", color="C3", label=closed)
    error.plot(k, result["mse_teacher_forced"], "s--", color="C0", label=teacher)
    error.set(
        xlabel="horizon step k (steps ahead)",
        ylabel=f"test MSE (mean over {result['windows']} windows)",
        title="error against the horizon",
    )
    error.set_ylim(bottom=0)  # errors are non-negative
    error.xaxis.set_major_locator(MaxNLocator(integer=True))
    error.legend(fontsize="small")
    history = np.asarray(result["example_history"])[:, 0]
    future = np.arange(len(history), len(history) + result["steps"])
    example.plot(np.arange(len(history)), history, color="0.4", label="input window (true)")
    example.plot(future, np.asarray(result["example_truth"])[:, 0], "o-", label="truth")
    forecast = np.asarray(result["example_forecast"])[:, 0]
    example.plot(future, forecast, "s--", color="C3", label="closed-loop forecast")
    example.set(xlabel="time step", ylabel="value (standardised)", title="first test window")
    example.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot(result: dict[str, Any], path: Path) -> None:
    """forecast.png (see ``forecast_figure``)."""
    forecast_figure(result).savefig(path, dpi=100)


@functools.partial(jax.jit, static_argnums=0)
def _predict(model: Any, params: Any, inputs: jax.Array) -> jax.Array:
    """The model's outputs for whole sequences (no lengths): [n, ...]."""
    return model.apply({"params": params}, inputs)


def report(  # noqa: PLR0913, PLR0917 (the end of a run hands over what it has)
    task: Any,
    model: Any,
    params: Any,
    test: Any,
    config: ml_collections.ConfigDict,
    workdir: Path,
) -> dict[str, Any] | None:
    """A forecaster's closed-loop test errors (and workdir/forecast.png) for the report;
    None for other tasks, or with config.train.closed_loop_steps = 0."""
    steps = config.train.closed_loop_steps
    if not (steps and task.rolls_forward and applies(test.inputs, test.targets)):
        return None
    predict = lambda xs: _predict(model, params, xs)
    result = closed_loop(predict, test.inputs, test.targets, steps)
    plot(result, workdir / "forecast.png")
    return {k: v for k, v in result.items() if not k.startswith("example_")}
