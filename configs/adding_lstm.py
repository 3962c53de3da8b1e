"""python experiments/main.py --config configs/adding_lstm.py --workdir runs/adding_lstm

The adding problem (Hochreiter & Schmidhuber, 1997) at length 100: sum the two marked values.
Predicting 1.0 always gives MSE ~0.167; a network that remembers does far better.
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "adding"
    config.data.options = ml_collections.ConfigDict({"length": 100, "num_train": 10000})
    config.data.batch_size = 64
    config.model.cell = "lstm"
    config.model.hidden_size = 64
    config.optimizer.learning_rate = 3e-3
    config.optimizer.clip_norm = 1.0
    config.train.num_epochs = 12
    config.train.eval_every_steps = 250
    config.train.log_every_steps = 50
    config.lock()
    return config
