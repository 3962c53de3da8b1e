"""The runner: exact resume, early stopping, artifacts, and refusal of bad configs."""

import json
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from configs import test as test_config
from fnn_jax import sweep
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.reporting import MetricsLog
from fnn_jax.sweep.spec import apply_overrides
from fnn_jax.train import steppers, train_and_evaluate


def _config(**overrides):
    return apply_overrides(test_config.get_config(), overrides)


def _latest_state(workdir):
    checkpoints = Checkpoints(workdir / "checkpoints")
    step = checkpoints.latest_step()
    restored = checkpoints.restore_saved(step)
    checkpoints.close()
    return step, restored


def _metric_records(workdir):
    return MetricsLog.read(workdir, times=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    report = train_and_evaluate(_config(**{"model.dropout": 0.2}), workdir)
    return workdir, report


@pytest.mark.parametrize("stop_at", [8, 13], ids=["at_eval_step", "between_evals"])
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(uninterrupted, stop_at, tmp_path):
    full_dir, full_report = uninterrupted
    config = _config(**{"model.dropout": 0.2})
    first = train_and_evaluate(config, tmp_path, stop_after_steps=stop_at)
    assert first == {"interrupted_at": stop_at}
    report = train_and_evaluate(config, tmp_path)

    full_step, full_state = _latest_state(full_dir)
    step, state = _latest_state(tmp_path)
    assert step == full_step == 24
    jax.tree.map(np.testing.assert_array_equal, state, full_state)
    assert _metric_records(tmp_path) == _metric_records(full_dir)
    assert report["results"] == full_report["results"]
    assert report["best_step"] == full_report["best_step"]


FUSED = {"train.num_steps": 30, "train.log_every_steps": 10, "train.eval_every_steps": 15}


def _all_checkpoints(workdir):
    checkpoints = Checkpoints(workdir / "checkpoints")
    saved = {step: checkpoints.restore_saved(step) for step in checkpoints.steps()}
    checkpoints.close()
    return saved


@pytest.fixture(scope="module")
def one_step_per_dispatch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_per_dispatch")
    report = train_and_evaluate(_config(**FUSED, **{"train.steps_per_dispatch": 1}), workdir)
    return workdir, report


@pytest.mark.parametrize("stop_at", [None, 7], ids=["whole", "stopped_mid_dispatch"])
def test_fused_steps_equal_single_steps_in_checkpoints_metrics_and_results(
    one_step_per_dispatch, stop_at, tmp_path
):
    """Four steps per dispatch (blocks cut to 4, 4, 2 by the log and evaluation points),
    against one; stopped at step 7 (inside the second block) and resumed too. Every saved
    checkpoint, every metric line and the report are bit-for-bit the same."""
    reference, reference_report = one_step_per_dispatch
    config = _config(**FUSED, **{"train.steps_per_dispatch": 4})
    if stop_at:
        assert train_and_evaluate(config, tmp_path, stop_after_steps=stop_at) == {
            "interrupted_at": stop_at
        }
    report = train_and_evaluate(config, tmp_path)
    ours, theirs = _all_checkpoints(tmp_path), _all_checkpoints(reference)
    assert sorted(theirs) == [15, 30] and set(ours) - set(theirs) == ({stop_at} - {None})
    jax.tree.map(np.testing.assert_array_equal, {s: ours[s] for s in theirs}, theirs)
    assert _metric_records(tmp_path) == _metric_records(reference)
    assert report["results"] == reference_report["results"]


@pytest.mark.parametrize("per_dispatch", [1, 5])
def test_the_nonfinite_limit_stops_at_the_same_step_whatever_the_dispatch_size(
    per_dispatch, tmp_path
):
    """Every step overflows (L2 1e38); two are skipped, the third stops the run, inside
    the first block of five as at one step per dispatch, and nothing is saved."""
    config = _config(
        **FUSED,
        **{
            "regularization.l2": 1e38,
            "train.max_nonfinite_steps": 2,
            "train.steps_per_dispatch": per_dispatch,
        },
    )
    message = r"non-finite loss or gradient at step 3 \(3 such steps; .*max_nonfinite_steps=2\)"
    with pytest.raises(FloatingPointError, match=message):
        train_and_evaluate(config, tmp_path)
    assert not _all_checkpoints(tmp_path)


def test_run_writes_config_metrics_curves_report_and_events(uninterrupted):
    workdir, report = uninterrupted
    assert json.loads((workdir / "config.json").read_text())["model"]["hidden_size"] == 16
    records = _metric_records(workdir)
    assert [r["step"] for r in records if r["split"] == "validation"] == [8, 16, 24]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(4, 25, 4))
    assert (workdir / "curves.png").stat().st_size > 10_000
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((workdir / "report.json").read_text())
    assert saved["results"] == report["results"]
    assert "| test |" in (workdir / "report.md").read_text()
    # The report's test numbers come from the best validation checkpoint.
    best = max((r for r in records if r["split"] == "validation"), key=lambda r: r["accuracy"])
    assert report["best_step"] == best["step"]
    assert report["results"]["validation"]["accuracy"] == best["accuracy"]


