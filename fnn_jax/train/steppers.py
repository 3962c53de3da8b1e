"""Steppers: the device state of the trials that train one stage together, and their step.

Two implementations of one interface, chosen by the number of trials K:

- ``SingleStepper`` (K = 1): ``jit(step)`` over one TrainState;
- ``VectorizedStepper`` (K > 1): ``jit(vmap(step))`` over TrainStates stacked on a leading
  trial axis; a trial that is not active is left as it is (masked).

Both take each trial's own settings (learning-rate peak, weight decay, momentum, L1/L2) as
traced arguments, so K = 1 and K > 1 run the same arithmetic, and return per-trial
finiteness. The engine (fnn_jax.train.engine) does all bookkeeping; steppers only compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fnn_jax import data as data_lib
from fnn_jax.config import OPTIMIZERS
from fnn_jax.finetune import Stage
from fnn_jax.optim import TRIAL_SETTINGS, make_optimizer
from fnn_jax.train.steps import StepSpec, TrainState, split_sums, train_step_body

Settings = dict[str, np.float32]  # a trial's scalar settings: learning_rate, weight_decay, ...


def trial_settings(
    optimizer: ml_collections.ConfigDict,
    regularization: ml_collections.ConfigDict,
    penalties: Sequence[str],
) -> Settings:
    """The scalar settings a trial passes to the step: the learning rate, the other
    ``TRIAL_SETTINGS`` its optimizer reads (momentum only when it keeps a buffer: a buffer
    or none is a different optimizer state) and the penalty weights named in ``penalties``
    (a weight left out keeps its term out of the loss)."""
    takes = OPTIMIZERS[optimizer.name]
    keys = [k for k in TRIAL_SETTINGS if k == "learning_rate" or k in takes]
    keys = [k for k in keys if k != "momentum" or optimizer.momentum]
    settings = {key: np.float32(optimizer[key]) for key in keys}
    settings.update({name: np.float32(regularization[name]) for name in penalties})
    return settings


def host_copy(tree: Any) -> Any:
    """NumPy copies of every leaf: safe from the next step, which donates device buffers."""
    return jax.tree.map(np.array, jax.device_get(tree))


def host_slices(tree: Any, size: int) -> list[Any]:
    """The ``size`` trees along the leading axis of every leaf, as NumPy copies (one
    transfer for all trials)."""
    host = jax.device_get(tree)
    return [jax.tree.map(lambda x, k=k: np.array(x[k]), host) for k in range(size)]


def _step_fn(spec: StepSpec, stage: Stage):
    """``step(state, batch, dropout_key, settings) -> (state, finite)`` for one trial."""
    body = train_step_body(spec)
    frozen_rules = stage.rules

    def step(state: TrainState, batch: dict, dropout_key: jax.Array, settings: dict):
        tx = make_optimizer(
            stage.optimizer,
            stage.num_steps,
            params=state.params,
            rules=frozen_rules,
            lr_mults=stage.lr_mults,
            trial=settings,
        )
        l1, l2 = settings.get("l1", 0.0), settings.get("l2", 0.0)
        return body(state, batch, dropout_key, tx, l1=l1, l2=l2)

    return step


class Stepper:
    """The device state of K trials in one stage, and their jitted step and evaluation."""

    def step(self, batches: Sequence[dict | None]) -> np.ndarray:
        """One step of every trial whose batch is not None; [K] bool: whether its loss and
        gradients were finite (True for the trials that did not step)."""
        raise NotImplementedError

    def host_states(self) -> list[TrainState]:
        """Each trial's state, as NumPy copies."""
        raise NotImplementedError

    def sums(self) -> list[Any]:
        """Each trial's train sums since they were last reset (host)."""
        raise NotImplementedError

    def reset_sums(self, rows: Sequence[bool]) -> None:
        """Zeroes the train sums of the trials where ``rows`` is True."""
        raise NotImplementedError

    def evaluate_sums(self, split: data_lib.Split, batch_size: int) -> list[Any]:
        """Each trial's eval sums over the whole split (host)."""
        raise NotImplementedError


