"""python experiments/bench.py [--quick] [--section cells] [--out bench_results/bench.json]

Speed of fnn_jax's recurrent layers against flax.linen.RNN and PyTorch, in one process.

Section ``cells`` measures, for each of --cells (lstm, gru, elman):

* forward and forward+backward (jitted grad of the sum of the outputs with respect to the
  parameters and the inputs) of ``fnn_jax.layers.Recurrent`` with its defaults, of
  ``flax.linen.RNN`` over the matching flax cell (LSTMCell / GRUCell / SimpleCell, plus
  OptimizedLSTMCell for lstm) and, when torch imports, of ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``;
  each row reports the median wall time, GFLOP/s and the ratio ours/peer (< 1: ours is faster);
* our layer with ``hoist_inputs`` True vs False (input matmul outside vs inside the time loop;
  the default, "ours", hoists on accelerators only: see fnn_jax.layers.hoists_inputs)
  and, for lstm, a sweep of ``unroll``;
* the compile time of our lstm forward+backward at two lengths (256 and 4096 by default),
  which stays flat because the time loop is a ``lax.scan``, not unrolled.

All jax implementations of a cell are timed round-robin (one call of each per round), so a
load that comes and goes on the machine hits them alike and the ratios stay fair; torch runs
after all jax work, since its OpenMP threads keep spinning for a while after each call.

FLOPs count the matmuls only: 2*B*T*(I+H)*G*H forward with G gates (lstm 4, gru 3, elman 1);
forward+backward counts 3x forward. Defaults: batch 64, length 256, input 128, hidden 256,
float32. Results print as a table and go to --out as JSON with the device, versions and cores.

Section ``finetune`` (experiments/bench_finetune.py) times one epoch of a head-only stage on
cached frozen features against one epoch of full fine-tuning.

Section ``vectorize`` (experiments/bench_vectorize.py) times 8 seeds of the digits LSTM
trained as one vectorised program against the same 8 runs one by one (whole runs: compile,
train, validate, checkpoint, report).

Sections ``runner`` and ``demo`` (experiments/bench_runner.py): the runner's steps per
second against a bare loop of the same jitted step, and ``make demo``'s whole process with a
cold and a warm compilation cache against a tuned bare JAX script (experiments/bare_digits.py).

Section ``memory`` (experiments/bench_memory.py): peak RSS of one forward+backward at
length 4096, ours with and without remat against PyTorch, each in a process of its own.

Section ``scan`` (experiments/bench_scan.py): lru and minGRU with ``scan_impl="sequential"``
against ``"associative"`` (``lax.associative_scan``), forward and forward+backward, at each
of --scan_lengths (batch 8, input 32, hidden 64), timed round-robin; each row gives the ratio
sequential / associative (> 1: associative faster) and whether ``scan_impl="auto"`` picks the
faster one on this machine.

Section ``equilibrium`` (experiments/bench_equilibrium.py): fnn_jax.cells.fixed_point
(anderson, iterate, phantom) against optimistix.fixed_point (implicit adjoint, dense and GMRES
linear solves) on z = tanh(drive + z @ W), batch 32, hidden 64 and 256: median ms forward and
forward+backward, iterations, compiled temp memory and agreement of z and gradients.

Section ``devices`` (experiments/bench_devices.py): the runner's training steps per second on
a mesh of 1, 2 and 4 devices (data parallel) and with a model axis of 2 (on a CPU, 4 forced
host devices in a subprocess: a smoke test, since they share the cores).

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
from bench_devices import print_devices, section_devices
from bench_equilibrium import print_equilibrium, section_equilibrium
from bench_finetune import section_finetune  # experiments/ is on sys.path as the script's dir
from bench_input import section_input
from bench_memory import section_memory
from bench_runner import section_checkpoint, section_demo, section_runner
from bench_scan import print_scan, section_scan
from bench_vectorize import section_vectorize

from fnn_jax import cells
from fnn_jax.layers import Recurrent
from fnn_jax.scan import scan

try:
    import torch
except ImportError:  # torch is a test extra; the torch rows are skipped without it
    torch = None

GATES: dict[str, int] = {"lstm": 4, "gru": 3, "elman": 1}
FLAX_CELLS: dict[str, dict[str, Callable[[int], nn.Module]]] = {
    "lstm": {
        "flax": lambda h: nn.LSTMCell(features=h),
        "flax_opt": lambda h: nn.OptimizedLSTMCell(features=h),
    },
    "gru": {"flax": lambda h: nn.GRUCell(features=h)},
    "elman": {"flax": lambda h: nn.SimpleCell(features=h)},
}
MODES = ("fwd", "fwd_bwd")
HOIST = "ours:hoist_inputs=True"
SCAN_STEP = "ours:scan(step)"
NO_HOIST = "ours:hoist_inputs=False"
QUICK = {"batch": 8, "length": 32, "hidden_size": 32, "repeats": 3, "scan_lengths": (64, 256)}

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
flags.DEFINE_list("scan_lengths", ["256", "1024", "4096", "16384"], "Lengths for section scan.")
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
    scan_lengths: tuple[int, ...] = (256, 1024, 4096, 16384)


@dataclasses.dataclass(frozen=True)
class Timed:
    """Something to time: ``sync(fn())`` is one complete run of ``flops`` FLOPs."""

    fn: Callable[[], Any]
    sync: Callable[[Any], Any]
    flops: float


Benches = dict[str, Timed]  # mode ("fwd", "fwd_bwd") -> Timed
Timing = dict[str, float]


# ----------------------------------------------------------------------------- timing


def time_fn(timed: Timed) -> float:
    """Wall seconds of one run, waiting for the result (block_until_ready / cuda sync)."""
    start = time.perf_counter()
    timed.sync(timed.fn())
    return time.perf_counter() - start


def time_interleaved(cases: dict[str, Timed], *, repeats: int, warmup: int) -> dict[str, Timing]:
    """Times every case ``repeats`` times, round-robin, after ``warmup`` untimed runs each.

    Returns per case the median/min/max in ms, GFLOP/s at the median, and ``first_ms`` (the
    first call: compilation, for jitted functions).
    """
    first = {name: time_fn(timed) for name, timed in cases.items()}
    for _ in range(warmup):
        for timed in cases.values():
            time_fn(timed)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, timed in cases.items():
            times[name].append(time_fn(timed))
    stats = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        stats[name] = {
            "ms": 1e3 * median,
            "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts),
            "first_ms": 1e3 * first[name],
            "gflops": cases[name].flops / median / 1e9,
            "repeats": repeats,
        }
    return stats


def time_implementations(impls: dict[str, Benches], cfg: Config) -> dict[str, dict[str, Timing]]:
    """time_interleaved over every (implementation, mode); returns impl -> mode -> timing."""
    cases = {f"{impl}|{mode}": t for impl, modes in impls.items() for mode, t in modes.items()}
    stats = time_interleaved(cases, repeats=cfg.repeats, warmup=cfg.warmup)
    return {impl: {m: stats[f"{impl}|{m}"] for m in modes} for impl, modes in impls.items()}


def forward_flops(cfg: Config, cell: str) -> float:
    """Matmul FLOPs of one forward pass: 2*B*T*(I+H)*G*H."""
    h = cfg.hidden_size
    return 2.0 * cfg.batch * cfg.length * (cfg.input_size + h) * GATES[cell] * h


# ----------------------------------------------------------------------------- jax


def _jax_fns(module: nn.Module) -> tuple[Callable, Callable]:
    """Jitted forward and forward+backward (grads w.r.t. variables and inputs) of a module."""

    def forward(variables: Any, xs: jax.Array) -> jax.Array:
        out = module.apply(variables, xs)
        return out[1] if isinstance(out, tuple) else out  # ours: (carry, ys); flax RNN: ys

    def loss(variables: Any, xs: jax.Array) -> jax.Array:
        return jnp.sum(forward(variables, xs))

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1)))


def bench_module(module: nn.Module, cfg: Config, cell: str) -> Benches:
    """Forward and forward+backward of a flax module over [batch, length, input] inputs."""
    shape = (cfg.batch, cfg.length, cfg.input_size)
    xs = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    variables = module.init(jax.random.key(0), xs)
    fwd, fwd_bwd = _jax_fns(module)
    flops = forward_flops(cfg, cell)
    sync = jax.block_until_ready
    return {
        "fwd": Timed(lambda: fwd(variables, xs), sync, flops),
        "fwd_bwd": Timed(lambda: fwd_bwd(variables, xs), sync, 3 * flops),
    }


def time_modules(
    modules: dict[str, nn.Module], xs: jax.Array, cfg: Config
) -> dict[str, dict[str, Timing]]:
    """Forward and forward+backward of each module on ``xs``, all timed round-robin; no FLOP
    count (the timings carry no gflops). Returns name -> mode -> timing."""
    impls = {}
    for name, module in modules.items():
        variables = module.init(jax.random.key(0), xs[:, :2])  # parameters do not see length
        fwd, fwd_bwd = _jax_fns(module)
        impls[name] = {
            "fwd": Timed(lambda f=fwd, v=variables: f(v, xs), jax.block_until_ready, 0.0),
            "fwd_bwd": Timed(lambda f=fwd_bwd, v=variables: f(v, xs), jax.block_until_ready, 0.0),
        }
    timings = time_implementations(impls, cfg)
    for modes in timings.values():
        for timing in modes.values():
            del timing["gflops"]
    return timings


def ours(cell: str, cfg: Config, **options: Any) -> nn.Module:
    return Recurrent(cell=cell, hidden_size=cfg.hidden_size, **options)


def bench_ours(
    cell: str, cfg: Config, *, hoist_inputs: bool | None = None, unroll: int | None = None
) -> Benches:
    """fnn_jax.layers.Recurrent (our layer) with the given hoist/unroll settings
    (hoist_inputs None: the layer's platform default)."""
    return bench_module(ours(cell, cfg, hoist_inputs=hoist_inputs, unroll=unroll), cfg, cell)


def bench_scan_step(cell: str, cfg: Config, unroll: int) -> Benches:
    """``fnn_jax.scan(<cell>.step, ...)``: the pure step function run directly, as research
    code calls it (no layer), at the given unroll."""
    spec = cells.get(cell)
    shape = (cfg.batch, cfg.length, cfg.input_size)
    xs = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    params = spec.init_params(jax.random.key(0), cfg.input_size, cfg.hidden_size)
    carry = spec.init_carry((cfg.batch,), cfg.hidden_size)

    def forward(params: Any, xs: jax.Array) -> jax.Array:
        return scan(spec.step, params, carry, xs, unroll=unroll)[1]

    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x)), argnums=(0, 1)))
    flops, sync = forward_flops(cfg, cell), jax.block_until_ready
    return {
        "fwd": Timed(lambda: fwd(params, xs), sync, flops),
        "fwd_bwd": Timed(lambda: fwd_bwd(params, xs), sync, 3 * flops),
    }


