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

import logging

import jax
import ml_collections

from fnn_jax.config import ConfigError

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
