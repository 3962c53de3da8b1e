"""python experiments/bench.py [--quick] [--section cells] [--out bench_results/bench.json]

Speed of fnn_jax's recurrent layers against flax.linen.RNN and PyTorch, in one process.

Section ``cells`` (the only one so far) measures, for each of --cells (lstm, gru, elman):

* forward and forward+backward (jitted grad of the sum of the outputs with respect to the
  parameters and the inputs) of ``fnn_jax.layers.Recurrent`` with its defaults, of
  ``flax.linen.RNN`` over the matching flax cell (LSTMCell / GRUCell / SimpleCell, plus
  OptimizedLSTMCell for lstm) and, when torch imports, of ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``;
  each row reports the median wall time, GFLOP/s and the ratio ours/peer (< 1: ours is faster);
* our layer with ``hoist_inputs`` True vs False (input matmul outside vs inside the time loop)
  and, for lstm, a sweep of ``unroll``;
* the compile time of our lstm forward+backward at two lengths (256 and 4096 by default),
  which stays flat because the time loop is a ``lax.scan``, not unrolled.

FLOPs count the matmuls only: 2*B*T*(I+H)*G*H forward with G gates (lstm 4, gru 3, elman 1);
forward+backward counts 3x forward. Defaults: batch 64, length 256, input 128, hidden 256,
float32. Results print as a table and go to --out as JSON with the device, versions and cores.

More sections plug in through ``SECTIONS`` (a name -> function of the Config).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from fnn_jax.layers import Recurrent

try:
    import torch
except ImportError:  # torch is a test extra; the torch rows are skipped without it
    torch = None

GATES: dict[str, int] = {"lstm": 4, "gru": 3, "elman": 1}
FLAX_CELLS: dict[str, list[tuple[str, Callable[[int], nn.Module]]]] = {
    "lstm": [
        ("flax", lambda h: nn.LSTMCell(features=h)),
        ("flax_opt", lambda h: nn.OptimizedLSTMCell(features=h)),
    ],
    "gru": [("flax", lambda h: nn.GRUCell(features=h))],
    "elman": [("flax", lambda h: nn.SimpleCell(features=h))],
}
QUICK = {"batch": 8, "length": 32, "hidden_size": 32, "repeats": 3}

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("length", 256, "Sequence length.")
flags.DEFINE_integer("input_size", 128, "Input features.")
flags.DEFINE_integer("hidden_size", 256, "Hidden units.")
flags.DEFINE_integer("repeats", 10, "Timed runs per measurement (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed runs before timing (after compilation).")
flags.DEFINE_list("cells", ["lstm", "gru", "elman"], "Cells to compare: lstm, gru, elman.")
flags.DEFINE_list("unrolls", ["1", "2", "4", "8"], "unroll values swept for our lstm.")
flags.DEFINE_list("compile_lengths", ["256", "4096"], "Lengths for the compile-time check.")
flags.DEFINE_list("section", ["cells"], "Sections to run (see SECTIONS).")
flags.DEFINE_boolean("torch", True, "Include PyTorch when it imports.")
flags.DEFINE_boolean("quick", False, f"Smoke run: {QUICK} unless given explicitly.")
flags.DEFINE_string("out", "bench_results/bench.json", "Where the JSON goes.")


@dataclasses.dataclass(frozen=True)
class Config:
    batch: int
    length: int
    input_size: int
    hidden_size: int
    repeats: int
    warmup: int
    cells: tuple[str, ...]
    unrolls: tuple[int, ...]
    compile_lengths: tuple[int, ...]
    use_torch: bool


# ----------------------------------------------------------------------------- timing


def time_fn(
    fn: Callable[[], Any], sync: Callable[[Any], Any], *, repeats: int, warmup: int
) -> dict[str, float]:
    """Median/min/max wall time (ms) of ``sync(fn())`` over ``repeats`` runs after warm-up.

    The first call (compilation, for jitted functions) is timed separately as ``first_ms``.
    """
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return {
        "ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "first_ms": 1e3 * first,
        "repeats": repeats,
    }


def forward_flops(cfg: Config, cell: str, length: int | None = None) -> float:
    """Matmul FLOPs of one forward pass: 2*B*T*(I+H)*G*H."""
    t = cfg.length if length is None else length
    h = cfg.hidden_size
    return 2.0 * cfg.batch * t * (cfg.input_size + h) * GATES[cell] * h


def with_flops(timing: dict[str, float], flops: float) -> dict[str, float]:
    return {**timing, "gflops": flops / (timing["ms"] * 1e-3) / 1e9}


# ----------------------------------------------------------------------------- jax


def _jax_input(cfg: Config) -> jax.Array:
    shape = (cfg.batch, cfg.length, cfg.input_size)
    return jax.random.normal(jax.random.key(1), shape, jnp.float32)


def _jax_fns(module: nn.Module) -> tuple[Callable, Callable]:
    """Jitted forward and forward+backward (grads w.r.t. variables and inputs) of a module."""

    def forward(variables: Any, xs: jax.Array) -> jax.Array:
        return module.apply(variables, xs)

    def loss(variables: Any, xs: jax.Array) -> jax.Array:
        return jnp.sum(forward(variables, xs))

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1)))


def bench_module(module: nn.Module, cfg: Config, cell: str) -> dict[str, dict[str, float]]:
    """Forward and forward+backward timings of a flax module over [batch, length, input]."""
    xs = _jax_input(cfg)
    variables = module.init(jax.random.key(0), xs)
    fwd, fwd_bwd = _jax_fns(module)
    flops = forward_flops(cfg, cell)
    opts = {"repeats": cfg.repeats, "warmup": cfg.warmup}
    sync = jax.block_until_ready
    return {
        "fwd": with_flops(time_fn(lambda: fwd(variables, xs), sync, **opts), flops),
        "fwd_bwd": with_flops(time_fn(lambda: fwd_bwd(variables, xs), sync, **opts), 3 * flops),
    }


def ours(cell: str, cfg: Config, **options: Any) -> nn.Module:
    return Recurrent(cell=cell, hidden_size=cfg.hidden_size, **options)


def bench_ours(
    cell: str, cfg: Config, *, hoist_inputs: bool = True, unroll: int = 1
) -> dict[str, dict[str, float]]:
    """fnn_jax.layers.Recurrent (our layer) with the given hoist/unroll settings."""
    return bench_module(ours(cell, cfg, hoist_inputs=hoist_inputs, unroll=unroll), cfg, cell)


def bench_flax(
    cell: str, cfg: Config, make_cell: Callable[[int], nn.Module]
) -> dict[str, dict[str, float]]:
    """flax.linen.RNN over a flax cell (the cell's own step, input matmul inside the loop)."""
    return bench_module(nn.RNN(make_cell(cfg.hidden_size)), cfg, cell)


def compile_seconds(cell: str, cfg: Config, length: int) -> dict[str, float]:
    """Wall time to lower and to compile our forward+backward at a length (shapes only)."""
    module = ours(cell, cfg)
    xs = jax.ShapeDtypeStruct((cfg.batch, length, cfg.input_size), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), xs)
    _, fwd_bwd = _jax_fns(module)  # a fresh jit: nothing cached from earlier calls
    start = time.perf_counter()
    lowered = fwd_bwd.lower(variables, xs)
    lowered_at = time.perf_counter()
    lowered.compile()
    end = time.perf_counter()
    return {"lower_s": lowered_at - start, "compile_s": end - lowered_at, "total_s": end - start}


