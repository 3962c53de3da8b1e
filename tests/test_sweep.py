"""Sweeps: trial lists, up-front validation, resume without re-runs, failures, seed averages.

Most tests replace ``train_and_evaluate`` with a fake that writes what a finished run leaves
(config.json, metrics.jsonl, report.json) in milliseconds. Two tests train for real (a few
steps of a tiny Elman net): a sweep killed mid-trial and started again, against the same
sweep run uninterrupted in two worker processes.
"""

import csv
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from configs import test as test_config
from fnn_jax import config as config_lib
from fnn_jax import sweep
from fnn_jax.files import WorkdirLocked, workdir_lock, write_atomic, write_json
from fnn_jax.sweep import runner
from fnn_jax.train import Preempted

LR = "optimizer.learning_rate"
HIDDEN = "model.hidden_size"


def _config():
    """configs/test.py shrunk further: 4 steps of an Elman net with 4 units."""
    config = test_config.get_config()
    with config.unlocked():
        config.model.cell = "elman"
        config.model.hidden_size = 4
        config.train.num_steps = 4
        config.train.eval_every_steps = 2
        config.train.log_every_steps = 2
        config.optimizer.warmup_steps = 0
        config.data.eval_batch_size = 512
    return config


class FakeTrainer:
    """Stands in for train_and_evaluate: a score from the config, the files a run leaves."""

    def __init__(self, metric="accuracy", fail=()):
        self.metric, self.fail, self.calls = metric, set(fail), []

    @staticmethod
    def score(config):
        lr, seed = config.optimizer.learning_rate, config.seed
        return 0.5 + 10 * lr + ((seed * 7919 + config.model.hidden_size) % 13) / 100

    def __call__(self, config, workdir, *, stop_after_steps=None):
        workdir = Path(workdir)
        self.calls.append(workdir.name)
        write_json(workdir / "config.json", config_lib.to_dict(config))
        if workdir.name in self.fail:
            raise RuntimeError(f"boom in {workdir.name}")
        value = self.score(config)
        curve = [{"step": s, "split": "validation", self.metric: value * s / 4} for s in (2, 4)]
        write_atomic(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in curve))
        report = {
            "metric": self.metric,
            "steps": 4,
            "best_step": 4,
            "results": {"validation": {self.metric: value}, "test": {self.metric: value / 2}},
            "wall_time_s": 0.1,
        }
        write_json(workdir / "report.json", report)
        return report


@pytest.fixture
def fake(monkeypatch):
    trainer = FakeTrainer()
    monkeypatch.setattr(runner, "train_and_evaluate", trainer)
    return trainer


def _table(workdir):
    """sweep.csv rows without the wall-time column (it differs between any two runs)."""
    with open(workdir / "sweep.csv") as f:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------- trial lists


def test_product_zipped_and_seeds_build_the_expected_trials():
    grid = sweep.product({LR: [1e-3, 3e-3], HIDDEN: [64, 128]})
    assert grid == [
        {LR: 1e-3, HIDDEN: 64},
        {LR: 1e-3, HIDDEN: 128},
        {LR: 3e-3, HIDDEN: 64},
        {LR: 3e-3, HIDDEN: 128},
    ]
    assert sweep.product(seed=[1, 2]) == [{"seed": 1}, {"seed": 2}]
    assert sweep.zipped({LR: [1e-3, 3e-3], HIDDEN: [64, 128]}) == [
        {LR: 1e-3, HIDDEN: 64},
        {LR: 3e-3, HIDDEN: 128},
    ]
    with pytest.raises(ValueError, match="different lengths"):
        sweep.zipped({LR: [1e-3, 3e-3], HIDDEN: [64]})
    assert sweep.seeds([{LR: 1e-3}], 2) == [{LR: 1e-3, "seed": 0}, {LR: 1e-3, "seed": 1}]
    with pytest.raises(ValueError, match="seed"):
        sweep.seeds([{"seed": 3}], 2)


