"""python experiments/main.py --config configs/digits_deq.py --workdir runs/digits_deq

A deep equilibrium (DEQ) classifier: the digits (8 rows of 8 pixels) read by the equilibrium
cell. At every step the feedback z = tanh(x W_ih + b + h W_hh + z W_zz) is solved to its
fixed point. ||W_zz||_2 is kept at most 0.9 so the map stays a contraction; the solver's
iterations, residual and converged fraction are logged beside the loss.
Variants (``configs/digits_deq.py:NAME``): ``iterate`` (plain fixed-point iteration instead
of Anderson), ``phantom`` (5-step phantom gradients instead of implicit ones).
"""

import ml_collections

from configs import digits_lstm
from fnn_jax.config import config_argument

VARIANTS = ("anderson", "iterate", "phantom")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = config_argument(arg, VARIANTS, "variant")
    config = digits_lstm.get_config()
    with config.unlocked():
        config.model.cell = "equilibrium"
        config.model.hidden_size = 64
        config.model.equilibrium.max_feedback_norm = 0.9
        if variant == "iterate":
            config.model.equilibrium.solver = "iterate"
        if variant == "phantom":
            config.model.equilibrium.gradient = "phantom"
    return config
