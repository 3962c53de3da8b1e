"""Your own data through every entry point: a user .npz and a user "module:function" loader
(beside its config, nowhere on PYTHONPATH) each trained, killed -9 and resumed exactly,
loaded (``fnn_jax.load``) and evaluated by experiments/evaluate.py, and swept with
``--parallel 2``, each in fresh processes started from another folder. A changed file is
refused on resume naming what changed; Python arrays train through ``fnn_jax.fit``; and
the fine-tuning recipe (2 classes -> 3, head then all) runs on an .npz."""

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import fnn_jax
from fnn_jax import cli, data
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.config import ConfigError, default_config
from fnn_jax.finetune import classic_stages, pretrained_params
from fnn_jax.reporting import MetricsLog
from fnn_jax.train import train_and_evaluate
from tests import own_data_files as files

ROOT = Path(__file__).resolve().parents[1]
STEPS = 36


def _env():
    """The environment of a new shell: nothing on PYTHONPATH, JAX's test cache kept."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _python(*args, cwd):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A researcher's folder: their .npz, their loader module and a config for each."""
    folder = tmp_path_factory.mktemp("researcher")
    npz = files.write_npz(folder / "gestures.npz", n=150)
    files.write_loader(folder)
    return {
        "npz": files.write_config(folder, "npz_config.py", "npz", {"path": str(npz)}),
        "loader": files.write_config(
            folder,
            "loader_config.py",
            "my_sensors:load",
            {"n": 150},
            imports="import my_sensors  # noqa: F401",
        ),
    }