def test_parse_cli_reads_values_as_the_types_of_the_config():
    config = _config()
    trials = sweep.parse_cli(
        [f"{LR}=1e-3,3e-3", f"{HIDDEN}=64", "model.bidirectional=true,0", "model.cell=gru"],
        config,
    )
    assert trials == [
        {LR: lr, HIDDEN: 64, "model.bidirectional": b, "model.cell": "gru"}
        for lr in (1e-3, 3e-3)
        for b in (True, False)
    ]
    assert all(isinstance(t[LR], float) and isinstance(t[HIDDEN], int) for t in trials)
    # Commas inside a tuple literal do not split values.
    assert sweep.parse_cli(['finetune.reinit=("head/.*",),()'], config) == [
        {"finetune.reinit": ("head/.*",)},
        {"finetune.reinit": ()},
    ]
    assert sweep.parse_axes([f"{LR}=log_uniform(1e-4,1e-2)"], config) == {
        LR: ("log_uniform", 1e-4, 1e-2)
    }
    for specs, message in [
        ([f"{HIDDEN}=64,big"], "model.hidden_size"),
        (["model.hiden_size=64"], "did you mean 'model.hidden_size'"),
        ([f"{LR}="], "optimizer.learning_rate"),
        ([f"{LR}=1e-3", f"{LR}=1e-2"], "given twice"),
        ([f"{LR}=log_uniform(1e-4,1e-2)"], "random search"),
    ]:
        with pytest.raises(ValueError, match=message):
            sweep.parse_cli(specs, config)


def test_random_search_is_deterministic_in_range_and_log_uniform():
    space = {LR: ("log_uniform", 1e-4, 1e-1), "model.dropout": ("uniform", 0.1, 0.3)}
    space["model.cell"] = ["lstm", "gru"]
    trials = sweep.random_search(space, 300, seed=1)
    assert trials == sweep.random_search(space, 300, seed=1)
    assert trials != sweep.random_search(space, 300, seed=2)
    lrs = np.array([t[LR] for t in trials])
    dropouts = np.array([t["model.dropout"] for t in trials])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1
    assert dropouts.min() >= 0.1 and dropouts.max() <= 0.3
    assert {t["model.cell"] for t in trials} == {"lstm", "gru"}
    # Log-uniform: each of the three decades holds about a third of the draws.
    decades = np.histogram(np.log10(lrs), bins=[-4, -3, -2, -1])[0] / len(lrs)
    np.testing.assert_allclose(decades, 1 / 3, atol=0.08)
    # Only choices: distinct trials, and a clear error when fewer exist than asked for.
    assert len(sweep.random_search({"model.cell": ["lstm", "gru"]}, 2, seed=0)) == 2
    with pytest.raises(ValueError, match="only 2 distinct"):
        sweep.random_search({"model.cell": ["lstm", "gru"]}, 3, seed=0)
    with pytest.raises(ValueError, match="positive"):
        sweep.random_search({LR: ("log_uniform", 0.0, 1.0)}, 3)


def test_trial_names_are_readable_filesystem_safe_and_distinct():
    assert sweep.trial_name({LR: 1e-3, HIDDEN: 64}) == "learning_rate=0.001,hidden_size=64"
    assert sweep.trial_name({}) == "base"
    # Rounded floats, unsafe characters and long names get a hash of the exact values.
    a, b = sweep.trial_name({LR: 0.00123456}), sweep.trial_name({LR: 0.00123457})
    assert a.startswith("learning_rate=0.001235-") and a != b
    odd = sweep.trial_name({"finetune.reinit": ("head/.*",)})
    assert "/" not in odd and "*" not in odd and odd.startswith("reinit=head_._-")
    long = sweep.trial_name({f"data.options.option_{i}": i for i in range(20)})
    assert len(long) <= 80
    # Same leaf under two sections: the full key keeps them apart.
    assert sweep.trial_name({"model.dropout": 0.1, "x.dropout": 0.2}).startswith(
        "model.dropout=0.1,x.dropout=0.2"
    )


def test_digits_sweep_config_documents_and_defines_a_valid_sweep():
    module = importlib.import_module("configs.digits_sweep")
    lines = module.__doc__.strip().splitlines()
    assert lines[0] == (
        "python experiments/main.py --config configs/digits_sweep.py --workdir runs/digits_sweep"
    )
    assert (
        lines[4].strip().startswith("python experiments/sweep.py --config configs/digits_sweep.py")
    )
    trials = sweep.validate_sweep(module.get_config(), module.get_sweep())
    assert [t.name for t in trials] == [
        f"learning_rate={lr},hidden_size={h}" for lr in ("0.001", "0.003") for h in (64, 128)
    ]


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "trials, message",
    [
        ([{"optimizer.learnig_rate": 1e-3}], "optimizer.learnig_rate.*optimizer.learning_rate"),
        ([{LR: 1e-3}, {"hidden_size": 64}], "hidden_size.*did you mean 'model.hidden_size'"),
        ([{HIDDEN: 1.5}], r"config.model.hidden_size must be int; got 1.5 \(float\)"),
        ([{"model.bidirectional": 1}], r"config.model.bidirectional must be bool; got 1"),
        ([{HIDDEN: [64, 128]}], "model.hidden_size.*product"),
        ([{"model.cell": "lstn"}], "model.cell.*did you mean 'lstm'"),
        ([{"data.options.bogus": 1}], "data.options.bogus"),
        ([{LR: 1e-3}, {LR: 1e-3}], "are the same"),
        ([], "no trials"),
    ],
    ids=["unknown", "unknown_short", "type", "bool", "list", "cell", "option", "dup", "empty"],
)
def test_bad_sweeps_fail_before_any_trial_runs(fake, tmp_path, trials, message):
    with pytest.raises(ValueError, match=message):
        sweep.run(_config(), trials, tmp_path / "s")
    assert fake.calls == [] and not (tmp_path / "s").exists()


