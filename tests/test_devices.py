"""More devices: training split over a mesh of 4 (forced host) CPU devices equals training on
one, for data parallelism and model sharding; a checkpoint saved on 4 devices resumes on 1
and on 2 and ends where the uninterrupted 4-device run ends; bad meshes are refused.

The 4-device runs happen in a subprocess (XLA_FLAGS must be set before JAX starts); this
process, on one device, compares what they saved. Tolerance: 1e-6 absolute on parameters,
since splitting a batch or a matrix over devices changes the order of float32 sums.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from fnn_jax.checkpoint import Checkpoints
from fnn_jax.config import ConfigError, default_config
from fnn_jax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
pytestmark = pytest.mark.slow  # subprocesses with 4 forced host devices

CONFIG = f"""
from fnn_jax.config import default_config

def config(data, model):
    c = default_config()
    c.data.options = dict(classes=(0, 1, 2, 3), train_per_class=20)
    c.data.batch_size = 8
    c.data.eval_batch_size = 20  # 72 validation rows: 4 batches of 20, the last padded
    c.model.hidden_size = 16
    c.train.num_steps = {STEPS}
    c.train.log_every_steps = 4
    c.train.eval_every_steps = 6
    c.train.compilation_cache = ""
    c.mesh.data, c.mesh.model = data, model
    return c
