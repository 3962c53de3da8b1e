"""python experiments/main.py --config configs/charlm_gru.py --workdir runs/charlm_gru

Character language model on Python's own help texts (pydoc_data.topics); bits per character.

--config configs/charlm_gru.py:tbptt trains on rows of 1,024 characters in windows of 128
(truncated BPTT, config.train.tbptt_length): 32 x 128 characters per step and the same steps
per epoch as windows of 128 from a zero state, but
each window starts from the state the previous one ended in, so the model reads context
beyond 128 characters. Both evaluate whole rows of their own length.
"""

import ml_collections

from fnn_jax.config import config_argument, default_config

VARIANTS = ("windows", "tbptt")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = config_argument(arg, VARIANTS, "variant")
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
    if variant == "tbptt":
        config.data.options.seq_len = 1024
        config.train.tbptt_length = 128
    config.lock()
    return config
