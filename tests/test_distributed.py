"""Two ``jax.distributed`` processes on 127.0.0.1, one CPU device each, train one model
together over a data axis of 2: each sends only its half of every batch, they report the
same results, only process 0 writes the run's files, and the parameters equal those of one
process with the same global batch (tolerance 1e-6: the batch's sums split over two
devices)."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fnn_jax.checkpoint import Checkpoints
from fnn_jax.config import ConfigError, default_config
from fnn_jax.train import distributed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # subprocesses: two jax.distributed processes

WORKER = """
import json, sys
from fnn_jax.config import default_config
from fnn_jax.train import train_and_evaluate

address, processes, rank, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = default_config()
c.data.options = dict(classes=(0, 1, 2), train_per_class=16)
c.data.batch_size = 8
c.data.eval_batch_size = 16
c.model.hidden_size = 16
c.train.num_steps = 10
c.train.log_every_steps = 5
c.train.eval_every_steps = 5
c.train.compilation_cache = ""
c.seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
if len(sys.argv) > 6:  # the model axis: matrices split between the processes
    c.mesh.data, c.mesh.model = 1, int(sys.argv[6])
    c.train.checkpoint_every_s = 0.0  # a save at each validation
if processes > 1:
    c.distributed.coordinator_address = address
    c.distributed.num_processes = processes
    c.distributed.process_id = rank
from fnn_jax.train import mesh
sent = set()  # the rows of each global batch this process gathered and sent
gather_rows = mesh.Layout.gather_rows
def recording(self, table, rows):
    out = gather_rows(self, table, rows)
    sent.update((s.index[1].start or 0, s.index[1].stop) for s in out["inputs"].addressable_shards)
    return out
mesh.Layout.gather_rows = recording
report = train_and_evaluate(c, workdir)
import jax
print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                  "sent": sorted(sent), "results": report["results"]}, default=float))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_params(workdir: Path):
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        return checkpoints.restore_saved(checkpoints.latest_step())[0]["params"]
    finally:
        checkpoints.close()


def test_two_processes_train_one_model_equal_to_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device each
    address = f"127.0.0.1:{_free_port()}"
    logs = [tmp_path / f"process{rank}.{kind}" for rank in (0, 1) for kind in ("out", "err")]
    workers = [
        subprocess.Popen(  # files, not pipes: a full pipe would stall a process at a barrier
            [sys.executable, "-c", WORKER, address, "2", str(rank), str(tmp_path / "together")],
            cwd=ROOT,
            env=env,
            stdout=logs[2 * rank].open("w"),
            stderr=logs[2 * rank + 1].open("w"),
        )
        for rank in (0, 1)
    ]
    outputs = []
    for rank, worker in enumerate(workers):
        worker.wait(timeout=300)
        assert worker.returncode == 0, logs[2 * rank + 1].read_text()[-3000:]
        outputs.append(json.loads(logs[2 * rank].read_text().strip().splitlines()[-1]))
    # One process, one device: the global batch of 8 on a single device.
    alone_env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, "", "1", "0", str(tmp_path / "alone")],
        cwd=ROOT,
        env=alone_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads(done.stdout.strip().splitlines()[-1])

    assert [o["devices"] for o in outputs] == [2, 2] and [o["processes"] for o in outputs] == [2, 2]
    assert outputs[0]["results"] == outputs[1]["results"]  # both processes agree
    # Each process gathered and sent only its half of every global batch of 8 rows.
    assert [o["sent"] for o in outputs] == [[[0, 4]], [[4, 8]]] and alone["sent"] == []
    for split in ("validation", "test"):
        np.testing.assert_allclose(
            outputs[0]["results"][split]["loss"], alone["results"][split]["loss"], rtol=1e-5
        )
    together, single = _final_params(tmp_path / "together"), _final_params(tmp_path / "alone")
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Only process 0 wrote the run's files: one metrics log, with each record once.
    records = [json.loads(line) for line in (tmp_path / "together/metrics.jsonl").open()]
    steps = [(r["step"], r["split"]) for r in records]
    assert len(steps) == len(set(steps)) and (10, "validation") in steps
    assert (tmp_path / "together/report.json").exists()


