"""The ``runner`` and ``demo`` sections of experiments/bench.py: what the runner costs on
top of its jitted step.

``runner`` (one process): the runner's training steps per second (``train_and_evaluate``'s
stage loop, with its validation every epoch and its checkpoints) against a bare Python loop
of the same jitted train step over batches already on the device, at the demo's shape
(digits LSTM 128, batch 32, length 8) and at a mid-size one (adding problem, LSTM 256,
batch 64, length 256), for ``steps_per_dispatch`` 1 and "auto", and "auto" evaluating
only at the end. Runs and bare loops alternate, the compilation cache is warm for both; steps
per second are the best of five, ratios the median of five (a run over the bare loop timed
right after it).

``demo`` (whole processes, alternating): ``experiments/main.py`` on configs/digits_lstm.py
with a cold and with a warm compilation cache, against the yardstick, a tuned bare JAX
script (experiments/bare_digits.py) doing the same training with our model: data on the
device, one jitted ``lax.scan`` per epoch, validation each epoch, no checkpoints.

    python experiments/bench.py --section runner,demo
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/
from configs import digits_lstm  # noqa: E402
from fnn_jax.checkpoint import Checkpoints  # noqa: E402
from fnn_jax.config import default_config  # noqa: E402
from fnn_jax.optim import make_optimizer  # noqa: E402
from fnn_jax.train import engine as engine_lib  # noqa: E402
from fnn_jax.train.loop import train_and_evaluate  # noqa: E402
from fnn_jax.train.steppers import host_copy, train_table  # noqa: E402
from fnn_jax.train.steps import (  # noqa: E402
    StepSpec,
    TrainState,
    init_params,
    make_train_step,
    zero_sums,
)
from fnn_jax.train.trial import setup  # noqa: E402

REPEATS = 5


def _demo_config() -> ml_collections.ConfigDict:
    return digits_lstm.get_config()


def _mid_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "adding"
    config.data.options = ml_collections.ConfigDict(
        {"length": 256, "num_train": 64 * 60, "num_validation": 256, "num_test": 256}
    )
    config.data.batch_size = 64
    config.model.hidden_size = 256
    config.train.num_epochs = 1
    return config


SHAPES = {
    "demo: digits LSTM 128, batch 32, length 8": _demo_config,
    "mid-size: adding LSTM 256, batch 64, length 256": _mid_config,
}


def _runner_steps_per_s(config: ml_collections.ConfigDict, root: Path) -> float:
    """Steps per second of the runner's stage loop (validation and checkpoints included;
    set-up, final evaluation and report excluded)."""
    clock: list[float] = []
    original = engine_lib.Engine._train_stage

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            clock.append(time.perf_counter() - start)

    workdir = Path(tempfile.mkdtemp(dir=root))
    engine_lib.Engine._train_stage = timed
    try:
        report = train_and_evaluate(config, workdir)
    finally:
        engine_lib.Engine._train_stage = original
        shutil.rmtree(workdir, ignore_errors=True)
    return report["steps"] / sum(clock)


def _bare_loop(config: ml_collections.ConfigDict):
    """A function timing the same jitted train step (optimizer, clipping, dropout key) in a
    plain Python loop over the run's batches, gathered on the device beforehand."""
    plan = setup(config)
    steps = plan.steps_per_epoch * config.train.num_epochs
    params = init_params(plan.model, jax.random.key(0), plan.sample)
    tx = make_optimizer(config.optimizer, steps)
    spec = StepSpec(plan.model, plan.task, config.regularization.exclude)
    step = make_train_step(spec, tx, dropout_key=jax.random.key(1))
    table = train_table(plan.dataset.train)
    rows = plan.train_indices(config.seed, 0, steps)
    ones = jax.numpy.ones((plan.batch_size,), np.float32)
    batches = [{**{k: v[r] for k, v in table.items()}, "weights": ones} for r in rows]
    sums = zero_sums(plan.model, plan.task, params, plan.sample)

    def steps_per_s() -> float:
        fresh = jax.tree.map(lambda x: x.copy(), params)  # the step donates its state
        state = TrainState(np.int32(0), fresh, tx.init(fresh), jax.tree.map(np.zeros_like, sums))
        state = jax.block_until_ready(step(state, batches[0])[0])  # compiled already after one
        start = time.perf_counter()
        for batch in batches[1:]:
            state, _ = step(state, batch)
        jax.block_until_ready(state)
        return (len(batches) - 1) / (time.perf_counter() - start)

    return steps_per_s


