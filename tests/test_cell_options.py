"""Cells declare their options (cells.spec.Option): the layers pass each cell only what it
declares, with the cell's own defaults, and the config holds one section per cell."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn_jax import cells, config, layers, tasks
from fnn_jax.cells import elman
from fnn_jax.cells._common import activation_option
from fnn_jax.cells.spec import CellSpec
from tests import numpy_reference as ref

# A throwaway cell: elman's formula whose own activation default is relu.
RELU_ELMAN = CellSpec(
    "relu_elman",
    elman.init_params,
    elman.init_carry,
    elman.step,
    elman.project_inputs,
    elman.step_projected,
    options=(activation_option(default="relu"),),
)


@pytest.fixture
def relu_elman(monkeypatch):
    monkeypatch.setitem(cells.REGISTRY, "relu_elman", RELU_ELMAN)
    return RELU_ELMAN


def _python_loop(step, params, xs):
    """[batch, time, features] -> [batch, time, hidden] by a NumPy loop over ``step``."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.zeros((xs.shape[0], p["w_hh"].shape[0]))
    ys = []
    for t in range(xs.shape[1]):
        h, y = step(p, h, np.asarray(xs[:, t], np.float64))
        ys.append(y)
    return np.stack(ys, axis=1)


def test_a_cell_keeps_its_own_activation_default_whatever_other_cells_are_set_to(relu_elman):
    cfg = config.default_config()
    cfg.model.cell = "relu_elman"
    cfg.model.elman.activation = "tanh"  # another cell's section: not this cell's
    cfg.model.equilibrium.activation = "sigmoid"
    options = tasks.cell_options(cfg.model)
    assert options == {"activation": "relu"}

    xs = jax.random.normal(jax.random.key(0), (3, 5, 4))
    layer = layers.Recurrent(cell="relu_elman", hidden_size=6, options=options)
    params = layer.init(jax.random.key(1), xs)
    _, ys = layer.apply(params, xs)
    want = _python_loop(functools.partial(ref.elman, activation="relu"), params["params"], xs)
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-6)
    # No options at all: the same (the cell's default, not tanh).
    _, default_ys = layers.Recurrent(cell="relu_elman", hidden_size=6).apply(params, xs)
    np.testing.assert_array_equal(default_ys, ys)


def test_each_cells_section_sets_only_that_cell():
    cfg = config.default_config()
    cfg.model.jordan.activation = "relu"
    cfg.model.cell = "elman"
    assert tasks.cell_options(cfg.model) == {"activation": "tanh"}
    cfg.model.cell = "jordan"
    assert tasks.cell_options(cfg.model) == {"activation": "relu", "output_activation": "tanh"}
    cfg.model.cell = "lstm"
    assert tasks.cell_options(cfg.model) == {}


def test_config_sections_hold_exactly_the_options_each_cell_declares():
    """The config (read without jax) repeats the declarations by hand: they must agree."""
    model = config.default_config().model
    for name, spec in cells.REGISTRY.items():
        plain = {o.name: o.default for o in spec.options if o.from_section is None}
        section = model.get(name)
        if not spec.options:
            assert section is None, f"config.model.{name}: cell {name!r} declares no options"
            continue
        assert section is not None, f"config.model.{name} missing: {sorted(plain)}"
        built = config.EQUILIBRIUM_SOLVER_KEYS if name == "equilibrium" else ()
        assert set(section) == set(plain) | set(built), name  # no key the cell ignores
        assert {k: section[k] for k in plain} == plain, name
    # The equilibrium solver's section keys make its default solver.
    solver = cells.equilibrium.solver_from_section(model.equilibrium)
    assert solver == cells.equilibrium.DEFAULT_SOLVER


def test_an_option_the_cell_does_not_declare_is_refused_by_the_layer():
    layer = layers.Recurrent(cell="lstm", hidden_size=4, options={"activation": "relu"})
    with pytest.raises(ValueError, match=r"cell 'lstm' has no option\(s\) \['activation'\]"):
        layer.init(jax.random.key(0), jnp.ones((1, 2, 3)))


def test_a_bad_option_value_is_refused_naming_the_config_key():
    cfg = config.default_config()
    cfg.model.cell = "jordan"
    cfg.model.jordan.output_activation = "swish"
    with pytest.raises(config.ConfigError, match=r"config.model.jordan.output_activation='swish'"):
        config.validate(cfg)
    cfg.model.jordan.output_activation = "identity"
    cfg.model.cell, cfg.model.equilibrium.max_feedback_norm = "equilibrium", -1.0
    with pytest.raises(config.ConfigError, match="max_feedback_norm"):
        config.validate(cfg)


def test_the_layer_passes_each_option_only_to_the_functions_that_declare_it():
    spec = cells.get("equilibrium")
    values = spec.option_values({"max_feedback_norm": 0.9})
    assert set(spec.keywords(values, "step")) == {"activation", "solver"}
    assert spec.keywords(values, "prepare") == {"max_feedback_norm": 0.9}
    assert set(spec.keywords(values, "summarize")) == {"solver"}
    assert spec.keywords(values, "init_params") == {}