def test_processes_that_disagree_on_the_config_are_refused_before_the_workdir_is_touched(
    tmp_path,
):
    """The README's two-process command with --config.seed=1 on rank 1 only: both refuse,
    rank 1 naming the key, rank 0 naming the rank; no checkpoint is written."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    address, workdir = f"127.0.0.1:{_free_port()}", tmp_path / "run"
    errs = [tmp_path / f"process{rank}.err" for rank in (0, 1)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, address, "2", str(rank), str(workdir), str(rank)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errs[rank].open("w"),
        )
        for rank in (0, 1)
    ]
    for worker in workers:
        worker.wait(timeout=300)
    messages = [e.read_text() for e in errs]
    assert [w.returncode for w in workers] == [1, 1], messages
    assert "ConfigError: process(es) [1] of 2 run another config" in messages[0]
    assert "this process (1) differs in:\n  config.seed: 0 -> 1" in messages[1]
    assert not (workdir / "checkpoints").exists()


def _main_processes(workdir, address, tmp_path, tag, steps):
    """Two experiments/main.py processes of one run (configs/test.py), their stderr in files."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    flags = [
        f"--config.train.num_steps={steps}",
        "--config.train.eval_every_steps=100",
        "--config.train.checkpoint_every_s=3600",
        "--config.train.compilation_cache=",
        f"--config.distributed.coordinator_address={address}",
        "--config.distributed.num_processes=2",
    ]
    command = [sys.executable, "experiments/main.py", "--config", "configs/test.py"]
    errs = [tmp_path / f"{tag}{rank}.err" for rank in (0, 1)]
    processes = [
        subprocess.Popen(
            [
                *command,
                "--workdir",
                str(workdir),
                *flags,
                f"--config.distributed.process_id={rank}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errs[rank].open("w"),
        )
        for rank in (0, 1)
    ]
    return processes, errs


def test_sigterm_to_one_process_saves_every_process_at_one_step_and_both_exit_75(tmp_path):
    """A preempted host (SIGTERM to rank 1 only): the processes agree at the next dispatch
    boundary that one of them was asked to stop, save the same step together and exit 75;
    the same commands resume and finish."""
    import signal
    import time

    workdir = tmp_path / "run"
    processes, errs = _main_processes(workdir, f"127.0.0.1:{_free_port()}", tmp_path, "a", 2000)
    log, deadline = workdir / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and not (log.exists() and '"train"' in log.read_text()):
        time.sleep(0.2)  # until the first train record: training is under way
    processes[1].send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=240)
    messages = [e.read_text()[-3000:] for e in errs]
    assert [p.returncode for p in processes] == [75, 75], messages
    saved = Checkpoints(workdir / "checkpoints", read_only=True)
    step = saved.latest_step()
    saved.close()
    assert 0 < step < 2000
    assert all(f"saved step {step} in {workdir}" in m for m in messages), messages

    processes, errs = _main_processes(workdir, f"127.0.0.1:{_free_port()}", tmp_path, "b", 2000)
    for process in processes:
        process.wait(timeout=600)
    assert [p.returncode for p in processes] == [0, 0], [e.read_text()[-3000:] for e in errs]
    assert json.loads((workdir / "report.json").read_text())["steps"] == 2000


def test_a_process_id_outside_the_process_count_is_refused():
    config = default_config()
    config.distributed.coordinator_address = "127.0.0.1:1"
    config.distributed.num_processes = 2
    config.distributed.process_id = 2
    with pytest.raises(ConfigError, match=r"process_id=2 must lie in \[0, .*num_processes=2\)"):
        distributed.initialize(config)


def test_a_single_process_run_does_not_start_jax_distributed():
    config = default_config()
    assert config.distributed.coordinator_address == ""
    distributed.initialize(config)
    assert not jax.distributed.is_initialized() and distributed.is_primary()


