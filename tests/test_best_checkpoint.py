"""The best checkpoint is verified when the final evaluation and the export restore it; a
best step that is gone or damaged is said loudly and replaced by the best intact step, and
damage to any step's metadata never blocks a run."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest

from fnn_jax.checkpoint import Checkpoints, load_exported
from fnn_jax.reporting import MetricsLog
from fnn_jax.train import train_and_evaluate
from tests.test_reliability import STEPS, _assert_same_run, _config, _largest_file
from tests.test_train import nonfinite_after

# A failed checkpoint read leaves no traceback behind (see test_reliability.py).
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

# Every evaluation kept, so the best intact step is a real choice among many.
KEEP_ALL = {"train.keep_checkpoints": STEPS}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    report = train_and_evaluate(_config(**KEEP_ALL), workdir)
    assert report["best_step"] != report["steps"]  # a best step that is not the last
    return workdir, report


def _best_intact(workdir, metric, lost):
    """The kept step with the best logged validation metric (earliest of ties), by hand."""
    logged = {r["step"]: r[metric] for r in MetricsLog.read(workdir) if r["split"] == "validation"}
    best = None
    for step in sorted(logged):
        if step != lost and (best is None or logged[step] > logged[best]):
            best = step
    return best, logged[best]


def _remove(step_dir):
    shutil.rmtree(step_dir)


def _remove_metrics(step_dir):  # Orbax would then delete the step at its next save
    shutil.rmtree(step_dir / "metrics")


def _flip_bit(step_dir):
    path = _largest_file(step_dir / "state")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _zero_largest(step_dir):
    path = _largest_file(step_dir / "state")
    path.write_bytes(bytes(path.stat().st_size))


def _truncate_progress(step_dir):
    path = step_dir / "progress" / "metadata"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero_state_metadata(step_dir):
    path = step_dir / "state" / "_METADATA"
    path.write_bytes(bytes(path.stat().st_size))


DAMAGES = [_remove, _remove_metrics, _flip_bit, _zero_largest, _truncate_progress]
DAMAGES += [_zero_state_metadata]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__.lstrip("_") for d in DAMAGES])
def test_a_lost_best_step_is_reported_and_the_best_intact_step_is_evaluated(
    finished, damage, tmp_path, caplog
):
    source, first = finished
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    best = first["best_step"]
    damage(workdir / "checkpoints" / str(best))
    (workdir / "report.json").unlink()

    with caplog.at_level(logging.WARNING, logger="fnn_jax"):
        report = train_and_evaluate(_config(**KEEP_ALL), workdir)
    used, logged_value = _best_intact(workdir, first["metric"], lost=best)
    assert report["best_step"] == best
    assert report["evaluated_step"] == used
    assert report["best_checkpoint_problem"]["used_step"] == used
    assert f"the best checkpoint (step {best}) is unusable" in caplog.text
    assert "Warning:** the best checkpoint" in (workdir / "report.md").read_text()
    assert json.loads((workdir / "report.json").read_text())["evaluated_step"] == used
    # The results and the export are the intact step's, not the last step's.
    assert report["results"]["validation"][first["metric"]] == logged_value
    checkpoints = Checkpoints(workdir / "checkpoints")
    saved, _ = checkpoints.restore_saved(used)
    checkpoints.close()
    jax.tree.map(np.testing.assert_array_equal, load_exported(workdir / "export"), saved["params"])
    assert best not in Checkpoints(workdir / "checkpoints").steps()
    if damage not in (_remove, _remove_metrics):
        assert (workdir / "checkpoints-corrupt" / str(best)).is_dir(), "moved aside, not lost"

    # Nothing blocks the next run: it ends with the same honest report.
    (workdir / "report.json").unlink()
    again = train_and_evaluate(_config(**KEEP_ALL), workdir)
    assert again["evaluated_step"] == used and again["results"] == report["results"]


def test_an_intact_best_step_is_evaluated_with_no_problem_reported(finished):
    _, report = finished
    assert report["evaluated_step"] == report["best_step"]
    assert "best_checkpoint_problem" not in report


@pytest.mark.parametrize("where", ["metrics/metrics", "_CHECKPOINT_METADATA"])
def test_a_torn_metadata_file_of_the_latest_step_is_moved_aside_and_the_run_resumes_exactly(
    where, tmp_path, caplog
):
    reference = tmp_path / "reference"
    train_and_evaluate(_config(), reference)
    workdir = tmp_path / "run"
    train_and_evaluate(_config(), workdir, stop_after_steps=STEPS - 6)
    last = Checkpoints(workdir / "checkpoints").latest_step()
    path = workdir / "checkpoints" / str(last) / where
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="fnn_jax"):
        train_and_evaluate(_config(), workdir)
    assert f"checkpoint step {last} is unusable: {path} is unreadable" in caplog.text
    assert (workdir / "checkpoints-corrupt" / str(last)).is_dir()
    _assert_same_run(workdir, reference)


# ------------------------------------------------------- saves every checkpoint_every_s


def _assert_saved_as_in(workdir, reference, steps):
    """``workdir`` holds checkpoints of exactly ``steps``, each bit for bit the one of
    that step in ``reference`` (state and progress record)."""
    saved, expected = Checkpoints(workdir / "checkpoints"), Checkpoints(reference / "checkpoints")
    try:
        assert saved.steps() == steps
        for step in steps:
            (state, progress), (want, want_progress) = (
                saved.restore_saved(step),
                expected.restore_saved(step),
            )
            jax.tree.map(np.testing.assert_array_equal, state, want)
            assert progress == want_progress
    finally:
        saved.close()
        expected.close()


RARELY = {"train.checkpoint_every_s": 1e9}  # only stage ends and interruptions save


def test_rare_saves_write_the_best_in_memory_before_the_last_and_change_nothing_else(
    finished, tmp_path
):
    """Saving only at the end, the best state waited in memory since its evaluation: it is
    written before the final step, equal bit for bit to the one saved at its evaluation,
    and the run (parameters, logs, report) is the same as saving at every evaluation."""
    every_workdir, every_report = finished
    report = train_and_evaluate(_config(**KEEP_ALL, **RARELY), tmp_path)
    best = every_report["best_step"]
    assert report["best_step"] == best and "best_checkpoint_problem" not in report
    assert report["results"] == every_report["results"]
    _assert_saved_as_in(tmp_path, every_workdir, [best, STEPS])
    assert MetricsLog.read(tmp_path, times=False) == MetricsLog.read(every_workdir, times=False)


def test_an_interrupted_run_saving_rarely_writes_its_unsaved_best_and_resumes_exactly(
    finished, tmp_path
):
    every_workdir, every_report = finished
    best, stop = every_report["best_step"], STEPS - 2
    assert best < stop
    config = _config(**KEEP_ALL, **RARELY)
    assert train_and_evaluate(config, tmp_path, stop_after_steps=stop) == {"interrupted_at": stop}
    checkpoints = Checkpoints(tmp_path / "checkpoints", read_only=True)
    try:
        assert checkpoints.steps() == [best, stop]
    finally:
        checkpoints.close()
    report = train_and_evaluate(config, tmp_path)
    assert report["best_step"] == best and report["results"] == every_report["results"]
    _assert_same_run(tmp_path, every_workdir)


def test_a_run_halted_on_non_finite_steps_after_its_best_writes_that_best(
    finished, monkeypatch, tmp_path
):
    """Saving rarely, the best state waits in memory; every step after the step past it
    reports non-finite (limit 0), so the run halts there: the best is written on the way
    out, equal bit for bit to the one a run saving at every evaluation wrote."""
    every_workdir, every_report = finished
    best = every_report["best_step"]
    nonfinite_after(monkeypatch, best + 1)
    config = _config(**KEEP_ALL, **RARELY, **{"train.max_nonfinite_steps": 0})
    with pytest.raises(FloatingPointError, match=rf"at step {best + 2} \(1 such steps"):
        train_and_evaluate(config, tmp_path)
    _assert_saved_as_in(tmp_path, every_workdir, [best])


def test_a_save_at_a_new_best_drops_the_older_best_waiting_in_memory(tmp_path):
    """Saving rarely, a best waits in memory until a later evaluation is due to save; when
    that one is a better best, the older one is superseded and never written."""
    config = _config(**RARELY, **{"train.num_steps": 8, "train.early_stopping_metric": "loss"})
    train_and_evaluate(config, tmp_path)
    losses = [r["loss"] for r in MetricsLog.read(tmp_path) if r["split"] == "validation"]
    assert len(losses) == 2 and losses[1] < losses[0]  # both evaluations were new bests
    checkpoints = Checkpoints(tmp_path / "checkpoints", read_only=True)
    try:
        assert checkpoints.steps() == [8]
    finally:
        checkpoints.close()
