"""Several processes training one model (``jax.distributed``): the set-up before anything
else, and which process writes what.

    config.distributed.coordinator_address = "10.0.0.1:1234"  # process 0's host:port
    config.distributed.num_processes = 2
    config.distributed.process_id = 0  # this process; each process runs the same command

``coordinator_address = "auto"`` leaves everything to ``jax.distributed.initialize()``: the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables, or a
cluster it detects (SLURM, a Cloud TPU slice). Every process loads the same deterministic
data and takes part in every step and every Orbax save; only process 0 locks the workdir
and writes config.json, the metrics, TensorBoard events, plots, the report and the export.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from fnn_jax import config as config_lib
from fnn_jax.config import ConfigError
from fnn_jax.train.rendezvous import rendezvous

log = logging.getLogger("fnn_jax")


def initialize(config: ml_collections.ConfigDict) -> None:
    """Joins the processes named by config.distributed (no-op for a single process, or
    when this process already joined)."""
    options = config.distributed
    if not options.coordinator_address or jax.distributed.is_initialized():
        return
    # Cross-process collectives of CPU arrays go through gloo (GPUs and TPUs bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _orbax_barriers_through_the_coordinator()
    if options.coordinator_address == "auto":
        jax.distributed.initialize()
    else:
        if not 0 <= options.process_id < options.num_processes:
            raise ConfigError(
                f"config.distributed.process_id={options.process_id} must lie in "
                f"[0, config.distributed.num_processes={options.num_processes})"
            )
        if options.timeout_s:  # a missing, duplicated or miscounted rank, named
            rendezvous(
                options.coordinator_address,
                options.num_processes,
                options.process_id,
                options.timeout_s,
            )
        jax.distributed.initialize(
            options.coordinator_address, options.num_processes, options.process_id
        )
    log.info(
        "process %d of %d; %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _orbax_barriers_through_the_coordinator() -> None:
    """Orbax's default barriers are device collectives, run from its async-save thread:
    they could interleave with the training step's own collectives in another order on
    each process. The distributed client's barriers cannot."""
    from absl import flags

    if not flags.FLAGS.is_parsed():  # a library call, not an absl app: defaults, parsed
        flags.FLAGS.mark_as_parsed()
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; the only one alone).
    Alone, it starts no JAX backend to find out: a sweep worker's Ctrl-C handling must not
    depend on when the backend came up."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def on_any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process, agreed by all (alone: ``flag``). One
    process's SIGTERM must stop every process at the same step: each asks at the same
    dispatch boundary (a gather of one bool through the collectives)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.bool_(flag))).any())


def check_agreement(config: ml_collections.ConfigDict, data: dict[str, Any]) -> None:
    """Several processes must train one experiment: the same config (but
    ``distributed.process_id``), the same data (``data``: its description and fingerprint,
    data.json) and the same fnn_jax code. Compared through one digest per process before
    the workdir is touched; a difference is a ConfigError on every process, which names the
    ranks that differ from process 0 and, on those, the keys."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    record = _agreed(config, data)
    text = json.dumps(record, sort_keys=True, default=str).encode()
    digest = np.frombuffer(hashlib.sha256(text).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1, digest.size)
    differ = [rank for rank in range(len(digests)) if (digests[rank] != digests[0]).any()]
    if not differ:
        return
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
    mine = np.frombuffer(text.ljust(size, b" ")[:size], np.uint8)
    first = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine))))
    message = (
        f"process(es) {differ} of {jax.process_count()} run another config, data or code "
        "than process 0; every process must run the same experiment"
    )
    if jax.process_index() in differ:
        keys = config_lib.differences(first, json.loads(text))
        message += f"; this process ({jax.process_index()}) differs in:\n  " + "\n  ".join(keys)
    raise ConfigError(message)


def _agreed(config: ml_collections.ConfigDict, data: dict[str, Any]) -> dict[str, Any]:
    """What every process must share: the config without its own process_id, the data's
    description and fingerprint, and the digest of fnn_jax's sources."""
    settings = config_lib.to_dict(config)
    settings["distributed"] = {
        k: v for k, v in settings["distributed"].items() if k != "process_id"
    }
    return {"config": settings, "data": data, "code": {"fnn_jax": _code_digest()}}


@functools.cache
def _code_digest() -> str:
    """SHA-256 over fnn_jax's own .py files (paths and contents)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
