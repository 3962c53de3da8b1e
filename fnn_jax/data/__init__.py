"""Datasets for recurrent networks: containers, a name registry, batching and batch checks.

ds = load("digits", classes=(5, 6, 7, 8, 9), train_per_class=3)
for batch in batches(ds.train, 32, seed=0, epoch=epoch):
    check_batch(batch, dataset=ds.name, split="train", index=i, expected=batch_spec(ds))
"""

# Importing the loader modules registers their datasets.
from fnn_jax.data import (  # noqa: F401
    classification,
    corpus,
    forecasting,
    reviews,
    series,
    sources,
    synthetic,
    tables,
    text,
    text_sources,
)
from fnn_jax.data.arrays import DataError, from_arrays
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
from fnn_jax.data.registry import REGISTRY, available, check_options, load, register, resolve
from fnn_jax.data.sources import save_npz
from fnn_jax.tasks import IGNORE_LABEL

__all__ = [
    "DataError",
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
    "from_arrays",
    "load",
    "num_batches",
    "register",
    "resolve",
    "save_npz",
]
