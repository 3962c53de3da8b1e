"""Steppers: the device state of the trials that train one stage together, and their steps.

Two implementations of one interface, chosen by the number of trials K:

- ``SingleStepper`` (K = 1): ``jit(dispatch)`` over one TrainState;
- ``VectorizedStepper`` (K > 1): ``jit(vmap(dispatch))`` over TrainStates stacked on a
  leading trial axis; a trial that is not active is left as it is (masked).

A dispatch runs up to ``capacity`` optimizer steps in one call (a ``lax.fori_loop`` over
``count`` rows of batch indices; ``count`` is traced, so one program serves every count).
The train split lives on the device and each step gathers its rows there, so a dispatch
sends only [count, batch] int32 indices.

Nothing is read back per step. A non-finite step is skipped on the device and counted in
the trial's ``Health``; the step that takes a trial past ``max_nonfinite_steps`` halts it
there (later steps leave it as it is). The engine reads ``health()`` where it logs,
evaluates or saves, so dispatches run ahead of the host in between.

Both take each trial's own settings (learning-rate peak, weight decay, momentum, L1/L2) as
traced arguments, so K = 1 and K > 1 run the same arithmetic. The engine
(fnn_jax.train.engine) does all bookkeeping; steppers only compute.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from fnn_jax import data as data_lib
from fnn_jax.config import OPTIMIZERS
from fnn_jax.finetune import Stage
from fnn_jax.optim import TRIAL_SETTINGS, make_optimizer
from fnn_jax.tasks import IGNORE_LABEL
from fnn_jax.train import diagnostics, mesh
from fnn_jax.train.steps import StepSpec, TrainState, split_sums, train_step_body

log = logging.getLogger("fnn_jax")
Settings = dict[str, np.float32]  # a trial's scalar settings: learning_rate, weight_decay, ...
# What ``steps_per_dispatch = "auto"`` compiles for: it then sends as many steps per call
# (up to this) as keep the measured dispatch overhead near 5% of the time of a step.
AUTO_CAPACITY = 32
AUTO_OVERHEAD = 0.05
AUTO_PROBES = 4  # single-step calls clocked before choosing


@dataclasses.dataclass(frozen=True)
class Health:
    """A trial's non-finite steps as the device counted them (cumulative over the run)."""

    nonfinite_steps: int
    last_nonfinite: int  # the last such step (its number once taken), 0 if none
    halted_at: int  # the step that went past max_nonfinite_steps, 0 while training
    nonconverged_at: int = 0  # the step whose fixed-point solve missed (StepSpec), 0 if none


@dataclasses.dataclass(frozen=True)
class Member:
    """What one trial brings to a stepper."""

    state: TrainState
    settings: Settings
    dropout_key: jax.Array
    nonfinite_steps: int = 0  # skipped before this stage
    max_nonfinite_steps: int = 0
    features: jax.Array | None = None  # [train rows, ...]: the frozen encoder's, if cached


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
    """NumPy copies of every leaf (gathered from every device and process): safe from the
    next step, which donates device buffers."""
    return mesh.host(tree)


def host_slices(tree: Any, size: int) -> list[Any]:
    """The ``size`` trees along the leading axis of every leaf, as NumPy copies (one
    transfer for all trials)."""
    host = mesh.host(tree)
    return [jax.tree.map(lambda x, k=k: np.array(x[k]), host) for k in range(size)]


def train_table(split: data_lib.Split, time: int | None = None) -> dict[str, jax.Array]:
    """``host_train_table`` on the default device."""
    return jax.device_put(host_train_table(split, time))


def host_train_table(split: data_lib.Split, time: int | None = None) -> dict[str, np.ndarray]:
    """The split's rows: {"inputs", "targets", "lengths"} [rows, ...] (and "resets" when
    it has them), padded to ``time`` steps (``pad_time``)."""
    table = {"inputs": split.inputs, "targets": split.targets, "lengths": split.full_lengths}
    if split.resets is not None:
        table["resets"] = split.resets
    return table if time is None else pad_time(table, time)


def pad_time(fields: dict[str, np.ndarray], time: int) -> dict[str, np.ndarray]:
    """Rows [rows, T, ...] padded to ``time`` steps (truncated BPTT's whole windows):
    inputs with 0, per-step targets with the ignored label, resets with False."""
    extra = time - fields["inputs"].shape[1]
    if extra <= 0:
        return fields
    fill = {"inputs": 0, "targets": IGNORE_LABEL, "resets": False}
    return {
        name: np.pad(
            values, [(0, 0), (0, extra)] + [(0, 0)] * (values.ndim - 2), constant_values=fill[name]
        )
        if name in fill
        else values
        for name, values in fields.items()
    }