# ----------------------------------------------------------------------------- torch


def torch_device() -> str:
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def bench_torch(cell: str, cfg: Config) -> dict[str, dict[str, float]] | None:
    """nn.LSTM / nn.GRU / nn.RNN (batch_first); None when torch is not importable."""
    if torch is None:
        return None
    device = torch_device()
    layer_type = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[cell]
    torch.manual_seed(0)
    layer = layer_type(cfg.input_size, cfg.hidden_size, batch_first=True).to(device)
    xs = torch.randn(cfg.batch, cfg.length, cfg.input_size, device=device, requires_grad=True)

    def sync(_: Any) -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def fwd() -> Any:
        with torch.no_grad():
            return layer(xs)[0]

    def fwd_bwd() -> None:
        layer.zero_grad(set_to_none=True)
        xs.grad = None
        layer(xs)[0].sum().backward()

    flops = forward_flops(cfg, cell)
    opts = {"repeats": cfg.repeats, "warmup": cfg.warmup}
    return {
        "fwd": with_flops(time_fn(fwd, sync, **opts), flops),
        "fwd_bwd": with_flops(time_fn(fwd_bwd, sync, **opts), 3 * flops),
    }


# ----------------------------------------------------------------------------- sections


def ratios(
    results: dict[str, dict[str, dict[str, float]]], reference: str
) -> dict[str, dict[str, float]]:
    """Time of ``reference`` / time of each other implementation, per mode (< 1: faster)."""
    ref = results[reference]
    return {
        peer: {mode: ref[mode]["ms"] / timing[mode]["ms"] for mode in ref}
        for peer, timing in results.items()
        if peer != reference
    }