def test_running_a_finished_run_again_changes_nothing(uninterrupted):
    workdir, report = uninterrupted
    again = train_and_evaluate(_config(**{"model.dropout": 0.2}), workdir)
    assert again["results"] == report["results"]
    assert again["steps"] == 24


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path):
    config = _config(**{"optimizer.learning_rate": 0.0, "train.patience": 2, "train.num_steps": 80})
    report = train_and_evaluate(config, tmp_path)
    # lr 0: the first evaluation is the best, the next two do not improve on it.
    assert report["stopped_early"]
    assert report["steps"] == 24
    assert report["best_step"] == 8


def test_workdir_with_a_different_model_refuses_to_resume(uninterrupted):
    workdir, _ = uninterrupted
    before = (workdir / "config.json").read_text()
    config = _config(**{"model.dropout": 0.2, "model.hidden_size": 32})
    with pytest.raises(ValueError, match=r"model.hidden_size: 16 -> 32"):
        train_and_evaluate(config, workdir)
    assert (workdir / "config.json").read_text() == before


def test_a_change_in_how_the_model_runs_resumes_with_a_warning(tmp_path, caplog):
    """unroll, remat, scan_impl and the equilibrium solver change how the model runs, not
    what its parameters mean: no refusal."""
    train_and_evaluate(_config(**{"train.num_steps": 8}), tmp_path)
    changed = _config(
        **{
            "train.num_steps": 12,
            "model.unroll": 2,
            "model.remat": True,
            "model.equilibrium.solver": "iterate",
        }
    )
    with caplog.at_level(logging.WARNING, logger="fnn_jax"):
        report = train_and_evaluate(changed, tmp_path)
    assert report["steps"] == 12
    assert "model.unroll: 0 -> 2" in caplog.text and "model.remat: False -> True" in caplog.text
    assert "model.equilibrium.solver: 'anderson' -> 'iterate'" in caplog.text


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optimizer.name", "adm", r"optimizer.name='adm' is not valid \(did you mean 'adam'\?\)"),
        ("optimizer.schedule", "cosine", r"valid choices: \['constant', 'exponential'"),
        ("model.cell", "rnn", r"model.cell='rnn'.*'elman'"),
        ("data.name", "mnist", r"data.name='mnist'.*'digits'"),
    ],
)
def test_bad_config_values_fail_before_training_naming_the_key(key, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(_config(**{key: value}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_value_of_the_wrong_type_names_key_and_type(tmp_path):
    config = _config()
    with config.unlocked():  # e.g. a model section loaded from JSON: no type safety
        config.model = ml_collections.ConfigDict({**config.model.to_dict(), "hidden_size": "big"})
    with pytest.raises(ValueError, match=r"config.model.hidden_size must be int; got 'big'"):
        train_and_evaluate(config, tmp_path)


def test_unknown_config_key_names_the_close_match(tmp_path):
    config = _config()
    with config.unlocked():
        config.optimizer.learning_rte = 1e-3
    with pytest.raises(
        ValueError, match=r"unknown config key 'optimizer.learning_rte'.*learning_rate"
    ):
        train_and_evaluate(config, tmp_path)


def test_unknown_dataset_option_names_the_config_key(tmp_path):
    config = _config()
    with config.unlocked():
        config.data.options.window = 3
    with pytest.raises(
        ValueError, match=r"config.data.options.window is not an option of dataset 'digits'"
    ):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_right_after_an_early_stop_stops_too(tmp_path):
    config = _config(**{"optimizer.learning_rate": 0.0, "train.patience": 2, "train.num_steps": 80})
    # Interrupted at step 24: the evaluation there triggered the early stop and was saved.
    assert train_and_evaluate(config, tmp_path, stop_after_steps=24) == {"interrupted_at": 24}
    report = train_and_evaluate(config, tmp_path)
    assert report["stopped_early"] and report["steps"] == 24


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.hidden_size", True, r"config.model.hidden_size must be int; got True \(bool\)"),
        ("model.bidirectional", 1, r"config.model.bidirectional must be bool; got 1 \(int\)"),
        ("optimizer.learning_rate", "fast", r"config.optimizer.learning_rate must be float"),
    ],
)
def test_the_runner_and_the_sweep_checker_refuse_a_value_with_one_message(
    key, value, message, tmp_path
):
    config = _config()
    with config.unlocked(), config.ignore_type():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        sweep.validate_sweep(_config(), [{key: value}])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"num_epoch": 1}, r"stages\[0\].num_epoch is not a stage key \(did you mean 'num_epochs'"),
        ({"num_steps": 4, "num_epochs": 1}, r"stages\[0\] needs exactly one of num_steps"),
        ({"num_steps": 4, "optimizer": {"learnig_rate": 1}}, r"unknown config key 'optimizer.le"),
        ({"num_steps": 4, "optimizer": {"name": "adm"}}, r"optimizer.name='adm'.*'adam'"),
        ({"num_steps": 4, "rules": [("head/.*", "trian")]}, r"label of 'head/.\*'='trian'"),
        ({"num_steps": 4, "patience": -1}, r"stages\[0\].patience must be a non-negative int"),
    ],
    ids=["key", "budget", "optimizer_key", "optimizer_name", "label", "patience"],
)
def test_a_bad_stage_fails_before_anything_is_written_in_runs_and_sweeps(stage, message, tmp_path):
    config = _config(**{"finetune.stages": [stage]})
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=message):
        sweep.validate_sweep(_config(), [{"finetune.stages": [stage]}])


