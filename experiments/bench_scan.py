"""The ``scan`` section of experiments/bench.py: the linear recurrences (lru, mingru) run as a
sequential ``lax.scan`` against ``lax.associative_scan``, by sequence length.

For each cell and each length (--scan_lengths; 256, 1024, 4096, 16384 by default, 64 and 256
with --quick) it times forward and forward+backward (jitted grad of the sum of the outputs
with respect to the parameters and the inputs) of ``fnn_jax.layers.Recurrent`` with
``scan_impl="sequential"`` and ``"associative"``, the two round-robin so machine load hits
both alike, at batch 8, input 32, hidden 64 (small, so length 16384 fits easily in memory).
Each row gives the median ms of both, the ratio sequential / associative (> 1: associative
is faster), which one ``scan_impl="auto"`` picks on this machine
(``fnn_jax.cells.resolve_scan_impl``) and whether that is the faster one.

    python experiments/bench.py --section scan
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fnn_jax import cells
from fnn_jax.layers import Recurrent

CELLS = ("lru", "mingru")
IMPLS = ("sequential", "associative")
MODES = ("fwd", "fwd_bwd")
BATCH, INPUT, HIDDEN = 8, 32, 64

# bench.py's time_modules: (modules, xs, cfg) -> impl -> mode -> timing (median "ms", ...)
TimeModules = Callable[[dict[str, nn.Module], jax.Array, Any], dict[str, dict[str, Any]]]


def _row(cell: str, length: int, mode: str, timing: dict[str, Any], auto: str) -> dict[str, Any]:
    seq_ms, assoc_ms = timing["sequential"][mode]["ms"], timing["associative"][mode]["ms"]
    faster = "associative" if assoc_ms < seq_ms else "sequential"
    return {
        "cell": cell,
        "length": length,
        "mode": mode,
        "sequential_ms": seq_ms,
        "associative_ms": assoc_ms,
        "sequential_over_associative": seq_ms / assoc_ms,
        "faster": faster,
        "auto": auto,
        "auto_is_faster": auto == faster,
    }


def section_scan(cfg: Any, time_modules: TimeModules) -> dict[str, Any]:
    """Sequential vs associative scan of lru and mingru at each of ``cfg.scan_lengths``."""
    auto = {cell: cells.resolve_scan_impl(cells.get(cell), "auto") for cell in CELLS}
    timings: dict[str, dict[str, Any]] = {cell: {} for cell in CELLS}
    rows = []
    for cell in CELLS:
        for length in cfg.scan_lengths:
            print(f"[scan] {cell}, length {length}: timing {', '.join(IMPLS)}", flush=True)
            xs = jax.random.normal(jax.random.key(1), (BATCH, length, INPUT), jnp.float32)
            modules = {
                impl: Recurrent(cell=cell, hidden_size=HIDDEN, scan_impl=impl) for impl in IMPLS
            }
            timing = time_modules(modules, xs, cfg)
            timings[cell][str(length)] = timing
            rows += [_row(cell, length, mode, timing, auto[cell]) for mode in MODES]
    return {
        "batch": BATCH,
        "input_size": INPUT,
        "hidden_size": HIDDEN,
        "lengths": list(cfg.scan_lengths),
        "backend": jax.default_backend(),
        "auto": auto,
        "rows": rows,
        "timings": timings,
    }


def print_scan(result: dict[str, Any], cfg: Any) -> None:
    """One line per (cell, length, mode): both medians, their ratio, auto's pick."""
    del cfg
    print(
        f"\nscan: sequential vs associative, batch {result['batch']}, input "
        f"{result['input_size']}, hidden {result['hidden_size']}, float32, backend "
        f"{result['backend']}; ratio = sequential / associative (> 1: associative faster)"
    )
    cols = f"{'cell':<7} {'length':>6} {'mode':<7} | {'seq ms':>9} {'assoc ms':>9} {'ratio':>6}"
    cols += f" | {'faster':<11} {'auto':<11} auto faster?"
    print(f"{cols}\n{'-' * len(cols)}")
    for r in result["rows"]:
        print(
            f"{r['cell']:<7} {r['length']:>6} {r['mode']:<7} | {r['sequential_ms']:9.2f} "
            f"{r['associative_ms']:9.2f} {r['sequential_over_associative']:6.2f} | "
            f"{r['faster']:<11} {r['auto']:<11} {'yes' if r['auto_is_faster'] else 'NO'}"
        )