def test_an_empty_value_list_fails_naming_its_key():
    with pytest.raises(ValueError, match="model.hidden_size' has an empty list"):
        sweep.product({LR: [1e-3], HIDDEN: []})
    with pytest.raises(ValueError, match="model.cell': expected a list"):
        sweep.product({"model.cell": "lstm"})


def test_a_different_sweep_in_the_same_workdir_is_refused(fake, tmp_path):
    sweep.run(_config(), sweep.product({LR: [1e-3, 1e-2]}), tmp_path)
    fake.calls.clear()
    with pytest.raises(ValueError, match=r"learning_rate=0.1 is new(.|\n)*0.01 was dropped"):
        sweep.run(_config(), sweep.product({LR: [1e-3, 1e-1]}), tmp_path)
    other = _config()
    with other.unlocked():
        other.train.num_steps = 5
    with pytest.raises(ValueError, match="train.num_steps: 4 -> 5"):
        sweep.run(other, sweep.product({LR: [1e-3, 1e-2]}), tmp_path)
    assert fake.calls == []
    # Another process running a sweep here holds the lock.
    with workdir_lock(tmp_path), pytest.raises(WorkdirLocked):
        sweep.run(_config(), sweep.product({LR: [1e-3, 1e-2]}), tmp_path)


# ---------------------------------------------------------------------------- results


def test_failed_trial_is_reported_the_rest_complete_and_a_rerun_retries_it(tmp_path, monkeypatch):
    trials = sweep.product({LR: [1e-3, 1e-2, 3e-2]})
    fake = FakeTrainer(fail={"learning_rate=0.01"})
    monkeypatch.setattr(runner, "train_and_evaluate", fake)
    result = sweep.run(_config(), trials, tmp_path)
    assert [t.status for t in result.trials] == ["done", "failed", "done"]
    assert result.failed[0].error == "RuntimeError: boom in learning_rate=0.01"
    assert "Traceback" in (tmp_path / "trials/learning_rate=0.01/error.txt").read_text()
    rows = _table(tmp_path)
    assert rows[1]["status"] == "failed" and rows[1]["error"].startswith("RuntimeError: boom")
    assert rows[1]["validation_accuracy"] == "" and rows[2]["validation_accuracy"] != ""
    md = (tmp_path / "sweep.md").read_text()
    assert "1 failed" in md and "- learning_rate=0.01: RuntimeError: boom" in md
    assert result.best.name == "learning_rate=0.03"  # highest validation accuracy
    assert f"Best trial: **{result.best.name}**" in md
    assert (tmp_path / "sweep.png").stat().st_size > 10_000

    fake.fail.clear()
    fake.calls.clear()
    again = sweep.run(_config(), trials, tmp_path)
    assert fake.calls == ["learning_rate=0.01"]  # finished trials are not re-run
    assert [t.status for t in again.trials] == ["done"] * 3
    assert [t.reused for t in again.trials] == [True, False, True]
    assert not (tmp_path / "trials/learning_rate=0.01/error.txt").exists()


def test_preemption_stops_the_sweep_and_leaves_the_trial_to_resume(fake, tmp_path, monkeypatch):
    trials = sweep.product({LR: [1e-3, 1e-2, 3e-2]})

    def preempted(config, workdir, **kwargs):
        raise Preempted("SIGTERM: saved step 2")

    monkeypatch.setattr(runner, "train_and_evaluate", preempted)
    with pytest.raises(Preempted):
        sweep.run(_config(), trials, tmp_path)
    assert [r["status"] for r in _table(tmp_path)] == ["pending"] * 3  # not "failed"
    monkeypatch.setattr(runner, "train_and_evaluate", fake)
    assert [t.status for t in sweep.run(_config(), trials, tmp_path).trials] == ["done"] * 3


