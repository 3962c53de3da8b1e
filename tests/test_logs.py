"""What a run logs: metrics.jsonl (with the learning rate and the time), TensorBoard events
that TensorBoard's own reader loads, and the curves."""

import math
import time

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
