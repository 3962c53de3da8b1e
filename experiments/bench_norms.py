"""python experiments/bench_norms.py

What logging the gradient, parameter and update norms costs a train step
(config.train.log_norms): the demo's model (digits LSTM 128, batch 32, length 8), one jitted
step per call, 500 steps timed after 20 warm-up steps, with and without the norms, five
rounds; prints each round's milliseconds per step and the median ratio.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ import fnn_jax

from configs import digits_lstm  # noqa: E402
from fnn_jax.train import steps  # noqa: E402
from fnn_jax.train.trial import setup  # noqa: E402


def ms_per_step(plan, params, norms: bool, timed: int = 500) -> float:
    """Milliseconds per step of ``make_train_step`` with or without the norms."""
    tx = optax.adam(1e-3)
    spec = steps.StepSpec(model=plan.model, task=plan.task, norms=norms)
    step = steps.make_train_step(spec, tx, dropout_key=jax.random.key(1))
    copy = jax.tree.map(jnp.copy, params)  # the step donates its state
    sums = steps.zero_sums(plan.model, plan.task, copy, plan.sample)
    state = steps.TrainState(jnp.int32(0), copy, tx.init(copy), sums)
    batch = steps.to_device_batch(plan.sample)
    for _ in range(20):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(timed):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return 1e3 * (time.perf_counter() - start) / timed


def main() -> None:
    plan = setup(digits_lstm.get_config())
    params = steps.init_params(plan.model, jax.random.key(0), plan.sample)
    rounds = [(ms_per_step(plan, params, True), ms_per_step(plan, params, False)) for _ in range(5)]
    for with_norms, without in rounds:
        print(f"with norms {with_norms:.3f} ms, without {without:.3f} ms")
    print(f"median ratio {statistics.median(a / b for a, b in rounds):.3f}")


if __name__ == "__main__":
    main()
