"""The train state, the model a dataset needs, and the jitted train and eval steps."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fnn_jax import data as data_lib
from fnn_jax import tasks
from fnn_jax.data import augment as augment_lib
from fnn_jax.optim import penalty
from fnn_jax.tasks import Task
from fnn_jax.train import diagnostics
from fnn_jax.tree import all_finite

Array = jax.Array


def identity(tree: Any) -> Any:
    return tree


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    sums: Any  # task sums of the train batches since the last log line
    # Truncated BPTT: the encoder's carries [batch, ...] per layer after the last window
    # (saved with the state, so a resumed run carries on mid-row); None without it.
    carry: Any = None


def build_model(cfg: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> nn.Module:
    """The model for the dataset's task, with the encoder described by ``cfg`` (config.model)."""
    return tasks.for_dataset(dataset).build_model(cfg, dataset)


def to_device_batch(batch: dict[str, np.ndarray], weights: np.ndarray | None = None) -> dict:
    """The fields a step reads; ``weights`` [b] default to 1 (0 marks padding rows)."""
    n = batch["inputs"].shape[0]
    fields = {
        "inputs": batch["inputs"],
        "targets": batch["targets"],
        "lengths": batch["lengths"],
        "weights": np.ones((n,), np.float32) if weights is None else weights,
    }
    if "resets" in batch:  # documents packed in a row (fnn_jax.data.Split.resets)
        fields["resets"] = batch["resets"]
    return fields


