"""The ``input`` section of experiments/bench.py: is the streamed input ever the bottleneck?

1. The pipeline alone (fnn_jax.data.stream.train_stream over a prepared corpus): rows/s and
   MB/s of token file read, shuffled batches of 64 rows of 256 bytes, with 0, 1 and 2 worker
   processes.
2. The runner's training steps per second of a mid-size byte language model (GRU 256, batch
   32, rows of 256) fed by the stream against the same model fed from device-resident rows
   (the corpus loader without ``stream``: the same batches), in one process, alternating,
   best of three each (bench_runner's clock: the stage loop only). Goal: at least 0.95x.
3. Peak resident memory while streaming a whole epoch of a corpus ten times larger than
   the growth it is allowed (a fresh process; the corpus generated in a temporary folder).

    python experiments/bench.py --section input
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_runner import _runner_steps_per_s  # experiments/ is on sys.path (the script's dir)

from fnn_jax.config import default_config
from fnn_jax.data import corpus, stream

ROWS, BATCH, T = 64, 64, 256
ALLOWED_GROWTH_MB = 64  # the resident memory the streaming process may add


def _write_corpus(root: Path, megabytes: int, seed: int = 0) -> Path:
    """Random printable documents of 2-64 KB, ``megabytes`` in all, prepared into rows."""
    rng = np.random.default_rng(seed)
    docs = root / "docs"
    docs.mkdir(parents=True)
    written, i = 0, 0
    while written < megabytes << 20:
        size = int(rng.integers(2 << 10, 64 << 10))
        (docs / f"{i:06d}.txt").write_bytes(rng.integers(32, 127, size, dtype=np.uint8).tobytes())
        written, i = written + size, i + 1
    corpus.prepare(f"{docs}/*.txt", root / "corpus", row_length=T, validation=0.02, test=0.02)
    shutil.rmtree(docs)
    return root / "corpus"


def _pipeline(path: Path, workers: int, steps: int = 400) -> dict[str, float]:
    split = corpus.open_corpus(path).split("train")
    order = stream.EpochOrder(len(split), BATCH, seed=0)
    it = stream.train_stream(
        split, row_indices=order, start_step=0, num_steps=steps, workers=workers, prefetch=4
    )
    next(it)  # workers started, first batch read
    start = time.perf_counter()
    for _ in range(steps - 1):
        next(it)
    seconds = time.perf_counter() - start
    rows = (steps - 1) * BATCH
    return {"rows_per_s": rows / seconds, "mb_per_s": rows * T * 2 / seconds / 1e6}


def _lm_config(path: Path, stream_rows: bool):
    config = default_config()
    config.data.name = "corpus"
    config.data.options.path = str(path)
    config.data.options.stream = stream_rows
    config.data.options.max_rows = 4000  # in memory too: the same rows for both
    config.data.batch_size = 32
    config.data.eval_batch_size = 256
    config.model.cell = "gru"
    config.model.hidden_size = 256
    config.model.embed_dim = 32
    config.train.num_steps = 60
    config.train.eval_every_steps = 10**9  # validation at the end only
    config.train.log_every_steps = 20
    return config


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import psutil
    from fnn_jax.data import corpus, stream
    split = corpus.open_corpus(sys.argv[1]).split("train")
    order = stream.EpochOrder(len(split), 256, seed=0)
    steps = len(split) // 256
    it = stream.train_stream(split, row_indices=order, start_step=0, num_steps=steps, prefetch=4)
    me = psutil.Process()
    next(it)
    before = peak = me.memory_info().rss
    for step in range(1, steps):
        next(it)
        if step % 32 == 0:
            peak = max(peak, me.memory_info().rss)
    print(before / 2**20, max(peak, me.memory_info().rss) / 2**20, steps * 256)
    """
)


def section_input(cfg: Any) -> dict[str, Any]:
    del cfg
    root = Path(tempfile.mkdtemp(prefix="bench_input_"))
    result: dict[str, Any] = {}
    try:
        small = _write_corpus(root / "small", 24)
        for workers in (0, 1, 2):
            result[f"pipeline[workers={workers}]"] = row = _pipeline(small, workers)
            print(
                f"input pipeline, {workers} workers: {row['rows_per_s']:.0f} rows/s, "
                f"{row['mb_per_s']:.1f} MB/s",
                flush=True,
            )
        runs: dict[str, list[float]] = {"streamed": [], "in memory": []}
        for streamed in (True, False):
            _runner_steps_per_s(_lm_config(small, streamed), root)  # compiles, warms caches
        for _ in range(3):
            for name, streamed in (("streamed", True), ("in memory", False)):
                runs[name].append(_runner_steps_per_s(_lm_config(small, streamed), root))
        best = {name: max(v) for name, v in runs.items()}
        result["lm_steps_per_s"] = best
        result["streamed_over_in_memory"] = best["streamed"] / best["in memory"]
        print(
            f"GRU 256 byte LM, batch 32 x 256: streamed {best['streamed']:.2f} steps/s, in "
            f"memory {best['in memory']:.2f} ({result['streamed_over_in_memory']:.2f}x)",
            flush=True,
        )
        shutil.rmtree(small)
        size_mb = 10 * ALLOWED_GROWTH_MB // 2  # source bytes: the token file is twice that
        large = _write_corpus(root / "large", size_mb)
        tokens_mb = (large / "train.tokens").stat().st_size / 2**20
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(large)],
            capture_output=True,
            text=True,
            check=True,
        )
        before, after, rows = done.stdout.split()
        growth = float(after) - float(before)
        result["memory"] = {
            "token_file_mb": tokens_mb,
            "rss_after_first_batch_mb": float(before),
            "peak_rss_mb": float(after),  # resident memory, sampled every 32 batches
            "growth_mb": growth,
            "rows_streamed": int(rows),
            "allowed_growth_mb": ALLOWED_GROWTH_MB,
        }
        print(
            f"streaming a {tokens_mb:.0f} MB token file ({int(rows)} rows, one epoch): peak "
            f"RSS {float(after):.0f} MB, {growth:.1f} MB above the first batch's (allowed "
            f"{ALLOWED_GROWTH_MB} MB)",
            flush=True,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result