def section_cells(cfg: Config) -> dict[str, Any]:
    """Ours vs flax vs torch per cell, hoist on/off, lstm unroll sweep, compile time."""
    compare: dict[str, dict[str, Any]] = {cell: {} for cell in cfg.cells}
    # All jax measurements first and torch last, so torch's OpenMP worker threads (which
    # spin for a while after each parallel region) do not steal cores from XLA's.
    for cell in cfg.cells:
        print(f"[cells] {cell}: ours", flush=True)
        compare[cell]["ours"] = bench_ours(cell, cfg)
        for name, make_cell in FLAX_CELLS[cell]:
            print(f"[cells] {cell}: {name}", flush=True)
            compare[cell][name] = bench_flax(cell, cfg, make_cell)

    hoist: dict[str, dict[str, Any]] = {}
    for cell in cfg.cells:
        print(f"[cells] {cell}: hoist_inputs=False", flush=True)
        hoist[cell] = {
            "hoist_inputs=True": compare[cell]["ours"],
            "hoist_inputs=False": bench_ours(cell, cfg, hoist_inputs=False),
        }

    unroll: dict[str, Any] = {}
    if "lstm" in cfg.cells:
        for k in cfg.unrolls:
            print(f"[cells] lstm: unroll={k}", flush=True)
            same = k == 1  # the default, measured above
            unroll[f"unroll={k}"] = (
                compare["lstm"]["ours"] if same else bench_ours("lstm", cfg, unroll=k)
            )

    print("[cells] compile time", flush=True)
    compile_times = {}
    for length in cfg.compile_lengths:
        # Best of two fresh compiles, so one-time start-up costs do not land on the first.
        runs = [compile_seconds("lstm", cfg, length) for _ in range(2)]
        compile_times[str(length)] = min(runs, key=lambda r: r["total_s"])

    if cfg.use_torch and torch is not None:
        torch.set_num_threads(available_cores())
        for cell in cfg.cells:
            print(f"[cells] {cell}: torch ({torch_device()})", flush=True)
            compare[cell]["torch"] = bench_torch(cell, cfg)

    return {
        "compare": compare,
        "ratios_ours_over_peer": {cell: ratios(compare[cell], "ours") for cell in cfg.cells},
        "hoist_inputs": hoist,
        "unroll_lstm": unroll,
        "compile_lstm_fwd_bwd": compile_times,
    }


SECTIONS: dict[str, Callable[[Config], dict[str, Any]]] = {"cells": section_cells}


# ----------------------------------------------------------------------------- report


