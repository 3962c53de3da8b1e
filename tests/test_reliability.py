"""Nothing is lost under kill -9, SIGTERM, corrupt checkpoints, a full disk, NaNs, config
drift, a second process or an architecture mismatch."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from fnn_jax.checkpoint import ArchitectureMismatch, CheckpointError, Checkpoints
from fnn_jax.files import WorkdirLocked, WorkdirUnusable, workdir_lock
from fnn_jax.reporting import MetricsLog
from fnn_jax.train import EXIT_PREEMPTED, train_and_evaluate
from fnn_jax.train.preemption import (
    Preempted,
    PreemptionFlag,
    clear_preemption,
    interrupt,
    requested_by,
)
from fnn_jax.train.trial import improves
from tests.kill9 import kill_until_finished

# A failed checkpoint read must leave no traceback behind (Orbax's closed-loop callbacks and
# unfinished read coroutines are quieted by fnn_jax.checkpoint).
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
# Three steps per dispatch: a kill or a signal lands inside fused blocks too.
OVERRIDES = {"train.num_steps": STEPS, "train.eval_every_steps": 4, "train.steps_per_dispatch": 3}


def _config(**overrides):
    config = test_config.get_config()
    with config.unlocked():
        for dotted, value in {**OVERRIDES, **overrides}.items():
            section, name = dotted.split(".")
            config[section][name] = value
    return config


def _command(workdir):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    main = str(ROOT / "experiments" / "main.py")
    return [
        sys.executable,
        main,
        "--config",
        str(ROOT / "configs/test.py"),
        "--workdir",
        str(workdir),
        *flags,
    ]


def _final(workdir, step=STEPS):
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, progress = checkpoints.restore_saved(step)
    checkpoints.close()
    return state


def _assert_same_run(workdir, reference):
    jax.tree.map(np.testing.assert_array_equal, _final(workdir), _final(reference))
    assert MetricsLog.read(workdir, times=False) == MetricsLog.read(reference, times=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    train_and_evaluate(_config(), workdir)
    return workdir


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_uninterrupted_run(reference, tmp_path):
    """Each attempt is killed at a random moment of its training (timed from its first
    progress line, so start-up speed does not matter), until one finishes."""
    kills = kill_until_finished(_command(tmp_path), attempts=8, window=(0.0, 0.6))
    assert kills >= 1, "the run finished before any kill: make it longer"
    _assert_same_run(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl_c"])
def test_sigterm_saves_exits_with_preempted_code_and_resumes_exactly(reference, how, tmp_path):
    """SIGTERM to the run, or Ctrl-C (SIGINT to its whole process group, as a terminal
    sends it): the step finishes, everything is saved, exit 75, and a rerun is exact."""
    process = subprocess.Popen(
        _command(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # Wait until training is under way (the first progress line), then preempt.
    for line in process.stdout:
        if line.startswith("step "):
            break
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, err
    assert f"{'SIGTERM' if how == 'sigterm' else 'SIGINT'}: saved step" in err
    assert "Traceback" not in err
    saved = Checkpoints(tmp_path / "checkpoints")
    assert saved.latest_step() < STEPS
    saved.close()
    assert subprocess.run(_command(tmp_path), capture_output=True).returncode == 0
    _assert_same_run(tmp_path, reference)


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        _flip_byte,
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        lambda p: p.unlink(),
    ],
    ids=["bit_flip", "truncated", "missing"],
)
def test_corrupt_last_step_falls_back_to_previous_good_step(reference, damage, tmp_path, caplog):
    train_and_evaluate(_config(), tmp_path, stop_after_steps=STEPS - 6)
    last = Checkpoints(tmp_path / "checkpoints").latest_step()
    damage(_largest_file(tmp_path / "checkpoints" / str(last) / "state"))
    with caplog.at_level(logging.WARNING, logger="fnn_jax"):
        train_and_evaluate(_config(), tmp_path)
    assert f"checkpoint step {last} is unusable" in caplog.text
    assert (tmp_path / "checkpoints-corrupt" / str(last)).is_dir(), "moved aside, not deleted"
    _assert_same_run(tmp_path, reference)


def test_a_step_that_is_a_file_is_moved_aside_and_the_run_resumes_before_it(
    reference, tmp_path, caplog
):
    train_and_evaluate(_config(), tmp_path, stop_after_steps=STEPS - 6)
    last = Checkpoints(tmp_path / "checkpoints").latest_step()
    step_dir = tmp_path / "checkpoints" / str(last)
    shutil.rmtree(step_dir)
    step_dir.write_text("not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="fnn_jax"):
        train_and_evaluate(_config(), tmp_path)
    assert f"checkpoint step {last} is unusable: {step_dir} is not a folder" in caplog.text
    assert (tmp_path / "checkpoints-corrupt" / str(last)).read_text() == "not a checkpoint"
    _assert_same_run(tmp_path, reference)


def test_no_intact_step_is_a_clear_error(tmp_path):
    train_and_evaluate(_config(**{"train.num_steps": 8}), tmp_path)
    for step_dir in (tmp_path / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            _largest_file(step_dir / "state").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint left in .*checkpoints"):
        train_and_evaluate(_config(**{"train.num_steps": 8}), tmp_path)


DISK_FULL = """
import resource, signal, sys
import jax.numpy as jnp
from fnn_jax.checkpoint import Checkpoints, CheckpointError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG
checkpoints = Checkpoints(sys.argv[1])
checkpoints.save(1, {"w": jnp.ones(4)}, {})
checkpoints.wait()
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    checkpoints.save(2, {"w": jnp.arange(1_000_000, dtype=jnp.float32)}, {})
    checkpoints.wait()
