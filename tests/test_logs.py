"""What a run logs: metrics.jsonl (with the learning rate and the time), TensorBoard events
that TensorBoard's own reader loads, and the curves."""

import math
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fnn_jax.reporting import MetricsLog
from fnn_jax.train import train_and_evaluate
from tests.test_reliability import STEPS, _config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("logged")
    started = time.time()
    report = train_and_evaluate(_config(), workdir)
    return workdir, report, started, time.time()


def _warmup_cosine(count, peak, warmup, total):
    """optax.warmup_cosine_decay_schedule with end value 0, written out."""
    if count < warmup:
        return peak * count / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (count - warmup) / (total - warmup)))


def test_train_records_carry_the_learning_rate_of_their_step_and_every_record_a_time(run):
    workdir, _, started, ended = run
    config = _config()
    train = [r for r in MetricsLog.read(workdir) if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(4, STEPS + 1, 4))
    for record in train:  # the update of step s used the schedule at count s - 1
        want = _warmup_cosine(
            record["step"] - 1, config.optimizer.learning_rate, config.optimizer.warmup_steps, STEPS
        )
        assert record["learning_rate"] == pytest.approx(want, rel=1e-5, abs=1e-12)
    times = [r["time"] for r in MetricsLog.read(workdir)]
    assert started <= times[0] and times == sorted(times) and times[-1] <= ended


def test_tensorboards_own_reader_loads_every_logged_scalar(run):
    workdir, _, _, _ = run
    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    records = MetricsLog.read(workdir, times=False)
    for split, name in [("train", "loss"), ("train", "learning_rate"), ("validation", "f1")]:
        logged = [(r["step"], r[name]) for r in records if r["split"] == split]
        scalars = events.Scalars(f"{split}/{name}")
        assert [s.step for s in scalars] == [step for step, _ in logged]
        np.testing.assert_allclose([s.value for s in scalars], [v for _, v in logged], rtol=1e-6)


def test_the_report_table_shows_a_small_residual_instead_of_zero():
    from fnn_jax.reporting import markdown_table

    table = markdown_table({"test": {"accuracy": 0.95561, "solver_residual_max": 1.52e-05}})
    assert "| test | 0.9556 | 1.52e-05 |" in table


def _flat_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.float64(a))) for a in jax.tree.leaves(tree))))


def _sgd_run(workdir, **overrides):
    """Plain SGD (no momentum, clipping or schedule): an update is exactly -lr * gradient."""
    settings = {
        "optimizer.name": "sgd",
        "optimizer.momentum": 0.0,
        "optimizer.clip_norm": 0.0,
        "optimizer.warmup_steps": 0,
        "optimizer.schedule": "constant",
        "optimizer.learning_rate": 0.5,
        "train.num_steps": 4,
        "train.eval_every_steps": 1,
        "train.keep_checkpoints": 10,
        **overrides,
    }
    train_and_evaluate(_config(**settings), workdir)
    return [r for r in MetricsLog.read(workdir) if r["split"] == "train"]


@pytest.mark.slow
def test_logged_norms_are_the_steps_gradient_parameter_and_update_norms(tmp_path):
    """Checked against the saved parameters, and against a profiled run that logged every
    step: the same final parameters, bit for bit, and norms logged every two steps that are
    the means of its per-step norms."""
    from fnn_jax.checkpoint import Checkpoints

    every_step = _sgd_run(
        tmp_path / "every", **{"train.log_every_steps": 1, "train.profile_steps": 2}
    )
    checkpoints = Checkpoints(tmp_path / "every" / "checkpoints")
    params = {s: checkpoints.restore_saved(s)[0]["params"] for s in range(1, 5)}
    assert [r["step"] for r in every_step] == [1, 2, 3, 4]
    for record in every_step[1:]:
        step = record["step"]
        assert record["param_norm"] == pytest.approx(_flat_norm(params[step]), rel=1e-5)
        delta = jax.tree.map(
            lambda a, b: np.float64(a) - np.float64(b), params[step], params[step - 1]
        )
        assert record["update_norm"] == pytest.approx(_flat_norm(delta), rel=1e-3)
        assert record["grad_norm"] == pytest.approx(record["update_norm"] / 0.5, rel=1e-5)
    traces = list((tmp_path / "every" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1, traces

    every_two = _sgd_run(tmp_path / "two", **{"train.log_every_steps": 2})
    assert not (tmp_path / "two" / "profile").exists()
    final = Checkpoints(tmp_path / "two" / "checkpoints").restore_saved(4)[0]["params"]
    for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(params[4]), strict=True):
        np.testing.assert_array_equal(got, want)
    for record in every_two:
        pair = [r for r in every_step if r["step"] in (record["step"] - 1, record["step"])]
        for name in ("grad_norm", "param_norm", "update_norm"):
            mean = (pair[0][name] + pair[1][name]) / 2
            assert record[name] == pytest.approx(mean, rel=1e-6), name

    # Off (config.train.log_norms): no norms logged, and the training is the same, bit for bit.
    off = _sgd_run(tmp_path / "off", **{"train.log_every_steps": 2, "train.log_norms": False})
    assert not any("grad_norm" in r for r in off)
    unlogged = Checkpoints(tmp_path / "off" / "checkpoints").restore_saved(4)[0]["params"]
    for got, want in zip(jax.tree.leaves(unlogged), jax.tree.leaves(final), strict=True):
        np.testing.assert_array_equal(got, want)
