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

from fnn_jax.config import OPTIMIZERS, SCHEDULES, check_choice

Rules = Sequence[tuple[str, str]]
LABELS = ("train", "frozen")


def path_str(path) -> str:
    """'/'-joined names of a pytree path, e.g. 'encoder/layer_0/w_ih'."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def label_params(params, rules: Rules):
    """A pytree of labels ("train" | "frozen"), one per leaf, by first matching rule.

    Every parameter must match a rule: an unmatched path is an error, so a typo in a rule
    cannot silently train (or freeze) the wrong thing.
    """
    for pattern, label in rules:
        check_choice(f"rule {pattern!r} label", label, LABELS)
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


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule named by cfg.schedule, peaking at cfg.learning_rate."""
    check_choice("optimizer.schedule", cfg.schedule, SCHEDULES)
    lr = cfg.learning_rate
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


def base_optimizer(
    cfg: ml_collections.ConfigDict,
    lr: optax.ScalarOrSchedule,
    weight_decay: float | jax.Array | None = None,
    momentum: float | jax.Array | None = None,
):
    """The optimizer cfg.name; ``weight_decay``/``momentum`` (default: cfg's) may be traced."""
    check_choice("optimizer.name", cfg.name, OPTIMIZERS)
    weight_decay = cfg.weight_decay if weight_decay is None else weight_decay
    momentum = (cfg.momentum or None) if momentum is None else momentum
    if cfg.name == "adam":
        return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.name == "adamw":
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=weight_decay)
    if cfg.name == "rmsprop":
        return optax.rmsprop(lr, eps=cfg.eps, momentum=momentum)
    return optax.sgd(lr, momentum=momentum, nesterov=cfg.nesterov)


def first_match(params, patterns: Sequence[tuple[str, Any]], default: Any):
    """A tree with, per leaf, the value of the first pattern that fully matches its path."""
    compiled = [(re.compile(p), v) for p, v in patterns]

    def pick(path, _):
        name = path_str(path)
        return next((v for p, v in compiled if p.fullmatch(name)), default)

    return jax.tree_util.tree_map_with_path(pick, params)


def scale_by_tree(factors) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its factor: per-group learning-rate multipliers."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    cfg: ml_collections.ConfigDict,
    total_steps: int,
    params=None,
    rules: Rules | None = None,
    lr_mults: Sequence[tuple[str, float]] = (),
    *,
    learning_rate: optax.Schedule | None = None,
    weight_decay: jax.Array | None = None,
    momentum: jax.Array | None = None,
) -> optax.GradientTransformation:
    """Gradient clipping, then the named optimizer with its schedule; frozen leaves untouched.

    ``rules`` (with ``params``) freeze parameters; without them everything trains.
    ``lr_mults`` scale the learning rate of the leaves whose path they match first.
    ``learning_rate`` (a schedule), ``weight_decay`` and ``momentum`` replace cfg's values;
    vectorised trials pass their own, traced, here.
    """
    lr = schedule(cfg, total_steps) if learning_rate is None else learning_rate
    tx = base_optimizer(cfg, lr, weight_decay, momentum)
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
    skip = re.compile(exclude) if exclude else None
    total = jnp.zeros((), jnp.float32)
    use_l1, use_l2 = not _is_zero(l1), not _is_zero(l2)
    if not (use_l1 or use_l2):
        return total
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if skip is not None and skip.search(path_str(path)):
            continue
        if use_l1:
            total = total + l1 * jnp.sum(jnp.abs(leaf))
        if use_l2:
            total = total + l2 * jnp.sum(jnp.square(leaf))
    return total


def _is_zero(weight) -> bool:
    """A Python 0 (term left out); a traced weight (a vectorised trial's) always counts."""
    return isinstance(weight, int | float) and weight == 0
