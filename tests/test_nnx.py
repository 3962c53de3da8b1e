"""docs/nnx.md runs as written (every ```python block, in order, in one namespace, on a tiny
trained run), and its NNX modules compute what independent references compute: Linen's
``apply`` with the same parameters, and a plain Python loop over the cell's step."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict

from configs import test as test_config
from fnn_jax.cells import lstm
from fnn_jax.layers import Recurrent
from fnn_jax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "nnx.md"
WORKDIR_LINE = 'workdir = "runs/digits_lstm"'


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), re.M | re.S)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits classifier (configs/test.py, 4 steps): seconds."""
    config = test_config.get_config()
    with config.unlocked():
        config.train.num_steps = 4
        config.train.eval_every_steps = 2
        config.model.hidden_size = 8
    workdir = tmp_path_factory.mktemp("nnx_run")
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def doc(trained):
    """The namespace after every block ran, the guide's workdir replaced by the tiny run."""
    source = "\n".join(_blocks())
    assert source.count(WORKDIR_LINE) == 1, f"the guide must set {WORKDIR_LINE!r} once"
    source = source.replace(WORKDIR_LINE, f"workdir = {str(trained)!r}")
    namespace = {"__name__": "docs_nnx"}
    exec(compile(source, str(GUIDE), "exec"), namespace)
    return namespace


