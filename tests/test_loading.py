"""fnn_jax.load: a trained run's model and parameters, ready to call, from its workdir."""

import json
import shutil

import jax
import numpy as np
import pytest

import fnn_jax
from fnn_jax.checkpoint import load_exported
from fnn_jax.train import train_and_evaluate
from tests.test_reliability import _config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    return workdir, train_and_evaluate(_config(), workdir)


def test_load_round_trips_the_reports_test_accuracy_and_the_exported_predictions(trained):
    workdir, report = trained
    run = fnn_jax.load(workdir)
    assert run.step == report["best_step"]
    test = run.dataset.test
    logits = np.asarray(run(test.inputs, test.lengths))
    accuracy = float(np.mean(logits.argmax(-1) == test.targets))
    assert accuracy == pytest.approx(report["results"]["test"]["accuracy"], abs=1e-12)
    # Its exact interval, against statsmodels' Clopper-Pearson on the same predictions.
    from statsmodels.stats.proportion import proportion_confint

    correct = int(np.sum(logits.argmax(-1) == test.targets))
    want = proportion_confint(correct, len(test.targets), alpha=0.05, method="beta")
    np.testing.assert_allclose(report["test_details"]["accuracy_interval"], want, rtol=1e-9)
    low, high = report["test_details"]["accuracy_interval"]
    rows = len(test.targets)
    line = f"Test accuracy, 95% interval: {low:.4f} to {high:.4f} (exact binomial, {rows} rows"
    assert line in (workdir / "report.md").read_text()
    exported = load_exported(workdir / "export")
    jax.tree.map(np.testing.assert_array_equal, run.params, exported)
    np.testing.assert_array_equal(
        logits, run.model.apply({"params": exported}, test.inputs, test.lengths)
    )


def test_load_takes_a_step_and_names_a_missing_run(trained, tmp_path):
    workdir, report = trained
    assert fnn_jax.load(workdir, step="latest").step == report["steps"]
    with pytest.raises(FileNotFoundError, match=r"holds no run: .*config\.json is missing"):
        fnn_jax.load(tmp_path)


def test_load_reads_a_config_saved_by_an_earlier_schema(trained, tmp_path):
    workdir, report = trained
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    saved = json.loads((old / "config.json").read_text())
    del saved["model"]["dtype"]  # added since: float32 then
    saved["model"]["parallel"] = False  # removed since
    (old / "config.json").write_text(json.dumps(saved))
    run = fnn_jax.load(old)
    assert run.config.model.dtype == "float32" and "parallel" not in run.config.model
    assert run.step == report["best_step"]


def test_a_step_deleted_while_load_reads_it_is_looked_up_again(trained, tmp_path, monkeypatch):
    """A run pruning its old steps (keep_checkpoints=1) can delete the step load picked
    before load reads it: load looks again and returns the step that is there."""
    from fnn_jax.checkpoint import Checkpoints

    workdir, report = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    steps = Checkpoints(copy / "checkpoints").steps()
    newest, before = steps[-1], steps[-2]
    real = Checkpoints.restore_saved
    deleted = []

    def pruned_under_us(self, step):
        if not deleted:  # the run deletes the step between load's choice and its read
            shutil.rmtree(copy / "checkpoints" / str(step))
            deleted.append(step)
        return real(self, step)

    monkeypatch.setattr(Checkpoints, "restore_saved", pruned_under_us)
    run = fnn_jax.load(copy, step="latest")
    assert deleted == [newest] and run.step == before
    monkeypatch.undo()
    want = Checkpoints(copy / "checkpoints", read_only=True).restore_saved(before)[0]["params"]
    jax.tree.map(np.testing.assert_array_equal, run.params, want)


def test_load_of_a_run_with_no_committed_step_names_load_and_the_unfinished_saves(tmp_path):
    (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1").mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps(_config().to_dict(), default=list))
    with pytest.raises(FileNotFoundError, match=r"fnn_jax.load\(.*\): no committed checkpoint"):
        fnn_jax.load(tmp_path)


@pytest.mark.parametrize(("cell", "want"), [("elman", {"activation": "relu"}), ("lstm", None)])
def test_an_activation_saved_before_cells_declared_options_moves_into_the_cells_section(cell, want):
    """A config.json of the old schema (model.activation): read into the running cell's
    section, so an Elman run trained with relu is not rebuilt with tanh."""
    from fnn_jax import config as config_lib

    saved = config_lib.to_dict(config_lib.default_config())
    for name in ("elman", "jordan"):
        del saved["model"][name]
    del saved["model"]["equilibrium"]["activation"]
    saved["model"] |= {"cell": cell, "activation": "relu", "output_activation": "identity"}
    model = config_lib.in_current_schema(saved)["model"]
    assert "activation" not in model and "output_activation" not in model
    if want:
        assert model[cell] == want
    assert model["jordan"] == {"activation": "tanh", "output_activation": "tanh"}
