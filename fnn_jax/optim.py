"""Optimizers, schedules, freezing rules and explicit weight penalties.

Freezing lives here, never in the model: parameters are labelled by first-match regex rules on
their '/'-joined path, and frozen leaves go through ``optax.selective_transform`` so they get
no optimizer state and an update of exactly zero. (``optax.masked`` would pass the raw
gradient through for masked-out leaves.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fnn_jax.config import OPTIMIZERS, RULE_LABELS, SCHEDULES, check_choice
from fnn_jax.tree import first_match, path_str

Rules = Sequence[tuple[str, str]]


def label_params(params, rules: Rules):
    """A pytree of labels ("train" | "frozen"), one per leaf, by first matching rule.

    Every parameter must match a rule: an unmatched path is an error, so a typo in a rule
    cannot silently train (or freeze) the wrong thing.
    """
    for pattern, label in rules:
        check_choice(f"rule {pattern!r} label", label, RULE_LABELS)
    compiled = [(re.compile(pattern), label) for pattern, label in rules]

    def label(path, _):
        name = path_str(path)
        for pattern, lab in compiled:
            if pattern.fullmatch(name):
                return lab
        raise ValueError(
            f"parameter {name!r} matches no freezing rule; rules: {[p for p, _ in rules]}"
        )

    return jax.tree_util.tree_map_with_path(label, params)


def frozen_mask(params, rules: Rules):
    """True where a parameter is frozen."""
    return jax.tree.map(lambda lab: lab == "frozen", label_params(params, rules))


def schedule(
    cfg: ml_collections.ConfigDict, total_steps: int, peak: float | jax.Array | None = None
) -> optax.Schedule:
    """The learning-rate schedule named by cfg.schedule, peaking at ``peak`` (default
    cfg.learning_rate). Every schedule is linear in its peak: a trial's own rate is its
    peak times ``schedule(cfg, total_steps, peak=1.0)``."""
    check_choice("optimizer.schedule", cfg.schedule, SCHEDULES)
    lr = cfg.learning_rate if peak is None else peak
    if cfg.schedule == "constant":
        if cfg.warmup_steps:
            return optax.linear_schedule(0.0, lr, cfg.warmup_steps)
        return optax.constant_schedule(lr)
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=cfg.warmup_steps,
            decay_steps=max(total_steps, cfg.warmup_steps + 1),
            end_value=lr * cfg.final_lr_fraction,
        )
    staircase = cfg.schedule == "step"
    decay = optax.exponential_decay(lr, cfg.decay_steps, cfg.decay_rate, staircase=staircase)
    if cfg.warmup_steps:
        warmup = optax.linear_schedule(0.0, lr, cfg.warmup_steps)
        return optax.join_schedules([warmup, decay], [cfg.warmup_steps])
    return decay


# The scalar settings a vectorised trial may hold as its own (traced) value.
TRIAL_SETTINGS = ("learning_rate", "weight_decay", "momentum")


def base_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int, trial: dict[str, Any] | None = None
) -> optax.GradientTransformation:
    """The optax optimizer called cfg.name, with the config keys it takes (config.OPTIMIZERS).

    ``trial`` may replace learning_rate (the schedule's peak), weight_decay and momentum
    with traced values (a vectorised trial's own); a momentum of 0 in cfg means no
    momentum buffer at all.
    """
    check_choice("optimizer.name", cfg.name, OPTIMIZERS)
    trial = trial or {}
    kwargs = {key: trial.get(key, cfg[key]) for key in OPTIMIZERS[cfg.name]}
    if "momentum" in kwargs and not cfg.momentum:
        kwargs["momentum"] = None
    if "learning_rate" in trial:  # the trial's peak times the schedule's shape
        peak, unit = trial["learning_rate"], schedule(cfg, total_steps, peak=1.0)
        lr = lambda count: peak * unit(count)
    else:
        lr = schedule(cfg, total_steps)
    return getattr(optax, cfg.name)(lr, **kwargs)


def scale_by_tree(factors) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its factor: per-group learning-rate multipliers."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    cfg: ml_collections.ConfigDict,
    total_steps: int,
    *,
    params: Any = None,
    rules: Rules | None = None,
    lr_mults: Sequence[tuple[str, float]] = (),
    trial: dict[str, Any] | None = None,
) -> optax.GradientTransformation:
    """Gradient clipping, then the named optimizer with its schedule; frozen leaves untouched.

    ``rules`` (with ``params``) freeze parameters; without them everything trains.
    ``lr_mults`` scale the learning rate of the leaves whose path they match first.
    ``trial``: a vectorised trial's own (traced) settings, see ``base_optimizer``.
    """
    tx = base_optimizer(cfg, total_steps, trial)
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    if rules is not None:
        tx = optax.selective_transform(tx, freeze_mask=frozen_mask(params, rules))
    if lr_mults:
        tx = optax.chain(tx, scale_by_tree(first_match(params, lr_mults, 1.0)))
    return tx


def penalty(params, l1: float | jax.Array, l2: float | jax.Array, exclude: str) -> jax.Array:
    """lambda_1 * sum|w| + lambda_2 * sum w^2 over parameters whose path doesn't match exclude.

    Kept in the loss, separate from AdamW's decoupled decay. ``l1``/``l2`` may be traced.
    """
    skip = re.compile(exclude) if exclude else None  # a full match, as every pattern here
    total = jnp.zeros((), jnp.float32)
    use_l1, use_l2 = not _is_zero(l1), not _is_zero(l2)
    if not (use_l1 or use_l2):
        return total
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if skip is not None and skip.fullmatch(path_str(path)):
            continue
        if use_l1:
            total = total + l1 * jnp.sum(jnp.abs(leaf))
        if use_l2:
            total = total + l2 * jnp.sum(jnp.square(leaf))
    return total


def _is_zero(weight) -> bool:
    """A Python 0 (term left out); a traced weight (a vectorised trial's) always counts."""
    return isinstance(weight, int | float) and weight == 0
