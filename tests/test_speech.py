"""Speech: configs/japanese_vowels.py and experiments/japanese_vowels_baselines.py."""

import functools
import importlib

import numpy as np
import pytest

pytest.importorskip("sktime")

from fnn_jax import data  # noqa: E402
from fnn_jax.config import validate  # noqa: E402
from tests.scripts import load_script  # noqa: E402


@functools.cache
def _baselines():
    return load_script("japanese_vowels_baselines")


@functools.cache
def _dataset():
    config = importlib.import_module("configs.japanese_vowels").get_config()
    return data.load(config.data.name, **config.data.options.to_dict())


def test_config_is_valid_and_its_data_is_the_official_split():
    config = importlib.import_module("configs.japanese_vowels").get_config()
    validate(config)
    assert config.data.name == "japanese_vowels"
    ds = _dataset()
    assert ds.num_classes == 9
    assert {s.inputs.shape[1:] for s in (ds.train, ds.validation, ds.test)} == {(29, 12)}
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (229, 41, 370)
    # train + validation are the 270 official training series (30 per speaker) ...
    labels = np.concatenate([ds.train.targets, ds.validation.targets])
    assert np.bincount(labels).tolist() == [30] * 9
    # ... and the test split is sktime's official TEST partition, in its order.
    from sktime.datasets import load_japanese_vowels

    x, y = load_japanese_vowels(split="TEST", return_X_y=True, return_type="pd-multiindex")
    names = ds.info["class_names"]
    assert [names[t] for t in ds.test.targets] == [str(v) for v in y]
    lengths = x.groupby(level=0, sort=False).size().to_numpy()
    assert np.array_equal(ds.test.lengths, lengths)
    first = (x.loc[x.index.get_level_values(0)[0]].to_numpy() - ds.info["mean"]) / ds.info["std"]
    np.testing.assert_allclose(ds.test.inputs[0, : lengths[0]], first, rtol=1e-5, atol=1e-5)
    assert not ds.test.inputs[0, lengths[0] :].any()  # zero padding after the end


def test_one_nn_euclidean_agrees_with_a_numpy_nearest_neighbour():
    ds, b = _dataset(), _baselines()
    train_x, train_y, test_x = ds.train.inputs, ds.train.targets, ds.test.inputs
    got = b.nn1_euclidean(train_x, train_y, test_x)
    flat_train = train_x.reshape(len(train_x), -1).astype(np.float64)
    flat_test = test_x.reshape(len(test_x), -1).astype(np.float64)
    squared = ((flat_test[:, None, :] - flat_train[None, :, :]) ** 2).sum(axis=-1)
    expected = train_y[squared.argmin(axis=1)]
    # every test row (with Manhattan distance, 11 of the 370 predictions would differ)
    assert np.array_equal(got, expected)
    assert np.mean(got == ds.test.targets) > 0.9


def _dtw_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook DTW: squared Euclidean frame cost, full window, [time, channels] inputs."""
    acc = np.full((len(x) + 1, len(y) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            cost = float(((x[i - 1] - y[j - 1]) ** 2).sum())
            acc[i, j] = cost + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(acc[-1, -1])


def test_dtw_distances_agree_with_loops_and_with_sktime_on_unequal_lengths():
    ds, b = _dataset(), _baselines()
    a, a_len = ds.test.inputs[:4].astype(np.float64), ds.test.lengths[:4]
    t, t_len = ds.train.inputs[:5].astype(np.float64), ds.train.lengths[:5]
    assert len(set(a_len) | set(t_len)) > 2  # really unequal lengths
    got = b.dtw_distances(a, a_len, t, t_len, chunk=3)  # chunk 3: two chunks
    loops = [
        [_dtw_by_loops(x[:n], y[:m]) for y, m in zip(t, t_len, strict=True)]
        for x, n in zip(a, a_len, strict=True)
    ]
    np.testing.assert_allclose(got, loops, rtol=1e-9)
    from sktime.dists_kernels._numba_distances import dtw_distance

    x, y = a[0, : a_len[0]].T, t[1, : t_len[1]].T  # sktime: [channels, time]
    np.testing.assert_allclose(got[0, 1], dtw_distance(x, y), rtol=1e-9)


def test_majority_and_fitting_sets():
    ds, b = _dataset(), _baselines()
    assert np.array_equal(b.majority(np.array([2, 0, 2, 1]), 3), [2, 2, 2])
    full = b.fitting_split(ds, "train+validation")
    assert len(full.targets) == 270 and len(full.lengths) == 270
    assert np.array_equal(full.lengths[: len(ds.train.targets)], ds.train.lengths)
    with pytest.raises(ValueError, match="fit must be one of"):
        b.fitting_split(ds, "test")