def nonfinite_after(monkeypatch, steps: int) -> None:
    """Every train step after the first ``steps`` reports a non-finite loss or gradient,
    as the device's own check would."""
    real_body = steppers.train_step_body

    def poisoned(spec):
        body = real_body(spec)

        def wrapped(state, batch, dropout_key, tx, *, l1, l2):
            new, finite = body(state, batch, dropout_key, tx, l1=l1, l2=l2)
            return new, finite & (state.step < steps)

        return wrapped

    monkeypatch.setattr(steppers, "train_step_body", poisoned)


def test_a_trial_halted_between_a_log_and_an_evaluation_point_is_never_saved(monkeypatch, tmp_path):
    """Steps from 12 on report non-finite (limit 0): the run halts at step 12, inside the
    dispatch that ends at the evaluation point 15 (logs at 10, 20). The health read at that
    evaluation stops it before anything is saved."""
    nonfinite_after(monkeypatch, 11)
    config = _config(**FUSED, **{"train.steps_per_dispatch": 8})
    with pytest.raises(FloatingPointError, match=r"at step 12 \(1 such steps"):
        train_and_evaluate(config, tmp_path)
    assert not _all_checkpoints(tmp_path)
    assert [r["step"] for r in _metric_records(tmp_path)] == [10]


TORCH_FREE_RUN = """
import sys
from configs import test
from fnn_jax.train import train_and_evaluate
config = test.get_config()
config.train.num_steps = 4
train_and_evaluate(config, sys.argv[1])
print("torch" in sys.modules and sys.modules["torch"] is not None)
"""


@pytest.mark.slow
def test_a_run_never_imports_torch(tmp_path):
    """tensorboardX imports torch (about 2 s) when it is installed, as it is here."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_RUN, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_huge_max_nonfinite_steps_means_never_stop(tmp_path):
    """Past int32 (the device's counter), the limit is int32's largest."""
    report = train_and_evaluate(
        _config(**{"train.num_steps": 4, "train.max_nonfinite_steps": 2**40}), tmp_path
    )
    assert report["steps"] == 4


@pytest.mark.parametrize(
    ("rows", "batch_size", "multiple", "count", "size"),
    [(270, 256, 1, 2, 135), (72, 20, 4, 4, 20), (10, 256, 1, 1, 10), (7, 3, 2, 2, 4)],
)
def test_eval_batches_hold_the_split_in_order_in_the_fewest_and_smallest_equal_batches(
    rows, batch_size, multiple, count, size
):
    from fnn_jax.data import Split
    from fnn_jax.train.steps import eval_batches

    inputs = np.arange(rows * 2, dtype=np.float32).reshape(rows, 1, 2)
    split = Split(inputs, np.arange(rows, dtype=np.int32))
    batches = list(eval_batches(split, batch_size, multiple))
    assert [b["inputs"].shape[0] for b in batches] == [size] * count
    real = [np.asarray(b["inputs"])[np.asarray(b["weights"]) > 0] for b in batches]
    np.testing.assert_array_equal(np.concatenate(real), inputs)
    assert sum(int(np.sum(np.asarray(b["weights"]) == 0)) for b in batches) == count * size - rows


def test_the_final_evaluation_reuses_the_validation_program_and_equals_a_plain_one(
    monkeypatch, tmp_path
):
    from fnn_jax.train import engine, steps
    from fnn_jax.train.trial import setup

    made = []

    def recorded(*args, **kwargs):
        made.append(steps.make_eval_step(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(engine, "make_eval_step", recorded)
    config = _config()
    report = train_and_evaluate(config, tmp_path)
    (eval_step,) = made
    plan = setup(config)
    test, validation = plan.dataset.split("test"), plan.dataset.split("validation")
    assert len(test) != len(validation)  # the test split is padded to validation's batches
    assert eval_step._cache_size() == 1  # validation in training, validation and test at the end
    # The best step's validation: the same program on the same parameters as when logged.
    (logged,) = [
        r
        for r in _metric_records(tmp_path)
        if r["split"] == "validation" and r["step"] == report["best_step"]
    ]
    for name, value in report["results"]["validation"].items():
        assert value == logged[name], name
    # The test metrics: as a plain evaluation (host parameters, the split's own batches).
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    saved, _ = checkpoints.restore_saved(report["best_step"])
    checkpoints.close()
    plain = steps.evaluate(
        steps.make_eval_step(plan.model, plan.task),
        jax.tree.map(np.asarray, saved["params"]),
        test,
        config.data.eval_batch_size,
        plan.task,
    )
    for name, value in report["results"]["test"].items():
        np.testing.assert_allclose(value, plain[name], rtol=1e-6, err_msg=name)
