"""python experiments/main.py --config configs/test.py --workdir runs/test

A tiny variant of the digits demo for the test suite: seconds, not minutes.
"""

import ml_collections

from configs import digits_lstm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = digits_lstm.get_config()
    with config.unlocked():
        config.model.hidden_size = 16
        config.data.batch_size = 16
        config.train.num_steps = 24
        config.train.eval_every_steps = 8
        config.train.log_every_steps = 4
        config.optimizer.warmup_steps = 5
        # A save at every evaluation (not every 30 s): kills and resumes in the tests land
        # between saves.
        config.train.checkpoint_every_s = 0.0
    return config
