"""Training: the state, jitted steps, steppers and the one engine behind
``train_and_evaluate`` (one run) and ``train_together`` (K vectorised trials)."""

from fnn_jax.finetune import Stage
from fnn_jax.train.fit import fit
from fnn_jax.train.loop import REFUSALS, train_and_evaluate
from fnn_jax.train.preemption import EXIT_PREEMPTED, Preempted
from fnn_jax.train.steps import StepSpec, TrainState, build_model, make_eval_step, make_train_step
from fnn_jax.train.vectorized import train_together

__all__ = [
    "EXIT_PREEMPTED",
    "Preempted",
    "REFUSALS",
    "Stage",
    "StepSpec",
    "TrainState",
    "build_model",
    "fit",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
    "train_together",
]
