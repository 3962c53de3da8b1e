"""python experiments/main.py --config configs/digits_augment.py --workdir runs/digits_augment

Small data: the digits with 10 training images per class (100 rows), an LSTM(64), with
training batches augmented (jitter 0.3, scaling 0.2, shifts up to 1 step, masks up to 2).
The sweep compares it with the same run unaugmented, over 3 seeds:

    python experiments/sweep.py --config configs/digits_augment.py \
        --workdir runs/digits_augment_sweep --seeds 3
"""

import ml_collections

from configs import digits_lstm

AUGMENT = {"jitter": 0.3, "scale": 0.2, "max_shift": 1, "mask_width": 2}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = digits_lstm.get_config(arg)
    with config.unlocked():
        config.data.options.train_per_class = 10
        config.data.batch_size = 20
        config.model.hidden_size = 64
        config.train.num_steps = 500
        config.train.eval_every_steps = 25
        config.train.log_every_steps = 25
        config.data.augment.update(AUGMENT)
    return config


def get_sweep() -> list[dict]:
    off = {f"data.augment.{key}": 0 for key in AUGMENT}
    on = {f"data.augment.{key}": value for key, value in AUGMENT.items()}
    return [off, on]
