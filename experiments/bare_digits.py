"""python experiments/bare_digits.py

The yardstick of ``bench.py --section demo``: the demo's training (configs/digits_lstm.py:
LSTM 128, adam with warmup-cosine, 30 epochs of batch 32) as a tuned bare JAX script with
our model, and nothing else: the data on the device, one jitted ``lax.scan`` per epoch,
validation each epoch, the test accuracy at the end; no checkpoints, logs or plots.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/
from configs import digits_lstm  # noqa: E402
from fnn_jax import data  # noqa: E402
from fnn_jax.optim import make_optimizer  # noqa: E402
from fnn_jax.train.steps import build_model  # noqa: E402


def main() -> None:
    config = digits_lstm.get_config()
    dataset = data.load("digits")
    model = build_model(config.model, dataset)
    batch_size, epochs = config.data.batch_size, config.train.num_epochs
    train = jax.device_put((dataset.train.inputs, dataset.train.targets))
    steps_per_epoch = len(dataset.train) // batch_size
    tx = make_optimizer(config.optimizer, steps_per_epoch * epochs)
    params = jax.jit(model.init)(jax.random.key(0), train[0][:1])["params"]
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def epoch(params, opt_state, order):
        def step(carry, rows):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params, train[0][rows], train[1][rows])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        rows = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        return jax.lax.scan(step, (params, opt_state), rows)[0]

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(model.apply({"params": params}, x).argmax(-1) == y)

    validation = (dataset.validation.inputs, dataset.validation.targets)
    for e in range(epochs):
        order = np.random.default_rng([config.seed, e]).permutation(len(dataset.train))
        params, opt_state = epoch(params, opt_state, order)
        val = float(accuracy(params, *validation))
    test = float(accuracy(params, dataset.test.inputs, dataset.test.targets))
    print(f"validation accuracy {val:.4f}, test accuracy {test:.4f}")


if __name__ == "__main__":
    main()
