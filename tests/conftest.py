"""Strict JAX settings for the whole suite, and key fixtures."""

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

# Implicit rank promotion hides shape bugs ([B] + [B, 1] silently broadcasting to [B, B]).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """Many tests train the same tiny configs, each run compiling the same programs afresh
    (new closures); a persistent compilation cache compiles each once for the whole suite.
    Subprocesses (CLI tests, sweep workers) inherit it through the environment."""
    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
    }
    old = {name: getattr(jax.config, name) for name in settings}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name.upper(), str(value))
            jax.config.update(name, value)
        jax_cache.reset_cache()  # a cache checked earlier in this process is re-read
        yield
        for name, value in old.items():
            jax.config.update(name, value)
        jax_cache.reset_cache()


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def fresh_nonconvergence_warnings():
    """Every test sees a solver's first non-convergence warning (the count is per process)."""
    from fnn_jax.cells import fixed_point

    fixed_point.reset_warnings()
