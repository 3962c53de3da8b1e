"""The ``finetune`` section of experiments/bench.py: one epoch of a head-only stage on cached
frozen features, against one epoch of full fine-tuning (and of a head-only stage that still
runs the frozen encoder), in one process.

    python experiments/bench.py --section finetune
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from fnn_jax import data, tasks
from fnn_jax.config import default_config
from fnn_jax.optim import frozen_mask, make_optimizer
from fnn_jax.train.steps import (
    StepSpec,
    TrainState,
    build_model,
    compute_features,
    make_train_step,
    to_device_batch,
    zero_sums,
)

HEAD_ONLY = (("head/.*", "train"), (".*", "frozen"))


def _epoch_runner(model, task, params, dataset, *, batch_size, rules, features=None):
    """A function that trains one epoch from ``params``; with ``features`` (the frozen
    encoder's output, computed beforehand) only the head runs."""
    config = default_config()
    tx = make_optimizer(config.optimizer, 1000, params=params, rules=rules)
    frozen = None if rules is None else frozen_mask(params, rules)
    cached = features is not None
    spec = StepSpec(model, task, config.regularization.exclude, frozen, cached_features=cached)
    step = make_train_step(spec, tx, dropout_key=jax.random.key(1))
    sample = to_device_batch(next(data.batches(dataset.train, batch_size, seed=0, epoch=0)))
    sums = zero_sums(model, task, params, sample)

    def run_epoch() -> None:
        fresh = jax.tree.map(lambda x: x.copy(), params)  # the step donates its state
        state = TrainState(np.int32(0), fresh, tx.init(fresh), jax.tree.map(np.zeros_like, sums))
        for batch in data.batches(dataset.train, batch_size, seed=0, epoch=0):
            device_batch = to_device_batch(batch)
            if cached:
                device_batch = {**device_batch, "features": features[batch["index"]]}
                del device_batch["inputs"]
            state, _ = step(state, device_batch)
        jax.block_until_ready(state)

    return run_epoch


CASES = {  # name: (dataset, options)
    "digits 5-9 (8 steps)": ("digits", {"classes": (5, 6, 7, 8, 9)}),
    "adding (100 steps)": ("adding", {"length": 100, "num_train": 2000}),
}


def _case(name: str, options: dict, repeats: int) -> dict[str, Any]:
    dataset = data.load(name, **options)
    model = build_model(ml_collections.ConfigDict(default_config().model), dataset)
    sample = to_device_batch(next(data.batches(dataset.train, 32, seed=0, epoch=0)))
    params = model.init(jax.random.key(0), sample["inputs"], sample["lengths"])["params"]
    task = tasks.for_dataset(dataset)
    features = compute_features(model, params, dataset.train, 256)
    runners = {
        "full fine-tuning": _epoch_runner(model, task, params, dataset, batch_size=32, rules=None),
        "head only, encoder re-run": _epoch_runner(
            model, task, params, dataset, batch_size=32, rules=HEAD_ONLY
        ),
        "head only, cached features": _epoch_runner(
            model, task, params, dataset, batch_size=32, rules=HEAD_ONLY, features=features
        ),
        "computing the features (once per stage)": lambda: jax.block_until_ready(
            compute_features(model, params, dataset.train, 256)
        ),
    }
    for run in runners.values():
        run()  # compile
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):  # round-robin, so load on the machine hits every case alike
        for label, run in runners.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(t) for label, t in times.items()}
    full = medians["full fine-tuning"]
    return {
        "train_rows": len(dataset.train),
        "epoch_s": medians,
        "ratio_to_full": {label: m / full for label, m in medians.items()},
    }


def section_finetune(cfg: Any, repeats: int = 5) -> dict[str, Any]:
    """Seconds per epoch, the default model (LSTM 128), batch 32, median of ``repeats``."""
    del cfg
    result = {}
    for label, (name, options) in CASES.items():
        result[label] = _case(name, options, repeats)
        print(f"\nfinetune, {label}: one epoch of {result[label]['train_rows']} rows")
        for what, seconds in result[label]["epoch_s"].items():
            ratio = result[label]["ratio_to_full"][what]
            print(f"  {what:40s} {1e3 * seconds:9.1f} ms   ratio to full {ratio:.3f}")
    return result
