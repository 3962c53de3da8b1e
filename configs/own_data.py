"""python experiments/main.py --config configs/own_data.py --workdir runs/own_data

Your own files, no code (docs/own_data.md). The argument picks the source and a model that
suits its task; --config.data.options.path (or .paths) names your file. After
`python experiments/make_example_data.py --out my_data` every variant runs as it is:

  npz         my_data/digits.npz: inputs [n, time, features], labels    (classification)
  table       my_data/digits_long.csv: one row per step, id and time     (classification)
  series      my_data/sunspots.csv: a column as a time series            (forecasting)
  text        my_data/topics/*.txt: a corpus of UTF-8 files              (character LM)
  text_table  my_data/reviews.csv: text and label columns                (text classification)
"""

import ml_collections

from fnn_jax.config import config_argument, default_config

SOURCES = {
    "npz": ("npz", {"path": "my_data/digits.npz"}),
    "table": ("table", {"path": "my_data/digits_long.csv"}),
    "series": ("series", {"path": "my_data/sunspots.csv", "time_column": "YEAR"}),
    "text": ("text_files", {"paths": "my_data/topics/*.txt", "seq_len": 128}),
    "text_table": ("text_table", {"path": "my_data/reviews.csv", "max_len": 256}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = config_argument(arg, tuple(SOURCES), "source")
    config = default_config()
    config.data.name, options = SOURCES[variant]
    config.data.options = ml_collections.ConfigDict(options)
    config.data.batch_size = 32
    config.model.cell = "lstm"
    config.model.hidden_size = 64
    config.optimizer.learning_rate = 3e-3
    config.train.num_steps = 1000
    config.train.eval_every_steps = 100
    config.train.log_every_steps = 100
    if variant in ("text", "text_table"):
        config.model.cell = "gru"
        config.model.hidden_size = 128
        config.model.embed_dim = 32
    if variant == "text_table":
        config.model.pooling = "mean"
    config.lock()
    return config
