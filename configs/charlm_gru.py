"""python experiments/main.py --config configs/charlm_gru.py --workdir runs/charlm_gru

Character language model on Python's own help texts (pydoc_data.topics); bits per character.
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "text"
    config.data.options = ml_collections.ConfigDict({"seq_len": 128})
    config.data.batch_size = 32
    config.model.cell = "gru"
    config.model.hidden_size = 256
    config.model.embed_dim = 32
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 100
    config.train.num_epochs = 15
    config.train.eval_every_steps = 500
    config.train.early_stopping_metric = "bits_per_char"
    config.lock()
    return config
