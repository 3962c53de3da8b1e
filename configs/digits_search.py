"""python experiments/main.py --config configs/digits_search.py --workdir runs/digits_search

The digits LSTM demo made small enough to train many times: hidden size 64, AdamW (so
weight decay is a setting a search can tune), and the optional argument the number of
epochs (default 8, 36 optimizer steps each). experiments/search_comparison.py searches its
learning rate and weight decay with grid, random, TPE, TPE with median pruning, and
vectorised successive halving and population-based training at one budget of steps:

    python experiments/search_comparison.py --workdir runs/search_comparison
"""

import ml_collections

from configs import digits_lstm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = digits_lstm.get_config()
    config.model.hidden_size = 64
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 1e-4
    config.train.num_epochs = int(arg) if arg else 8
    return config