def test_seed_averages_equal_numpy_and_best_follows_the_metric_mode(tmp_path, monkeypatch):
    fake = FakeTrainer(metric="mse")  # minimised
    monkeypatch.setattr(runner, "train_and_evaluate", fake)
    trials = sweep.seeds(sweep.product({LR: [1e-3, 1e-2]}), 3)
    result = sweep.run(_config(), trials, tmp_path)
    rows = _table(tmp_path)
    assert [r["seed"] for r in rows] == ["0", "1", "2"] * 2
    assert result.best.name == min(rows, key=lambda r: float(r["validation_mse"]))["name"]
    md = (tmp_path / "sweep.md").read_text()
    for group, lr in zip(result.seed_groups, [1e-3, 1e-2], strict=True):
        assert group.overrides == {LR: lr}
        values = [float(r["validation_mse"]) for r in rows if float(r[LR]) == lr]
        tests = [float(r["test_mse"]) for r in rows if float(r[LR]) == lr]
        mean, std = group.mean_std(group.validation)
        assert mean == pytest.approx(np.mean(values), rel=1e-12)
        assert std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        assert f"| 3/3 | {np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} |" in md
        assert f"{np.mean(tests):.4f} ± {np.std(tests, ddof=1):.4f}" in md
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["mode"] == "min" and saved["best"] == result.best.name
    assert len(saved["seed_groups"]) == 2


