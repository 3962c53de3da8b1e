"""The ``devices`` section of experiments/bench.py: training steps per second on a mesh of
1, 2 and 4 devices (data parallelism: each batch's rows split over the ``data`` axis) and
with the large matrices split over a ``model`` axis of 2, all in one process.

It drives the runner's own stepper (fnn_jax.train.engine builds it from config.mesh): a
character LSTM language model (hidden 512, 64 with --quick; rows of 128 characters
of Python's help texts; global batch 64), several steps per dispatch, timed after a compiling
warm-up. Each row gives steps/s, examples/s and the speed-up over one device.

On a CPU with fewer than 4 devices it re-runs itself in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4: those "devices" share the machine's cores,
so the numbers are a smoke test of the machinery, not a speed-up. On a GPU or TPU host the
real devices are used.

    python experiments/bench.py --section devices
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

MESHES = ((1, 1), (2, 1), (4, 1), (1, 2), (2, 2))  # (data, model)
BATCH, LENGTH = 64, 128
FORCED = "--xla_force_host_platform_device_count=4"


def _config(data: int, model: int, hidden: int):
    from fnn_jax.config import default_config

    config = default_config()
    config.data.name = "text"
    config.data.options = {"seq_len": LENGTH}
    config.data.batch_size = BATCH
    config.model.cell = "lstm"
    config.model.hidden_size = hidden
    config.model.embed_dim = 32
    config.train.num_steps = 10_000
    config.train.steps_per_dispatch = 4
    config.train.compilation_cache = ""
    config.mesh.data, config.mesh.model = data, model
    return config


def _steps_per_second(data: int, model: int, hidden: int, steps: int) -> float:
    from fnn_jax.train.engine import Engine

    with tempfile.TemporaryDirectory() as workdir:
        engine = Engine([_config(data, model, hidden)], [Path(workdir)])
        trial = engine.trials[0]
        stepper = engine._stepper([trial])
        per = stepper.capacity

        def run(count: int, start: int) -> None:
            for first in range(start, start + count, per):
                rows = engine.plan.train_indices(0, first, per)
                stepper.run([rows], per)
            jax.block_until_ready(stepper.state)

        run(2 * per, 0)  # compile and warm up
        begin = time.perf_counter()
        run(steps, 2 * per)
        seconds = time.perf_counter() - begin
        engine._close(engine.trials)
    return steps / seconds


def measure(hidden: int, steps: int) -> dict[str, Any]:
    """Rows for every mesh that fits this process's devices."""
    rows, single = [], None
    for data, model in MESHES:
        if data * model > jax.device_count():
            continue
        rate = _steps_per_second(data, model, hidden, steps)
        single = single or rate
        rows.append(
            {
                "data": data,
                "model": model,
                "steps_per_s": round(rate, 2),
                "examples_per_s": round(rate * BATCH, 1),
                "speedup_vs_1": round(rate / single, 3),
            }
        )
    return {
        "platform": jax.devices()[0].platform,
        "device_count": jax.device_count(),
        "forced_host_devices": FORCED in os.environ.get("XLA_FLAGS", ""),
        "cpu_cores": os.cpu_count(),
        "model": f"char LSTM({hidden}), rows of {LENGTH}, global batch {BATCH}",
        "rows": rows,
    }


def section_devices(cfg: Any) -> dict[str, Any]:
    hidden = 64 if cfg.quick else 512
    steps = 8 if cfg.quick else 64
    if jax.device_count() >= 4 or jax.default_backend() != "cpu":
        result = measure(hidden, steps)
    else:  # re-run with 4 forced host devices (XLA_FLAGS must be set before JAX starts)
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FORCED}"}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
        done = subprocess.run(
            [sys.executable, __file__, str(hidden), str(steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def print_devices(result: dict[str, Any]) -> None:
    print(
        f"\n{result['model']} on {result['device_count']} {result['platform']} devices"
        + (" (forced host devices sharing the cores)" if result["forced_host_devices"] else "")
    )
    print(f"{'data':>5} {'model':>6} {'steps/s':>9} {'examples/s':>11} {'vs 1 device':>12}")
    for row in result["rows"]:
        print(
            f"{row['data']:>5} {row['model']:>6} {row['steps_per_s']:>9.2f} "
            f"{row['examples_per_s']:>11.1f} {row['speedup_vs_1']:>12.3f}"
        )


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