@dataclasses.dataclass(frozen=True)
class RowsOnHost:
    """A train table ({"inputs", ...} [rows, ...] NumPy) kept on the host: each dispatch
    sends its batches, every process only its slice of them (``Layout.gather_rows``),
    instead of holding the whole table on every device. What a multi-process run uses.
    A host feed (fnn_jax.train.feeds), like ``feeds.StreamedRows``."""

    table: dict[str, np.ndarray]

    def sent(self, layout: mesh.Layout, rows: np.ndarray, count: int) -> dict[str, jax.Array]:
        """The batches of ``rows`` [capacity, batch], [capacity, batch, ...] global arrays."""
        return layout.gather_rows(self.table, rows)


def _gather(table: dict, rows: jax.Array, sent: dict | None = None) -> dict:
    """The batch of ``rows`` [batch] from the shared table, the batch ``sent`` with the
    dispatch (RowsOnHost) and the trial's own fields (its cached features replace the
    inputs)."""
    fields = {**table["shared"], **table["own"]}
    if "features" in fields:
        fields.pop("inputs", None)
    batch = {**(sent or {}), **{name: values[rows] for name, values in fields.items()}}
    if "features" in batch:
        batch.pop("inputs", None)
    batch["weights"] = jnp.ones(rows.shape, jnp.float32)
    return batch


def _dispatch_fn(
    spec: StepSpec, stage: Stage, capacity: int, layout: mesh.Layout, *, split_batches: bool
):
    """``dispatch((state, health), table, indices, count, trial)``: ``count`` steps of one
    trial, step i on the rows ``indices[i]`` ([capacity, batch]) of the table, or on
    ``table["sent"][i]`` (RowsOnHost: the batches sent with the call), split over the
    layout's data axis when ``split_batches``. ``trial`` holds its dropout_key, settings, limit
    (max_nonfinite_steps) and active (False: no change)."""
    body = train_step_body(spec)

    def split_rows(batch: dict) -> dict:
        if not split_batches:
            return batch
        constrain = lambda x: jax.lax.with_sharding_constraint(x, layout.rows(x.ndim))
        return jax.tree.map(constrain, batch)

    def step(carry, batch, trial):
        state, health = carry
        settings, limit, active = trial["settings"], trial["limit"], trial["active"]
        tx = make_optimizer(
            stage.optimizer,
            stage.num_steps,
            params=state.params,
            rules=stage.rules,
            lr_mults=stage.lr_mults,
            trial=settings,
        )
        l1, l2 = settings.get("l1", 0.0), settings.get("l2", 0.0)
        new, finite = body(state, batch, trial["dropout_key"], tx, l1=l1, l2=l2)
        live = active & (health["halted_at"] == 0)
        bad = live & ~finite
        nonfinite = health["nonfinite_steps"] + bad.astype(jnp.int32)
        missed = False
        if spec.halt_on_nonconvergence:
            missed = live & _missed_solves(state.sums, new.sums)
        halt = (bad & (nonfinite > limit)) | missed
        taken = state.step + 1
        health = {
            "nonfinite_steps": nonfinite,
            "last_nonfinite": jnp.where(bad, taken, health["last_nonfinite"]),
            "halted_at": jnp.where(halt, taken, health["halted_at"]),
            "nonconverged_at": jnp.where(missed, taken, health["nonconverged_at"]),
        }
        keep = live & ~halt
        state = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
        return state, health

    def dispatch(carry, table, indices, count, trial):
        def one(i, carry):
            sent = table.get("sent")  # RowsOnHost: [capacity, batch, ...] sent with the call
            sent = None if sent is None else jax.tree.map(lambda x: x[i], sent)
            return step(carry, split_rows(_gather(table, indices[i], sent)), trial)

        if capacity == 1:  # the plain step, no loop around it
            return one(0, carry)
        return jax.lax.fori_loop(0, count, one, carry)

    return dispatch


def _missed_solves(before: Any, after: Any) -> jax.Array:
    """Whether the step from train sums ``before`` to ``after`` added unconverged solves."""
    count = lambda sums: sums[diagnostics.COLLECTION]["unconverged"]
    return count(after) > count(before)


def _limits(members: Sequence[Member]) -> np.ndarray:
    """[K] int32 max_nonfinite_steps (a larger limit, "never stop", is int32's largest)."""
    largest = np.iinfo(np.int32).max
    return np.asarray([min(m.max_nonfinite_steps, largest) for m in members], np.int32)


