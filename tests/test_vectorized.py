"""Vectorised trials: K trials in one vmapped program give what K runs one by one give.

The reference is the ordinary runner, ``train_and_evaluate``, on each trial's config: the
same stopping step and best step, metrics and parameters equal to float tolerance (batched
matrix products may round differently). Each trial keeps its own early stopping, checkpoints
and workdir, so an interrupted group resumes (together, or a trial alone) to the same result.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import test as test_config
from fnn_jax import sweep
from fnn_jax.checkpoint import load_exported
from fnn_jax.reporting import MetricsLog
from fnn_jax.sweep import runner
from fnn_jax.train import Preempted, train_and_evaluate
from fnn_jax.train.preemption import request_preemption
from fnn_jax.train.vectorized import train_together

ROOT = Path(__file__).resolve().parents[1]
# configs/test.py shrunk to 4 steps of a 4-unit Elman net: for tests of bookkeeping.
TINY = {
    "model.cell": "elman",
    "model.hidden_size": 4,
    "train.num_steps": 4,
    "train.eval_every_steps": 2,
    "train.log_every_steps": 2,
    "optimizer.warmup_steps": 0,
}


def _config(**overrides):
    """configs/test.py (24 steps of a 16-unit LSTM on digits, validation every 8 steps) with
    AdamW, early stopping after one evaluation without improvement, and ``overrides``."""
    config = test_config.get_config()
    with config.unlocked():
        config.optimizer.name = "adamw"
        config.train.patience = 1
    return sweep.apply_overrides(config, overrides)


def _tiny(**overrides):
    return sweep.apply_overrides(test_config.get_config(), {**TINY, **overrides})


# Trial 2's learning rate is too small to change the validation accuracy: it stops early.
TRIALS = [
    {"seed": 0, "optimizer.learning_rate": 3e-3},
    {
        "seed": 1,
        "optimizer.learning_rate": 1e-2,
        "optimizer.weight_decay": 0.1,
        "regularization.l1": 1e-4,
        "regularization.l2": 1e-3,
    },
    {"seed": 2, "optimizer.learning_rate": 1e-7, "optimizer.weight_decay": 0.0},
]


def _results(report):
    """{"validation/accuracy": ..., "test/loss": ...}"""
    return {
        f"{split}/{name}": value
        for split in ("validation", "test")
        for name, value in report["results"][split].items()
    }


def _curve(workdir):
    return MetricsLog.read(workdir, times=False)


def assert_same_run(one, alone_dir, together, together_dir, exact=False):
    """Two runs of one trial agree: steps, best step and stop exactly; metrics, curves and
    exported parameters to float tolerance (or bit for bit with ``exact``)."""
    for key in ("steps", "best_step", "stopped_early", "nonfinite_steps"):
        assert together[key] == one[key], key
    close = (lambda a, b: a == b) if exact else (lambda a, b: b == pytest.approx(a, 1e-5, 1e-6))
    assert close(_results(one), _results(together))
    curve, other = _curve(alone_dir), _curve(together_dir)
    assert [(r["step"], r["split"]) for r in other] == [(r["step"], r["split"]) for r in curve]
    for a, b in zip(curve, other, strict=True):
        numbers = lambda record: {k: v for k, v in record.items() if k != "split"}
        assert close(numbers(a), numbers(b))
    params = jax.tree.leaves(load_exported(Path(alone_dir) / "export"))
    others = jax.tree.leaves(load_exported(Path(together_dir) / "export"))
    for a, b in zip(params, others, strict=True):
        if exact:
            np.testing.assert_array_equal(b, a)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """TRIALS run one by one, and together."""
    root = tmp_path_factory.mktemp("vectorized")
    configs = [_config(**trial) for trial in TRIALS]
    alone = [root / f"alone{k}" for k in range(len(configs))]
    together = [root / f"together{k}" for k in range(len(configs))]
    reports = [train_and_evaluate(c, d) for c, d in zip(configs, alone, strict=True)]
    return configs, alone, reports, together, train_together(configs, together)


def test_vectorized_trials_equal_the_same_trials_run_one_by_one(runs):
    _, alone, reports, together, vectorized = runs
    for k in range(len(TRIALS)):
        assert_same_run(reports[k], alone[k], vectorized[k], together[k])
        assert vectorized[k]["vectorized_with"] == len(TRIALS)
    # Each trial stopped on its own: trial 2 early, the others at the end.
    assert [r["steps"] for r in vectorized] == [24, 24, 16]
    assert [r["stopped_early"] for r in vectorized] == [False, False, True]


def test_an_interrupted_group_resumes_bit_for_bit_and_its_trials_resume_alone(runs, tmp_path):
    configs, alone, reports, together, vectorized = runs
    dirs = [tmp_path / f"t{k}" for k in range(len(configs))]
    stopped = train_together(configs, dirs, stop_after_steps=10)
    assert stopped == [{"interrupted_at": 10}] * len(configs)
    shutil.copytree(dirs[0], tmp_path / "alone0")
    request_preemption()  # as a SIGTERM would: every trial saves after the current step
    with pytest.raises(
        Preempted,
        match=r"SIGTERM: saved step 11 in \S*t0, step 11 in \S*t1, step 11 in \S*t2; run again",
    ):
        train_together(configs, dirs)
    assert all((d / "checkpoints/11").is_dir() for d in dirs)
    assert not any((d / "report.json").exists() for d in dirs)
    for k, report in enumerate(train_together(configs, dirs)):
        assert_same_run(vectorized[k], together[k], report, dirs[k], exact=True)
    # The ordinary runner resumes a trial from the group's checkpoint, and ends as alone.
    resumed = train_and_evaluate(configs[0], tmp_path / "alone0")
    assert_same_run(reports[0], alone[0], resumed, tmp_path / "alone0")


def test_momentum_trials_train_together_as_they_train_alone(tmp_path):
    trials = [
        {"seed": 0, "optimizer.momentum": 0.9, "optimizer.learning_rate": 0.05},
        {"seed": 1, "optimizer.momentum": 0.5, "optimizer.learning_rate": 0.2},
    ]
    configs = [_tiny(**{"optimizer.name": "sgd", **trial}) for trial in trials]
    dirs = [tmp_path / f"together{k}" for k in range(2)]
    together = train_together(configs, dirs)
    for k, config in enumerate(configs):
        one = train_and_evaluate(config, tmp_path / f"alone{k}")
        assert_same_run(one, tmp_path / f"alone{k}", together[k], dirs[k])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.hidden_size": 8}, r"model\.hidden_size: 4 -> 8"),
        ({"data.batch_size": 8}, r"data\.batch_size: 16 -> 8"),
        ({"optimizer.momentum": 0.0}, r"optimizer\.momentum: 0 and non-zero"),
        ({"init_from": "runs/pretrained"}, r"init_from: '' -> 'runs/pretrained'"),
    ],
)
def test_trials_that_differ_in_more_than_scalar_settings_are_refused(overrides, message, tmp_path):
    configs = [_tiny(**{"optimizer.name": "sgd"}), _tiny(**{"optimizer.name": "sgd", **overrides})]
    with pytest.raises(ValueError, match=message):
        train_together(configs, [tmp_path / "a", tmp_path / "b"])
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow
def test_a_vectorized_sweep_from_the_command_line_matches_the_sequential_sweep(tmp_path):
    """--vectorize: the two L2 trials train as one program; the one whose penalty overflows
    to inf fails alone; each ends as in a sweep run trial by trial."""
    axes = ["regularization.l2=0.001,1e38"]
    command = [sys.executable, str(ROOT / "experiments/sweep.py")]
    command += ["--config", str(ROOT / "configs/test.py")]
    command += [f"--config.{key}={value}" for key, value in TINY.items()]
    command += [f"--sweep={axis}" for axis in axes]
    command += ["--vectorize", "--workdir", str(tmp_path / "v")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]  # 1: some trials failed
    assert "best trial:" in done.stdout and "failed: l2=1e+38" in done.stdout

    sequential = sweep.run(_tiny(), sweep.parse_cli(axes, _tiny()), tmp_path / "s")
    for trial in sequential.trials:
        vectorized = tmp_path / "v/trials" / trial.name
        if trial.status == "failed":
            assert trial.name == "l2=1e+38"
            error = (vectorized / "error.txt").read_text()
            assert "FloatingPointError: non-finite loss or gradient at step 1" in error
            assert not (vectorized / "report.json").exists()
            continue
        report = json.loads((vectorized / "report.json").read_text())
        assert report["vectorized_with"] == 2
        assert _results(report) == pytest.approx(_results(trial.report), 1e-5, 1e-6)


def test_trials_group_by_everything_but_seed_and_scalar_settings():
    base = _tiny()
    trials = [
        {"seed": 0, "model.hidden_size": 4},
        {"seed": 1, "model.hidden_size": 8},
        {"seed": 2, "model.hidden_size": 4},
        {"seed": 3, "init_from": "runs/pretrained"},
        {"seed": 4, "optimizer.learning_rate": 0.1, "model.hidden_size": 8},
    ]
    planned = sweep.validate_sweep(base, trials)
    assert runner._units(planned, [0, 1, 2, 3, 4], vectorize=True) == [[0, 2], [1, 4], [3]]
    assert runner._units(planned, [1, 2], vectorize=False) == [[1], [2]]


def test_fine_tuning_trials_train_together_as_they_train_alone(tmp_path):
    """Stages are part of what a group shares. The head stage trains on cached features;
    the trial with a tiny rate stops early in it and waits (its steps are its own) while
    the other finishes the stage; then both train everything."""
    pretrained = tmp_path / "pretrained"
    base = _tiny(**{"data.options.classes": (0, 1)})
    train_and_evaluate(base, pretrained)
    stages = [
        {"name": "head", "rules": [("head/.*", "train"), (".*", "frozen")], "num_steps": 6},
        {"name": "all", "rules": [(".*", "train")], "num_steps": 4, "optimizer": {"b1": 0.8}},
    ]
    finetune = {
        "data.options.classes": (2, 3, 4),
        "init_from": str(pretrained),
        "finetune.stages": stages,
        "train.patience": 1,
    }
    trials = [
        {"seed": 0, "optimizer.learning_rate": 1e-2},
        {"seed": 1, "optimizer.learning_rate": 1e-9},
    ]
    configs = [_tiny(**finetune, **trial) for trial in trials]
    dirs = [tmp_path / f"together{k}" for k in range(2)]
    together = train_together(configs, dirs)
    assert together[1]["stopped_early"] and together[1]["steps"] < together[0]["steps"]
    assert [r["trainable_parameters"]["head"] for r in together] == [4 * 3 + 3] * 2
    for k, config in enumerate(configs):
        one = train_and_evaluate(config, tmp_path / f"alone{k}")
        assert_same_run(one, tmp_path / f"alone{k}", together[k], dirs[k])


def test_a_report_counts_only_the_trials_that_trained_together_in_its_process(tmp_path):
    configs = [_tiny(seed=0), _tiny(seed=1)]
    dirs = [tmp_path / "t0", tmp_path / "t1"]
    assert train_together(configs, dirs, stop_after_steps=4) == [{"interrupted_at": 4}] * 2
    train_and_evaluate(configs[0], dirs[0])  # trial 0 finishes alone
    reports = train_together(configs, dirs)  # trial 1 trains its last steps alone
    assert all("vectorized_with" not in report for report in reports)
    fresh = train_together(configs, [tmp_path / "f0", tmp_path / "f1"])
    assert [report["vectorized_with"] for report in fresh] == [2, 2]


@pytest.mark.slow
def test_successive_halving_keeps_the_best_half_at_each_rung_and_repacks_the_program(
    tmp_path, monkeypatch
):
    """Four learning rates, eta 2, validation every 8 of 24 steps: rungs at validations 1
    and 2 keep the best 2, then the best 1 (ranked by validation accuracy); the program
    shrinks 4 -> 2 -> 1 trials; the survivor ends as it would alone; a rerun leaves the
    pruned trials pruned and their checkpoints as they were."""
    from fnn_jax.checkpoint import Checkpoints
    from fnn_jax.train import steppers

    sizes = []
    make = steppers.make_stepper

    def recorded(spec, stage, members, **kwargs):
        sizes.append(len(members))
        return make(spec, stage, members, **kwargs)

    monkeypatch.setattr(steppers, "make_stepper", recorded)
    rates = [1e-4, 3e-3, 1e-2, 3e-2]
    base = test_config.get_config()
    configs = [sweep.apply_overrides(base, {"optimizer.learning_rate": r}) for r in rates]
    dirs = [tmp_path / f"lr{k}" for k in range(len(rates))]
    outcomes = train_together(configs, dirs, halving=2)
    assert sizes == [4, 2, 1]

    def accuracy_at(k, step):
        (record,) = [r for r in _curve(dirs[k]) if r["step"] == step and r["split"] == "validation"]
        return record["accuracy"]

    first = sorted(range(4), key=lambda k: (-accuracy_at(k, 8), k))
    assert {k for k in range(4) if outcomes[k].get("pruned_at") == 8} == set(first[2:])
    second = sorted(first[:2], key=lambda k: (-accuracy_at(k, 16), k))
    assert outcomes[second[1]] == {"pruned_at": 16}
    survivor = second[0]
    assert outcomes[survivor]["steps"] == 24
    for k in range(4):
        if k != survivor:
            assert Checkpoints(dirs[k] / "checkpoints").steps()[-1] == outcomes[k]["pruned_at"]
            assert not (dirs[k] / "report.json").exists()

    monkeypatch.undo()
    alone = tmp_path / "alone"
    report = train_and_evaluate(configs[survivor], alone)
    assert_same_run(report, alone, outcomes[survivor], dirs[survivor])

    before = {k: Checkpoints(dirs[k] / "checkpoints").steps() for k in range(4)}
    again = train_together(configs, dirs, halving=2)
    for k in range(4):
        if k != survivor:
            assert again[k] == outcomes[k]
            assert Checkpoints(dirs[k] / "checkpoints").steps() == before[k]


def test_a_trial_that_misses_its_fixed_point_under_raise_stops_alone(tmp_path):
    """on_nonconvergence="raise" in a group: the trial whose solve missed (lr 3 blows up
    an unbounded feedback matrix) fails alone with NonConvergenceError at that step; its
    partner ends as it would alone (issue 29: both used to fail, on every rerun)."""
    from fnn_jax.cells.fixed_point import NonConvergenceError

    def config(lr):
        return _tiny(
            **{
                "model.cell": "equilibrium",
                "model.hidden_size": 16,
                "model.equilibrium.on_nonconvergence": "raise",
                "model.equilibrium.max_feedback_norm": 0.0,  # no bound on the feedback
                "optimizer.learning_rate": lr,
            }
        )

    calm, wild = train_together([config(1e-3), config(3.0)], [tmp_path / "a", tmp_path / "b"])
    assert isinstance(wild, NonConvergenceError), wild
    assert str(wild).startswith("forward fixed-point solve did not converge at step 2 ")
    with pytest.raises(NonConvergenceError):  # alone it fails too (by the host callback)
        train_and_evaluate(config(3.0), tmp_path / "wild_alone")
    alone = train_and_evaluate(config(1e-3), tmp_path / "calm_alone")
    # (a batched product rounds differently: a solve may take one iteration more)
    task = lambda report: {k: v for k, v in _results(report).items() if "iterations" not in k}
    assert task(calm) == pytest.approx(task(alone), 1e-5, 1e-6)
    assert calm["results"]["validation"]["solver_converged_fraction"] == 1.0


def test_a_halving_rung_on_the_last_validation_prunes_no_finished_trial():
    """eta 2 with validations every 6 of 24 steps: validation 4 (step 24, the end of
    training) is a rung by number, but the trials there have finished: none is cut. At
    validation 2 (step 12) the worse half is."""
    import types

    from fnn_jax.train.engine import Engine
    from fnn_jax.train.trial import Group

    def trial(step):
        progress = types.SimpleNamespace(stage=0)
        return types.SimpleNamespace(step=step, stage_end=24, stages=[None], progress=progress)

    engine = types.SimpleNamespace(
        halving=2, plan=types.SimpleNamespace(eval_every=6, mode="max", metric="accuracy")
    )
    values = {i: {"accuracy": a} for i, a in enumerate([0.5, 0.9, 0.7, 0.6])}
    at_the_end = Group([trial(24) for _ in range(4)])
    assert Engine._halving_cut(engine, at_the_end, values) == set()
    midway = Group([trial(12) for _ in range(4)])
    assert Engine._halving_cut(engine, midway, values) == {0, 3}
