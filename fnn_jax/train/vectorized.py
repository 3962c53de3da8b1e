"""``train_together``: trials that differ only in seed and scalar settings, trained as one
jitted program (``jax.vmap`` over a leading trial axis of every array).

Each trial keeps all that a run of its own has: its workdir (config.json, Orbax checkpoints,
metrics.jsonl, TensorBoard events, curves, report), its initialisation, batch order and
dropout keys (from its seed), its learning-rate schedule, early stopping and fine-tuning
stages. The loop is the single run's (fnn_jax.train.engine); only the stepper differs.

Results equal ``train_and_evaluate`` of each config to float tolerance (batched matrix
products may round differently), and the checkpoints are the same: a trial interrupted here
resumes here or alone. The gain: on a small model a step is mostly dispatch and Python
overhead, and K trials pay it (and compilation, data loading) once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from fnn_jax import config as config_lib
from fnn_jax.files import workdir_lock
from fnn_jax.train.loop import check_init_from, check_memory, open_engine
from fnn_jax.train.pbt import PBTSpec
from fnn_jax.train.pbt import check as check_pbt
from fnn_jax.train.trial import setup

# The config keys in which trials of one group may differ.
VECTORIZABLE = (
    "seed",
    "optimizer.learning_rate",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "regularization.l1",
    "regularization.l2",
)


def group_key(config: ml_collections.ConfigDict) -> str:
    """Configs with equal keys can train together (fine-tuning ones too: the stages are
    part of what a group shares)."""
    shared = config_lib.to_dict(config)
    for key in VECTORIZABLE:
        section, _, name = key.rpartition(".")
        (shared[section] if section else shared).pop(name)
    # Momentum 0 means no momentum buffer at all: another optimizer-state structure.
    shared["momentum_buffer"] = bool(config.optimizer.momentum)
    return json.dumps(shared, sort_keys=True, default=list)


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises ValueError naming what keeps ``configs`` from training together."""
    if not configs:
        raise ValueError("train_together needs at least one config")
    first = config_lib.to_dict(configs[0])
    for i, config in enumerate(configs[1:], 1):
        if group_key(config) == group_key(configs[0]):
            continue
        differ = [
            d
            for d in config_lib.differences(first, config_lib.to_dict(config))
            if not d.startswith(tuple(f"{key}:" for key in VECTORIZABLE))
        ]
        if not differ:
            differ = ["optimizer.momentum: 0 and non-zero (a momentum buffer or none)"]
        raise ValueError(
            f"trial {i} differs from trial 0 in more than {', '.join(VECTORIZABLE)}, so they "
            "cannot train in one vectorised program:\n  " + "\n  ".join(differ)
        )


def train_together(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str | Path],
    *,
    stop_after_steps: int | None = None,
    halving: int = 0,
    pbt: PBTSpec | None = None,
) -> list[dict[str, Any] | Exception]:
    """Trains (or resumes) each ``configs[k]`` in ``workdirs[k]``, all in one vmapped program.

    ``halving`` (eta >= 2): successive halving over the group; at the validations numbered
    1, eta, eta^2, ... only the best 1/eta go on, the others return ``{"pruned_at": step}``
    (their last checkpoint kept), and the program is re-packed to the survivors.

    ``pbt``: population-based training over the group (fnn_jax.train.pbt): at every
    ``pbt.interval`` steps the bottom trials copy a top trial's parameters and optimizer
    state and take its settings, perturbed; the lineage goes to ``pbt.jsonl`` and
    ``pbt.png`` in ``workdirs[0]`` and to each trial's metrics.jsonl (split "pbt").

    Returns, per trial, its report (as ``train_and_evaluate`` does), ``{"interrupted_at":
    step}`` after ``stop_after_steps`` steps, or the exception that stopped that trial alone
    (e.g. too many non-finite steps); the others go on. SIGTERM saves every trial and raises
    Preempted.
    """
    if len(configs) != len(workdirs):
        raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs")
    for config in configs:
        config_lib.validate(config)
    check_group(configs)
    if pbt is not None:
        check_pbt(pbt, configs, halving=halving)
    workdirs = [Path(w).absolute() for w in workdirs]
    if len(set(workdirs)) != len(workdirs):
        raise ValueError(f"two trials share a workdir: {[str(w) for w in workdirs]}")
    plan = setup(configs[0])  # the data and model the group shares
    if pbt is not None:  # an interval of whole epochs: known once the data is
        check_pbt(pbt, configs, halving=halving, eval_every=plan.eval_every)
    check_memory(configs[0], plan)
    for config in configs:
        check_init_from(config, plan, workdirs)
    with contextlib.ExitStack() as locks:
        for workdir in workdirs:
            locks.enter_context(workdir_lock(workdir))
        if halving and halving < 2:
            raise ValueError(f"halving must be an eta >= 2 (or 0: off); got {halving}")
        return open_engine(configs, workdirs, plan, halving=halving, pbt=pbt).run(stop_after_steps)