def bench_flax(cell: str, cfg: Config, make_cell: Callable[[int], nn.Module]) -> Benches:
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


def bench_torch(cell: str, cfg: Config) -> Benches | None:
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
    return {"fwd": Timed(fwd, sync, flops), "fwd_bwd": Timed(fwd_bwd, sync, 3 * flops)}


# ----------------------------------------------------------------------------- sections


def ratios(rows: dict[str, dict[str, Timing]], reference: str) -> dict[str, dict[str, float]]:
    """Median time of ``reference`` / median time of each other row, per mode (< 1: faster)."""
    ref = rows[reference]
    return {
        name: {mode: ref[mode]["ms"] / timing[mode]["ms"] for mode in MODES}
        for name, timing in rows.items()
        if name != reference
    }


def jax_implementations(cell: str, cfg: Config) -> dict[str, Benches]:
    """Ours (default), ours with and without hoisting, ours unrolled (lstm), flax peers."""
    impls = {
        "ours": bench_ours(cell, cfg),
        HOIST: bench_ours(cell, cfg, hoist_inputs=True),
        NO_HOIST: bench_ours(cell, cfg, hoist_inputs=False),
    }
    if cell == "lstm":
        for k in cfg.unrolls:
            if k != 1:  # unroll=1 is the default: "ours"
                impls[f"ours:unroll={k}"] = bench_ours(cell, cfg, unroll=k)
    for k in sorted({1, cells.get(cell).unroll}):
        impls[f"{SCAN_STEP}, unroll={k}"] = bench_scan_step(cell, cfg, k)
    for name, make_cell in FLAX_CELLS[cell].items():
        impls[name] = bench_flax(cell, cfg, make_cell)
    return impls


