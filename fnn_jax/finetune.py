"""Fine-tuning: start from a pretrained checkpoint, replace the head, train in stages."""

from __future__ import annotations

from typing import Any

import ml_collections

from fnn_jax.optim import frozen_mask


def stages(
    config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> list | None:
    """The stage list of config.finetune, or None for plain training."""
    if "finetune" not in config:
        return None
    raise NotImplementedError


def initial_params(config: ml_collections.ConfigDict, params: Any, model, sample) -> Any:
    """Parameters to start from: config.init_from merged into ``params``, or ``params``."""
    if not config.get("init_from"):
        return params
    raise NotImplementedError


def frozen_tree(params: Any, rules) -> Any | None:
    """True where a parameter is frozen under ``rules``; None when nothing is frozen."""
    return None if rules is None else frozen_mask(params, rules)
