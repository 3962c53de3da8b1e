"""A corpus streamed from disk trains exactly as the same rows held in memory, and its
reader's position is saved with every checkpoint (issue 25).

The corpus: 40 small text files prepared into rows of 32 bytes (fnn_jax.data.corpus); the
model: a 16-unit GRU language model, 12 steps of 4 rows.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import test as test_config
from fnn_jax import sweep
from fnn_jax.checkpoint import Checkpoints, CorruptCheckpoint, load_exported
from fnn_jax.config import ConfigError
from fnn_jax.data import corpus
from fnn_jax.train import train_and_evaluate
from fnn_jax.train.vectorized import train_together

pytest.importorskip("grain")


def _write_docs(root: Path, changed: bool = False) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        size = int(rng.integers(20, 200))
        text = bytes(rng.choice(list(b"abcde fgh\n"), size))
        (root / f"d{i:02d}.txt").write_bytes(text.upper() if changed and i == 3 else text)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream_docs")
    _write_docs(root / "docs")
    corpus.prepare(f"{root}/docs/*.txt", root / "c", row_length=32, validation=0.2, test=0.2)
    return root / "c"


def _config(path: Path, stream: bool, **overrides):
    options = {"path": str(path), "stream": stream}
    return sweep.apply_overrides(
        test_config.get_config(),
        {
            "data.name": "corpus",
            "data.options": options,
            "data.batch_size": 4,
            "model.cell": "gru",
            "model.hidden_size": 16,
            "train.num_steps": 12,
            "train.eval_every_steps": 4,
            "train.log_every_steps": 4,
            **overrides,
        },
    )


def _same_run(a: Path, b: Path) -> None:
    """Parameters bit for bit, and every logged number."""
    pa, pb = load_exported(a / "export"), load_exported(b / "export")
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(x, y)
    lines = lambda w: [
        {k: v for k, v in json.loads(line).items() if k not in ("time", "wall_time_s")}
        for line in (w / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines(a) == lines(b)


@pytest.fixture(scope="module")
def in_memory(prepared, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("memory") / "run"
    train_and_evaluate(_config(prepared, stream=False), workdir)
    return workdir


def test_a_streamed_run_equals_the_same_rows_held_in_memory_bit_for_bit(
    prepared, in_memory, tmp_path
):
    report = train_and_evaluate(_config(prepared, stream=True), tmp_path / "s")
    _same_run(in_memory, tmp_path / "s")
    assert report["data"]["fingerprint"]["rows"]["train"] == len(
        corpus.open_corpus(prepared).split("train")
    )


def test_a_streamed_run_saves_its_position_and_resumes_exactly(prepared, in_memory, tmp_path):
    config = _config(prepared, stream=True)
    out = train_and_evaluate(config, tmp_path / "s", stop_after_steps=5)  # not a save point
    assert out == {"interrupted_at": 5}
    checkpoints = Checkpoints(tmp_path / "s/checkpoints", read_only=True)
    assert checkpoints.restore_data(4) == {"next_index": 4}
    assert checkpoints.restore_data(5) == {"next_index": 5}
    checkpoints.close()
    train_and_evaluate(config, tmp_path / "s")
    _same_run(in_memory, tmp_path / "s")


def test_a_damaged_data_position_is_named(prepared, tmp_path):
    config = _config(prepared, stream=True)
    train_and_evaluate(config, tmp_path / "s", stop_after_steps=5)
    saved = tmp_path / "s/checkpoints/5/data/metadata"  # Orbax's JSON item
    assert json.loads(saved.read_text()) == {"next_index": 5}
    saved.write_text(saved.read_text().replace("5", "9"))
    with pytest.raises(CorruptCheckpoint, match="step 5 .* data position does not match"):
        train_and_evaluate(config, tmp_path / "s")


def test_a_corpus_changed_since_the_run_started_is_refused_on_resume(tmp_path):
    _write_docs(tmp_path / "docs")
    corpus.prepare(
        f"{tmp_path}/docs/*.txt", tmp_path / "c", row_length=32, validation=0.2, test=0.2
    )
    config = _config(tmp_path / "c", stream=True)
    train_and_evaluate(config, tmp_path / "run", stop_after_steps=4)
    _write_docs(tmp_path / "docs", changed=True)
    shutil.rmtree(tmp_path / "c")
    corpus.prepare(
        f"{tmp_path}/docs/*.txt", tmp_path / "c", row_length=32, validation=0.2, test=0.2
    )
    with pytest.raises(ConfigError, match="allow_changed"):
        train_and_evaluate(config, tmp_path / "run")


def test_a_vectorised_group_cannot_stream(prepared, tmp_path):
    configs = [_config(prepared, stream=True, seed=s) for s in (0, 1)]
    with pytest.raises(ConfigError, match="vectorised group of 2 trials cannot share"):
        train_together(configs, [tmp_path / "a", tmp_path / "b"])