def _params(module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_guide_has_the_four_parts_and_runs(doc):
    assert len(_blocks()) >= 6
    for name in ("model", "noisy", "cell", "classifier", "whole", "optimizer", "losses"):
        assert name in doc, name


def test_bridged_layer_is_the_linen_layer_with_the_same_parameters(doc):
    model, xs, lengths = doc["model"], doc["xs"], doc["lengths"]
    params = _params(model)
    assert set(params) == {"rnn", "head"}
    assert params["rnn"]["w_ih"].shape == (8, 3 * 32)  # lazy_init took the input size
    carry, ys = Recurrent(cell="gru", hidden_size=32).apply({"params": params["rnn"]}, xs, lengths)
    bridged_carry, bridged_ys = model.rnn(xs, lengths)
    np.testing.assert_array_equal(bridged_ys, ys)
    _assert_trees_equal(bridged_carry, carry)
    expected = ys @ params["head"]["kernel"] + params["head"]["bias"][None, None]
    np.testing.assert_allclose(doc["tags"], expected, rtol=1e-6, atol=1e-6)
    assert doc["tags"].shape == (4, 10, 5)


def test_bridged_dropout_draws_fresh_masks_and_evaluates_as_linen(doc):
    noisy, xs, lengths = doc["noisy"], doc["xs"], doc["lengths"]
    layer = Recurrent(cell="gru", hidden_size=32, recurrent_dropout=0.25)
    _, plain = layer.apply({"params": _params(noisy)}, xs, lengths)
    np.testing.assert_array_equal(doc["ys_eval"], plain)
    assert not np.allclose(doc["ys_train"], plain)
    _, again = noisy(xs, lengths, deterministic=False)
    assert not np.allclose(again, doc["ys_train"])  # the dropout stream moved on


def test_pure_cell_module_equals_a_python_loop_over_the_step(doc):
    cell, xs, lengths = doc["cell"], doc["xs"], doc["lengths"]
    params = _params(cell)["cell"]
    assert set(params) == {"w_ih", "w_hh", "b_ih", "b_hh"}
    carry = lstm.init_carry((xs.shape[0],), 16)
    ys = []
    for t in range(xs.shape[1]):
        new, y = lstm.step(params, carry, xs[:, t])
        valid = (t < lengths)[:, None]
        carry = jax.tree.map(lambda n, o, v=valid: jnp.where(v, n, o), new, carry)
        ys.append(jnp.where(valid, y, 0.0))
    np.testing.assert_allclose(doc["ys"], jnp.stack(ys, axis=1), rtol=1e-6, atol=1e-6)
    for got, want in zip(doc["carry"], carry, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_trained_parameters_give_exactly_the_runs_outputs(doc):
    run, x, lengths = doc["run"], doc["x"], doc["x_lengths"]
    expected = run.model.apply({"params": run.params}, x, lengths)
    np.testing.assert_array_equal(doc["logits"], expected)  # computed before training
    np.testing.assert_array_equal(doc["same_logits"], expected)
    _assert_trees_equal(_params(doc["whole"]), run.params)
    np.testing.assert_array_equal(doc["whole"](x, lengths), run(x, lengths))


def test_equality_is_not_vacuous_without_the_trained_parameters(doc):
    """The guide's classifier before load_params: same shapes, other outputs."""
    run, x, lengths = doc["run"], doc["x"], doc["x_lengths"]
    fresh = doc["Classifier"](run.model, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(fresh, x, lengths)
    assert jax.tree.map(jnp.shape, _params(fresh)) == jax.tree.map(jnp.shape, run.params)
    assert not np.allclose(fresh(x, lengths), run(x, lengths), atol=1e-3)


def test_load_params_refuses_a_misspelt_path_or_a_wrong_shape(doc):
    run, load_params = doc["run"], doc["load_params"]
    target = doc["Classifier"](run.model, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(target, doc["x"], doc["x_lengths"])
    before = _params(target)
    misspelt = {**run.params, "haed": run.params["head"]}
    del misspelt["head"]
    with pytest.raises(ValueError, match=r"do not fit.*'haed/bias'.*'head/bias'"):
        load_params(target, misspelt)
    wrong = {**run.params, "head": {**run.params["head"], "bias": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"\['head/bias'\]"):
        load_params(target, wrong)
    _assert_trees_equal(_params(target), before)  # nothing was copied


def test_params_back_are_linen_params_of_the_run_model(doc):
    run, x, lengths = doc["run"], doc["x"], doc["x_lengths"]
    back = doc["params_back"]
    assert sorted(flatten_dict(back, sep="/")) == sorted(flatten_dict(run.params, sep="/"))
    _assert_trees_equal(back, run.params)  # taken after loading, before training
    np.testing.assert_array_equal(run.model.apply({"params": back}, x, lengths), doc["logits"])


def test_head_only_training_leaves_the_encoder_exactly_and_full_training_moves_it(doc):
    run, load_params, train_step = doc["run"], doc["load_params"], doc["train_step"]
    xb, lb, yb = doc["xb"], doc["lb"], doc["yb"]
    model = doc["Classifier"](run.model, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, xb, lb)
    load_params(model, run.params)
    head_only = nnx.All(nnx.Param, nnx.PathContains("head"))
    optimizer = nnx.Optimizer(model, doc["optax"].adam(1e-2), wrt=head_only)
    count = model.encoder.to_nnx__rngs.default.count[...]
    losses = [float(train_step(model, optimizer, xb, lb, yb)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert model.encoder.to_nnx__rngs.default.count[...] > count  # advances inside nnx.jit
    _assert_trees_equal(_params(model)["encoder"], run.params["encoder"])
    assert not np.array_equal(_params(model)["head"]["kernel"], run.params["head"]["kernel"])
    # no optimizer state for the frozen encoder
    state = nnx.to_pure_dict(nnx.state(optimizer, nnx.OptState))
    moments = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert moments and not any("encoder" in path for path in moments)
    assert any("head" in path for path in moments)
    # the guide's own runs: both went down, and the full stage moved the encoder
    assert doc["head_losses"][-1] < doc["head_losses"][0]
    assert doc["losses"][-1] < doc["losses"][0]
    encoder = _params(doc["classifier"])["encoder"]
    assert not np.array_equal(encoder["layer_0"]["w_hh"], run.params["encoder"]["layer_0"]["w_hh"])


def test_nnx_update_alone_takes_a_wrong_shape_and_a_misspelt_path_silently():
    """Why the guide's load_params compares the trees first (Flax 0.12; if this starts to
    raise, Flax checks for itself and the guide can say so)."""
    linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    nnx.update(linear, {"kernel": jnp.zeros((5, 5)), "bias": jnp.zeros(3)})
    assert linear.kernel.shape == (5, 5)
    nnx.update(linear, {"kernl": jnp.zeros((2, 3))})
    assert hasattr(linear, "kernl")