def _health0(members: Sequence[Member]) -> dict[str, np.ndarray]:
    zeros = np.zeros(len(members), np.int32)
    counts = np.asarray([m.nonfinite_steps for m in members], np.int32)
    return {
        "nonfinite_steps": counts,
        "last_nonfinite": zeros,
        "halted_at": zeros.copy(),
        "nonconverged_at": zeros.copy(),
    }


def _stack(trees: Sequence[Any]) -> Any:
    """Trees stacked on a new leading axis (host arrays on the host, device on the device)."""
    xp = lambda x: np if isinstance(x, np.ndarray) else jnp
    return jax.tree.map(lambda *xs: xp(xs[0]).stack(xs), *trees)


class Stepper:
    """The device state of K trials in one stage, their jitted dispatch and evaluation."""

    size: int  # K
    capacity: int  # the most steps one dispatch can run

    def __init__(self, steps_per_dispatch: int | str):
        auto = steps_per_dispatch == "auto"
        self.capacity = AUTO_CAPACITY if auto else int(steps_per_dispatch)
        self.dispatch_size = 1 if auto else self.capacity  # "auto": tuned on the first runs
        self._tuning = auto
        self._clock: list[float] = []  # "auto": a call's overhead, then per-step times

    def run(self, indices: Sequence[np.ndarray | None], count: int) -> None:
        """``count`` (<= capacity) steps of each trial whose row indices [count, batch] are
        given (None: the trial is left as it is). Returns without waiting for the device,
        except while "auto" clocks its first calls."""
        padded = []
        for rows in indices:
            if rows is not None:
                rows = np.pad(rows, ((0, self.capacity - count), (0, 0)))
            padded.append(rows)
        if not self._tuning:
            self._dispatch(padded, count)
            return
        if not self._clock:  # calls without steps: the first compiles, the fastest of
            self._clocked(padded, 0)  # the others is the overhead of a call alone
            self._clock.append(min(self._clocked(padded, 0) for _ in range(3)))
        self._clock.append(self._clocked(padded, count) / count)
        if len(self._clock) > AUTO_PROBES:  # the fastest of the first steps (the very
            overhead, call = self._clock[0], min(self._clock[1:])  # first is slower)
            step = call - overhead
            measured = step > 0  # else the step is lost in the call's own jitter
            wanted = math.ceil(overhead / (AUTO_OVERHEAD * step)) if measured else self.capacity
            size = np.int32(np.clip(wanted, 1, self.capacity))
            if jax.process_count() > 1:  # clocks differ: every process must run the
                size = multihost_utils.broadcast_one_to_all(size)  # same dispatches
            self.dispatch_size = int(size)
            self._tuning = False
            cost = f"{1e6 * step:.1f} us" if measured else "below the call's jitter"
            log.info(
                'steps_per_dispatch "auto": %d (a call alone costs %.1f us, a step %s)',
                self.dispatch_size,
                1e6 * overhead,
                cost,
            )

    def _clocked(self, indices: list[np.ndarray | None], count: int) -> float:
        start = time.perf_counter()
        self._dispatch(indices, count)
        jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def _dispatch(self, indices: list[np.ndarray | None], count: int) -> None:
        raise NotImplementedError

    def health(self) -> list[Health]:
        """Each trial's non-finite steps so far (waits for the dispatches sent)."""
        host = mesh.host(self._health)
        return [
            Health(**{name: int(np.reshape(v, -1)[k]) for name, v in host.items()})
            for k in range(self.size)
        ]

    def host_states(self) -> list[TrainState]:
        """Each trial's state, as NumPy copies."""
        raise NotImplementedError

    def states(self) -> list[TrainState]:
        """Each trial's state for a save: host copies, except a state split over devices
        (config.mesh.model, or truncated BPTT's carry over ``data``): those arrays where
        they lie, saved shard by shard and never gathered (valid until the next dispatch
        donates them). A group's are host copies (slices of stacked arrays)."""
        return self.host_states()

    def sums(self) -> list[Any]:
        """Each trial's train sums since they were last reset (host)."""
        raise NotImplementedError

    def reset_sums(self, rows: Sequence[bool]) -> None:
        """Zeroes the train sums of the trials where ``rows`` is True."""
        raise NotImplementedError

    def evaluate_sums(self, batches: Sequence[dict]) -> list[Any]:
        """Each trial's eval sums over ``batches`` (a whole split, fnn_jax.train.steps.
        eval_batches), on the host."""
        raise NotImplementedError


