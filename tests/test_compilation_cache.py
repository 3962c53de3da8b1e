"""JAX's persistent compilation cache: a second run of a config (another seed, another
workdir) reads every program it compiles from the cache. The test counts JAX's own cache
events, not seconds."""

import logging

import jax
import pytest

from configs import test as test_config
from fnn_jax.compilation import use_compilation_cache
from fnn_jax.train import train_and_evaluate

HIT, MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def _config(cache, seed=0):
    config = test_config.get_config()
    with config.unlocked():
        config.seed = seed
        config.train.compilation_cache = str(cache)
        config.train.num_steps = 8
    return config


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
