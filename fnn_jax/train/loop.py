"""``train_and_evaluate``: the whole life of a run in its workdir (a group of one trial).

Resume order: this workdir's latest checkpoint, else ``config.init_from`` (parameters only,
see fnn_jax.finetune), else scratch. Batch order is a function of (seed, epoch) and dropout
keys of (seed, step), so a resumed run repeats exactly what an uninterrupted one would do.
The loop itself is fnn_jax.train.engine, shared with vectorised groups.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ml_collections

from fnn_jax import config as config_lib
from fnn_jax.files import workdir_lock, write_json
from fnn_jax.train.engine import Engine

log = logging.getLogger("fnn_jax")


def check_config_file(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json, or refuses to resume a workdir made with another model or data."""
    path = workdir / "config.json"
    new = config_lib.to_dict(config)
    if path.exists():
        old = json.loads(path.read_text())
        arch, other = config_lib.split_differences(old, new)
        if arch:
            raise ValueError(
                f"workdir {workdir} holds a run with a different model/data config; "
                f"refusing to resume. Differing keys:\n  " + "\n  ".join(arch)
            )
        if other:
            log.warning("resuming %s with changed settings:\n  %s", workdir, "\n  ".join(other))
    write_json(path, new)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``config`` in ``workdir``; returns the report.

    stop_after_steps: stop once this many steps ran in this call, after checkpointing (for
    time-limited jobs, and for tests of resumption); returns ``{"interrupted_at": step}``.
    The same call again continues. SIGTERM saves and raises Preempted.
    """
    config_lib.validate(config)
    workdir = Path(workdir).absolute()
    with workdir_lock(workdir):
        check_config_file(workdir, config)
        (outcome,) = Engine([config], [workdir]).run(stop_after_steps)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
