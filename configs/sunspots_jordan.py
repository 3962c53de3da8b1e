"""python experiments/main.py --config configs/sunspots_jordan.py --workdir runs/sunspots_jordan

Yearly sunspot numbers (statsmodels), one-step-ahead forecasting from 24-year windows with a
Jordan network (output feedback). Compare MSE with the naive last-value forecast.
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "sunspots"
    config.data.options = ml_collections.ConfigDict({"window": 24, "horizon": 1})
    config.data.batch_size = 16
    config.model.cell = "jordan"
    config.model.hidden_size = 32
    config.optimizer.learning_rate = 3e-3
    config.regularization.l2 = 1e-5
    config.train.num_epochs = 100
    config.train.log_every_steps = 50
    config.train.patience = 20
    config.lock()
    return config
