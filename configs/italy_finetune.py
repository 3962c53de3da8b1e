"""python experiments/main.py --config configs/italy_finetune.py --workdir runs/italy_finetune

Time-series transfer (needs the optional extra: pip install -e '.[timeseries]'): classify
ItalyPowerDemand days (24 hourly values, 2 classes, 56 training days) with the encoder of
the sunspot forecaster from configs/sunspots_pretrain.py (run that first). The forecaster's head is
replaced by a 2-class head; classic recipe: head first, then everything.
Argument "scratch" trains the same classifier from random weights, for comparison.
"""

import ml_collections

from fnn_jax.config import default_config
from fnn_jax.finetune import classic_stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "italy_power_demand"
    config.data.batch_size = 8
    config.model.cell = "lstm"
    config.model.hidden_size = 64
    config.train.eval_every_steps = 7
    if arg == "scratch":
        config.optimizer.learning_rate = 3e-3
        config.train.num_epochs = 60
    else:
        config.init_from = "runs/sunspots_pretrain"
        config.finetune.stages = classic_stages(
            head_epochs=30, all_epochs=30, head_learning_rate=3e-3, all_learning_rate=3e-4
        )
    config.lock()
    return config
