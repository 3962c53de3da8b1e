"""python experiments/main.py --config configs/copy_gru.py --workdir runs/copy_gru

Copy memory: read 10 symbols, wait `delay` blanks, write them back after the delimiter.
A memoryless model scores cross-entropy 10*log(8)/(delay+20) per step (the baseline).
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "copy_memory"
    config.data.options = ml_collections.ConfigDict({"delay": 50, "num_train": 10000})
    config.data.batch_size = 64
    config.model.cell = "gru"
    config.model.hidden_size = 128
    config.model.embed_dim = 16
    config.optimizer.learning_rate = 3e-3
    config.optimizer.clip_norm = 1.0
    config.train.num_epochs = 20
    config.train.eval_every_steps = 250
    config.lock()
    return config