def test_cpus_are_split_among_workers():
    assert runner._split_cpus([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert runner._split_cpus([0, 1], 3) == [[0], [1], [0]]


# ---------------------------------------------------------------------------- real training

REAL_TRIALS = sweep.product({LR: [1e-3, 3e-2]}) + [{"data.batch_size": 4096}]  # last: fails


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A serial sweep killed half-way through its second trial, then started again."""
    workdir = tmp_path_factory.mktemp("killed")
    real, calls, seen = runner.train_and_evaluate, [], {}

    def counted(config, trial_dir, **kwargs):
        calls.append(Path(trial_dir).name)
        if calls == ["learning_rate=0.001", "learning_rate=0.03"]:  # mid-trial: checkpoint, kill
            assert real(config, trial_dir, stop_after_steps=2) == {"interrupted_at": 2}
            raise KeyboardInterrupt
        return real(config, trial_dir, **kwargs)

    first_report = workdir / "trials/learning_rate=0.001/report.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "train_and_evaluate", counted)
        with pytest.raises(KeyboardInterrupt):
            sweep.run(_config(), REAL_TRIALS, workdir)
        seen["after_kill"] = _table(workdir)
        seen["mtime"] = first_report.stat().st_mtime_ns
        seen["checkpoints"] = (workdir / "trials/learning_rate=0.03/checkpoints").exists()
        calls.clear()
        result = sweep.run(_config(), REAL_TRIALS, workdir)
    seen.update(calls=calls, mtime_after=first_report.stat().st_mtime_ns)
    return workdir, result, seen


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(killed_and_resumed):
    workdir, result, seen = killed_and_resumed
    assert [r["status"] for r in seen["after_kill"]] == ["done", "pending", "pending"]
    assert seen["checkpoints"]  # the killed trial resumes from here, not from scratch
    assert seen["calls"] == ["learning_rate=0.03", "batch_size=4096"]  # not the finished one
    assert seen["mtime_after"] == seen["mtime"] and result.trials[0].reused
    assert [t.status for t in result.trials] == ["done", "done", "failed"]
    assert [t.report["steps"] for t in result.trials[:2]] == [4, 4]
    for trial in result.trials[:2]:
        assert all(math.isfinite(v) for v in trial.report["results"]["test"].values())


@pytest.mark.slow
def test_uninterrupted_parallel_sweep_gives_the_same_table(killed_and_resumed, tmp_path):
    """Same rows, best trial and run-time failure as the killed-and-resumed serial sweep."""
    serial_dir, serial, _ = killed_and_resumed
    result = sweep.run(_config(), REAL_TRIALS, tmp_path, parallel=2)
    assert _table(tmp_path) == _table(serial_dir)
    assert result.best.name == serial.best.name
    values = [t.value("validation", "accuracy") for t in result.trials[:2]]
    assert result.best is result.trials[int(np.argmax(values))]
    assert result.failed[0].error.startswith("ConfigError: config.data.batch_size=4096")
    assert "Traceback" in (tmp_path / "trials/batch_size=4096/error.txt").read_text()
    assert "- batch_size=4096: ConfigError" in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow
def test_sweep_on_a_local_ray_gives_the_same_table(killed_and_resumed, tmp_path):
    """--backend ray: the same sub-workdirs and results as the local runs, on a Ray started
    here (a cluster would be ray.init(address=...))."""
    ray = pytest.importorskip("ray")
    serial_dir, serial, _ = killed_and_resumed
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = sweep.run(_config(), REAL_TRIALS, tmp_path, backend="ray")
    finally:
        ray.shutdown()
    assert _table(tmp_path) == _table(serial_dir)
    assert result.best.name == serial.best.name
    assert (tmp_path / "trials/learning_rate=0.001/report.json").exists()
    assert result.failed[0].error.startswith("ConfigError: config.data.batch_size=4096")


def test_unknown_backend_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"backend='dask'.*\['local', 'ray'\]"):
        sweep.run(_config(), [{LR: 1e-3}], tmp_path, backend="dask")


def _parallel_sweep_command(steps: int = 40) -> list[str]:
    """Two trials of ``steps`` steps of the test config in two worker processes (no
    --workdir)."""
    root = Path(__file__).resolve().parents[1]
    return [
        sys.executable,
        str(root / "experiments/sweep.py"),
        "--config",
        str(root / "configs/test.py"),
        f"--config.train.num_steps={steps}",
        "--config.train.eval_every_steps=4",
        "--sweep",
        "optimizer.learning_rate=0.001,0.003",
        "--parallel",
        "2",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl_c"])
def test_sigterm_stops_a_parallel_sweep_with_code_75_and_it_resumes(how, tmp_path):
    """SIGTERM to the parent (forwarded to its workers), or Ctrl-C (SIGINT to the whole
    process group): each running trial saves; a re-run ends with the same table as a sweep
    that was never stopped."""
    # Long enough that the first trial cannot end before the second one has started (with
    # warm compilation caches and a loaded machine, 40 steps, about a second, sometimes did).
    command = _parallel_sweep_command(steps=200)
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(
        [*command, "--workdir", str(stopped)], stderr=subprocess.PIPE, start_new_session=True
    )
    trials = [stopped / "trials/learning_rate=0.001", stopped / "trials/learning_rate=0.003"]
    deadline = time.time() + 120
    while not all((t / "metrics.jsonl").exists() for t in trials) and time.time() < deadline:
        time.sleep(0.2)
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 75, err[-2000:]
    assert b"Traceback" not in err
    assert not any((t / "report.json").exists() for t in trials)
    assert (
        subprocess.run([*command, "--workdir", str(stopped)], capture_output=True).returncode == 0
    )
    uninterrupted = tmp_path / "uninterrupted"
    assert (
        subprocess.run([*command, "--workdir", str(uninterrupted)], capture_output=True).returncode
        == 0
    )
    assert _table(stopped) == _table(uninterrupted)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_parallel_sweep_and_a_rerun_finishes_every_trial(tmp_path):
    command = [*_parallel_sweep_command(), "--workdir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = [tmp_path / "trials/learning_rate=0.001", tmp_path / "trials/learning_rate=0.003"]
    deadline = time.time() + 120
    while not all((t / "metrics.jsonl").exists() for t in trials) and time.time() < deadline:
        time.sleep(0.2)
    workers = _children(process.pid)
    assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
    process.kill()
    process.wait()
    deadline = time.time() + 30
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [row["status"] for row in _table(tmp_path)] == ["done", "done"]
    # An error an earlier attempt recorded (say, WorkdirLocked while an orphaned worker
    # still ran the trial) must not stay beside the report once the trial is done.
    (trials[0] / "error.txt").write_text("WorkdirLocked: an earlier attempt")
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert not any((t / "error.txt").exists() for t in trials)


def test_a_sweep_saved_before_a_config_key_existed_resumes(fake, tmp_path):
    """An older version wrote sweep.json without today's keys (e.g. train.compilation_cache):
    they take their defaults, as in that version, so the sweep is the same one; a changed
    default of a key that only says how the model runs (model.unroll) is a warning."""
    sweep.run(_config(), sweep.product({LR: [1e-3, 1e-2]}), tmp_path)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    del saved["spec"]["config"]["train"]["compilation_cache"]
    saved["spec"]["config"]["model"]["unroll"] = 1  # its default then: how the model runs
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    fake.calls.clear()
    result = sweep.run(_config(), sweep.product({LR: [1e-3, 1e-2]}), tmp_path)
    assert [t.status for t in result.trials] == ["done", "done"]
