"""What each kind of dataset asks of a model: its loss and its metrics.

A batch is a dict with ``inputs``, ``targets``, ``lengths`` and ``weights`` ([batch]; 0 marks
rows that only pad the last evaluation batch). ``sums`` are additive over batches; ``metrics``
turns their totals into numbers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn_jax import metrics

Array = jax.Array
MAXIMISED = ("accuracy", "precision", "recall", "f1")
TASK_METRIC = {
    "classification": "accuracy",
    "regression": "mse",
    "forecast": "mse",
    "tagging": "cross_entropy",
}


def metric_mode(name: str) -> str:
    """'max' for metrics where higher is better, else 'min'."""
    return "max" if name in MAXIMISED else "min"


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str  # "classification" | "regression" | "forecast" | "tagging"
    num_classes: int | None = None

    @property
    def main_metric(self) -> str:
        return TASK_METRIC[self.kind]

    def loss_and_sums(self, outputs: Array, batch: dict) -> tuple[Array, dict[str, Array]]:
        """Mean loss over the batch's real rows, and this batch's additive sums."""
        w = batch["weights"].astype(jnp.float32)
        targets = batch["targets"]
        if self.kind == "classification":
            ce = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
            count = jnp.sum(w)
            sums = {
                "loss": jnp.sum(ce * w),
                "count": count,
                "confusion": metrics.confusion_matrix(
                    targets, jnp.argmax(outputs, -1), self.num_classes, w
                ),
            }
            return sums["loss"] / count, sums
        if self.kind in ("regression", "forecast"):
            predictions = outputs.reshape(targets.shape)
            error = (predictions - targets).reshape(targets.shape[0], -1)
            per_row = error.shape[1]
            sums = {
                "loss": jnp.sum(jnp.sum(error**2, axis=1) * w),
                "abs": jnp.sum(jnp.sum(jnp.abs(error), axis=1) * w),
                "count": jnp.sum(w) * per_row,
            }
            return sums["loss"] / sums["count"], sums
        if self.kind == "tagging":
            valid = (targets >= 0).astype(jnp.float32) * w[:, None]
            safe = jnp.maximum(targets, 0)
            ce = optax.softmax_cross_entropy_with_integer_labels(outputs, safe)
            correct = (jnp.argmax(outputs, -1) == safe).astype(jnp.float32)
            sums = {
                "loss": jnp.sum(ce * valid),
                "correct": jnp.sum(correct * valid),
                "count": jnp.maximum(jnp.sum(valid), 1.0),
            }
            return sums["loss"] / sums["count"], sums
        raise ValueError(f"unknown task {self.kind!r}; valid choices: {sorted(TASK_METRIC)}")

    def metrics(self, sums: dict) -> dict[str, float]:
        """Host-side numbers from summed ``sums``."""
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        count = float(sums["count"])
        loss = float(sums["loss"]) / count
        if self.kind == "classification":
            return {"loss": loss, **metrics.classification_metrics(sums["confusion"])}
        if self.kind in ("regression", "forecast"):
            return {"loss": loss, **metrics.regression_metrics(sums["loss"], sums["abs"], count)}
        return {"loss": loss, **metrics.language_metrics(sums["loss"], sums["correct"], count)}
