"""A corpus streamed from disk trains exactly as the same rows held in memory, and its
reader's position is saved with every checkpoint (issue 25).

The corpus: 40 small text files prepared into rows of 32 bytes (fnn_jax.data.corpus); the
model: a 16-unit GRU language model, 12 steps of 4 rows.
"""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from fnn_jax import sweep
from fnn_jax.checkpoint import Checkpoints, CorruptCheckpoint, load_exported
from fnn_jax.config import ConfigError
from fnn_jax.data import corpus
from fnn_jax.train import train_and_evaluate
from fnn_jax.train.vectorized import train_together
from tests.kill9 import kill_until_finished
from tests.scripts import load_script

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


def _group(prepared: Path, stream: bool) -> list:
    """Two trials that read in different orders (seeds) at different learning rates."""
    return [
        _config(prepared, stream=stream, seed=s, **{"optimizer.learning_rate": lr})
        for s, lr in ((0, 1e-2), (1, 3e-3))
    ]


@pytest.fixture(scope="module")
def group_in_memory(prepared, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("group_memory")
    train_together(_group(prepared, stream=False), [root / "a", root / "b"])
    return root


def test_a_streamed_vectorised_group_equals_the_group_in_memory_bit_for_bit(
    prepared, group_in_memory, tmp_path
):
    outcomes = train_together(_group(prepared, stream=True), [tmp_path / "a", tmp_path / "b"])
    assert all("results" in outcome for outcome in outcomes), outcomes
    for name in ("a", "b"):
        _same_run(group_in_memory / name, tmp_path / name)


def test_a_streamed_group_stopped_and_resumed_reads_on_where_each_trial_stopped(
    prepared, group_in_memory, tmp_path
):
    workdirs = [tmp_path / "a", tmp_path / "b"]
    stopped = train_together(_group(prepared, stream=True), workdirs, stop_after_steps=6)
    assert stopped == [{"interrupted_at": 6}] * 2
    for workdir in workdirs:  # each trial's own reader position, saved with its step
        checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
        assert checkpoints.restore_data(6) == {"next_index": 6}
        checkpoints.close()
    train_together(_group(prepared, stream=True), workdirs)
    for name in ("a", "b"):
        _same_run(group_in_memory / name, tmp_path / name)


def test_truncated_bptt_on_a_stream_equals_it_in_memory_bit_for_bit(prepared, tmp_path):
    """Rows of 32 bytes in windows of 12: 3 steps a row, padded to 36 as in memory."""
    tbptt = {"train.tbptt_length": 12}
    train_and_evaluate(_config(prepared, stream=False, **tbptt), tmp_path / "memory")
    train_and_evaluate(_config(prepared, stream=True, **tbptt), tmp_path / "s", stop_after_steps=7)
    train_and_evaluate(_config(prepared, stream=True, **tbptt), tmp_path / "s")
    _same_run(tmp_path / "memory", tmp_path / "s")


def _command(prepared: Path, workdir: Path, stream: bool) -> list[str]:
    overrides = {
        "data.name": "corpus",
        "data.options.path": str(prepared),
        "data.options.stream": str(stream),
        "data.batch_size": "4",
        "model.cell": "gru",
        "model.hidden_size": "16",
        "train.num_steps": "80",
        "train.eval_every_steps": "4",
        "train.log_every_steps": "4",
        "train.checkpoint_every_s": "0",  # a checkpoint at every validation
        "train.steps_per_dispatch": "1",
    }
    root = Path(__file__).resolve().parents[1]
    return [
        sys.executable,
        str(root / "experiments/main.py"),
        f"--config={root / 'configs/test.py'}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_reads_the_same_batches_as_an_uninterrupted_run(
    prepared, tmp_path
):
    """kill -9 at random moments of a streamed run (each attempt timed from its first
    progress line), until one finishes: parameters and logs equal the run held in memory,
    which never stopped."""
    reference = tmp_path / "memory"
    assert subprocess.run(_command(prepared, reference, False), capture_output=True).returncode == 0
    command = _command(prepared, tmp_path / "s", True)
    kills = kill_until_finished(command, attempts=6, window=(0.2, 1.5))
    assert kills >= 1, "the run finished before any kill: make it longer"
    steps = Checkpoints(tmp_path / "s/checkpoints", read_only=True).steps()
    assert steps, "no checkpoint: nothing was resumed"
    _same_run(reference, tmp_path / "s")


STREAM_WORKER = """
import json, sys
from configs import test as test_config
from fnn_jax import sweep
from fnn_jax.data import corpus
from fnn_jax.train import train_and_evaluate

address, processes, rank, workdir, path = sys.argv[1:6]
c = sweep.apply_overrides(test_config.get_config(), {
    "data.name": "corpus", "data.options": {"path": path, "stream": True},
    "data.batch_size": 8, "data.eval_batch_size": 16, "model.cell": "gru",
    "model.hidden_size": 16, "train.num_steps": 10, "train.eval_every_steps": 5,
    "train.log_every_steps": 5, "train.compilation_cache": ""})
if int(processes) > 1:
    with c.unlocked():
        c.distributed.coordinator_address = address
        c.distributed.num_processes = int(processes)
        c.distributed.process_id = int(rank)
read = []  # the train rows this process read, in order
rows = corpus.CorpusSplit.rows
def recording(self, indices):
    if self.name == "train":
        read.append([int(i) for i in indices])
    return rows(self, indices)
corpus.CorpusSplit.rows = recording
report = train_and_evaluate(c, workdir)
print(json.dumps({"read": read, "results": report["results"]}, default=float))
"""


@pytest.mark.slow
def test_two_processes_stream_disjoint_halves_and_train_as_one_process(prepared, tmp_path):
    """Each process reads only its half of every global batch of 8 rows from disk; the
    halves make the batch one process reads, and the model equals one process's (1e-6:
    the batch's sums split over two devices)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device each
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    root = Path(__file__).resolve().parents[1]

    def start(processes: int, rank: int, workdir: Path) -> subprocess.Popen:
        argv = [address, str(processes), str(rank), str(workdir), str(prepared)]
        return subprocess.Popen(
            [sys.executable, "-c", STREAM_WORKER, *argv],
            cwd=root,
            env=env,
            stdout=(tmp_path / f"{workdir.name}{rank}.out").open("w"),
            stderr=(tmp_path / f"{workdir.name}{rank}.err").open("w"),
        )

    def output(workdir: Path, rank: int, process: subprocess.Popen) -> dict:
        process.wait(timeout=300)
        err = (tmp_path / f"{workdir.name}{rank}.err").read_text()
        assert process.returncode == 0, err[-3000:]
        out = (tmp_path / f"{workdir.name}{rank}.out").read_text()
        return json.loads(out.strip().splitlines()[-1])

    together = [start(2, rank, tmp_path / "together") for rank in (0, 1)]
    halves = [output(tmp_path / "together", r, p) for r, p in enumerate(together)]
    alone = output(tmp_path / "alone", 0, start(1, 0, tmp_path / "alone"))
    # Each process first reads the loader's sample and the first batch's shapes, then its
    # half of each of the 10 steps' batches.
    first, second = (h["read"][2:] for h in halves)
    batches = alone["read"][2:]
    assert len(first) == len(second) == len(batches) == 10
    for a, b, whole in zip(first, second, batches, strict=True):
        assert a + b == whole and not set(a) & set(b)
    np.testing.assert_allclose(
        halves[0]["results"]["test"]["loss"], alone["results"]["test"]["loss"], rtol=1e-5
    )
    pa, pb = load_exported(tmp_path / "together/export"), load_exported(tmp_path / "alone/export")
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_pycode_charlm_streams_its_corpus_and_reports_the_unigram_baseline(prepared, tmp_path):
    """configs/pycode_charlm.py, shrunk, on the test corpus: it streams (the train rows
    are read from disk), and its unigram baseline is experiments/pycode_baselines.py's."""
    from configs import pycode_charlm

    config = sweep.apply_overrides(
        pycode_charlm.get_config("4"),
        {"data.options.path": str(prepared), "model.hidden_size": 8, "data.batch_size": 4},
    )
    assert config.data.options.stream and config.model.num_layers == 2
    report = train_and_evaluate(config, tmp_path / "run")
    baselines = load_script("pycode_baselines")
    opened = corpus.open_corpus(prepared)
    train, test = (baselines.tokens_of(opened.split(s)) for s in ("train", "test"))
    bits = baselines.unigram_bits(train[1:], test[1:])  # every token but the first: targets
    assert report["baselines"]["cross_entropy_unigram"] / np.log(2) == pytest.approx(bits, 1e-9)


def test_a_byte_model_samples_utf8_text_its_greedy_bytes_the_whole_models_argmax(
    prepared, tmp_path
):
    """experiments/sample.py on a byte corpus: the prompt is read as its UTF-8 bytes after
    the separator, and the greedy bytes are those the whole model picks, one prefix at a
    time (an independent reference)."""
    import fnn_jax
    from tests.test_reviews import _sampler  # the command's flags are defined once

    config = sweep.apply_overrides(
        _config(prepared, stream=True), {"train.num_steps": 4, "model.num_layers": 2}
    )
    train_and_evaluate(config, tmp_path / "run")
    run = fnn_jax.load(tmp_path / "run")
    fresh = run.model.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"]
    run = dataclasses.replace(run, params=fresh)  # random weights: a varied greedy text
    text, ids = _sampler().sample(run, "déf ", temperature=0.0, length=10, seed=0)
    tokens = [corpus.SEPARATOR, *"déf ".encode()]
    expected = []
    for _ in range(len(ids)):
        logits = run(jnp.asarray([tokens], jnp.int32))[0, -1]
        expected.append(int(jnp.argmax(logits)))
        tokens.append(expected[-1])
    assert ids == expected and len(ids) == 10 and len(set(ids)) > 2
    assert text == "déf " + bytes(ids).decode("utf-8", errors="replace")