class SingleStepper(Stepper):
    """One trial: ``jit(dispatch)``."""

    def __init__(
        self,
        spec: StepSpec,
        stage: Stage,
        members: Sequence[Member],
        *,
        table: dict[str, jax.Array] | Any,
        eval_step: Callable[[Any, dict], Any],
        steps_per_dispatch: int | str = 1,
        layout: mesh.Layout | None = None,
    ):
        super().__init__(steps_per_dispatch)
        layout = layout or mesh.single_device()
        (member,) = members
        self.size = 1
        self._layout = layout
        shardings = layout.state_shardings(member.state)
        self.state = layout.put(member.state, shardings)
        self._split = any(not x.is_fully_replicated for x in jax.tree.leaves(self.state))
        health = {k: v[0] for k, v in _health0(members).items()}
        self._health = layout.put(health, layout.replicated)
        own = {} if member.features is None else {"features": member.features}
        # A host feed (RowsOnHost, feeds.StreamedRows) sends each dispatch's batches.
        self._host_feed = table if hasattr(table, "sent") else None
        shared = {} if self._host_feed is not None else table
        self._table = {"shared": shared, "own": layout.put(own, layout.replicated)}
        trial = {
            "dropout_key": member.dropout_key,
            "settings": member.settings,
            "limit": _limits(members)[0],
            "active": np.bool_(True),
        }
        self.trial = layout.put(trial, layout.replicated)
        dispatch = _dispatch_fn(spec, stage, self.capacity, layout, split_batches=True)
        out = (shardings, jax.tree.map(lambda _: layout.replicated, health))
        self._run = jax.jit(dispatch, donate_argnums=0, out_shardings=out)
        self._eval = eval_step

    def _dispatch(self, indices: list[np.ndarray | None], count: int) -> None:
        (rows,) = indices
        table = self._table
        if self._host_feed is not None:
            table = {**table, "sent": self._host_feed.sent(self._layout, rows, count)}
        self.state, self._health = self._run(
            (self.state, self._health), table, rows, np.int32(count), self.trial
        )

    def host_states(self) -> list[TrainState]:
        return [host_copy(self.state)]

    def states(self) -> list[TrainState]:
        if self._split:
            return [self.state]
        return self.host_states()  # one replica's copy: cheap, and saved on another thread

    def sums(self) -> list[Any]:
        return [mesh.host(self.state.sums)]

    def reset_sums(self, rows: Sequence[bool]) -> None:
        if rows[0]:
            zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), self.state.sums)
            self.state = self.state.replace(sums=self._layout.put(zeros, self._layout.replicated))

    def evaluate_sums(self, batches: Sequence[dict]) -> list[Any]:
        return [mesh.host(split_sums(self._eval, self.state.params, batches))]


@jax.jit
def _zero_rows(rows: jax.Array, tree: Any) -> Any:
    """``tree`` [trials, ...] with the trials where ``rows`` [trials] is True set to zero."""
    return jax.tree.map(
        lambda x: jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.zeros_like(x), x), tree
    )


def _copy_rows(state: TrainState, sources: jax.Array) -> TrainState:
    """``state`` [trials, ...] whose parameters and optimizer state of trial k are trial
    ``sources[k]``'s."""
    take = lambda tree: jax.tree.map(lambda x: x[sources], tree)
    return state.replace(params=take(state.params), opt_state=take(state.opt_state))


