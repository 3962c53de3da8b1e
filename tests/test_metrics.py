"""Metrics equal scikit-learn's (and NumPy formulas) on the same predictions."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from fnn_jax import metrics, tasks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_scores_equal_sklearn_and_their_means_are_the_macro_averages(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 150)
    predictions = np.where(rng.random(150) < 0.5, labels, rng.integers(0, 4, 150))
    predictions[predictions == 2] = 1  # class 2 never predicted: zero_division path
    confusion = skm.confusion_matrix(labels, predictions, labels=range(4))
    got = metrics.per_class(confusion)
    p, r, f, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=range(4), zero_division=0
    )
    np.testing.assert_allclose([got["precision"], got["recall"], got["f1"]], [p, r, f])
    assert got["support"] == support.tolist()
    macro = metrics.classification_metrics(confusion)
    assert macro["f1"] == pytest.approx(np.mean(got["f1"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_sklearn_macro_averages(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, 200))
    predictions[predictions == 3] = 4  # class 3 never predicted: zero_division path
    confusion = metrics.confusion_matrix(
        jnp.asarray(labels), jnp.asarray(predictions), 6, jnp.ones(200)
    )
    np.testing.assert_array_equal(
        np.asarray(confusion)[:5, :5], skm.confusion_matrix(labels, predictions, labels=range(5))
    )
    got = metrics.classification_metrics(np.asarray(confusion))
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, predictions, average="macro", zero_division=0
    )
    np.testing.assert_allclose(
        [got["accuracy"], got["precision"], got["recall"], got["f1"]],
        [skm.accuracy_score(labels, predictions), p, r, f],
        rtol=1e-12,
    )


def test_padding_rows_count_nothing():
    labels, predictions = jnp.array([0, 1, 1, 0]), jnp.array([0, 1, 0, 1])
    confusion = metrics.confusion_matrix(labels, predictions, 2, jnp.array([1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(confusion, [[1, 0], [0, 1]])


def test_regression_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(50, 3, 2)).astype(np.float32)
    outputs = targets + rng.normal(scale=0.3, size=targets.shape).astype(np.float32)
    task = tasks.get("forecast")
    batch = {"targets": jnp.asarray(targets), "weights": jnp.ones(50)}
    _, sums = task.loss_and_sums(jnp.asarray(outputs), batch)
    got = task.metrics(sums)
    flat_t, flat_o = targets.reshape(-1), outputs.reshape(-1)
    np.testing.assert_allclose(got["mse"], skm.mean_squared_error(flat_t, flat_o), rtol=1e-5)
    np.testing.assert_allclose(
        got["rmse"], np.sqrt(skm.mean_squared_error(flat_t, flat_o)), rtol=1e-5
    )
    np.testing.assert_allclose(got["mae"], skm.mean_absolute_error(flat_t, flat_o), rtol=1e-5)


def test_perplexity_and_bits_per_char_follow_from_mean_log_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (4, 6)).astype(np.int32)
    targets[0, 4:] = -1  # ignored positions
    task = tasks.get("tagging", num_classes=7)
    batch = {"targets": jnp.asarray(targets), "weights": jnp.ones(4)}
    _, sums = task.loss_and_sums(jnp.asarray(logits), batch)
    got = task.metrics(sums)

    valid = targets >= 0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, np.maximum(targets, 0)[..., None], -1)[..., 0]
    mean = nll[valid].mean()
    np.testing.assert_allclose(got["cross_entropy"], mean, rtol=1e-5)
    np.testing.assert_allclose(got["perplexity"], np.exp(mean), rtol=1e-5)
    np.testing.assert_allclose(got["bits_per_char"], mean / np.log(2), rtol=1e-5)
    accuracy = (logits.argmax(-1) == targets)[valid].mean()
    np.testing.assert_allclose(got["accuracy"], accuracy)
    np.testing.assert_allclose(
        got["cross_entropy"],
        skm.log_loss(targets[valid], _softmax(logits[valid]), labels=range(7)),
        rtol=1e-5,
    )


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
