"""python experiments/main.py --config configs/digits_lstm.py --workdir runs/digits_lstm

The demo: scikit-learn's 8x8 digits read row by row (8 steps of 8 pixels), one LSTM layer.
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "digits"
    config.data.batch_size = 32
    config.model.cell = "lstm"
    config.model.hidden_size = 128
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 50
    config.train.num_epochs = 30
    config.train.log_every_steps = 20
    config.train.patience = 0
    config.lock()
    return config
