"""A byte-level corpus packed on disk (fnn_jax.data.corpus) and streamed through grain
(fnn_jax.data.stream): packing, held-out files, the engine's batch order from any step,
per-process slices, the iterator's position in an Orbax checkpoint, bounded memory and the
refusals. References are built here, from the documents' bytes, independently of the code."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from fnn_jax.data import corpus, fingerprint, stream
from fnn_jax.data.arrays import DataError
from fnn_jax.data.base import SPLITS, Split, epoch_order

SEP = 256
T = 16  # row length
VALIDATION = TEST = 0.25
# Bytes per document: empty, shorter than a row, exactly a row, longer than several rows.
SIZES = [0, 1, 3, 7, 15, 16, 17, 31, 33, 50, 64, 100, 5, 9, 2, 40, 70, 12, 26, 90, 4, 6, 8, 11]


def reference_split(name: str) -> str:
    """The held-out rule, written out: the first 8 bytes of SHA-256(path) as a fraction."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "test" if u < TEST else "validation" if u < TEST + VALIDATION else "train"


@dataclasses.dataclass(frozen=True)
class Documents:
    """The files written for a corpus: {path below root: bytes}."""

    root: Path
    files: dict[str, bytes]

    def of(self, split: str) -> list[bytes]:
        """The split's documents in corpus order: sorted by absolute path."""
        names = sorted(self.files, key=lambda n: str(self.root / n))
        return [self.files[n] for n in names if reference_split(n) == split]


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Documents:
    """Random bytes (0 and 255 included), a third of the files in a subfolder."""
    root = tmp_path_factory.mktemp("docs")
    (root / "sub").mkdir()
    rng = np.random.default_rng(1)
    files = {}
    for i, size in enumerate(SIZES):
        name = f"{'sub/' if i % 3 == 0 else ''}doc{i:02d}.bin"
        files[name] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        (root / name).write_bytes(files[name])
    return Documents(root, files)


@pytest.fixture(scope="module")
def prepared(docs, tmp_path_factory) -> corpus.Corpus:
    out = tmp_path_factory.mktemp("corpus")
    corpus.prepare(f"{docs.root}/**/*.bin", out, row_length=T, validation=VALIDATION, test=TEST)
    return corpus.open_corpus(out, verify=True)


