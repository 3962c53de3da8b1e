"""python experiments/main.py --config configs/sunspots_pretrain.py --workdir runs/sunspots_pretrain

Pretraining for the time-series transfer: an LSTM forecaster of yearly sunspot numbers
(statsmodels), next year from 24-year windows. configs/italy_finetune.py reuses its encoder
for a classifier. (Monthly CO2 was tried first: its trend leaves the test years outside the
training range, and the forecaster lost to the last-value baseline.)
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "sunspots"
    config.data.options = ml_collections.ConfigDict({"window": 24, "horizon": 1})
    config.data.batch_size = 16
    config.model.cell = "lstm"
    config.model.hidden_size = 64
    config.optimizer.learning_rate = 3e-3
    config.train.num_epochs = 100
    config.train.patience = 20
    config.train.log_every_steps = 50
    config.lock()
    return config