VARIANTS = {  # runner variants: config.train overrides
    "1": {"steps_per_dispatch": 1},
    "auto": {"steps_per_dispatch": "auto"},
    # Validation and a checkpoint at the end only: the loop without its per-epoch work.
    "auto, evaluating at the end": {"steps_per_dispatch": "auto", "eval_every_steps": 10**9},
}


def section_runner(cfg: Any) -> dict[str, Any]:
    del cfg
    root = Path(tempfile.mkdtemp(prefix="bench_runner_"))
    result = {}
    try:
        for label, make_config in SHAPES.items():
            bare = _bare_loop(make_config())
            bare()  # compiles
            row: dict[str, Any] = {"bare_steps_per_s": 0.0}
            for name, overrides in VARIANTS.items():
                config = make_config()
                config.train.update(overrides)
                _runner_steps_per_s(config, root)  # fills the compilation cache
                runs, bares = [], []
                for _ in range(REPEATS):
                    runs.append(_runner_steps_per_s(config, root))
                    bares.append(bare())
                row[f"runner_steps_per_s[{name}]"] = max(runs)
                row["bare_steps_per_s"] = max(row["bare_steps_per_s"], *bares)
                # Each run against the bare loop timed right after it: the machine's speed
                # drifts between rounds, and a pair shares it.
                pairs = [r / b for r, b in zip(runs, bares, strict=True)]
                row[f"ratio[{name}]"] = statistics.median(pairs)
            result[label] = row
            print(f"\nrunner, {label}: bare loop {row['bare_steps_per_s']:.2f} steps/s", flush=True)
            for name in VARIANTS:
                steps_per_s = row[f"runner_steps_per_s[{name}]"]
                ratio = row[f"ratio[{name}]"]
                print(f"  runner, steps_per_dispatch {name}: {steps_per_s:.2f} ({ratio:.2f}x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- checkpoint


def section_checkpoint(cfg: Any) -> dict[str, Any]:
    """Wall and CPU milliseconds of one Orbax save (``Checkpoints.save`` then ``wait``) of
    the demo's train state, host copies, median of 20 after 3 warm-ups: what a save costs
    the 2 cores whether or not the loop waits for it. And how long the training loop waits
    for a save to start (the save call alone, median of 20): from host copies (a copy off
    the device, then Orbax on the writer thread) and from the arrays on the device (Orbax
    started on the loop's thread: how a state split over devices is saved)."""
    del cfg
    plan = setup(_demo_config())
    params = init_params(plan.model, jax.random.key(0), plan.sample)
    tx = make_optimizer(_demo_config().optimizer, 1000)
    sums = zero_sums(plan.model, plan.task, params, plan.sample)
    on_device = jax.device_put(TrainState(np.int32(0), params, tx.init(params), sums))
    state = jax.device_get(on_device)
    walls, cpus = [], []
    with _checkpoints() as checkpoints:
        for step in range(23):
            wall, cpu = time.perf_counter(), time.process_time()
            checkpoints.save(step, state, {"step": step})
            checkpoints.wait()
            walls.append(1e3 * (time.perf_counter() - wall))
            cpus.append(1e3 * (time.process_time() - cpu))
    waits = {}
    for name, copy in {"host": host_copy, "device": lambda tree: tree}.items():
        waits[name] = []
        with _checkpoints() as checkpoints:
            for step in range(23):
                wall = time.perf_counter()
                checkpoints.save(step, copy(on_device), {"step": step})
                waits[name].append(1e3 * (time.perf_counter() - wall))
                checkpoints.wait()
    size = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
    result = {
        "state_mb": size / 2**20,
        "save_wall_ms": statistics.median(walls[3:]),
        "save_cpu_ms": statistics.median(cpus[3:]),
        "loop_waits_ms_host_copies": statistics.median(waits["host"][3:]),
        "loop_waits_ms_on_device": statistics.median(waits["device"][3:]),
    }
    print(
        f"\ncheckpoint: one save of the demo's state ({result['state_mb']:.2f} MB): "
        f"{result['save_wall_ms']:.1f} ms wall, {result['save_cpu_ms']:.1f} ms CPU; the "
        f"loop waits {result['loop_waits_ms_host_copies']:.1f} ms for it to start from host "
        f"copies, {result['loop_waits_ms_on_device']:.1f} ms from the arrays on the device"
    )
    return result


@contextlib.contextmanager
def _checkpoints() -> Iterator[Checkpoints]:
    folder = Path(tempfile.mkdtemp(prefix="bench_checkpoint_"))
    checkpoints = Checkpoints(folder)
    try:
        yield checkpoints
    finally:
        checkpoints.close()
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- demo


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


EVENTS = {  # JAX's monitoring events -> our names (seconds summed over the run)
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",  # or fetch from the cache
}


def _compile_seconds(cache: Path, workdir: Path) -> dict[str, float]:
    """The demo run in this (fresh) process; seconds JAX spent tracing, lowering and
    compiling (or reading compiled programs from ``cache``)."""
    totals = dict.fromkeys(EVENTS.values(), 0.0)

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event in EVENTS:
            totals[EVENTS[event]] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    config = _demo_config()
    config.train.compilation_cache = str(cache)
    train_and_evaluate(config, workdir)
    return totals


def section_demo(cfg: Any) -> dict[str, Any]:
    """Wall seconds of whole processes, medians of REPEATS alternating rounds; and the
    compile seconds of a cold and a warm run."""
    del cfg
    root = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    python = sys.executable
    demo = [python, "experiments/main.py", "--config", "configs/digits_lstm.py"]
    try:
        compile_s = {}
        for state in ("cold", "warm"):
            command = [python, __file__, "compile", str(root / "compile_cache"), str(root / state)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            compile_s[state] = json.loads(done.stdout.strip().splitlines()[-1])
        cache = root / "cache"
        times: dict[str, list[float]] = {"demo_cold_s": [], "demo_warm_s": [], "bare_s": []}
        for k in range(REPEATS):
            shutil.rmtree(cache, ignore_errors=True)
            flag = f"--config.train.compilation_cache={cache}"
            times["demo_cold_s"].append(_wall([*demo, "--workdir", str(root / f"c{k}"), flag]))
            times["demo_warm_s"].append(_wall([*demo, "--workdir", str(root / f"w{k}"), flag]))
            times["bare_s"].append(_wall([python, "experiments/bare_digits.py"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {name: statistics.median(ts) for name, ts in times.items()}
    result["all"] = times
    result["jax_seconds"] = compile_s
    result["warm_over_bare"] = result["demo_warm_s"] / result["bare_s"]
    print(
        f"\ndemo (whole processes, median of {REPEATS}): cold cache {result['demo_cold_s']:.1f} s,"
        f" warm cache {result['demo_warm_s']:.1f} s; the bare JAX script "
        f"{result['bare_s']:.1f} s (warm / bare {result['warm_over_bare']:.2f}x)"
    )
    for state, seconds in compile_s.items():
        print(f"  {state} cache: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["compile"]:
    print(json.dumps(_compile_seconds(Path(sys.argv[2]), Path(sys.argv[3]))))
