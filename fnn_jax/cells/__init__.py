"""Feedback cells: pure step functions over a parameter pytree.

Every cell module has ``init_params(key, input_size, hidden_size, ...)``,
``init_carry(batch_shape, hidden_size)`` and ``step(params, carry, x_t) -> (carry, y_t)``,
plus the split ``project_inputs(params, x)`` / ``step_projected(params, carry, xp_t)`` that
``fnn_jax.scan`` uses to hoist the input matmul out of the time loop. ``lru`` and ``mingru``
also have ``parallel(params, carry, xs)`` (associative scan over time).
"""

from fnn_jax.cells import elman, equilibrium, gru, jordan, linear_recurrence, lru, lstm, mingru

__all__ = ["elman", "equilibrium", "gru", "jordan", "linear_recurrence", "lru", "lstm", "mingru"]
