"""Your own data: each source reads back what was written (NumPy / pyarrow references),
splits are disjoint and stratified or chronological, normalisation comes from train only,
and bad files are refused in one line naming the file, row or column."""

import json
import sys

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import csv, parquet

from fnn_jax import data
from fnn_jax.config import ConfigError
from fnn_jax.data import DataError, fingerprint, from_arrays
from fnn_jax.data.text_sources import SEPARATOR
from tests import own_data_files as files


def _numpy_standardised(x, lengths, train_rows):
    """The reference: per-feature mean/std over the train rows' valid steps only."""
    steps = np.concatenate([x[r, : lengths[r]] for r in train_rows])
    mean, std = steps.mean(axis=0), steps.std(axis=0)
    out = (x - mean) / std
    for i, n in enumerate(lengths):
        out[i, n:] = 0.0
    return out


def _assert_partition(index, n):
    rows = np.concatenate([index[s] for s in data.SPLITS])
    assert len(rows) == n and len(np.unique(rows)) == n  # disjoint, and every row once


def test_npz_reads_back_the_sequences_with_train_only_standardisation_and_stratified_splits(
    tmp_path,
):
    path = files.write_npz(tmp_path / "g.npz")
    sequences, labels = files.gestures()
    x, lengths = files.padded(sequences)
    ds = data.load("npz", path=str(path))
    index = ds.info["split_index"]
    _assert_partition(index, 450)
    expected = _numpy_standardised(x, lengths, index["train"])
    assert ds.info["class_names"] == ["down", "flat", "up"]
    for split in data.SPLITS:
        s, rows = ds.split(split), index[split]
        np.testing.assert_allclose(s.inputs, expected[rows], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(s.full_lengths, lengths[rows])
        names = np.array(ds.info["class_names"])[s.targets]
        np.testing.assert_array_equal(names, labels[rows])
        # Stratified: each class's share of the split is its share of the file (150 of 450).
        counts = np.bincount(s.targets, minlength=3)
        assert counts.max() - counts.min() <= 1, (split, counts)
    # Shuffling the validation or test rows leaves the statistics as they were.
    mean = ds.info["normalization"]["mean"]
    steps = np.concatenate([x[r, : lengths[r]] for r in index["train"]])
    np.testing.assert_allclose(mean, steps.mean(axis=0))


def test_a_ragged_object_array_reads_as_the_padded_array_with_lengths(tmp_path):
    sequences, labels = files.gestures(60)
    ragged = np.empty(len(sequences), dtype=object)
    ragged[:] = sequences
    np.savez(tmp_path / "ragged.npz", inputs=ragged, labels=labels)
    x, lengths = files.padded(sequences)
    np.savez(tmp_path / "padded.npz", inputs=x, lengths=lengths, labels=labels)
    a = data.load("npz", path=str(tmp_path / "ragged.npz"))
    b = data.load("npz", path=str(tmp_path / "padded.npz"))
    assert fingerprint.fingerprint(a)["sha256"] == fingerprint.fingerprint(b)["sha256"]


def test_one_file_per_split_keeps_each_files_rows_in_its_split(tmp_path):
    sequences, labels = files.gestures(90)
    x, lengths = files.padded(sequences)
    parts = {"train": slice(0, 60), "validation": slice(60, 75), "test": slice(75, 90)}
    for split, rows in parts.items():
        width = int(lengths[rows].max())  # each file padded to its own longest sequence
        np.savez(
            tmp_path / f"g_{split}.npz",
            inputs=x[rows, :width],
            lengths=lengths[rows],
            labels=labels[rows],
        )
    ds = data.load("npz", path=str(tmp_path / "g_{split}.npz"), normalize=False)
    for split, rows in parts.items():
        s = ds.split(split)
        np.testing.assert_array_equal(s.inputs, x[rows, : s.inputs.shape[1]].astype(np.float32))
        np.testing.assert_array_equal(np.array(ds.info["class_names"])[s.targets], labels[rows])
    assert len(ds.info["files"]) == 3


def _long_table(sequences, labels, rng):
    """A long-form table (id, time, f0..f3, label) with its rows shuffled."""
    rows = [
        (f"s{i}", t, *step, labels[i])
        for i, seq in enumerate(sequences)
        for t, step in enumerate(seq)
    ]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    names = ["id", "time", "f0", "f1", "f2", "f3", "label"]
    return pa.table({name: [r[k] for r in rows] for k, name in enumerate(names)})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_long_table_reads_back_as_the_sequences_written(tmp_path, rng, fmt):
    sequences, labels = files.gestures(60)
    table = _long_table(sequences, labels, rng)
    path = tmp_path / f"g.{fmt}"
    csv.write_csv(table, path) if fmt == "csv" else parquet.write_table(table, path)
    ds = data.load("table", path=str(path), normalize=False)
    assert ds.info["features"] == ["f0", "f1", "f2", "f3"]
    _assert_partition(ds.info["split_index"], 60)
    ids = ds.info["sequence_ids"]
    for split in data.SPLITS:
        s = ds.split(split)
        for j, row in enumerate(ds.info["split_index"][split]):
            source = sequences[int(ids[row][1:])]  # id "s7" is sequence 7
            n = s.full_lengths[j]
            assert n == len(source)
            np.testing.assert_allclose(s.inputs[j, :n], source, rtol=1e-6)


def test_a_series_is_split_in_time_order_and_standardised_with_the_train_segment(tmp_path):
    t = np.arange(400)
    values = {"load": np.sin(t / 7.0) * 10 + t / 40.0, "temp": np.cos(t / 11.0)}
    shuffled = np.random.default_rng(1).permutation(400)  # time column sorts them back
    table = pa.table({"when": t[shuffled], **{k: v[shuffled] for k, v in values.items()}})
    csv.write_csv(table, tmp_path / "s.csv")
    ds = data.load(
        "series",
        path=str(tmp_path / "s.csv"),
        time_column="when",
        window=8,
        horizon=2,
        target_columns=("load",),
    )
    z = np.stack([values["load"], values["temp"]], axis=1)
    lo, hi = ds.info["bounds"]["train"]
    assert (lo, hi) == (0, 280)
    z = (z - z[lo:hi].mean(axis=0)) / z[lo:hi].std(axis=0)
    for split, (lo, hi) in ds.info["bounds"].items():
        s = ds.split(split)
        np.testing.assert_allclose(s.inputs[0], z[lo : lo + 8], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.targets[-1, :, 0], z[hi - 2 : hi, 0], rtol=1e-5, atol=1e-6)
    assert ds.info["bounds"]["validation"][0] == ds.info["bounds"]["train"][1]


def test_a_text_corpus_decodes_back_to_its_files_with_a_reset_at_every_file_start(tmp_path):
    texts = ["first file: héllo\n" * 30, "second one\twith tabs\n" * 30, "third ünïcode ✓\n" * 30]
    for i, text in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    ds = data.load("text_files", paths=str(tmp_path / "*.txt"), seq_len=16)
    vocab = ds.info["vocab"]
    train = ds.train
    windows = np.concatenate([train.inputs, train.targets[:, -1:]], axis=1)  # seq_len + 1
    decoded = "".join(vocab[i] for i in windows.ravel())
    joined = "".join("\x1e" + t for t in texts)
    assert joined.startswith(decoded)  # train windows are the corpus, in order
    np.testing.assert_array_equal(train.resets, train.inputs == SEPARATOR)
    starts = [k for k, c in enumerate(decoded) if c == "\x1e"]
    assert starts == [k for k, c in enumerate(joined[: len(decoded)]) if c == "\x1e"]
    np.testing.assert_array_equal(train.targets[:, :-1], train.inputs[:, 1:])
    assert sorted(vocab[2:]) == vocab[2:] and set(vocab[2:]) == set("".join(texts)[: len(decoded)])


def test_a_text_table_reads_texts_and_labels_in_its_split_column(tmp_path):
    texts = [f"review number {i} {'great' if i % 2 else 'poor'}" for i in range(40)]
    labels = ["great" if i % 2 else "other" for i in range(40)]
    split = ["train"] * 24 + ["validation"] * 8 + ["test"] * 8
    csv.write_csv(pa.table({"text": texts, "label": labels, "split": split}), tmp_path / "r.csv")
    ds = data.load("text_table", path=str(tmp_path / "r.csv"), split_column="split", max_len=64)
    vocab = ds.info["vocab"]
    assert ds.info["class_names"] == ["great", "other"]
    for name, rows in (("train", range(24)), ("test", range(32, 40))):
        s = ds.split(name)
        for j, i in enumerate(rows):
            n = s.lengths[j]
            assert "".join(vocab[k] for k in s.inputs[j, 1:n]) == texts[i]
            assert ds.info["class_names"][s.targets[j]] == labels[i]


def test_from_arrays_accepts_python_lists_and_records_its_class_names():
    sequences, labels = files.gestures(60)
    ds = from_arrays(sequences, labels=labels, seed=3)
    assert ds.task == "classification" and ds.num_classes == 3
    assert ds.info["class_names"] == list(files.CLASSES)
    regression = from_arrays(sequences, targets=np.arange(60.0))
    assert regression.task == "regression" and regression.train.targets.shape[1:] == (1,)


# ------------------------------------------------------------------------- bad input


def _bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return {"path": str(path)}


def _written(path, content):
    path.write_bytes(content)
    return {"path": str(path)}


def _x(n=30, time=6):
    return np.random.default_rng(0).normal(size=(n, time, 2))


def _labels(n=30):
    return np.arange(n) % 3


BAD = {
    "missing inputs": (lambda p: _bad_npz(p, labels=_labels()), "key 'inputs' is missing"),
    "extra key": (
        lambda p: _bad_npz(p, inputs=_x(), labels=_labels(), weights=_labels()),
        "unexpected keys ['weights']",
    ),
    "nan inside a sequence": (
        lambda p: _bad_npz(
            p, inputs=np.where(np.arange(6)[None, :, None] == 2, np.nan, _x()), labels=_labels()
        ),
        "inputs[0, 2, 0] is nan (NaN or inf inside sequence 0",
    ),
    "padded without lengths": (
        lambda p: _bad_npz(
            p, inputs=np.where(np.arange(6)[None, :, None] >= 4, np.nan, _x()), labels=_labels()
        ),
        "if rows are padded, give their lengths",
    ),
    "labels outside declared classes": (
        lambda p: _bad_npz(
            p, inputs=_x(), labels=_labels() + 1, class_names=np.array(["a", "b", "c"])
        ),
        "labels[2]=3 is outside the declared classes 0..2",
    ),
    "class absent from a split": (
        lambda p: _bad_npz(
            p,
            inputs=_x(),
            labels=np.where(np.arange(30) < 20, _labels(), 0),
            split=np.repeat(["train", "validation", "test"], [20, 5, 5]),
        ),
        "class '1' has no rows in split 'validation'",
    ),
    "empty file": (lambda p: _written(p / "e.npz", b""), "the file is empty"),
    "unreadable file": (lambda p: _written(p / "u.npz", b"not a zip"), "not a readable .npz"),
    "no such file": (lambda p: {"path": str(p / "absent.npz")}, "absent.npz: no such file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_npz_is_one_error_naming_the_file_and_what_was_expected(tmp_path, case):
    make, message = BAD[case]
    options = make(tmp_path)
    with pytest.raises(DataError, match=None) as error:
        data.load("npz", **options)
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_split_files_with_different_feature_counts_are_refused(tmp_path):
    for split, width in (("train", 2), ("validation", 3), ("test", 2)):
        np.savez(tmp_path / f"p_{split}.npz", inputs=np.ones((6, 4, width)), labels=_labels(6))
    with pytest.raises(DataError, match="differ in feature count.*'validation': 3"):
        data.load("npz", path=str(tmp_path / "p_{split}.npz"))


@pytest.mark.parametrize(
    ("table", "options", "message"),
    [
        ({"id": [1, 1], "time": [0, 1], "f": [1.0, 2.0]}, {}, "column 'label' is missing"),
        (
            {"id": [1, 1], "time": [0, 1], "f": [1.0, 2.0], "label": ["a", "a"], "g": ["x", "y"]},
            {"feature_columns": ("f",)},
            "columns ['g'] are neither features",
        ),
        (
            {"id": [1, 1], "time": [0, 1], "f": [1.0, None], "label": ["a", "a"]},
            {},
            "row 1 column 'f' is nan",
        ),
        (
            {"id": [1, 1], "time": [0, 1], "f": [1.0, 2.0], "label": ["a", "b"]},
            {},
            "sequence '1' has more than one value in column 'label'",
        ),
        (
            {"id": [1, 1], "time": [0, 1], "f": ["u", "v"], "label": ["a", "a"]},
            {},
            "column 'f' must be numeric",
        ),
        (
            {"id": ["a", None, "a"], "time": [0, 0, 1], "f": [1.0, 2.0, 3.0], "label": ["x"] * 3},
            {},
            "row 1 has no value in column 'id'",
        ),
        (
            {"id": [1, 1, 1], "time": ["0", "?", "2"], "f": [1.0, 2.0, 3.0], "label": ["x"] * 3},
            {},
            "column 'time' must hold numbers or dates; row 0 holds '0'",
        ),
        (
            {"id": [1, 1], "time": [0, None], "f": [1.0, 2.0], "label": ["x", "x"]},
            {},
            "row 1 has no value in column 'time'",
        ),
        (
            {"id": [1, 1, 2], "time": [0, 1, 0], "f": [1.0, 2.0, 3.0], "label": ["a", "a", ""]},
            {},
            "row 2 has no value in column 'label'",
        ),
        ({"id": [1, 1], "time": [0, 1], "label": ["a", "a"]}, {}, "no feature columns remain"),
    ],
)
def test_a_bad_table_names_the_column_or_row(tmp_path, table, options, message):
    csv.write_csv(pa.table(table), tmp_path / "t.csv")
    with pytest.raises(DataError) as error:
        data.load("table", path=str(tmp_path / "t.csv"), **options)
    assert message in str(error.value) and "t.csv" in str(error.value)


def test_text_that_is_not_utf8_is_refused_naming_the_file_and_byte(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine text " * 20)
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(DataError, match=r"b\.txt: not UTF-8 text \(byte 3"):
        data.load("text_files", paths=str(tmp_path / "*.txt"))
    (tmp_path / "t.csv").write_bytes(b"text,label\ncaf\xe9,a\n")
    with pytest.raises(DataError, match=r"t\.csv: column 'text': the text is not UTF-8"):
        data.load("text_table", path=str(tmp_path / "t.csv"))
    with pytest.raises(DataError, match="no file matches"):
        data.load("text_files", paths=str(tmp_path / "*.md"))


def test_a_loader_that_does_not_import_or_returns_no_dataset_is_named(tmp_path, monkeypatch):
    files.write_loader(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="module 'no_such_module' does not import"):
        data.load("no_such_module:load")
    with pytest.raises(ValueError, match="has no function 'lod'"):
        data.load("my_sensors:lod")
    with pytest.raises(ValueError, match="returned list, expected fnn_jax.data.Dataset"):
        data.load("my_sensors:not_a_dataset")
    with pytest.raises(ValueError, match=r"option.m is not an option.*valid: \['n', 'seed'\]"):
        data.load("my_sensors:load", m=3)
    assert len(data.load("my_sensors:load", n=40).train) > 0
    sys.modules.pop("my_sensors", None)


def test_bad_data_is_refused_before_the_workdir_is_touched(tmp_path):
    from fnn_jax.config import default_config
    from fnn_jax.train import train_and_evaluate

    config = default_config()
    config.data.name = "npz"
    config.data.options.path = str(tmp_path / "absent.npz")
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"config.data.name='npz': .*absent.npz: no such file"):
        train_and_evaluate(config, workdir)
    assert not workdir.exists()


def test_the_fingerprint_names_what_changed_and_nothing_when_equal(tmp_path):
    a = data.load("npz", path=str(files.write_npz(tmp_path / "a.npz", n=90)))
    same = data.load("npz", path=str(files.write_npz(tmp_path / "a.npz", n=90)))
    assert fingerprint.changes(fingerprint.fingerprint(a), fingerprint.fingerprint(same)) == []
    saved = json.loads(json.dumps(fingerprint.fingerprint(a)))  # as data.json holds it
    fewer = data.load(
        "npz", path=str(files.write_npz(tmp_path / "a.npz", n=90, keep=np.arange(60)))
    )
    lines = fingerprint.changes(saved, fingerprint.fingerprint(fewer))
    assert f"rows.train: {len(a.train)} -> {len(fewer.train)}" in lines
    assert any(line.startswith(f"file {tmp_path / 'a.npz'}: sha256") for line in lines)


def test_a_series_with_row_length_gives_per_step_rows_of_the_chronological_segments(tmp_path):
    values = np.sin(np.arange(300) / 5.0) + np.arange(300) / 100.0
    csv.write_csv(pa.table({"v": values}), tmp_path / "v.csv")
    ds = data.load("series", path=str(tmp_path / "v.csv"), row_length=20)
    assert ds.task == "step_forecast" and ds.name == "v"
    lo, hi = ds.info["bounds"]["train"]
    z = (values - values[lo:hi].mean()) / values[lo:hi].std()
    first = ds.train.inputs[0, :, 0]
    np.testing.assert_allclose(first, z[:20], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.train.targets[0, :, 0], z[1:21], rtol=1e-5, atol=1e-6)
    v0 = ds.info["bounds"]["validation"][0]
    np.testing.assert_allclose(ds.validation.inputs[0, :, 0], z[v0 : v0 + 20], rtol=1e-5, atol=1e-6)


def test_nan_in_padding_is_accepted_and_read_as_zeros(tmp_path):
    sequences, labels = files.gestures(60)
    x, lengths = files.padded(sequences)
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = np.nan  # padding marked as NaN
    np.savez(tmp_path / "nan_padding.npz", inputs=x, lengths=lengths, labels=labels)
    ds = data.load("npz", path=str(tmp_path / "nan_padding.npz"), normalize=False)
    for split in data.SPLITS:
        s, rows = ds.split(split), ds.info["split_index"][split]
        np.testing.assert_array_equal(s.inputs, np.nan_to_num(x[rows], nan=0.0).astype(np.float32))


def test_one_changed_value_changes_its_splits_hash_alone(tmp_path):
    sequences, labels = files.gestures(90)
    x, lengths = files.padded(sequences)
    np.savez(tmp_path / "a.npz", inputs=x, lengths=lengths, labels=labels)
    before = fingerprint.fingerprint(data.load("npz", path=str(tmp_path / "a.npz")))
    ds = data.load("npz", path=str(tmp_path / "a.npz"))
    row = int(ds.info["split_index"]["test"][0])
    x[row, 0, 2] += 1.0  # a noise feature of one test row: train statistics unchanged
    np.savez(tmp_path / "a.npz", inputs=x, lengths=lengths, labels=labels)
    after = fingerprint.fingerprint(data.load("npz", path=str(tmp_path / "a.npz")))
    lines = fingerprint.changes(before, after)
    assert [line.split(":")[0] for line in lines] == ["sha256.test", f"file {tmp_path / 'a.npz'}"]


def test_split_columns_of_names_or_ids_as_text_are_read_and_a_bad_row_is_named():
    sequences, labels = files.gestures(30)
    ids = np.repeat(np.array(["0", "1", "2"]), 10)
    ds = from_arrays(sequences, labels=labels, split=ids, normalize=False)
    for i, split in enumerate(data.SPLITS):
        np.testing.assert_array_equal(ds.info["split_index"][split], np.arange(10 * i, 10 * i + 10))
    numbers = np.array([0] * 20 + [1] * 5 + [2] * 4 + [3])
    with pytest.raises(DataError, match=r"split\[29\]=3 is not one of"):
        from_arrays(sequences, labels=labels, split=numbers)


def test_split_files_whose_ids_restart_in_each_file_keep_their_sequences_apart(tmp_path, rng):
    sequences, labels = files.gestures(60)
    parts = {"train": range(0, 40), "validation": range(40, 50), "test": range(50, 60)}
    for split, rows in parts.items():
        table = _long_table([sequences[i] for i in rows], [labels[i] for i in rows], rng)
        csv.write_csv(table, tmp_path / f"g_{split}.csv")  # ids s0, s1, ... in every file
    ds = data.load("table", path=str(tmp_path / "g_{split}.csv"), normalize=False)
    for split, rows in parts.items():
        assert len(ds.split(split)) == len(rows)
    first_test = ds.info["sequence_ids"][ds.info["split_index"]["test"][0]]
    assert first_test.startswith("test/s")


def test_the_same_file_read_from_a_moved_folder_is_no_change(tmp_path):
    files.write_npz(tmp_path / "a.npz", n=60)
    (tmp_path / "moved").mkdir()
    files.write_npz(tmp_path / "moved" / "a.npz", n=60)
    here = fingerprint.fingerprint(data.load("npz", path=str(tmp_path / "a.npz")))
    there = fingerprint.fingerprint(data.load("npz", path=str(tmp_path / "moved" / "a.npz")))
    assert fingerprint.changes(here, there) == []
    files.write_npz(tmp_path / "moved" / "a.npz", n=60, keep=np.arange(59, -1, -1))
    moved = fingerprint.fingerprint(data.load("npz", path=str(tmp_path / "moved" / "a.npz")))
    assert fingerprint.changes(here, moved)  # reordered rows: other content


def test_a_constant_train_segment_keeps_its_series_finite(tmp_path):
    values = np.concatenate([np.full(70, 3.0), np.arange(30.0)])
    csv.write_csv(pa.table({"v": values}), tmp_path / "flat.csv")
    ds = data.load("series", path=str(tmp_path / "flat.csv"), row_length=10)
    assert np.isfinite(ds.train.inputs).all() and (ds.train.inputs == 0).all()
