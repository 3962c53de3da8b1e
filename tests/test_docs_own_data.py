"""docs/own_data.md runs as written: every command and every ```python block, on the example
files of experiments/make_example_data.py, at a tiny size (few steps, a small model)."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from fnn_jax import cli, data, sweep
from fnn_jax.train import train_and_evaluate
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "own_data.md"
TINY = {
    "train.num_steps": 4,
    "train.eval_every_steps": 2,
    "model.hidden_size": 8,
    "data.batch_size": 8,
}


def _blocks(language: str) -> list[str]:
    """The guide's fenced blocks whose info string is exactly ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", GUIDE.read_text(), re.M | re.S)


def _commands() -> list[list[str]]:
    lines = "\n".join(_blocks("bash")).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """The guide's first command, run in a fresh folder (the root of a checkout, as the
    guide's paths expect)."""
    folder = tmp_path_factory.mktemp("checkout")
    module = load_script("make_example_data")
    (make,) = [c for c in _commands() if c[1] == "experiments/make_example_data.py"]
    module.write(folder / make[make.index("--out") + 1])
    return folder


def _run(command, monkeypatch):
    """experiments/main.py's flags, read as main.py reads them, plus TINY."""
    assert command[:2] == ["python", "experiments/main.py"], command
    args = dict(arg.split("=", 1) for arg in command[2:] if arg.startswith("--config."))
    flags = dict(zip(command[2::2], command[3::2], strict=False))
    config = cli._load_config_file(str(ROOT / flags["--config"]))
    overrides = {}
    for flag, value in args.items():
        key = flag[len("--config.") :]
        overrides[key] = sweep.parse_axes([f"{key}={value}"], config)[key][0]
    config = sweep.apply_overrides(config, {**overrides, **TINY})
    if config.data.name == "text_files":
        config = sweep.apply_overrides(config, {"data.options.seq_len": 16})
    return train_and_evaluate(config, flags["--workdir"])


@pytest.mark.slow
@pytest.mark.parametrize("index", range(5))
def test_every_command_of_the_guide_trains_on_the_example_files(examples, index, monkeypatch):
    monkeypatch.chdir(examples)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    commands = [c for c in _commands() if c[1] == "experiments/main.py"]
    assert len(commands) == 5  # one per source
    report = _run(commands[index], monkeypatch)
    assert report["steps"] == 4
    assert report["data"]["fingerprint"]["files"]  # the files read, with their hashes


def test_the_guides_python_arrays_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = [b for b in _blocks("python") if "fnn_jax.fit" in b]
    tiny = re.sub(r'"train.num_steps": \d+', '"train.num_steps": 4', code)
    namespace = {}
    exec(compile(tiny, str(GUIDE), "exec"), namespace)  # noqa: S102 (our own docs)
    assert namespace["report"]["steps"] == 4
    assert namespace["run"].dataset.info["class_names"] == ["falling", "rising"]


def test_the_series_example_gives_exactly_the_builtin_sunspots_windows(examples, monkeypatch):
    monkeypatch.chdir(examples)
    (command,) = [c for c in _commands() if "configs/own_data.py:series" in c]
    path = next(a.split("=", 1)[1] for a in command if a.startswith("--config.data.options.path"))
    mine = data.load("series", path=path, time_column="YEAR", window=24)
    builtin = data.load("sunspots", window=24)
    for split in data.SPLITS:
        np.testing.assert_allclose(mine.split(split).inputs, builtin.split(split).inputs, rtol=1e-6)
        np.testing.assert_allclose(
            mine.split(split).targets, builtin.split(split).targets, rtol=1e-6
        )
    assert mine.baselines["mse_naive_last_value"] == pytest.approx(
        builtin.baselines["mse_naive_last_value"], rel=1e-6
    )