class SingleStepper(Stepper):
    """One trial: ``jit(step)``."""

    def __init__(
        self,
        spec: StepSpec,
        stage: Stage,
        states: Sequence[TrainState],
        *,
        settings: Sequence[Settings],
        dropout_keys: Sequence[jax.Array],
        eval_step: Callable[[Any, dict], Any],
    ):
        (state,), (self.settings,), (self.dropout_key,) = states, settings, dropout_keys
        self.state = jax.device_put(state)
        self._step = jax.jit(_step_fn(spec, stage), donate_argnums=0)
        self._eval = eval_step

    def step(self, batches: Sequence[dict | None]) -> np.ndarray:
        self.state, finite = self._step(self.state, batches[0], self.dropout_key, self.settings)
        return np.asarray(finite).reshape(1)

    def host_states(self) -> list[TrainState]:
        return [host_copy(self.state)]

    def sums(self) -> list[Any]:
        return [jax.device_get(self.state.sums)]

    def reset_sums(self, rows: Sequence[bool]) -> None:
        if rows[0]:
            self.state = self.state.replace(sums=jax.tree.map(jnp.zeros_like, self.state.sums))

    def evaluate_sums(self, split: data_lib.Split, batch_size: int) -> list[Any]:
        return [jax.device_get(split_sums(self._eval, self.state.params, split, batch_size))]


@jax.jit
def _zero_rows(rows: jax.Array, tree: Any) -> Any:
    """``tree`` [trials, ...] with the trials where ``rows`` [trials] is True set to zero."""
    return jax.tree.map(
        lambda x: jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.zeros_like(x), x), tree
    )


def _stack(trees: Sequence[Any]) -> Any:
    """Trees stacked on a new leading axis (host arrays on the host, device on the device)."""
    xp = lambda x: np if isinstance(x, np.ndarray) else jnp
    return jax.tree.map(lambda *xs: xp(xs[0]).stack(xs), *trees)


class VectorizedStepper(Stepper):
    """K trials: ``jit(vmap(step))`` over states stacked on a leading trial axis."""

    def __init__(
        self,
        spec: StepSpec,
        stage: Stage,
        states: Sequence[TrainState],
        *,
        settings: Sequence[Settings],
        dropout_keys: Sequence[jax.Array],
        eval_step: Callable[[Any, dict], Any],
    ):
        self.size = len(states)
        self.state = jax.device_put(_stack(states))
        self.settings = {k: np.asarray([s[k] for s in settings], np.float32) for k in settings[0]}
        self.dropout_keys = jnp.stack(list(dropout_keys))
        step = _step_fn(spec, stage)

        def masked_step(state, batch, dropout_key, settings, active):
            new, finite = step(state, batch, dropout_key, settings)
            return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state), finite

        self._step = jax.jit(jax.vmap(masked_step), donate_argnums=0)
        self._eval = jax.jit(jax.vmap(eval_step, in_axes=(0, None)))

    def step(self, batches: Sequence[dict | None]) -> np.ndarray:
        active = np.array([batch is not None for batch in batches])
        filler = next(batch for batch in batches if batch is not None)  # masked out anyway
        batch = _stack([filler if b is None else b for b in batches])
        self.state, finite = self._step(self.state, batch, self.dropout_keys, self.settings, active)
        return np.asarray(finite) | ~active

    def host_states(self) -> list[TrainState]:
        return host_slices(self.state, self.size)

    def sums(self) -> list[Any]:
        return host_slices(self.state.sums, self.size)

    def reset_sums(self, rows: Sequence[bool]) -> None:
        self.state = self.state.replace(sums=_zero_rows(np.asarray(rows), self.state.sums))

    def evaluate_sums(self, split: data_lib.Split, batch_size: int) -> list[Any]:
        return host_slices(split_sums(self._eval, self.state.params, split, batch_size), self.size)


def make_stepper(
    spec: StepSpec,
    stage: Stage,
    states: Sequence[TrainState],
    *,
    settings: Sequence[Settings],
    dropout_keys: Sequence[jax.Array],
    eval_step: Callable[[Any, dict], Any],
) -> Stepper:
    """The stepper for ``len(states)`` trials: ``jit(step)`` for one, ``jit(vmap(step))``
    for more. ``eval_step(params, batch) -> sums`` is one trial's (jitted) evaluation."""
    cls = SingleStepper if len(states) == 1 else VectorizedStepper
    return cls(
        spec, stage, states, settings=settings, dropout_keys=dropout_keys, eval_step=eval_step
    )
