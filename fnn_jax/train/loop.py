"""``train_and_evaluate``: the whole life of a run in its workdir (a group of one trial).

Resume order: this workdir's latest checkpoint, else ``config.init_from`` (parameters only,
see fnn_jax.finetune), else scratch. Batch order is a function of (seed, epoch) and dropout
keys of (seed, step), so a resumed run repeats exactly what an uninterrupted one would do.
The loop itself is fnn_jax.train.engine, shared with vectorised groups.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from fnn_jax import config as config_lib
from fnn_jax import finetune
from fnn_jax.cells import fixed_point
from fnn_jax.checkpoint import ArchitectureMismatch, CheckpointError, StateMismatch
from fnn_jax.compilation import use_compilation_cache
from fnn_jax.config import ConfigError
from fnn_jax.data import fingerprint
from fnn_jax.files import WorkdirLocked, WorkdirUnusable, workdir_lock, write_json
from fnn_jax.optim import make_optimizer
from fnn_jax.train import distributed
from fnn_jax.train.engine import Engine
from fnn_jax.train.pbt import PBTSpec
from fnn_jax.train.trial import Setup, setup

log = logging.getLogger("fnn_jax")


# What refuses a run before it trains, with a message that says it all (the command-line
# tools print it as one line, no traceback).
REFUSALS = (
    ConfigError,
    WorkdirLocked,
    WorkdirUnusable,
    CheckpointError,
    ArchitectureMismatch,
    StateMismatch,
)


def has_checkpoints(workdir: Path) -> bool:
    """Whether the workdir holds a saved step (what a changed config or data would
    invalidate)."""
    return any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))


def check_init_from(
    config: ml_collections.ConfigDict, plan: Setup, workdirs: Sequence[Path]
) -> None:
    """config.init_from readable and fitting the model (shapes, unused or missing
    parameters), checked before any workdir is created: ConfigError naming the key. A
    workdir that already holds checkpoints resumes from them, not from init_from."""
    if not config.init_from or all(has_checkpoints(Path(w)) for w in workdirs):
        return
    abstract = plan.abstract_params
    try:
        loaded, step, folder = finetune.pretrained_params(config.init_from, config.init_step)
        finetune.merge_pretrained(
            abstract,
            loaded,
            reinit=config.finetune.reinit,
            dont_load=config.finetune.dont_load,
            source=f"{folder} step {step}",
        )
    except (OSError, ValueError) as error:
        raise ConfigError(f"config.init_from={config.init_from!r}: {error}") from None


def check_memory(config: ml_collections.ConfigDict, plan: Setup) -> None:
    """The parameters, their gradients and the optimizer's state (sizes from abstract
    shapes: nothing is allocated) must fit the memory of this process's devices, or the
    host's where a device does not report its own: else ConfigError with the estimate,
    before the workdir is created."""
    abstract = plan.abstract_params
    opt_state = jax.eval_shape(make_optimizer(config.optimizer, 1, params=abstract).init, abstract)
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    params = nbytes(abstract)
    need = 2 * params + nbytes(opt_state)
    limit, where = _memory_limit()
    if need > limit:
        raise ConfigError(
            f"the model needs about {_gib(need)} for its parameters ({_gib(params)}), their "
            f"gradients and the optimizer state, more than the {_gib(limit)} of {where}: "
            "lower config.model.hidden_size, num_layers or embed_dim"
        )


def _memory_limit() -> tuple[int, str]:
    """(bytes, what they are): the local devices' memory, or the host's physical memory."""
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    if all("bytes_limit" in s for s in stats):
        return sum(s["bytes_limit"] for s in stats), f"{len(stats)} device(s)"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def check_config_file(workdir: Path, config: ml_collections.ConfigDict) -> list[str]:
    """Refuses to resume a workdir whose checkpoints another model or data wrote; returns
    the other changed settings (logged as a warning). A config.json with no checkpoint
    beside it (a first attempt that failed before saving) holds nothing to resume."""
    path = workdir / "config.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    arch, other = config_lib.split_differences(old, config_lib.to_dict(config))
    has_steps = has_checkpoints(workdir)
    if arch and has_steps:
        raise config_lib.ConfigError(
            f"workdir {workdir} holds a run with a different model/data config; "
            f"refusing to resume. Differing keys:\n  " + "\n  ".join(arch)
        )
    if arch:
        log.warning("%s has no checkpoint yet: starting with the new config", workdir)
        return []
    if other:
        log.warning("resuming %s with changed settings:\n  %s", workdir, "\n  ".join(other))
    return other


def check_data_file(workdir: Path, config: ml_collections.ConfigDict, plan: Setup) -> None:
    """Refuses to resume checkpoints trained on other data: the rebuilt data's fingerprint
    against the workdir's data.json (rows, shapes, array and file hashes), unless
    config.data.allow_changed."""
    changed = data_changes(workdir, plan.data_description["fingerprint"])
    if not changed:
        return
    if config.data.allow_changed:
        log.warning(
            "resuming %s on changed data (config.data.allow_changed):\n  %s",
            workdir,
            "\n  ".join(changed),
        )
        return
    raise config_lib.ConfigError(
        f"workdir {workdir} was trained on other data than config.data now gives; refusing "
        f"to resume (set config.data.allow_changed=True to resume anyway). What changed:\n  "
        + "\n  ".join(changed)
    )


def data_changes(workdir: Path, new: dict[str, Any]) -> list[str]:
    """How the fingerprint ``new`` differs from the data the workdir's checkpoints were
    trained on (data.json); nothing when it holds no checkpoint yet."""
    saved = fingerprint.read(workdir)
    if saved is None or not has_checkpoints(workdir):
        return []
    return fingerprint.changes(saved["fingerprint"], new)


def open_engine(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[Path],
    plan: Setup,
    on_validation: Callable[[int, dict[str, float]], bool] | None = None,
    halving: int = 0,
    *,
    pbt: PBTSpec | None = None,
) -> Engine:
    """The engine over ``workdirs`` (each already locked), restored from their checkpoints;
    each config.json is written only once its trial opened, so a refused resume leaves the
    workdir as it was."""
    changed = [check_config_file(w, c) for c, w in zip(configs, workdirs, strict=True)]
    for config, workdir in zip(configs, workdirs, strict=True):
        check_data_file(workdir, config, plan)
    use_compilation_cache(configs[0].train.compilation_cache)
    try:
        engine = Engine(configs, workdirs, plan, on_validation, halving, pbt=pbt)
    except StateMismatch as error:
        settings = sorted({d for ds in changed for d in ds})
        hint = "\n  ".join(settings) or "(none recorded in config.json)"
        raise StateMismatch(f"{error}\nsettings changed since it was saved:\n  {hint}") from None
    for config, workdir in zip(configs, workdirs, strict=True):
        if distributed.is_primary():
            write_json(workdir / "config.json", config_lib.to_dict(config))
            write_json(workdir / fingerprint.FILE, plan.data_description)
    return engine


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    stop_after_steps: int | None = None,
    on_validation: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``config`` in ``workdir``; returns the report.

    stop_after_steps: stop once this many steps ran in this call, after checkpointing (for
    time-limited jobs, and for tests of resumption); returns ``{"interrupted_at": step}``.
    on_validation(step, validation metrics): True prunes the run at that step (saved);
    returns ``{"pruned_at": step}`` (a search's pruner).
    The same call again continues. SIGTERM saves and raises Preempted. A bad config
    (ConfigError) is refused before the workdir is touched.
    """
    config_lib.validate(config)
    distributed.initialize(config)  # before JAX computes anything
    plan = setup(config)  # loads the data: a batch size larger than the split fails here
    distributed.check_agreement(config, plan.data_description)  # all processes, one run
    workdir = Path(workdir).absolute()
    check_memory(config, plan)
    check_init_from(config, plan, [workdir])
    # One process owns the workdir; the others of a distributed run only join its saves.
    # A compiled solve's on_nonconvergence="raise" arrives as JaxRuntimeError: its class.
    lock = workdir_lock(workdir) if distributed.is_primary() else contextlib.nullcontext()
    with lock, fixed_point.nonconvergence_errors():
        (outcome,) = open_engine([config], [workdir], plan, on_validation).run(stop_after_steps)
        if isinstance(outcome, Exception):
            raise outcome
    return outcome
