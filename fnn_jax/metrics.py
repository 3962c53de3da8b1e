"""Metrics from sums that can be accumulated batch by batch on the device.

Evaluation never gathers predictions on the host: each batch contributes a confusion matrix or
sums of errors, and these functions turn the totals into the reported numbers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def confusion_matrix(labels: Array, predictions: Array, num_classes: int, weights: Array) -> Array:
    """[classes, classes] counts; row = true class, column = predicted (scikit-learn's layout).

    labels, predictions, weights: [n]. Rows with weight 0 (padding) count nothing.
    """
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]
    pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32)
    return true.T @ pred


def _per_class_arrays(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per class (row c: true class c; column: predicted): precision, recall, F1 (0 where
    undefined, as scikit-learn's zero_division=0), predicted and actual counts."""
    confusion = np.asarray(confusion, np.float64)
    tp, predicted, actual = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "predicted": predicted,
        "actual": actual,
        "correct": tp,
    }


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """accuracy and macro precision / recall / F1 from a confusion matrix.

    Classes that are never predicted (or never present) score 0 for that term, as
    scikit-learn does with zero_division=0.
    """
    c = _per_class_arrays(confusion)
    # scikit-learn's macro average runs over labels present in either y_true or y_pred.
    present = (c["predicted"] + c["actual"]) > 0
    total = c["actual"].sum()
    macro = {
        k: float(c[k][present].mean()) if present.any() else 0.0
        for k in ("precision", "recall", "f1")
    }
    return {"accuracy": float(c["correct"].sum() / total) if total else float("nan"), **macro}


def per_class(confusion: np.ndarray) -> dict[str, list[float]]:
    """Per class (row c of the confusion matrix: true class c, column: predicted):
    precision, recall, F1 (0 where undefined, as scikit-learn's zero_division=0) and
    support (true rows)."""
    c = _per_class_arrays(confusion)
    scores = {k: c[k].tolist() for k in ("precision", "recall", "f1")}
    return {**scores, "support": c["actual"].astype(int).tolist()}


def regression_metrics(squared_error: float, absolute_error: float, count: float) -> dict:
    """mse, rmse, mae from summed errors over ``count`` scalar predictions."""
    mse = squared_error / count
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": absolute_error / count}


def language_metrics(cross_entropy: float, correct: float, count: float) -> dict:
    """Mean cross-entropy (nats), perplexity, bits per token and accuracy over ``count`` tokens."""
    mean = cross_entropy / count
    return {
        "cross_entropy": mean,
        "perplexity": math.exp(min(mean, 700.0)),
        "bits_per_char": mean / math.log(2),
        "accuracy": correct / count,
    }
