"""JAX's persistent compilation cache, on for every run and sweep trial by default.

A resumed run, another seed or the next sweep trial compiles the same programs as the run
before it; with the cache they are read from disk instead (config.train.compilation_cache,
"" to turn it off). The setting is process-wide, as JAX's cache is.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

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


def use_compilation_cache(directory: str) -> None:
    """Caches compiled programs in ``directory`` (``~`` expanded), or none for ""; a
    folder that cannot be written is a warning, and no cache."""
    path = str(Path(directory).expanduser()) if directory else ""
    if _current[0] == path:
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