def section_cells(cfg: Config) -> dict[str, Any]:
    """Ours vs flax vs torch per cell, hoist on/off, lstm unroll sweep, compile time."""
    timings: dict[str, dict[str, dict[str, Timing]]] = {}
    for cell in cfg.cells:
        impls = jax_implementations(cell, cfg)
        print(f"[cells] {cell}: timing {', '.join(impls)}", flush=True)
        timings[cell] = time_implementations(impls, cfg)
        del impls  # frees the compiled functions and their inputs

    print("[cells] compile time", flush=True)
    compile_times = {}
    for length in cfg.compile_lengths:
        # Best of two fresh compiles, so one-time start-up costs do not land on the first.
        runs = [compile_seconds("lstm", cfg, length) for _ in range(2)]
        compile_times[str(length)] = min(runs, key=lambda r: r["total_s"])

    # Torch last: its OpenMP workers spin after each call and would slow the jax runs.
    if cfg.use_torch and torch is not None:
        for cell in cfg.cells:
            print(f"[cells] {cell}: timing torch ({torch_device()})", flush=True)
            timings[cell].update(time_implementations({"torch": bench_torch(cell, cfg)}, cfg))

    compare = {  # ours (the layer's defaults, and the step under fnn_jax.scan) and the peers
        cell: {
            name: t
            for name, t in rows.items()
            if not name.startswith("ours:") or name.startswith(SCAN_STEP)
        }
        for cell, rows in timings.items()
    }
    hoist = {
        cell: {"hoist_inputs=True": rows[HOIST], "hoist_inputs=False": rows[NO_HOIST]}
        for cell, rows in timings.items()
    }
    unroll = {}
    if "lstm" in timings:
        rows = timings["lstm"]
        unroll = {
            f"unroll={k}": rows["ours"] if k == 1 else rows[f"ours:unroll={k}"] for k in cfg.unrolls
        }
    return {
        "timings": timings,
        "compare": compare,
        "ratios_ours_over_peer": {cell: ratios(rows, "ours") for cell, rows in compare.items()},
        "hoist_inputs": hoist,
        "unroll_lstm": unroll,
        "compile_lstm_fwd_bwd": compile_times,
    }


