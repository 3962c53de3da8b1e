"""python experiments/main.py --config configs/digits_sweep.py --workdir runs/digits_sweep

The digits LSTM demo with a sweep over learning rate x hidden size (4 trials):

    python experiments/sweep.py --config configs/digits_sweep.py --workdir runs/digits_sweep_grid
    python experiments/sweep.py --config configs/digits_sweep.py --workdir runs/digits_sweep_seeds \
        --seeds 3 --parallel 2

and an adaptive search (Optuna's TPE, median pruning) over get_search_space():

    python experiments/sweep.py --config configs/digits_sweep.py --workdir runs/digits_tpe \
        --search tpe --trials 12 --pruner median

main.py runs the base config alone (the digits demo as it is).
"""

import ml_collections

from configs import digits_lstm
from fnn_jax import sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return digits_lstm.get_config(arg)


def get_sweep() -> list[dict]:
    return sweep.product({"optimizer.learning_rate": [1e-3, 3e-3], "model.hidden_size": [64, 128]})


def get_search_space() -> dict:
    """For --search: a log-uniform learning rate and three hidden sizes."""
    return {
        "optimizer.learning_rate": ("log_uniform", 1e-4, 3e-2),
        "model.hidden_size": [32, 64, 128],
    }
