"""JAX's persistent compilation cache: a second run of a config (another seed, another
workdir) reads every program it compiles from the cache. The test counts JAX's own cache
events, not seconds."""

import logging

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from configs import test as test_config
from fnn_jax import compilation
from fnn_jax.compilation import use_compilation_cache
from fnn_jax.config import default_config
from fnn_jax.train import train_and_evaluate

HIT, MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def _config(cache, seed=0):
    config = test_config.get_config()
    with config.unlocked():
        config.seed = seed
        config.train.compilation_cache = str(cache)
        config.train.num_steps = 8
    return config


@pytest.fixture(autouse=True)
def _jax_cache_settings_restored(monkeypatch):
    """These tests point the process-wide cache elsewhere; the suite's cache (conftest)
    comes back after each."""
    names = ("jax_compilation_cache_dir", "jax_enable_compilation_cache")
    old = {name: getattr(jax.config, name) for name in names}
    monkeypatch.setattr(compilation, "_current", [None])
    yield
    for name, value in old.items():
        jax.config.update(name, value)
    jax_cache.reset_cache()


@pytest.fixture
def cache_events():
    events = []
    listener = lambda event, **kwargs: events.append(event)
    jax.monitoring.register_event_listener(listener)
    yield events
    jax.monitoring.unregister_event_listener(listener)


def test_a_second_run_with_another_seed_compiles_nothing_new(cache_events, tmp_path):
    train_and_evaluate(_config(tmp_path / "cache"), tmp_path / "first")
    assert cache_events.count(MISS) > 0  # the first run filled the cache
    cache_events.clear()
    train_and_evaluate(_config(tmp_path / "cache", seed=1), tmp_path / "second")
    assert cache_events.count(MISS) == 0
    assert cache_events.count(HIT) >= 3  # at least init, the train dispatch and evaluation


def test_an_empty_setting_turns_the_cache_off(cache_events, tmp_path):
    train_and_evaluate(_config(""), tmp_path / "run")
    assert cache_events.count(HIT) == cache_events.count(MISS) == 0


def test_a_cache_folder_that_cannot_be_written_is_a_warning_not_an_error(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="fnn_jax"):
        use_compilation_cache(str(blocked / "cache"))
    assert f"cannot write {blocked / 'cache'}" in caplog.text
    assert not jax.config.jax_enable_compilation_cache


def test_at_its_default_the_key_keeps_a_cache_folder_given_to_jax_itself(tmp_path):
    """As JAX_COMPILATION_CACHE_DIR or jax.config would set it (this suite's conftest
    does): a run with the default key uses that folder; an explicit key still wins."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_own"))
    use_compilation_cache(default_config().train.compilation_cache)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_own")
    use_compilation_cache(str(tmp_path / "explicit"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "explicit")
