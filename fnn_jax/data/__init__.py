"""Datasets for recurrent networks: containers, a name registry, batching and batch checks.

ds = load("digits", classes=(5, 6, 7, 8, 9), train_per_class=3)
for batch in batches(ds.train, 32, seed=0, epoch=epoch):
    check_batch(batch, dataset=ds.name, split="train", index=i, expected=batch_spec(ds))
"""

# Importing the loader modules registers their datasets.
from fnn_jax.data import classification, forecasting, reviews, series, synthetic, text  # noqa: F401
from fnn_jax.data.base import (
    SPLITS,
    TASKS,
    Dataset,
    Split,
    batch_spec,
    batches,
    check_batch,
    epoch_order,
    num_batches,
)
from fnn_jax.data.registry import REGISTRY, available, check_options, load, register
from fnn_jax.tasks import IGNORE_LABEL

__all__ = [
    "IGNORE_LABEL",
    "REGISTRY",
    "SPLITS",
    "TASKS",
    "Dataset",
    "Split",
    "available",
    "batch_spec",
    "batches",
    "check_options",
    "check_batch",
    "epoch_order",
    "load",
    "num_batches",
    "register",
]
