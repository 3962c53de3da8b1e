"""Helpers shared by the cells: activations, initialisers, input checks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fnn_jax.cells.spec import Option

Array = jax.Array
Params = dict[str, Array]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


def activation_option(name: str = "activation", default: str = "tanh") -> Option:
    """A declared option naming one of ACTIVATIONS, taken by the step."""
    return Option(
        name, default, f"the {name.replace('_', ' ')} function", choices=tuple(ACTIVATIONS)
    )


def activation_fn(name: str) -> Callable[[Array], Array]:
    """Looks up an activation by name; unknown names list the valid ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; valid choices: {sorted(ACTIVATIONS)}"
        ) from None


def along_last(v: Array, like: Array) -> Array:
    """A [features] vector shaped to broadcast against ``like`` [..., features].

    Rank promotion is explicit so the test suite can run with jax_numpy_rank_promotion='raise'.
    """
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


def uniform(key: Array, shape: tuple[int, ...], bound: float, dtype=jnp.float32) -> Array:
    """U(-bound, bound), PyTorch's default for recurrent layers (bound = 1/sqrt(hidden))."""
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def orthogonal(key: Array, shape: tuple[int, int], scale: float = 1.0, dtype=jnp.float32) -> Array:
    """An orthogonal matrix times ``scale``. A dtype under 32 bits is drawn in float32 and
    cast: XLA:CPU has no QR decomposition in bfloat16."""
    work = dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32
    return jax.nn.initializers.orthogonal(scale)(key, shape, work).astype(dtype)


def orthogonal_blocks(
    key: Array, hidden_size: int, num_blocks: int, scale: float = 1.0, dtype=jnp.float32
) -> Array:
    """[hidden, num_blocks * hidden]: one orthogonal matrix per gate, side by side.

    Orthogonal recurrent weights keep the gradient norm steady over long sequences.
    """
    keys = jax.random.split(key, num_blocks)
    blocks = [orthogonal(k, (hidden_size, hidden_size), scale, dtype) for k in keys]
    return jnp.concatenate(blocks, axis=1)


def check_input(x: Array, w_ih: Array, name: str = "x_t") -> None:
    """Fails at trace time, naming the array, when its last axis is not the input size."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype; got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != w_ih.shape[0]:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected [..., {w_ih.shape[0]}] (input_size)"
        )