SECTIONS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "cells": section_cells,
    "finetune": section_finetune,
    "vectorize": section_vectorize,
    "runner": section_runner,
    "demo": section_demo,
    "checkpoint": section_checkpoint,
    "memory": section_memory,
    "scan": lambda cfg: section_scan(cfg, time_modules),
    "equilibrium": lambda cfg: section_equilibrium(
        cfg, time_implementations, Timed, quick=FLAGS.quick
    ),
    "devices": lambda cfg: section_devices(FLAGS),
    "input": section_input,
}


# ----------------------------------------------------------------------------- report


def _row(name: str, timing: dict[str, Timing], ref: dict[str, Timing] | None) -> str:
    cols = [f"{name:<28}"]
    for mode in MODES:
        t = timing[mode]
        ratio = f"{ref[mode]['ms'] / t['ms']:6.2f}" if ref is not None else "     -"
        cols.append(f"{t['ms']:10.2f} {t['gflops']:8.1f} {ratio}")
    return " | ".join(cols)


def _table(title: str, rows: dict[str, dict[str, Timing]], reference: str) -> None:
    cols = f"{'':<28} | {'fwd ms':>10} {'GFLOP/s':>8} {'ratio':>6} | "
    cols += f"{'f+b ms':>10} {'GFLOP/s':>8} {'ratio':>6}"
    print(f"\n{title}\n{cols}\n{'-' * len(cols)}")
    for name, timing in rows.items():
        print(_row(name, timing, None if name == reference else rows[reference]))


def print_cells(result: dict[str, Any], cfg: Config) -> None:
    """Tables for the cells section; each ratio is the reference row's time / this row's."""
    for cell, rows in result["compare"].items():
        _table(f"{cell}: ratio = ours / peer (< 1: ours faster)", rows, "ours")
    for cell, rows in result["hoist_inputs"].items():
        title = f"{cell} (ours): ratio = hoist_inputs=True / this row"
        _table(title, rows, "hoist_inputs=True")
    if result["unroll_lstm"]:
        _table("lstm (ours): ratio = unroll=1 / this row", result["unroll_lstm"], "unroll=1")
    print("\nlstm (ours) fwd+bwd compile time by length (lax.scan: flat in length)")
    for length, t in result["compile_lstm_fwd_bwd"].items():
        print(
            f"  length {length:>6}: lower {t['lower_s']:6.2f} s  compile {t['compile_s']:6.2f} s"
            f"  total {t['total_s']:6.2f} s"
        )


PRINTERS: dict[str, Callable[[dict[str, Any], Config], None]] = {
    "cells": print_cells,
    "scan": print_scan,
    "equilibrium": print_equilibrium,
    "devices": lambda result, cfg: print_devices(result),
}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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
        # Other processes on the machine skew the timings; the load average shows how busy.
        "loadavg_start": os.getloadavg(),
    }
    if torch is not None:
        env["torch_device"] = torch_device()
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["torch_device_name"] = torch.cuda.get_device_name(0)
    return env


def config_from_flags() -> Config:
    values = {name: FLAGS[name].value for name in ("batch", "length", "hidden_size", "repeats")}
    values["scan_lengths"] = tuple(int(n) for n in FLAGS.scan_lengths)
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
    if torch is not None:
        torch.set_num_threads(available_cores())  # jax uses every available core too
    env = environment()
    print(f"config: {dataclasses.asdict(cfg)}")
    print(f"environment: {env}", flush=True)

    report: dict[str, Any] = {"config": dataclasses.asdict(cfg), "environment": env}
    for name in FLAGS.section:
        result = SECTIONS[name](cfg)
        report[name] = result
        PRINTERS.get(name, lambda r, c: print(json.dumps(r, indent=2)))(result, cfg)

    env["loadavg_end"] = os.getloadavg()
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