except CheckpointError as error:
    print(error)
    sys.exit(3)
"""


@pytest.mark.slow
def test_full_disk_is_a_clear_error_and_the_previous_step_survives(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"could not write checkpoint step 2 to {tmp_path / 'ckpt'}" in result.stdout
    assert "File too large" in result.stdout and "run the same command to resume" in result.stdout
    # Orbax's own log records of the failed save keep their line, not their tracebacks
    # (issue 29: the cause sat at line 261 of a 394-line log).
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(result.stderr.splitlines()) < 10, result.stderr
    checkpoints = Checkpoints(tmp_path / "ckpt")
    assert checkpoints.steps() == [1]
    state, _ = checkpoints.restore(1, {"w": jnp.zeros(4)})
    np.testing.assert_array_equal(state["w"], np.ones(4))


def test_close_raises_the_failed_save_even_when_orbax_then_fails_to_close(tmp_path, monkeypatch):
    checkpoints = Checkpoints(tmp_path / "ckpt")
    manager = checkpoints.manager
    real_close = manager.close

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def close_fails():
        real_close()
        raise RuntimeError("orbax could not close either")

    monkeypatch.setattr(manager, "save", no_space)
    monkeypatch.setattr(manager, "close", close_fails)
    checkpoints.save(2, {"w": np.ones(4)}, {})  # host copies: saved on the writer thread
    with pytest.raises(CheckpointError, match="could not write checkpoint step 2 to .*ckpt") as e:
        checkpoints.close()
    assert "the disk is full: free space, then run the same command to resume" in str(e.value)


def test_nonfinite_loss_stops_the_run_naming_the_step_and_saves_nothing_bad(tmp_path):
    config = _config(**{"regularization.l2": 1e38})  # the penalty overflows to inf
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d+"):
        train_and_evaluate(config, tmp_path)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    for step in checkpoints.steps():
        state, _ = checkpoints.restore_saved(step)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_nan_validation_metric_never_becomes_best():
    assert not improves(float("nan"), None, "max", 0.0)
    assert not improves(float("nan"), 0.5, "min", 0.0)
    assert improves(0.6, 0.5, "max", 0.0) and improves(0.4, 0.5, "min", 0.0)


def test_changed_training_settings_resume_with_a_warning_listing_them(tmp_path, caplog):
    train_and_evaluate(_config(**{"train.num_steps": 8}), tmp_path)
    with caplog.at_level(logging.WARNING, logger="fnn_jax"):
        train_and_evaluate(_config(**{"train.num_steps": 12}), tmp_path)
    assert "train.num_steps: 8 -> 12" in caplog.text


def test_second_process_on_a_workdir_refuses_and_touches_nothing(tmp_path):
    with (
        workdir_lock(tmp_path),
        pytest.raises(WorkdirLocked, match=f"locked by pid {os.getpid()}"),
    ):
        train_and_evaluate(_config(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_restoring_into_another_architecture_names_path_and_shapes_and_moves_nothing(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save(1, {"params": {"encoder": {"w_hh": jnp.ones((16, 64))}}}, {})
    checkpoints.wait()
    like = {"params": {"encoder": {"w_hh": jnp.ones((12, 48))}}}
    message = r"another architecture.*\n  'encoder/w_hh': checkpoint \(16, 64\), model \(12, 48\)"
    with pytest.raises(ArchitectureMismatch, match=message):
        checkpoints.restore(1, like)
    # Another run's checkpoint is not damage: it is refused, never moved aside.
    with pytest.raises(ArchitectureMismatch, match=message):
        checkpoints.restore_good(lambda progress: like)
    assert checkpoints.steps() == [1]
    assert not (tmp_path / "checkpoints-corrupt").exists()


def test_a_first_ctrl_c_asks_to_stop_at_a_step_boundary_and_a_second_aborts_at_once():
    try:
        interrupt(signal.SIGINT, None)
        assert PreemptionFlag().requested and requested_by() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            interrupt(signal.SIGINT, None)
    finally:
        clear_preemption()
    assert not PreemptionFlag().requested


def test_a_save_started_on_the_writer_thread_is_listed_at_once_and_on_disk_after_wait(tmp_path):
    """Checkpoints.save returns before Orbax has the state; anything that asks Orbax next
    (here latest_step) waits for the hand-over instead of racing it."""
    checkpoints = Checkpoints(tmp_path)
    state = {"w": np.arange(100_000, dtype=np.float32)}
    for step in (1, 2, 3):
        checkpoints.save(step, {"w": state["w"] + step}, {"step": step})
        assert checkpoints.latest_step() == step
    checkpoints.close()
    reopened = Checkpoints(tmp_path, read_only=True)
    try:
        assert reopened.steps() == [1, 2, 3]
        saved, progress = reopened.restore_saved(3)
        np.testing.assert_array_equal(saved["w"], state["w"] + 3)
        assert progress["step"] == 3
    finally:
        reopened.close()


def test_batches_sent_from_the_host_equal_batches_gathered_on_the_device(tmp_path, monkeypatch):
    """What a multi-process run does (RowsOnHost: each dispatch sends its batches, every
    process only its slice) gives the same run bit for bit as the train table on the
    device, through fused dispatches and an interruption."""
    from fnn_jax.train import engine

    on_device = tmp_path / "device"
    train_and_evaluate(_config(), on_device)
    monkeypatch.setattr(engine, "rows_on_host", lambda: True)
    sent = tmp_path / "host"
    assert train_and_evaluate(_config(), sent, stop_after_steps=17) == {"interrupted_at": 17}
    train_and_evaluate(_config(), sent)
    _assert_same_run(sent, on_device)


def test_truncated_bptt_windows_of_batches_sent_from_the_host_equal_those_on_the_device(
    tmp_path, monkeypatch
):
    from fnn_jax.train import engine
    from tests.test_tbptt import _config as tbptt_config
    from tests.test_tbptt import _final as tbptt_final

    config = tbptt_config(7, 10)  # rows of 24 in windows of 7: padded, carried state
    train_and_evaluate(config, tmp_path / "device")
    monkeypatch.setattr(engine, "rows_on_host", lambda: True)
    train_and_evaluate(config, tmp_path / "host")
    host, device = tbptt_final(tmp_path / "host"), tbptt_final(tmp_path / "device")
    jax.tree.map(np.testing.assert_array_equal, host, device)


def test_sigterm_in_the_final_evaluation_is_a_preemption_and_the_rerun_finishes(
    reference, tmp_path, monkeypatch
):
    """The signal handlers stay through the final phase: SIGTERM there sets the flag (the
    process is not killed), the run raises Preempted (main.py exits 75), and the next run
    writes the report the uninterrupted one did."""
    from fnn_jax.train import finish

    real = finish.finish_trial

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(finish, "finish_trial", signalled)
    with pytest.raises(Preempted, match="SIGTERM in the final evaluation: saved step"):
        train_and_evaluate(_config(), tmp_path)
    monkeypatch.undo()
    report = train_and_evaluate(_config(), tmp_path)
    _assert_same_run(tmp_path, reference)
    want = json.loads((reference / "report.json").read_text())
    assert report["results"] == want["results"] and report["best_step"] == want["best_step"]


def test_a_workdir_deleted_mid_run_stops_the_run_and_nothing_recreates_it(tmp_path):
    """Deleted at the first validation (through the run's own hook), before that step's
    save: the save refuses with WorkdirUnusable naming the file, and nothing is written
    to a deleted file or recreated."""
    workdir = tmp_path / "run"

    def delete_workdir(step, values):
        shutil.rmtree(workdir)
        return False

    with pytest.raises(WorkdirUnusable, match=r"metrics.jsonl was deleted or replaced"):
        train_and_evaluate(_config(), workdir, on_validation=delete_workdir)
    assert not workdir.exists()
