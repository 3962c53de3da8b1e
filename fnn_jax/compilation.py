"""JAX's persistent compilation cache, on for every run and sweep trial by default.

A resumed run, another seed or the next sweep trial compiles the same programs as the run
before it; with the cache they are read from disk instead (config.train.compilation_cache,
"" to turn it off). A cache set up for JAX itself (``JAX_COMPILATION_CACHE_DIR``, or
``jax.config``) is kept while the key is at its default. The setting is process-wide, as
JAX's cache is.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from fnn_jax.config import default_config

log = logging.getLogger("fnn_jax")
_current: list[str | None] = [None]  # the directory in use ("" = off); None: not set yet


def _writable(path: Path) -> bool:
    """Whether ``path`` is (or can be made) a writable folder; a warning when not: the
    run then compiles as it would without a cache."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        log.warning(
            "config.train.compilation_cache: cannot write %s (%s); compiling without a cache",
            path,
            error.strerror or error,
        )
        return False
    return True


def _chosen(directory: str) -> str:
    """The folder to use ("" = none): ``directory``, unless it is the default and JAX was
    given a cache folder of its own (not by us)."""
    jax_folder = jax.config.jax_compilation_cache_dir
    default = default_config().train.compilation_cache
    if directory == default and jax_folder and jax_folder != _current[0]:
        return jax_folder
    return str(Path(directory).expanduser()) if directory else ""


def use_compilation_cache(directory: str) -> None:
    """Caches compiled programs in ``directory`` (``~`` expanded), or none for ""; a
    folder that cannot be written is a warning, and no cache."""
    path = _chosen(directory)
    if _current[0] == path and jax.config.jax_enable_compilation_cache == bool(path):
        return
    compilation_cache.reset_cache()  # the cache opens its directory once; start again
    if path and not _writable(Path(path)):
        path = ""
    if path:
        jax.config.update("jax_enable_compilation_cache", True)
        compilation_cache.set_cache_dir(path)
        # A small model's programs compile in a fraction of a second each: cache them all.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    else:
        jax.config.update("jax_enable_compilation_cache", False)
    _current[0] = path
