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
