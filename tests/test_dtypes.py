"""Every cell in bfloat16 and float64, through the layers and the models; mixed precision
(bfloat16 compute, float32 parameters) trains as well as float32."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn_jax import cells, models
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.layers import Stacked
from fnn_jax.train import train_and_evaluate
from tests.test_reliability import _config

ROOT = Path(__file__).resolve().parents[1]
CELLS = sorted(cells.REGISTRY)


@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_inits_in_bfloat16(cell, key):
    params = cells.get(cell).init_params(key, 3, 8, dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_runs_in_bfloat16_through_stacked_bidirectional_layers(cell, key, rng):
    xs = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    layer = Stacked(cell=cell, hidden_size=8, num_layers=2, bidirectional=True)
    variables = layer.init(key, xs)
    _, reference = layer.apply(variables, xs)
    mixed = Stacked(cell=cell, hidden_size=8, num_layers=2, bidirectional=True, dtype=jnp.bfloat16)
    params = mixed.init(key, xs)["params"]  # (init also returns what the layers sow)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    carries, ys = mixed.apply(variables, xs.astype(jnp.bfloat16))
    assert ys.dtype == jnp.bfloat16
    # bfloat16 keeps 8 bits of mantissa: the float32 outputs to about 1e-2.
    np.testing.assert_allclose(np.asarray(ys, np.float32), reference, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "model",
    [
        models.SequenceClassifier(cell="gru", hidden_size=8, num_classes=3, dtype=jnp.bfloat16),
        models.Forecaster(cell="lru", hidden_size=8, horizon=2, dtype=jnp.bfloat16),
        models.CharLM(cell="lstm", hidden_size=8, vocab_size=11, dtype=jnp.bfloat16),
    ],
    ids=["classifier", "forecaster", "charlm"],
)
def test_a_bfloat16_model_keeps_float32_parameters_and_gives_float32_outputs(model, key):
    xs = jnp.ones((2, 5), jnp.int32) if isinstance(model, models.CharLM) else jnp.ones((2, 5, 3))
    variables = model.init(key, xs)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    outputs = model.apply(variables, xs)
    assert outputs.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(outputs)))


FLOAT64 = """
import jax, jax.numpy as jnp, numpy as np, torch
from fnn_jax import cells, models
from fnn_jax.interop import from_torch
from fnn_jax.layers import Bidirectional, Stacked

xs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)))
assert xs.dtype == jnp.float64
for cell in sorted(cells.REGISTRY):
    for layer in (
        Stacked(cell=cell, hidden_size=4, num_layers=2, param_dtype=jnp.float64),
        Bidirectional(cell=cell, hidden_size=4, param_dtype=jnp.float64),
    ):
        variables = layer.init(jax.random.key(0), xs)
        params = variables["params"]  # (init also returns what the layers sow)
        assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}, cell
        carry, ys = layer.apply(variables, xs)
        assert ys.dtype == jnp.float64, (cell, ys.dtype)
        # The state, not the equilibrium cell's solve counts, is in float64.
        counts = lambda x: isinstance(x, cells.equilibrium.SolveStats)
        state = [x for x in jax.tree.leaves(carry, is_leaf=counts) if not counts(x)]
        assert {x.dtype.itemsize for x in state} <= {8, 16}, cell
tokens = jnp.ones((2, 5), jnp.int32)
for model, inputs in (
    (models.SequenceClassifier(cell="lstm", hidden_size=4, param_dtype=jnp.float64), xs),
    (models.Forecaster(cell="lru", hidden_size=4, param_dtype=jnp.float64), xs),
    (models.CharLM(cell="gru", hidden_size=4, vocab_size=7, param_dtype=jnp.float64), tokens),
):
    variables = model.init(jax.random.key(0), inputs)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float64)}
    assert model.apply(variables, inputs).dtype == jnp.float64, type(model).__name__

# PyTorch's own LSTM in float64, its weights through from_torch and Stacked.
torch.manual_seed(0)
lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True).double()
theirs, _ = lstm(torch.from_numpy(np.asarray(xs)))
params = from_torch(lstm.state_dict())
_, ours = Stacked(cell="lstm", hidden_size=4, num_layers=2).apply({"params": params}, xs)
assert ours.dtype == jnp.float64
np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=1e-12, atol=1e-13)
print("ok")
"""


@pytest.mark.slow
def test_every_cell_and_model_runs_in_float64_and_pytorch_float64_weights_match_to_1e_12():
    """jax_enable_x64 is process-wide: this runs in its own process."""
    env = {**os.environ, "JAX_ENABLE_X64": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", FLOAT64], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_mixed_precision_trains_as_well_as_float32(tmp_path):
    steps = {"train.num_steps": 300, "train.eval_every_steps": 100}
    full = train_and_evaluate(_config(**steps), tmp_path / "f32")
    mixed = train_and_evaluate(_config(**steps, **{"model.dtype": "bfloat16"}), tmp_path / "bf16")
    accuracy = lambda report: report["results"]["test"]["accuracy"]
    assert accuracy(full) > 0.6  # trained, so the comparison means something
    assert abs(accuracy(mixed) - accuracy(full)) < 0.03
    # ... and it did compute in bfloat16: the numbers are not float32's.
    assert mixed["results"]["test"]["loss"] != full["results"]["test"]["loss"]
    checkpoints = Checkpoints(tmp_path / "bf16" / "checkpoints")
    state, _ = checkpoints.restore_saved(checkpoints.latest_step())
    checkpoints.close()
    # Parameters and optimizer state stay float32 (the optimizer's step count is an int).
    floats = [x for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating)]
    assert {x.dtype for x in floats} == {np.dtype(np.float32)}
