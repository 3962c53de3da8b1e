"""python experiments/main.py --config configs/rows_finetune.py --workdir runs/rows_finetune

Few-label MNIST (rows as steps, all 10 classes, K labelled train images per class) from
the next-row forecaster of configs/rows_pretrain.py (experiments/transfer_study.py,
issue 28).

    python experiments/main.py --config configs/rows_finetune.py:head_then_all,0,5 \
        --workdir runs/transfer/head_then_all_k5_s0

The argument is ``RECIPE,SEED,K`` (default ``head_then_all,0,5``). SEED draws the split
(the same split the forecaster of that seed was pretrained on, so its test images were
never read), the K labels per class and the initialisation. The inputs are standardised with
the pretraining data's statistics. The forecaster's per-step head is replaced by a 10-class
head on the mean of the LSTM's outputs over the 28 rows.

  head           only the new head trains (a linear probe; the encoder's features cached)
  head_then_all  the head, then everything at a 10x lower rate (fnn_jax.finetune.classic_stages)
  scratch        the same classifier from random weights: no pretraining

The forecaster's workdir is runs/transfer/pretrain_s<SEED>; the study overrides
``init_from`` with its own --workdir.
"""

from __future__ import annotations

import ml_collections

from configs import rows_pretrain
from fnn_jax.config import default_config
from fnn_jax.finetune import classic_stages

RECIPES = ("head_then_all", "head", "scratch")
EPOCHS = 100  # each epoch is K*10/BATCH steps: 5 (K=5) or 10 (K=10)
BATCH = 10


def _split_statistics(seed: int) -> tuple[float, float]:
    """The scalar mean/std the forecaster's data were standardised with."""
    info = rows_pretrain.forecast_rows(seed).info
    return float(info["mean"]), float(info["std"])


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    recipe, seed, k = (arg or "head_then_all,0,5").split(",")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid choices: {list(RECIPES)}")
    seed, k = int(seed), int(k)
    config = default_config()
    config.seed = seed
    config.data.name = "mnist_sequential"
    config.data.options = ml_collections.ConfigDict(
        {
            "train_per_class": k,
            "seed": seed,
            "pixels_per_step": 28,
            "normalization": _split_statistics(seed),
        }
    )
    config.data.batch_size = BATCH
    config.model.cell = "lstm"
    config.model.hidden_size = rows_pretrain.HIDDEN
    config.model.pooling = "mean"
    config.train.log_every_steps = 50
    config.train.eval_every_steps = 0  # once per epoch; the best validation step is kept
    config.train.checkpoint_every_s = 600.0
    head_then_all = classic_stages(
        head_epochs=EPOCHS // 2,
        all_epochs=EPOCHS // 2,
        head_learning_rate=1e-2,
        all_learning_rate=1e-3,
    )
    if recipe == "scratch":
        config.optimizer.learning_rate = 3e-3
        config.train.num_epochs = EPOCHS
    else:
        config.init_from = f"runs/transfer/pretrain_s{seed}"
        config.finetune.reinit = ("head/.*",)
        if recipe == "head":
            config.finetune.stages = head_then_all[:1]
            config.finetune.stages[0]["num_epochs"] = EPOCHS
        else:
            config.finetune.stages = head_then_all
    config.lock()
    return config