class VectorizedStepper(Stepper):
    """K trials: ``jit(vmap(dispatch))`` over states stacked on a leading trial axis."""

    def __init__(
        self,
        spec: StepSpec,
        stage: Stage,
        members: Sequence[Member],
        *,
        table: dict[str, jax.Array] | Any,
        eval_step: Callable[[Any, dict], Any],
        steps_per_dispatch: int | str = 1,
        layout: mesh.Layout | None = None,
    ):
        super().__init__(steps_per_dispatch)
        layout = layout or mesh.single_device()
        self.size = len(members)
        stacked = _stack([m.state for m in members])
        # Trials that divide over the data axis go one group per device (each trains whole
        # batches: no per-step exchange but the gradients' own); otherwise every device
        # holds every trial and each batch splits by rows.
        self.spread = layout.data_size > 1 and self.size % layout.data_size == 0
        shardings = layout.state_shardings(stacked, trials="data" if self.spread else "replicated")
        self.state = layout.put(stacked, shardings)
        health = _health0(members)
        self._health = layout.put(health, layout.replicated)
        if isinstance(table, RowsOnHost):  # a group's trials read different rows: every
            table = layout.put(table.table, layout.replicated)  # device holds them all
        # A host feed for the group (feeds.StreamedGroup) sends each trial's batches.
        self._host_feed = table if hasattr(table, "sent") else None
        cached = members[0].features is not None
        own = {"features": jnp.stack([m.features for m in members])} if cached else {}
        shared = {} if self._host_feed is not None else table
        self._table = {"shared": shared, "own": layout.put(own, layout.replicated)}
        settings = [m.settings for m in members]
        self.settings = [dict(s) for s in settings]  # host copies of the program's inputs
        trials = {
            "dropout_key": jnp.stack([m.dropout_key for m in members]),
            "settings": {k: np.asarray([s[k] for s in settings], np.float32) for k in settings[0]},
            "limit": _limits(members),
        }
        self.trials = layout.put(trials, layout.replicated)
        self._layout = layout
        dispatch = _dispatch_fn(spec, stage, self.capacity, layout, split_batches=not self.spread)
        sent = {} if self._host_feed is None else {"sent": 0}  # [trials, capacity, batch, ...]
        axes = (0, {"shared": None, "own": 0, **sent}, 0, None, 0)
        out = (shardings, jax.tree.map(lambda _: layout.replicated, health))
        self._run = jax.jit(jax.vmap(dispatch, in_axes=axes), donate_argnums=0, out_shardings=out)
        self._eval = jax.jit(jax.vmap(eval_step, in_axes=(0, None)))
        # PBT's exploit: every trial's parameters and optimizer state from the row
        # ``sources[k]`` (its own row: unchanged), placed as the dispatch expects them.
        self._gather = jax.jit(_copy_rows, donate_argnums=0, out_shardings=shardings)

    def _dispatch(self, indices: list[np.ndarray | None], count: int) -> None:
        active = np.array([rows is not None for rows in indices])
        filler = next(rows for rows in indices if rows is not None)  # masked out anyway
        rows = np.stack([filler if r is None else r for r in indices])
        trials = {**self.trials, "active": self._layout.put(active, self._layout.replicated)}
        table = self._table
        if self._host_feed is not None:
            table = {**table, "sent": self._host_feed.sent(self._layout, indices, count)}
        self.state, self._health = self._run(
            (self.state, self._health), table, rows, np.int32(count), trials
        )

    def exploit(self, sources: Sequence[int], settings: Sequence[Settings]) -> None:
        """PBT: trial k takes the parameters and optimizer state of trial ``sources[k]``
        (one gather over the trial axis; its step, sums and carry stay its own) and
        ``settings[k]``, new inputs of the same program: nothing recompiles."""
        index = self._layout.put(np.asarray(sources, np.int32), self._layout.replicated)
        self.state = self._gather(self.state, index)
        self.settings = [dict(s) for s in settings]
        values = {k: np.asarray([s[k] for s in settings], np.float32) for k in settings[0]}
        placed = self._layout.put(values, self._layout.replicated)
        self.trials = {**self.trials, "settings": placed}

    def host_states(self) -> list[TrainState]:
        return host_slices(self.state, self.size)

    def sums(self) -> list[Any]:
        return host_slices(self.state.sums, self.size)

    def reset_sums(self, rows: Sequence[bool]) -> None:
        self.state = self.state.replace(sums=_zero_rows(np.asarray(rows), self.state.sums))

    def evaluate_sums(self, batches: Sequence[dict]) -> list[Any]:
        return host_slices(split_sums(self._eval, self.state.params, batches), self.size)


def make_stepper(
    spec: StepSpec,
    stage: Stage,
    members: Sequence[Member],
    *,
    table: dict[str, jax.Array] | Any,
    eval_step: Callable[[Any, dict], Any],
    steps_per_dispatch: int | str = 1,
    layout: mesh.Layout | None = None,
) -> Stepper:
    """The stepper for ``len(members)`` trials: ``jit(dispatch)`` for one,
    ``jit(vmap(dispatch))`` for more. ``table`` holds the train rows every member shares
    (``train_table``), or a host feed that sends each dispatch's batches (RowsOnHost,
    fnn_jax.train.feeds.StreamedRows); ``eval_step(params, batch) -> sums`` is one
    trial's evaluation.
    ``layout`` (default: the first device) places the state and splits each batch."""
    cls = SingleStepper if len(members) == 1 else VectorizedStepper
    return cls(
        spec,
        stage,
        members,
        table=table,
        eval_step=eval_step,
        steps_per_dispatch=steps_per_dispatch,
        layout=layout,
    )