def _row(name: str, timing: dict[str, dict[str, float]], ref: dict | None) -> str:
    cols = [f"{name:<22}"]
    for mode in ("fwd", "fwd_bwd"):
        t = timing[mode]
        ratio = f"{ref[mode]['ms'] / t['ms']:6.2f}" if ref is not None else "     -"
        cols.append(f"{t['ms']:10.2f} {t['gflops']:8.1f} {ratio}")
    return " | ".join(cols)


def _header(title: str) -> str:
    cols = f"{'':<22} | {'fwd ms':>10} {'GFLOP/s':>8} {'ratio':>6} | "
    cols += f"{'f+b ms':>10} {'GFLOP/s':>8} {'ratio':>6}"
    return f"\n{title}\n{cols}\n{'-' * len(cols)}"


def print_cells(result: dict[str, Any], cfg: Config) -> None:
    """Tables for the cells section; ratio = ours (or the first row) / this row."""
    for cell, rows in result["compare"].items():
        print(_header(f"{cell}: ratio = ours / peer (< 1: ours faster)"))
        for name, timing in rows.items():
            print(_row(name, timing, None if name == "ours" else rows["ours"]))
    for cell, rows in result["hoist_inputs"].items():
        print(_header(f"{cell} (ours): ratio = hoist_inputs=True / this row"))
        ref = rows["hoist_inputs=True"]
        for name, timing in rows.items():
            print(_row(name, timing, None if timing is ref else ref))
    if result["unroll_lstm"]:
        rows = result["unroll_lstm"]
        print(_header("lstm (ours): ratio = unroll=1 / this row"))
        ref = rows.get("unroll=1")
        for name, timing in rows.items():
            print(_row(name, timing, None if timing is ref else ref))
    print("\nlstm (ours) fwd+bwd compile time by length (lax.scan: flat in length)")
    for length, t in result["compile_lstm_fwd_bwd"].items():
        print(
            f"  length {length:>6}: lower {t['lower_s']:6.2f} s  compile {t['compile_s']:6.2f} s"
            f"  total {t['total_s']:6.2f} s"
        )


PRINTERS: dict[str, Callable[[dict[str, Any], Config], None]] = {"cells": print_cells}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    env = {
        "jax_platform": device.platform,
        "jax_device_kind": device.device_kind,
        "jax_device_count": jax.device_count(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cores": available_cores(),
        "torch": None if torch is None else torch.__version__,
    }
    if torch is not None:
        env["torch_device"] = torch_device()
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["torch_device_name"] = torch.cuda.get_device_name(0)
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def config_from_flags() -> Config:
    values = {name: FLAGS[name].value for name in ("batch", "length", "hidden_size", "repeats")}
    if FLAGS.quick:
        values.update({k: v for k, v in QUICK.items() if not FLAGS[k].present})
    unknown = sorted(set(FLAGS.cells) - set(GATES))
    if unknown:
        raise app.UsageError(f"unknown --cells {unknown}; valid choices: {sorted(GATES)}")
    return Config(
        **values,
        input_size=FLAGS.input_size,
        warmup=FLAGS.warmup,
        cells=tuple(FLAGS.cells),
        unrolls=tuple(int(k) for k in FLAGS.unrolls),
        compile_lengths=tuple(int(n) for n in FLAGS.compile_lengths),
        use_torch=FLAGS.torch,
    )


def main(argv: list[str]) -> None:
    del argv
    unknown = sorted(set(FLAGS.section) - set(SECTIONS))
    if unknown:
        raise app.UsageError(f"unknown --section {unknown}; valid choices: {sorted(SECTIONS)}")
    cfg = config_from_flags()
    env = environment()
    if torch is not None:
        torch.set_num_threads(env["cores"])
        env["torch_threads"] = torch.get_num_threads()
    print(f"config: {dataclasses.asdict(cfg)}")
    print(f"environment: {env}", flush=True)

    report: dict[str, Any] = {"config": dataclasses.asdict(cfg), "environment": env}
    for name in FLAGS.section:
        result = SECTIONS[name](cfg)
        report[name] = result
        PRINTERS.get(name, lambda r, c: print(json.dumps(r, indent=2)))(result, cfg)

    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
