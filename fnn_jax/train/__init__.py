"""Training: the state, jitted steps and the run loop (``train_and_evaluate``)."""

from fnn_jax.train.loop import Stage, train_and_evaluate
from fnn_jax.train.steps import TrainState, build_model, make_eval_step, make_train_step

__all__ = [
    "Stage",
    "TrainState",
    "build_model",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
]
