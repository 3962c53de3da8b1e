"""The ``memory`` section of experiments/bench.py: peak memory of one forward+backward pass
at length 4096 (batch 64, input 128, hidden 256: the bench's shape, longer), ours with and
without ``remat`` against PyTorch's nn.LSTM / nn.GRU / nn.RNN.

Each case runs in a process of its own (``python experiments/bench_memory.py IMPL CELL
LENGTH``): it builds the layer and its inputs and compiles, then resets the kernel's peak
RSS mark to the current RSS (Linux: /proc/self/clear_refs), runs forward+backward once and
reports how far the peak rose (MB): the pass alone, not set-up or compilation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

IMPLS = ("ours", "ours:remat", "torch")
CELLS = ("lstm", "gru", "elman")
LENGTH = 4096
BATCH, INPUT, HIDDEN = 64, 128, 256


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> float:
    """Resets the peak RSS (Linux: VmHWM) to the current RSS, which it returns (MB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _rise_mb(before: float) -> float:
    return _status_mb("VmHWM") - before


def _jax_pass(cell: str, length: int, remat: bool) -> float:
    import jax
    import jax.numpy as jnp

    from fnn_jax.layers import Recurrent

    layer = Recurrent(cell=cell, hidden_size=HIDDEN, remat=remat)
    xs = jax.random.normal(jax.random.key(1), (BATCH, length, INPUT), jnp.float32)
    variables = layer.init(jax.random.key(0), xs[:, :2])
    loss = lambda v, x: jnp.sum(layer.apply(v, x)[1])
    grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables, xs).compile()
    jax.block_until_ready((variables, xs))
    before = _reset_peak()
    jax.block_until_ready(grad(variables, xs))
    return _rise_mb(before)


def _torch_pass(cell: str, length: int) -> float:
    import torch

    layer_type = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[cell]
    layer = layer_type(INPUT, HIDDEN, batch_first=True)
    xs = torch.randn(BATCH, length, INPUT, requires_grad=True)
    before = _reset_peak()
    layer(xs)[0].sum().backward()
    return _rise_mb(before)


def _measure(impl: str, cell: str, length: int) -> float | None:
    """MB the peak RSS rose by during one forward+backward, from a fresh process."""
    command = [sys.executable, __file__, impl, cell, str(length)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent)
    if done.returncode != 0:
        print(f"[memory] {impl} {cell}: failed\n{done.stderr[-2000:]}", flush=True)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def section_memory(cfg: Any) -> dict[str, Any]:
    del cfg
    result: dict[str, Any] = {"length": LENGTH, "batch": BATCH, "hidden": HIDDEN}
    for cell in CELLS:
        row = {impl: _measure(impl, cell, LENGTH) for impl in IMPLS}
        if row["torch"]:
            row["remat_over_torch"] = (row["ours:remat"] or 0) / row["torch"]
        result[cell] = row
        cells = ", ".join(f"{k} {v:.0f} MB" for k, v in row.items() if k in IMPLS and v)
        print(f"\nmemory, {cell} forward+backward at length {LENGTH}: peak RSS rose by {cells}")
    return result


if __name__ == "__main__":
    impl, cell, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if impl == "torch":
        print(_torch_pass(cell, length))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        print(_jax_pass(cell, length, remat=impl == "ours:remat"))
