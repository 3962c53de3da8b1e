"""What is refused before anything is written, with a message naming the key or path; and
an optimizer change that is refused (or, asked for, resumed) without losing the run."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from fnn_jax.checkpoint import Checkpoints, StateMismatch
from fnn_jax.config import ConfigError
from fnn_jax.reporting import MetricsLog
from fnn_jax.train import train_and_evaluate
from fnn_jax.tree import path_str
from tests.test_reliability import ROOT, _config

BAD_VALUES = [
    ("model.hidden_size", 0, r"config\.model\.hidden_size must be >= 1; got 0"),
    ("model.hidden_size", -4, r"config\.model\.hidden_size must be >= 1; got -4"),
    ("model.num_layers", 0, r"config\.model\.num_layers must be >= 1; got 0"),
    ("data.batch_size", 100_000, r"config\.data\.batch_size=100000 is larger than the train"),
    ("optimizer.learning_rate", -1e-3, r"config\.optimizer\.learning_rate must be >= 0"),
    ("optimizer.learning_rate", float("nan"), r"learning_rate must be finite; got nan"),
    ("optimizer.learning_rate", float("inf"), r"learning_rate must be finite; got inf"),
    ("train.num_steps", -5, r"config\.train\.num_steps must be >= 0; got -5"),
    ("train.log_every_steps", 0, r"config\.train\.log_every_steps must be >= 1; got 0"),
    ("train.eval_every_steps", -1, r"config\.train\.eval_every_steps must be >= 0; got -1"),
    ("train.steps_per_dispatch", 0, r'steps_per_dispatch must be "auto" or an int >= 1; got 0'),
    ("train.steps_per_dispatch", "fast", r"steps_per_dispatch must be .* got 'fast'"),
    ("model.equilibrium.tol", 0.0, r"config\.model\.equilibrium\.tol must be > 0; got 0\.0"),
    ("model.equilibrium.tol", -1e-6, r"config\.model\.equilibrium\.tol must be >= 0"),
    ("model.equilibrium.max_iter", 0, r"config\.model\.equilibrium\.max_iter must be >= 1"),
    (
        "model.equilibrium.solver",
        "broyden",
        r"config\.model\.equilibrium\.solver='broyden' is not valid; "
        r"valid choices: \['anderson', 'iterate'\]",
    ),
    (
        "model.equilibrium.on_nonconvergence",
        "shout",
        r"on_nonconvergence='shout' is not valid; valid choices: \['ignore', 'raise', 'warn'\]",
    ),
    ("model.equilibrium.gradient", "exact", r"gradient='exact' is not valid; valid choices"),
    (
        "train.early_stopping_metric",
        "acuracy",
        r"train\.early_stopping_metric='acuracy' is not valid \(did you mean 'accuracy'\?\)",
    ),
    (
        "train.early_stopping_metric",
        "mse",  # a forecasting metric, on the digits
        r"early_stopping_metric='mse' is not a metric that task 'classification' can select "
        r"checkpoints by; choices: \['accuracy', 'f1', 'loss', 'precision', 'recall'\]",
    ),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES]
)
def test_a_bad_value_is_refused_naming_its_key_before_the_workdir_is_touched(
    key, value, message, tmp_path
):
    workdir = tmp_path / "run"
    config = _config()
    *sections, name = key.split(".")
    with config.unlocked():
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, workdir)
    assert not workdir.exists()


def test_no_steps_and_no_epochs_is_refused(tmp_path):
    config = _config(**{"train.num_steps": 0, "train.num_epochs": 0})
    with pytest.raises(ConfigError, match="num_steps and config.train.num_epochs are both 0"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_first_attempt_that_failed_before_saving_does_not_poison_the_workdir(tmp_path):
    failing = _config(**{"regularization.l2": 1e38, "model.hidden_size": 16})
    with pytest.raises(FloatingPointError):
        train_and_evaluate(failing, tmp_path)  # non-finite at step 1: nothing saved
    assert (tmp_path / "config.json").exists()
    # Another model in the same workdir: nothing to resume, so no "config drift".
    report = train_and_evaluate(_config(**{"model.hidden_size": 8}), tmp_path)
    assert report["steps"] == 40
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_size"] == 8


def _main(workdir, *flags, user=()):
    command = [*user, sys.executable, str(ROOT / "experiments/main.py")]
    command += ["--config", str(ROOT / "configs/test.py"), "--workdir", str(workdir), *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_a_workdir_that_is_a_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    result = _main(path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot use workdir {path}: it is a file, not a directory"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_workdir_that_is_a_broken_symbolic_link_is_one_error_naming_it(kind, tmp_path):
    from fnn_jax.files import WorkdirUnusable

    path = tmp_path / "run"
    if kind == "loop":
        (tmp_path / "other").symlink_to(path)
        path.symlink_to(tmp_path / "other")
        want = "it is a symbolic link that loops back on itself"
    else:
        path.symlink_to(tmp_path / "gone")
        want = f"it is a symbolic link to {tmp_path / 'gone'}, which does not exist"
    with pytest.raises(WorkdirUnusable, match=f"cannot use workdir {path}: {want}"):
        train_and_evaluate(_config(), path)


@pytest.mark.slow
def test_a_read_only_checkpoints_folder_is_one_line_in_seconds_and_writes_nothing():
    """As root, permissions do not stop writes: the run drops to user nobody (setpriv)."""
    user = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        main = ROOT / "experiments" / "main.py"
        probe = [*user, sys.executable, "-c", f"open({str(main)!r}).close(); import fnn_jax"]
        readable = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True)
        if readable.returncode != 0:  # e.g. a clone inside a mode-0700 folder
            reason = readable.stderr.strip().splitlines()[-1:] or ["?"]
            pytest.skip(f"user nobody cannot read this checkout or its venv: {reason[0]}")
    root = Path(tempfile.mkdtemp(prefix="fnn-readonly-"))
    try:
        workdir = root / "run"
        (workdir / "checkpoints").mkdir(parents=True)
        if user:
            for path in (workdir, workdir / "checkpoints"):
                os.chown(path, 65534, 65534)
        root.chmod(0o755)
        (workdir / "checkpoints").chmod(0o555)
        result = _main(workdir, "--config.train.num_steps=8", user=user)
        assert result.returncode == 1, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: cannot write checkpoints to {workdir / 'checkpoints'}: Permission denied"
        )
        assert not (workdir / "config.json").exists()
    finally:
        (root / "run" / "checkpoints").chmod(0o755)
        shutil.rmtree(root)


@pytest.fixture
def saved_8_steps(tmp_path):
    """A run stopped after 8 steps (2 evaluations), and what it holds on disk."""
    train_and_evaluate(_config(), tmp_path, stop_after_steps=8)
    files = {
        "steps": Checkpoints(tmp_path / "checkpoints").steps(),
        "metrics": (tmp_path / "metrics.jsonl").read_text(),
        "config": (tmp_path / "config.json").read_text(),
    }
    return tmp_path, files


@pytest.mark.parametrize(
    ("key", "value", "changed"),
    [
        ("optimizer.name", "sgd", "optimizer.name: 'adam' -> 'sgd'"),
        ("optimizer.clip_norm", 0.0, "optimizer.clip_norm: 1.0 -> 0.0"),
    ],
)
def test_an_optimizer_change_is_refused_naming_it_and_moves_and_truncates_nothing(
    saved_8_steps, key, value, changed
):
    workdir, before = saved_8_steps
    with pytest.raises(StateMismatch, match=f"(?s)is intact.*{changed}"):
        train_and_evaluate(_config(**{key: value}), workdir)
    assert Checkpoints(workdir / "checkpoints").steps() == before["steps"]
    assert not (workdir / "checkpoints-corrupt").exists()
    assert (workdir / "metrics.jsonl").read_text() == before["metrics"]
    assert (workdir / "config.json").read_text() == before["config"]
    # The original settings still resume the run where it stopped.
    assert train_and_evaluate(_config(), workdir)["steps"] == 40
    assert MetricsLog.read(workdir)[0]["step"] == 4  # the log was never emptied


def test_reset_optimizer_resumes_with_the_saved_parameters_and_a_fresh_optimizer_state(
    saved_8_steps,
):
    workdir, before = saved_8_steps
    checkpoints = Checkpoints(workdir / "checkpoints")
    saved, _ = checkpoints.restore_saved(8)
    checkpoints.close()
    sgd = {"optimizer.name": "sgd", "optimizer.schedule": "constant", "optimizer.warmup_steps": 0}
    config = _config(**sgd, **{"train.reset_optimizer": True})
    assert train_and_evaluate(config, workdir, stop_after_steps=1) == {"interrupted_at": 9}
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, _ = checkpoints.restore_saved(9)
    checkpoints.close()
    # One SGD step from the saved parameters with a fresh momentum trace: the trace is then
    # exactly the (clipped) gradient, and the step moved the parameters by -lr * trace.
    lr = config.optimizer.learning_rate
    traces = {
        path.split("/trace/", 1)[1]: value
        for path, value in leaf_paths(state["opt_state"]).items()
        if "/trace/" in path
    }
    before_step, after_step = leaf_paths(saved["params"]), leaf_paths(state["params"])
    assert sorted(traces) == sorted(before_step)
    for path, trace in traces.items():
        np.testing.assert_allclose(after_step[path], before_step[path] - lr * trace, atol=1e-7)
    assert any(np.abs(trace).max() > 0 for trace in traces.values())
    assert (workdir / "metrics.jsonl").read_text().startswith(before["metrics"])


def leaf_paths(tree):
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_a_typo_in_a_command_line_override_is_one_line_with_the_close_key(tmp_path):
    result = _main(tmp_path / "run", "--config.optimizer.learnig_rate=1e-3")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --config.optimizer.learnig_rate: unknown config key 'optimizer.learnig_rate' "
        "(did you mean 'optimizer.learning_rate'?)"
    ]
    assert not (tmp_path / "run").exists()


def test_a_config_file_that_fails_to_load_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "bad_config.py"
    path.write_text(
        "from configs import test\n"
        "def get_config():\n"
        "    config = test.get_config()\n"
        "    config.model.hidden_size = '16'\n"
        "    return config\n"
    )
    command = [sys.executable, str(ROOT / "experiments/main.py"), "--config", str(path)]
    result = subprocess.run(
        [*command, "--workdir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: config file {path}: TypeError: Could not override field")


def test_a_dataset_option_the_config_file_did_not_set_can_be_given_on_the_command_line(
    tmp_path,
):
    result = _main(tmp_path, "--config.train.num_steps=4", "--config.data.options.classes=(0,1)")
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["options"] == {"classes": [0, 1]}
    assert json.loads((tmp_path / "report.json").read_text())["parameters"] == 16 * 4 * (
        8 + 16 + 2
    ) + (16 * 2 + 2)  # an LSTM of 16 units on 8 features, and a head of 2 classes


def test_a_workdir_from_an_earlier_schema_resumes_new_keys_at_their_defaults(tmp_path):
    """A config.json written before model.dtype existed (and with a key since removed) is
    read in today's schema: no "config drift", the run resumes."""
    train_and_evaluate(_config(**{"train.num_steps": 8}), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["model"]["dtype"]
    saved["model"]["parallel"] = False  # replaced by model.scan_impl
    (tmp_path / "config.json").write_text(json.dumps(saved))
    report = train_and_evaluate(_config(**{"train.num_steps": 12}), tmp_path)
    assert report["steps"] == 12
    assert MetricsLog.read(tmp_path)[0]["step"] == 4  # resumed, not restarted


def test_a_sweep_metric_typo_is_refused_before_any_trial_runs(tmp_path):
    from fnn_jax import sweep

    trials = [{"train.early_stopping_metric": name} for name in ("accuracy", "f1_score")]
    with pytest.raises(
        ValueError,
        match=r"early_stopping_metric='f1_score' is not valid; valid choices: \['accuracy'",
    ):
        sweep.run(_config(), trials, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_a_metric_without_a_direction_cannot_be_declared_or_computed(monkeypatch):
    from fnn_jax import tasks
    from fnn_jax.train import diagnostics

    with pytest.raises(TypeError, match="direction"):
        tasks.Metric("top2_accuracy")  # noqa (the direction is missing on purpose)
    with pytest.raises(ValueError, match=r"direction must be one of \('max', 'min'\)"):
        tasks.Metric("top2_accuracy", "up")
    task = tasks.get("classification", 3)
    sums = {"loss": 1.0, "count": 2.0, "confusion": np.eye(3)}
    assert set(diagnostics.metrics(task, sums)) == {m.name for m in task.declared}
    computed = tasks.Classification.metrics
    with monkeypatch.context() as patch:  # a contributor's new metric, not declared
        patch.setattr(
            tasks.Classification,
            "metrics",
            lambda self, s: {**computed(self, s), "top2_accuracy": 1.0},
        )
        with pytest.raises(ValueError, match=r"computed metrics \['top2_accuracy'\] that"):
            diagnostics.metrics(task, sums)
    assert tasks.metric_mode("f1") == "max" and tasks.metric_mode("bits_per_char") == "min"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("classes", "abc", r"options\.classes must be a tuple or list or None; got 'abc' \(str\)"),
        ("train_per_class", "ten", r"options\.train_per_class must be an int or None; got 'ten'"),
        ("normalization", (0.5,), r"options\.normalization must be a tuple or list or None"),
    ],
)
def test_a_dataset_option_of_the_wrong_type_is_refused_before_the_workdir_is_touched(
    option, value, message, tmp_path
):
    """Checked against the loader's own annotations: "abc" is not read as classes a, b, c."""
    config = _config()
    with config.unlocked():
        config.data.options[option] = value
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_model_too_large_for_memory_is_refused_with_its_estimate_before_the_workdir(tmp_path):
    """hidden_size 10**5: an LSTM's w_hh alone is 4e10 floats (149 GiB); the estimate
    comes from abstract shapes, so the refusal allocates nothing and takes seconds."""
    config = _config(**{"model.hidden_size": 10**5})
    with pytest.raises(ConfigError, match=r"needs about [\d,.]+ GiB for its parameters"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