def _start(address, processes, rank, tmp_path, tag, *, timeout_s=5):
    """A process that only joins the run (configs/test.py's distributed section)."""
    code = (
        "import sys; from fnn_jax.config import default_config; "
        "from fnn_jax.train import distributed; c = default_config(); "
        f"c.distributed.coordinator_address = {address!r}; "
        f"c.distributed.num_processes = {processes}; c.distributed.process_id = {rank}; "
        f"c.distributed.timeout_s = {timeout_s}; distributed.initialize(c); print('joined')"
    )
    err = tmp_path / f"{tag}.err"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=err.open("w"),
        text=True,
    )
    return process, err


def _last_line(err):
    return err.read_text().strip().splitlines()[-1]


def test_a_missing_process_is_named_within_the_timeout(tmp_path):
    import time

    start = time.monotonic()
    process, err = _start(f"127.0.0.1:{_free_port()}", 2, 0, tmp_path, "alone", timeout_s=3)
    process.wait(timeout=120)
    assert process.returncode == 1
    assert _last_line(err) == (
        "fnn_jax.config.ConfigError: the run's processes do not fit together: process(es) "
        "[1] of 2 did not join within 3 s (config.distributed.timeout_s)"
    )
    assert time.monotonic() - start < 60


def test_a_rank_given_twice_or_a_wrong_count_is_named_on_every_process(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    started = [_start(address, 3, 0, tmp_path, "p0", timeout_s=60)]
    started += [_start(address, 3, 1, tmp_path, f"p1_{k}", timeout_s=60) for k in range(2)]
    for process, _ in started:
        process.wait(timeout=120)
    assert [p.returncode for p, _ in started] == [1, 1, 1]
    for _, err in started:
        assert _last_line(err).endswith("process_id 1 is given to two processes"), err.read_text()

    address = f"127.0.0.1:{_free_port()}"
    first, err0 = _start(address, 2, 0, tmp_path, "count0", timeout_s=60)
    second, err1 = _start(address, 3, 1, tmp_path, "count1", timeout_s=60)
    for process in (first, second):
        process.wait(timeout=120)
    assert _last_line(err0).endswith("process 1 has num_processes=3; process 0 has 2")
    assert _last_line(err1).endswith("process 1 has num_processes=3; process 0 has 2")


def test_a_model_split_between_two_processes_saves_each_half_with_its_own_sha256(tmp_path):
    """mesh.model=2 over the two processes' devices: each holds half of every split matrix
    and hashes only that half; the checkpoint records both digests, which match the two
    halves read back by one process."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    address = f"127.0.0.1:{_free_port()}"
    logs = [tmp_path / f"process{rank}.{kind}" for rank in (0, 1) for kind in ("out", "err")]
    args = [address, "2", "", str(tmp_path / "split"), "0", "2"]
    workers = []
    for rank in (0, 1):
        args[2] = str(rank)
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, *args],
                cwd=ROOT,
                env=env,
                stdout=logs[2 * rank].open("w"),
                stderr=logs[2 * rank + 1].open("w"),
            )
        )
    for rank, worker in enumerate(workers):
        worker.wait(timeout=300)
        assert worker.returncode == 0, logs[2 * rank + 1].read_text()[-3000:]
    outputs = [json.loads(logs[2 * r].read_text().strip().splitlines()[-1]) for r in (0, 1)]
    assert outputs[0]["results"] == outputs[1]["results"]
    checkpoints = Checkpoints(tmp_path / "split" / "checkpoints", read_only=True)
    try:
        assert checkpoints.steps() == [5, 10]
        hashes = checkpoints.restore_progress(10)["hashes"]
        saved, _ = checkpoints.restore_saved(10)  # checked against every digest
    finally:
        checkpoints.close()
    w_hh = saved["params"]["encoder"]["layer_0"]["w_hh"]  # [16, 64]: a half per process
    for half, columns in ((0, slice(0, 32)), (1, slice(32, 64))):
        key = f"params/encoder/layer_0/w_hh[0:16,{columns.start}:{columns.stop}]"
        value = np.ascontiguousarray(w_hh[:, columns])
        reference = hashlib.sha256(f"{value.dtype}{value.shape}".encode() + value.tobytes())
        assert hashes[key] == reference.hexdigest(), half