def eval_batch_rows(num_rows: int, batch_size: int, multiple: int = 1) -> int:
    """The rows of each evaluation batch of a split of ``num_rows``: as few batches of at
    most ``batch_size`` as it takes, all the same size (the eval step compiles once) and as
    small as that allows (270 rows at 256 make two batches of 135, not of 256), rounded up
    to a ``multiple`` (the devices a batch is split over)."""
    count = -(-num_rows // min(batch_size, num_rows))
    rows = -(-num_rows // count)
    return -(-rows // multiple) * multiple


def eval_batches(
    split: data_lib.Split, batch_size: int, multiple: int = 1, *, rows: int | None = None
) -> Iterator[dict]:
    """The whole split in order, in batches of ``eval_batch_rows`` (or of ``rows``: another
    split's compiled size), the last padded with weight-0 rows."""
    batch_size = eval_batch_rows(len(split), batch_size, multiple) if rows is None else rows
    for batch in data_lib.batches(
        split, batch_size, seed=0, epoch=0, shuffle=False, drop_remainder=False
    ):
        n = batch["inputs"].shape[0]
        weights = np.ones((batch_size,), np.float32)
        if n < batch_size:
            pad = np.arange(batch_size - n) % n
            batch = {k: np.concatenate([v, v[pad]]) for k, v in batch.items()}
            weights[n:] = 0.0
        yield to_device_batch(batch, weights)


def zero_sums(model: nn.Module, task: Task, params: Any, batch: dict) -> Any:
    """A train state's zero sums: the task's (shaped by its eval step; ``params``: the
    model's parameters) and the step norms' (diagnostics.NORMS)."""
    shapes = jax.eval_shape(eval_step_body(model, task), params, batch)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return {**zeros, diagnostics.NORMS: diagnostics.zero_norms()}


def stop_frozen_gradients(params: Any, frozen: Any | None) -> Any:
    """stop_gradient on frozen leaves, so no backward work is spent on them."""
    if frozen is None:
        return params
    return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What a train step computes, fixed for a stage (the same for every trial of a group).

    frozen: True where a leaf of state.params is frozen (its gradient is not computed).
    to_model: maps state.params to the model's parameters (e.g. merges LoRA adapters).
    cached_features: the batch carries ``features`` (the frozen encoder's output, computed
        once) and only the head runs.
    augment: transforms of the training inputs (fnn_jax.data.augment), keyed by the step.
    exclude: regex of parameter paths the L1/L2 penalty skips.
    window: truncated BPTT's window length k (0: off). Step s trains window s % windows
        of its rows (steps [s*k, (s+1)*k), rows padded to windows*k), from state.carry.
    norms: add up each step's gradient, parameter and update norms (diagnostics.NORMS;
        config.train.log_norms): three reductions over the parameters a step.
    halt_on_nonconvergence: a step whose forward fixed-point solves missed their tolerance
        (the sown solver statistics) halts its trial (fixed_point.HALT: a vectorised
        group's "raise").
    """

    model: nn.Module
    task: Task
    exclude: str = ""
    frozen: Any | None = None
    to_model: Callable[[Any], Any] = identity
    cached_features: bool = False
    augment: augment_lib.Augment = augment_lib.Augment()
    window: int = 0
    windows: int = 1
    norms: bool = True
    halt_on_nonconvergence: bool = False


def train_step_body(spec: StepSpec) -> Callable[..., tuple[TrainState, Array]]:
    """The un-jitted ``body(state, batch, dropout_key, tx, *, l1, l2) -> (state, finite)``.

    Everything a trial may vary (the dropout key, the optimizer, the penalty weights) is an
    argument, so ``jax.vmap`` can run several trials at once (fnn_jax.train.steppers).
    ``l1``/``l2`` may be traced scalars; a Python 0 leaves its penalty term out.
    A step whose loss or gradients are not finite changes nothing but the step counter
    (``finite`` is False); the caller decides how many such steps to tolerate.
    """
    model, task, frozen, to_model = spec.model, spec.task, spec.frozen, spec.to_model

    def forward(params, batch, key, carry):
        """(outputs, what the model sowed into diagnostics.COLLECTION or None, the final
        carries of a truncated-BPTT window or None)."""
        variables, rngs = {"params": to_model(params)}, {"dropout": key}
        if spec.cached_features:
            outputs = model.apply(
                variables, batch["features"], train=True, rngs=rngs, method="predict"
            )
            return outputs, None, None
        args = (batch["inputs"], batch["lengths"])
        options = dict(train=True, rngs=rngs, mutable=[diagnostics.COLLECTION])
        if spec.window:
            (carry, outputs), sown = model.apply(
                variables, *args, carry, batch.get("resets"), method="window", **options
            )
        else:
            outputs, sown = model.apply(variables, *args, batch.get("resets"), **options)
        return outputs, diagnostics.collect(sown), carry

    def body(state: TrainState, batch: dict, dropout_key: Array, tx, *, l1, l2):
        key = jax.random.fold_in(dropout_key, state.step)
        if spec.augment.active and not spec.cached_features:
            inputs = augment_lib.apply(spec.augment, batch["inputs"], batch["lengths"], key)
            batch = {**batch, "inputs": inputs}
        carry = None
        if spec.window:
            batch, carry = _window(batch, state, spec.window, spec.windows)

        def loss_fn(params):
            params = stop_frozen_gradients(params, frozen)
            outputs, sown, carry_out = forward(params, batch, key, carry)
            loss, sums = task.loss_and_sums(outputs, batch)
            sums = diagnostics.with_diagnostics(sums, sown)
            return loss + penalty(params, l1, l2, spec.exclude), (sums, carry_out)

        (loss, (sums, carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & all_finite(grads)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        norms = diagnostics.step_norms(grads, params, updates) if spec.norms else None
        sums = {**sums, diagnostics.NORMS: norms or diagnostics.zero_norms()}
        new_sums = diagnostics.add(state.sums, sums)
        return (
            TrainState(
                step=state.step + 1,
                params=keep(params, state.params),
                opt_state=keep(opt_state, state.opt_state),
                sums=keep(new_sums, state.sums),
                # A skipped step leaves the carry as it was, as everything else.
                carry=state.carry if carry is None else keep(carry, state.carry),
            ),
            finite,
        )

    return body


def _window(batch: dict, state: TrainState, length: int, windows: int) -> tuple[dict, Any]:
    """Window ``state.step % windows`` of the rows in ``batch`` ([batch, windows*length]
    fields, padded), and the carries it starts from: zeros at a row's first window, else
    the previous window's, gradient stopped (what makes the BPTT truncated)."""
    index = state.step % windows
    start = index * length
    cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, length, axis=1)
    window = {**batch, "inputs": cut(batch["inputs"]), "targets": cut(batch["targets"])}
    window["lengths"] = jnp.clip(batch["lengths"] - start, 0, length).astype(jnp.int32)
    if "resets" in batch:
        window["resets"] = cut(batch["resets"])
    first = index == 0
    carry = jax.tree.map(
        lambda c: jnp.where(first, jnp.zeros_like(c), jax.lax.stop_gradient(c)), state.carry
    )
    return window, carry


def initial_carry(model: nn.Module, params: Any, batch: dict, length: int) -> Any:
    """Zero carries for truncated-BPTT windows of ``length`` steps of ``batch``'s rows
    (their shapes from the model, abstractly: nothing is computed)."""
    inputs = jnp.asarray(batch["inputs"])[:, :length]
    lengths = jnp.minimum(jnp.asarray(batch["lengths"]), length)
    shapes = jax.eval_shape(
        lambda p: model.apply({"params": p}, inputs, lengths, None, method="window")[0], params
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def make_train_step(
    spec: StepSpec,
    tx: optax.GradientTransformation,
    *,
    dropout_key: Array,
    l1: float = 0.0,
    l2: float = 0.0,
) -> Callable[[TrainState, dict], tuple[TrainState, Array]]:
    """A jitted ``train_step(state, batch) -> (state, finite)`` of one run that donates
    ``state``: for research code and benchmarks; the runner uses fnn_jax.train.steppers."""
    body = train_step_body(spec)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, Array]:
        return body(state, batch, dropout_key, tx, l1=l1, l2=l2)

    return jax.jit(train_step, donate_argnums=0)


def eval_step_body(
    model: nn.Module, task: Task, to_model: Callable[[Any], Any] = identity
) -> Callable[[Any, dict], Any]:
    """The un-jitted ``eval_step(params, batch) -> sums`` (deterministic: no dropout); the
    model's diagnostics, if it sows any, ride along (see fnn_jax.train.diagnostics)."""

    def eval_step(params, batch):
        outputs, sown = model.apply(
            {"params": to_model(params)},
            batch["inputs"],
            batch["lengths"],
            batch.get("resets"),
            mutable=[diagnostics.COLLECTION],
        )
        sums = task.loss_and_sums(outputs, batch)[1]
        return diagnostics.with_diagnostics(sums, diagnostics.collect(sown))

    return eval_step


def make_eval_step(
    model: nn.Module, task: Task, to_model: Callable[[Any], Any] = identity
) -> Callable[[Any, dict], Any]:
    """A jitted ``eval_step(params, batch) -> sums`` (deterministic: no dropout)."""
    return jax.jit(eval_step_body(model, task, to_model))


def device_eval_batches(split: data_lib.Split, batch_size: int, layout=None) -> list[dict]:
    """``eval_batches`` of the whole split, on the device (sent once, evaluated often);
    with a ``layout`` (fnn_jax.train.mesh), split by rows over its data axis."""
    if layout is None:
        return [jax.device_put(batch) for batch in eval_batches(split, batch_size)]
    batches = eval_batches(split, batch_size, layout.data_size)
    return [layout.put_rows(batch) for batch in batches]


def split_sums(eval_step, params: Any, batches: Iterable[dict]) -> Any:
    """``eval_step``'s sums added over ``batches`` (a whole split: ``eval_batches``)."""
    total = None
    for batch in batches:
        sums = eval_step(params, batch)
        total = sums if total is None else diagnostics.add(total, sums)
    return total


def evaluate(eval_step, params: Any, split: data_lib.Split, batch_size: int, task: Task) -> dict:
    """The task's metrics over a whole split (and the model's diagnostics, if any)."""
    sums = split_sums(eval_step, params, eval_batches(split, batch_size))
    return diagnostics.metrics(task, jax.device_get(sums))


@functools.partial(jax.jit, static_argnums=0)
def _features(model: nn.Module, params: Any, batch: dict) -> Array:
    return model.apply(
        {"params": params},
        batch["inputs"],
        batch["lengths"],
        batch.get("resets"),
        method="features",
    )


def compute_features(model: nn.Module, params: Any, split: data_lib.Split, batch_size: int):
    """The model's ``features`` for every row of ``split``, in row order (on the device)."""
    parts = [_features(model, params, batch) for batch in eval_batches(split, batch_size)]
    return jnp.concatenate(parts)[: len(split)]


# Initialisers are slow to compile on CPU (threefry and erf_inv per parameter: a second of
# the demo's cold start) and run once: LLVM at O1 compiles them in half the time, to the
# same bits as the default O2 (tested for every cell, on CPU: other backends keep O2).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _init_body(model: nn.Module, key: Array, inputs: Array, lengths: Array) -> Any:
    return model.init(key, inputs, lengths)["params"]


_init = jax.jit(_init_body, static_argnums=0, compiler_options=INIT_COMPILER_OPTIONS)
_init_nested = jax.jit(_init_body, static_argnums=0)  # JAX takes options at the top only


def init_params(model: nn.Module, key: Array, batch: dict) -> Any:
    """The model's initial parameters for ``key``, shaped by ``batch``'s features.

    Flax finds the shapes by running the model; it runs on the first step of the first
    row only (the parameters do not depend on batch or length, and the values are the same),
    a smaller program to compile. Compiled once: a second run, or a vectorised group's
    trials, reuse the program (and the compilation cache keeps it across runs)."""
    inputs = jnp.asarray(batch["inputs"])[:1, :1]
    # Sliced inside an outer jit or eval_shape, the inputs are a tracer: the init is then
    # part of that program (a vmap at the top still compiles it on its own).
    top_level = not isinstance(inputs, jax.core.Tracer)
    init = _init if top_level and jax.default_backend() == "cpu" else _init_nested
    return init(model, key, inputs, jnp.ones((1,), jnp.int32))