def reference_rows(docs_of_split: list[bytes]) -> dict[str, np.ndarray]:
    """Every row of a split, packed here: the stream [SEP, doc..., SEP, doc..., SEP] cut
    into rows of T inputs and their next tokens; the partial last row padded."""
    stream_ = [SEP]
    for d in docs_of_split:
        stream_ += [*d, SEP]
    tokens = np.array(stream_)
    n = -(-(len(tokens) - 1) // T)
    inputs, targets = np.zeros((n, T), np.int32), np.full((n, T), -1, np.int32)
    lengths, resets = np.zeros(n, np.int32), np.zeros((n, T), bool)
    for i in range(n):
        x = tokens[i * T : i * T + T + 1]
        k = lengths[i] = len(x) - 1
        inputs[i, :k], targets[i, :k], resets[i, :k] = x[:-1], x[1:], x[:-1] == SEP
    return {"inputs": inputs, "targets": targets, "lengths": lengths, "resets": resets}


def all_rows(split: corpus.CorpusSplit) -> dict[str, np.ndarray]:
    return split.rows(np.arange(len(split)))


def assert_batches_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.asarray(got[k]).dtype == np.asarray(want[k]).dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ------------------------------------------------------------------------------- packing


def test_packing_round_trips_the_documents(prepared, docs):
    for split in SPLITS:
        got = [bytes(d) for d in corpus.unpack(all_rows(prepared.split(split)))]
        assert got == docs.of(split)
        assert len(got) == prepared.manifest["splits"][split]["documents"]
    assert any(len(d) > T for d in docs.of("train"))
    assert any(0 < len(d) < T for d in docs.of("train"))


def test_rows_are_next_token_windows_and_documents_end_in_the_separator(prepared, docs):
    for split in SPLITS:
        want = reference_rows(docs.of(split))
        got = all_rows(prepared.split(split))
        assert_batches_equal(got, want)
        # No target crosses into the next document: the step before each document's
        # separator, and the last step, predict the separator (row i, step t is token i*T+t).
        resets, targets = got["resets"].ravel(), got["targets"].ravel()
        ends = np.append(np.flatnonzero(resets)[1:] - 1, prepared.split(split).tokens - 2)
        assert len(ends) == len(docs.of(split))
        assert (targets[ends] == SEP).all()
        assert (targets == SEP).sum() == len(ends)
        # The index of document starts: each separator's offset in the split's tokens.
        np.testing.assert_array_equal(prepared.starts(split), np.flatnonzero(resets))


def test_the_manifest_records_sizes_and_hashes(prepared, docs):
    m = prepared.manifest
    assert (m["row_length"], m["vocab_size"], m["separator"]) == (T, 257, SEP)
    for split in SPLITS:
        entry = m["splits"][split]
        ds = docs.of(split)
        assert entry["tokens"] == sum(len(d) + 1 for d in ds) + 1
        assert entry["rows"] == len(prepared.split(split)) == -(-(entry["tokens"] - 1) // T)
        assert [s["bytes"] for s in entry["sources"]] == [len(d) for d in ds]
        for name, digest in entry["files"].items():
            assert hashlib.sha256((prepared.root / name).read_bytes()).hexdigest() == digest


def test_whole_files_are_held_out_by_a_hash_of_their_path(prepared, docs, tmp_path):
    for split in SPLITS:
        names = [s["path"] for s in prepared.manifest["splits"][split]["sources"]]
        assert names and all(reference_split(n) == split for n in names)
    # A file's bytes are a document of exactly one split.
    held = {s: [bytes(d) for d in corpus.unpack(all_rows(prepared.split(s)))] for s in SPLITS}
    for name, data in docs.files.items():
        assert sum(data in held[s] for s in SPLITS) == 1, name
    # Moved to another folder, the corpus keeps its splits (paths below the common folder).
    moved = tmp_path / "elsewhere"
    shutil.copytree(docs.root, moved)
    corpus.prepare(
        str(moved / "**/*.bin"), tmp_path / "c", row_length=T, validation=VALIDATION, test=TEST
    )
    again = corpus.open_corpus(tmp_path / "c")
    for split in SPLITS:
        assert (
            again.manifest["splits"][split]["files"] == prepared.manifest["splits"][split]["files"]
        )


def test_the_corpus_loader_holds_the_same_rows_in_memory(prepared):
    from fnn_jax import data

    ds = data.load("corpus", path=str(prepared.root))
    for split in SPLITS:
        rows = all_rows(prepared.split(split))
        s = ds.split(split)
        assert_batches_equal(
            {"inputs": s.inputs, "targets": s.targets, "lengths": s.lengths, "resets": s.resets},
            rows,
        )
    assert ds.num_classes == 257
    assert fingerprint.changes(fingerprint.fingerprint(ds), fingerprint.fingerprint(ds)) == []


# -------------------------------------------------------------------------------- stream


def engine_rows(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """The engine's rows for a step, written out: epoch_order's permutation, cut in
    batches, the remainder dropped."""
    epoch, position = divmod(step, n // batch)
    return epoch_order(n, seed=seed, epoch=epoch)[position * batch : (position + 1) * batch]


def test_epoch_order_is_the_engines_train_order(prepared):
    from fnn_jax.train.trial import Setup

    n = len(prepared.split("train"))
    for windows in (1, 3):
        fake = types.SimpleNamespace(
            steps_per_epoch=(n // 5) * windows,
            windows=windows,
            batch_size=5,
            dataset=types.SimpleNamespace(num_rows={"train": n}.get),
        )
        order = stream.EpochOrder(n, 5, seed=7, windows=windows)
        want = Setup.train_indices(fake, 7, 0, 3 * (n // 5) * windows)
        got = np.stack([order(s) for s in range(len(want))])
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int32


@pytest.mark.parametrize("start_step", [0, 5, 13])
def test_the_stream_reads_the_engines_rows_from_any_start_step(prepared, start_step):
    train = prepared.split("train")
    n, batch = len(train), 4
    order = stream.EpochOrder(n, batch, seed=3)
    it = stream.train_stream(train, row_indices=order, start_step=start_step, num_steps=12)
    for step in range(start_step, start_step + 12):  # crosses an epoch: n // batch steps
        rows = engine_rows(n, batch, 3, step)
        want = {**reference_rows_at(train, rows), "index": rows.astype(np.int32)}
        assert_batches_equal(next(it), {**want, "step": np.asarray(step, np.int64)})
    with pytest.raises(StopIteration):
        next(it)


def reference_rows_at(split: corpus.CorpusSplit, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Rows read one at a time: the direct reads a stream must equal bit for bit."""
    parts = [split.rows(np.array([r])) for r in rows]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_worker_processes_yield_the_same_batches(prepared, workers):
    train = prepared.split("train")
    order = stream.EpochOrder(len(train), 4, seed=0)
    read = lambda w: stream.train_stream(  # noqa: E731
        train, row_indices=order, start_step=2, num_steps=9, workers=w
    )
    want = list(read(0))
    it = read(workers)
    try:
        got = list(it)
    finally:
        it.close()
    assert len(got) == len(want) == 9
    for g, w in zip(got, want, strict=True):
        assert_batches_equal(g, w)


def test_two_processes_read_disjoint_halves_of_the_global_batch(prepared):
    train = prepared.split("train")
    order = stream.EpochOrder(len(train), 6, seed=1)
    make = lambda p, count: stream.train_stream(  # noqa: E731
        train, row_indices=order, start_step=4, num_steps=8, process_index=p, process_count=count
    )
    for whole, first, second in zip(make(0, 1), make(0, 2), make(1, 2), strict=True):
        assert len(first["index"]) == len(second["index"]) == 3
        np.testing.assert_array_equal(whole["index"][:3], first["index"])
        for k in ("inputs", "targets", "lengths", "resets", "index"):
            np.testing.assert_array_equal(np.concatenate([first[k], second[k]]), whole[k])


def test_the_iterator_position_restores_from_an_orbax_checkpoint(prepared, tmp_path):
    import orbax.checkpoint as ocp

    train = prepared.split("train")
    order = stream.EpochOrder(len(train), 4, seed=2)
    make = lambda: stream.train_stream(  # noqa: E731
        train, row_indices=order, start_step=0, num_steps=30
    )
    it = make()
    for _ in range(7):
        next(it)
    params = {"w": np.arange(3, dtype=np.float32)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(
            7,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), data=stream.save_args(it)
            ),
        )
        manager.wait_until_finished()
    want = [next(it) for _ in range(10)]
    fresh = make()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored = manager.restore(
            7,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params), data=stream.restore_args(fresh)
            ),
        )
    np.testing.assert_array_equal(restored["params"]["w"], params["w"])
    got = [next(fresh) for _ in range(10)]
    assert [int(b["step"]) for b in got] == list(range(7, 17))
    for g, w in zip(got, want, strict=True):
        assert_batches_equal(g, w)


@pytest.mark.parametrize(("batch_size", "processes"), [(4, 1), (5, 1), (100, 1), (4, 2)])
def test_eval_stream_is_eval_batches_of_the_rows_in_memory(prepared, batch_size, processes):
    from fnn_jax.train.steps import eval_batches

    part = prepared.split("validation")
    rows = all_rows(part)
    split = Split(rows["inputs"], rows["targets"], rows["lengths"], rows["resets"])
    want = list(eval_batches(split, batch_size, processes))
    got = [list(stream.eval_stream(part, batch_size, p, processes)) for p in range(processes)]
    assert all(len(g) == len(want) for g in got)
    for b, w in enumerate(want):
        joined = {k: np.concatenate([g[b][k] for g in got]) for k in w}
        assert_batches_equal(joined, w)
    assert sum(float(w["weights"].sum()) for w in want) == len(part)


# -------------------------------------------------------------------------------- memory


def test_streaming_a_64mb_corpus_keeps_memory_bounded(tmp_path):
    psutil = pytest.importorskip("psutil")
    files = tmp_path / "big"
    files.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):  # 64 files of 1 MB: one in memory at a time
        (files / f"{i:02d}.bin").write_bytes(rng.integers(0, 256, 1 << 20, np.uint8).tobytes())
    process = psutil.Process()
    before = process.memory_info().rss
    corpus.prepare(str(files / "*.bin"), tmp_path / "c", row_length=256, validation=0.1, test=0.1)
    train = corpus.open_corpus(tmp_path / "c").split("train")
    assert train.tokens * 2 > 40 << 20  # the token file is larger than the bound below
    order = stream.EpochOrder(len(train), 256, seed=0)
    steps = len(train) // 256
    peak, count = 0, 0
    for batch in stream.train_stream(train, row_indices=order, start_step=0, num_steps=steps):
        count += 1
        last = batch
        if count % 50 == 0:
            peak = max(peak, process.memory_info().rss)
    assert count == steps and last["inputs"].shape == (256, 256)
    peak = max(peak, process.memory_info().rss)
    assert peak - before < 16 << 20, f"RSS grew by {(peak - before) / 2**20:.1f} MB"


# ------------------------------------------------------------------------------ refusals


def test_a_glob_matching_nothing_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"corpus: no file matches '.*nothing\*\.txt'"):
        corpus.prepare(str(tmp_path / "nothing*.txt"), tmp_path / "c", row_length=T)


def test_a_split_shorter_than_one_row_is_refused(docs, tmp_path):
    prepare = lambda t: corpus.prepare(  # noqa: E731
        f"{docs.root}/**/*.bin", tmp_path / "c", row_length=t, validation=VALIDATION, test=TEST
    )
    prepare(T)
    with pytest.raises(DataError, match=r"split '\w+' has \d+ tokens .* fewer than row_length"):
        prepare(10_000)
    # The half-rewritten folder is no corpus: the old manifest went first, the new one is
    # written last.
    with pytest.raises(corpus.CorpusError, match="manifest.json: no such file"):
        corpus.open_corpus(tmp_path / "c")


def test_a_split_without_files_is_refused(docs, tmp_path):
    with pytest.raises(DataError, match=r"split '\w+' gets none of the 1 files"):
        corpus.prepare(str(docs.root / "doc01.bin"), tmp_path / "c", row_length=T)


def test_files_inside_the_output_folder_are_refused(docs, tmp_path):
    shutil.copytree(docs.root, tmp_path / "docs")
    with pytest.raises(DataError, match=rf"{tmp_path / 'docs' / 'doc01.bin'} lies inside"):
        corpus.prepare(str(tmp_path / "docs/**/*.bin"), tmp_path / "docs", row_length=T)


def test_an_unreadable_file_is_named(docs, tmp_path, monkeypatch):
    bad = (docs.root / "doc05.bin").absolute()
    read_bytes = Path.read_bytes

    def refuse(self):
        if self == bad:
            raise PermissionError(13, "Permission denied")
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=rf"{bad}: cannot read \(Permission denied\)"):
        corpus.prepare(
            f"{docs.root}/**/*.bin", tmp_path / "c", row_length=T, validation=VALIDATION, test=TEST
        )


def test_a_train_split_smaller_than_one_batch_is_refused(prepared):
    n = len(prepared.split("train"))
    with pytest.raises(ValueError, match=f"has {n} rows, fewer than one batch of {n + 1}"):
        stream.EpochOrder(n, n + 1, seed=0)


def test_a_row_out_of_range_is_refused(prepared):
    train = prepared.split("train")
    n = len(train)
    with pytest.raises(IndexError, match=rf"train.tokens: row {n} out of range \[0, {n}\)"):
        train.rows(np.array([0, n]))
    with pytest.raises(IndexError, match=r"row -1 out of range"):
        train.rows(np.array([-1]))


def test_a_batch_that_does_not_shard_over_the_processes_is_refused(prepared):
    train = prepared.split("train")
    order = stream.EpochOrder(len(train), 2, seed=0)
    with pytest.raises(ValueError, match="batch of 2 rows over 3 processes leaves process 2 no"):
        stream.train_stream(
            train, row_indices=order, start_step=0, num_steps=1, process_index=0, process_count=3
        )
    order = stream.EpochOrder(len(train), 5, seed=0)
    with pytest.raises(ValueError, match="batch of 5 rows does not split evenly over 2"):
        stream.train_stream(
            train, row_indices=order, start_step=0, num_steps=1, process_index=1, process_count=2
        )


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_token_file_removed_mid_epoch_is_named_and_reading_resumes(prepared, prefetch):
    train = prepared.split("train")
    order = stream.EpochOrder(len(train), 4, seed=0)
    make = lambda start: stream.train_stream(  # noqa: E731
        train, row_indices=order, start_step=start, num_steps=8 - start, prefetch=prefetch
    )
    want = list(make(0))
    it = make(0)
    assert_batches_equal(next(it), want[0])
    away = train.path.with_suffix(".away")
    os.rename(train.path, away)
    try:
        with pytest.raises(corpus.CorpusError, match=rf"^{train.path}: cannot open") as error:
            for _ in range(prefetch + 1):  # the batches read ahead come first
                next(it)
        with pytest.raises(corpus.CorpusError, match=rf"^{train.path}: cannot open"):
            train.rows(np.array([0]))
    finally:
        os.rename(away, train.path)
    failed = int(re.search(r"\(reading step (\d+)\)$", str(error.value)).group(1))
    assert 1 <= failed <= prefetch + 1
    assert_batches_equal(train.rows(np.array([1, 2])), reference_rows_at(train, [1, 2]))
    for got, w in zip(make(failed), want[failed:], strict=True):  # from the failed step on
        assert_batches_equal(got, w)


def test_a_changed_corpus_is_detected_by_its_fingerprint(docs, tmp_path):
    files = tmp_path / "docs"
    shutil.copytree(docs.root, files)
    prepare = lambda: corpus.prepare(  # noqa: E731
        str(files / "**/*.bin"), tmp_path / "c", row_length=T, validation=VALIDATION, test=TEST
    )
    prepare()
    old = corpus.open_corpus(tmp_path / "c").fingerprint()
    prepare()
    assert fingerprint.changes(old, corpus.open_corpus(tmp_path / "c").fingerprint()) == []
    name = next(n for n, d in docs.files.items() if reference_split(n) == "train" and d)
    data = bytearray(docs.files[name])
    data[0] ^= 1  # one bit of one file
    (files / name).write_bytes(bytes(data))
    prepare()
    lines = fingerprint.changes(old, corpus.open_corpus(tmp_path / "c").fingerprint())
    assert len(lines) == 2, lines
    assert lines[0].startswith("sha256.train: ")
    assert lines[1].startswith(f"file {tmp_path / 'c' / 'train.tokens'}: sha256 ")
    # The token file edited behind the manifest's back: its size, or its hash, tells.
    tokens = tmp_path / "c" / "train.tokens"
    raw = bytearray(tokens.read_bytes())
    raw[2] ^= 1
    tokens.write_bytes(bytes(raw))
    with pytest.raises(corpus.CorpusError, match=rf"{tokens}: sha256 .* manifest says"):
        corpus.open_corpus(tmp_path / "c", verify=True)
    tokens.write_bytes(bytes(raw[:-2]))
    with pytest.raises(corpus.CorpusError, match=rf"{tokens}: \d+ bytes, but the manifest"):
        corpus.open_corpus(tmp_path / "c")