def _in_process_config(path, monkeypatch):
    """The config file as the command-line tools read it (its folder importable)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    return cli._load_config_file(str(path))


def _final(workdir, step=STEPS):
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, _ = checkpoints.restore_saved(step)
    checkpoints.close()
    return state


def _kill_9_then_resume(config_path, workdir, cwd):
    command = [
        sys.executable,
        str(ROOT / "experiments/main.py"),
        "--config",
        str(config_path),
        "--workdir",
        str(workdir),
    ]
    process = subprocess.Popen(
        command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in process.stdout:
        if line.startswith("step 14/"):  # checkpoints at 6 and 12 are written by then
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill"
    resumed = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resum" in resumed.stderr.lower() or "restor" in resumed.stderr.lower()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["npz", "loader"])
def test_user_data_runs_resumes_loads_evaluates_and_sweeps_in_fresh_processes(
    user, source, tmp_path, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"  # every process starts here, not beside the config
    elsewhere.mkdir()
    reference = tmp_path / "reference"
    train_and_evaluate(_in_process_config(user[source], monkeypatch), reference)
    workdir = tmp_path / "run"
    _kill_9_then_resume(user[source], workdir, elsewhere)
    jax.tree.map(np.testing.assert_array_equal, _final(workdir), _final(reference))
    assert MetricsLog.read(workdir, times=False) == MetricsLog.read(reference, times=False)
    report = json.loads((workdir / "report.json").read_text())
    assert report["data"]["fingerprint"]["rows"]["train"] == len(
        fnn_jax.load(reference).dataset.train
    )

    # evaluate.py rebuilds the run through fnn_jax.load, in a fresh process of its own.
    evaluate = _python(
        str(ROOT / "experiments/evaluate.py"), "--workdir", str(workdir), cwd=elsewhere
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    evaluated = json.loads(evaluate.stdout)
    assert evaluated["step"] == report["best_step"]
    for name, value in report["results"]["test"].items():
        assert evaluated[name] == pytest.approx(value, rel=1e-5), name

    _assert_sweep_done(user[source], tmp_path / "sweep", elsewhere, "--parallel", "2")


def _assert_sweep_done(config_path, workdir, cwd, *flags):
    """experiments/sweep.py over two learning rates: both trials done."""
    sweep = _python(
        str(ROOT / "experiments/sweep.py"),
        "--config",
        str(config_path),
        "--workdir",
        str(workdir),
        *flags,
        "--sweep",
        "optimizer.learning_rate=1e-3,3e-3",
        "--config.train.num_steps=6",
        cwd=cwd,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    trials = json.loads((workdir / "sweep.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["done", "done"], trials


def _npz_config(path, steps=12):
    config = default_config()
    config.data.name = "npz"
    config.data.options.path = str(path)
    config.data.batch_size = 16
    config.model.hidden_size = 8
    config.train.num_steps = steps
    config.train.eval_every_steps = 6
    config.train.checkpoint_every_s = 0.0
    return config


def test_a_changed_file_is_refused_on_resume_and_the_override_key_resumes(tmp_path):
    path = files.write_npz(tmp_path / "g.npz", n=120)
    workdir = tmp_path / "run"
    train_and_evaluate(_npz_config(path), workdir, stop_after_steps=6)
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    files.write_npz(path, n=120, keep=np.random.default_rng(1).permutation(120)[:90])
    with pytest.raises(ConfigError) as refused:
        train_and_evaluate(_npz_config(path), workdir)
    message = str(refused.value)
    assert "trained on other data" in message and "config.data.allow_changed" in message
    assert "rows.train: 84 -> 62" in message and f"file {path}: sha256" in message
    assert "arrays.train" not in message  # the rows line says it: no shape lines besides
    after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert after == before  # nothing written: config.json, data.json, logs as they were
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["6"]
    with pytest.warns(UserWarning, match="rows.train: 84 -> 62"):
        fnn_jax.load(workdir, step="latest")
    config = _npz_config(path)
    config.data.allow_changed = True
    report = train_and_evaluate(config, workdir)
    assert report["steps"] == 12
    saved = json.loads((workdir / "data.json").read_text())
    assert saved["fingerprint"]["rows"]["train"] == 62  # the data it went on with


def test_python_arrays_train_through_fit_and_a_new_process_rebuilds_them(tmp_path):
    sequences, labels = files.gestures(120)
    dataset = data.from_arrays(sequences, labels=labels, seed=1)
    overrides = {
        "train.num_steps": 12,
        "train.eval_every_steps": 6,
        "model.hidden_size": 8,
        "data.batch_size": 16,
        "train.checkpoint_every_s": 0.0,
    }
    workdir = tmp_path / "run"
    fnn_jax.fit(dataset, workdir, overrides, stop_after_steps=6)
    report = fnn_jax.fit(dataset, workdir, overrides)  # the same arrays: it resumes
    (stored,) = (workdir / "data").iterdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt data equals the trained-on data
        run = fnn_jax.load(workdir)
    for split in data.SPLITS:
        np.testing.assert_array_equal(run.dataset.split(split).inputs, dataset.split(split).inputs)
    assert run.dataset.info["class_names"] == list(files.CLASSES)
    # The report's test confusion matrix and per-class scores, against scikit-learn on the
    # loaded model's own predictions; the majority-class floor beside them.
    test = run.dataset.test
    predicted = np.asarray(run(test.inputs, test.full_lengths)).argmax(-1)
    details = report["test_details"]
    assert details["class_names"] == list(files.CLASSES)
    np.testing.assert_array_equal(details["confusion"], confusion_matrix(test.targets, predicted))
    _, recall, _, _ = precision_recall_fscore_support(test.targets, predicted, zero_division=0)
    np.testing.assert_allclose(details["recall"], recall, rtol=1e-6)
    common = np.bincount(run.dataset.train.targets).argmax()
    floor = report["baselines"]["accuracy_majority_class"]
    assert floor == pytest.approx(np.mean(test.targets == common))
    assert "| down |" in (workdir / "report.md").read_text()
    reference = tmp_path / "reference"
    assert fnn_jax.fit(dataset, reference, overrides)["results"] == report["results"]
    other = data.from_arrays(sequences[:90], labels=labels[:90], seed=1)
    with pytest.raises(ConfigError, match="trained on other arrays.*\n  rows.train: 84 -> 62"):
        fnn_jax.fit(other, workdir, {**overrides, "train.num_steps": 18})
    assert list((workdir / "data").iterdir()) == [stored]  # nothing written


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_the_finetuning_recipe_turns_a_two_class_npz_model_into_a_three_class_one(tmp_path):
    path = files.write_npz(tmp_path / "g.npz", n=150)
    pretrain = tmp_path / "pretrain"
    config = _npz_config(path)
    config.data.options.classes = ("down", "up")
    train_and_evaluate(config, pretrain)
    config = _npz_config(path)
    config.init_from, config.init_step = str(pretrain), "latest"
    config.finetune.stages = classic_stages(head_epochs=1, all_epochs=1)
    for stage in config.finetune.stages:
        del stage["num_epochs"]
        stage["num_steps"] = 6
    workdir = tmp_path / "finetune"
    report = train_and_evaluate(config, workdir)
    loaded, _, _ = pretrained_params(str(pretrain), "latest")
    before = _flat(loaded)
    checkpoints = Checkpoints(workdir / "checkpoints")
    head_end, _ = checkpoints.restore_saved(6)
    all_end, _ = checkpoints.restore_saved(12)
    checkpoints.close()
    head, after = _flat(head_end["params"]), _flat(all_end["params"])
    assert before["head/kernel"].shape == (8, 2) and head["head/kernel"].shape == (8, 3)
    encoder = [p for p in before if not p.startswith("head/")]
    for p in encoder:  # frozen through the head stage: bit for bit the pretrained values
        np.testing.assert_array_equal(head[p], before[p], err_msg=p)
    assert any(not np.array_equal(after[p], before[p]) for p in encoder)  # then trained
    assert [s["name"] for s in report["stages"]] == ["head", "all"]
    assert report["data"]["class_names"] == ["down", "flat", "up"]
    assert json.loads((pretrain / "data.json").read_text())["class_names"] == ["down", "up"]


@pytest.mark.slow
def test_a_ray_sweep_imports_a_loader_that_sits_beside_its_config(user, tmp_path):
    """Ray's workers are no children of the sweep: they find the loader's folder through
    the PYTHONPATH that sweep.py sets for the processes it starts."""
    pytest.importorskip("ray")
    _assert_sweep_done(user["loader"], tmp_path / "sweep", tmp_path, "--backend", "ray")
