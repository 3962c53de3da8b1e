"""Strict JAX settings for the whole suite, and key fixtures."""

import jax
import numpy as np
import pytest

# Implicit rank promotion hides shape bugs ([B] + [B, 1] silently broadcasting to [B, B]).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