"""


def _run_on_devices(devices: int, script: str, tmp_path: Path) -> str:
    code = CONFIG + textwrap.dedent(script)
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _final(workdir: Path) -> dict:
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        state, _ = checkpoints.restore_saved(checkpoints.latest_step())
    finally:
        checkpoints.close()
    return state


def _assert_close(a, b, atol=1e-6):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert leaves_a and len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def four_device_runs(tmp_path_factory):
    """One run on 1 device, on 4 (data 4), on 2 x 2 (data 2, model 2); a 4-device run
    stopped at step 6 and resumed on 1 and on 2 devices; the shardings the steppers used."""
    tmp_path = tmp_path_factory.mktemp("devices")
    script = """
    import json, shutil, sys
    from pathlib import Path
    import jax
    from fnn_jax.sweep.spec import apply_overrides
    from fnn_jax.train import train_and_evaluate
    from fnn_jax.train.engine import Engine

    root = Path(sys.argv[1])
    assert jax.device_count() == 4
    reports = {}
    for data, model in [(1, 1), (4, 1), (2, 2)]:
        name = f"{data}x{model}"
        reports[name] = train_and_evaluate(config(data, model), root / name)
        engine = Engine([config(data, model)], [root / f"probe{data}x{model}"])
        trial = engine.trials[0]
        stepper = engine._stepper([trial])
        state = stepper.state
        reports[f"shardings{data}x{model}"] = {
            "w_hh": str(state.params["encoder"]["layer_0"]["w_hh"].sharding.spec),
            "w_hh_devices": len(state.params["encoder"]["layer_0"]["w_hh"].sharding.device_set),
            "b_hh": str(state.params["encoder"]["layer_0"]["b_hh"].sharding.spec),
            "mu_w_hh": [
                str(leaf.sharding.spec)
                for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
                if "w_hh" in jax.tree_util.keystr(path)
            ],
            "validation_batch": str(engine.validation_batches[0]["inputs"].sharding.spec),
        }
        engine._close(engine.trials)
    for data in (1, 4):  # a vectorised group of 4 seeds: on 4 devices, one trial each
        configs = [config(data, 1) for _ in range(4)]
        for seed, c in enumerate(configs):
            c.seed = seed
        engine = Engine(configs, [root / f"group{data}" / f"seed{s}" for s in range(4)])
        stepper = engine._stepper(engine.trials)
        w_hh = stepper.state.params["encoder"]["layer_0"]["w_hh"]
        reports[f"group{data}"] = {"w_hh": str(w_hh.sharding.spec), "spread": stepper.spread}
        engine.run()
    for resumed in (1, 2):
        workdir = root / f"resumed_on_{resumed}"
        stop = train_and_evaluate(config(4, 1), workdir, stop_after_steps=6)
        assert stop == {"interrupted_at": 6}, stop
        reports[f"resumed_on_{resumed}"] = train_and_evaluate(config(resumed, 1), workdir)
    errors = {}
    for name, changes in {
        "batch": {"data.batch_size": 6},
        "too_many": {"mesh.data": 4, "mesh.model": 2},
        "rule": {"mesh.rules": (("encoder/.*/w_xx", (None, "model")),)},
        "split": {
            "mesh.rules": (("head/kernel", ("model", None)),),
            "mesh.model": 4,
            "mesh.data": 1,
            "model.hidden_size": 18,
        },
    }.items():
        c = config({"batch": 4, "rule": 2}.get(name, 1), 2 if name == "rule" else 1)
        c = apply_overrides(c, changes)
        try:
            Engine([c], [root / f"error_{name}"])
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
    reports["errors"] = errors
    print(json.dumps(reports, default=str))
    """
    out = _run_on_devices(4, script, tmp_path)
    return tmp_path, json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", ["4x1", "2x2"])
def test_training_on_4_devices_equals_training_on_1(four_device_runs, mesh):
    root, reports = four_device_runs
    _assert_close(_final(root / mesh)["params"], _final(root / "1x1")["params"])
    _assert_close(_final(root / mesh)["opt_state"], _final(root / "1x1")["opt_state"])
    ours, alone = reports[mesh]["results"], reports["1x1"]["results"]
    for split in ("validation", "test"):
        np.testing.assert_allclose(ours[split]["loss"], alone[split]["loss"], rtol=1e-5)
        assert ours[split]["accuracy"] == alone[split]["accuracy"]


def test_the_state_is_really_split_over_the_mesh(four_device_runs):
    _, reports = four_device_runs
    data_parallel, sharded = reports["shardings4x1"], reports["shardings2x2"]
    # Data parallel: parameters replicated on all 4 devices, evaluation rows split.
    assert data_parallel["w_hh"] == "P(None, None)" and data_parallel["w_hh_devices"] == 4
    assert data_parallel["validation_batch"] == "P('data', None, None)"
    # Model sharding: w_hh and its Adam moments split along the gate axis, biases not.
    assert sharded["w_hh"] == "P(None, 'model')"
    assert sharded["mu_w_hh"] == ["P(None, 'model')"] * 2  # mu and nu
    assert sharded["b_hh"] == "P(None,)"


@pytest.mark.parametrize("devices", [1, 2])
def test_a_checkpoint_saved_on_4_devices_resumes_on_fewer_and_ends_where_4_end(
    four_device_runs, devices
):
    root, reports = four_device_runs
    resumed = _final(root / f"resumed_on_{devices}")
    assert int(resumed["step"]) == STEPS
    _assert_close(resumed["params"], _final(root / "4x1")["params"])
    np.testing.assert_allclose(
        reports[f"resumed_on_{devices}"]["results"]["test"]["loss"],
        reports["4x1"]["results"]["test"]["loss"],
        rtol=1e-5,
    )


def test_a_vectorised_group_spreads_its_trials_over_the_devices_and_trains_as_on_one(
    four_device_runs,
):
    root, reports = four_device_runs
    assert reports["group4"] == {"w_hh": "P('data', None, None)", "spread": True}
    assert reports["group1"]["spread"] is False
    for seed in range(4):
        spread = _final(root / "group4" / f"seed{seed}")["params"]
        _assert_close(spread, _final(root / "group1" / f"seed{seed}")["params"])


def test_bad_meshes_are_refused_naming_the_numbers_or_the_rule(four_device_runs):
    _, reports = four_device_runs
    errors = reports["errors"]
    assert "config.data.batch_size=6 does not divide over the data axis of 4" in errors["batch"]
    assert "config.mesh.data=4 x config.mesh.model=2 = 8 devices; only 4" in errors["too_many"]
    assert "'encoder/.*/w_xx'" in errors["rule"] and "matches no parameter" in errors["rule"]
    assert (
        "'head/kernel' has shape (18, 4); 18 does not split over the model axis of 4"
        in (errors["split"])
    )
    assert all(e.startswith("ConfigError") for e in errors.values())


def test_a_mesh_larger_than_this_machine_is_refused_before_training(tmp_path):
    config = default_config()
    config.mesh.data = jax.device_count() + 1
    config.train.num_steps = 1
    with pytest.raises(ConfigError, match=rf"config.mesh.data={config.mesh.data} x .* only"):
        train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
