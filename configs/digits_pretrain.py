"""python experiments/main.py --config configs/digits_pretrain.py --workdir runs/digits_pretrain

Pretraining for the fine-tuning demo: an LSTM classifier on digits 0-4 only.
"""

import ml_collections

from configs import digits_lstm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = digits_lstm.get_config()
    with config.unlocked():
        config.data.options = ml_collections.ConfigDict({"classes": (0, 1, 2, 3, 4)})
        config.train.num_epochs = 30
    return config
