"""The ``vectorize`` section of experiments/bench.py: 8 seeds of a config trained as one
vectorised program (``fnn_jax.train.vectorized.train_together``, what ``sweep --vectorize``
runs) against the same 8 trials run one after another with ``train_and_evaluate``, in one
process. Both include everything a run does: compilation, training, validation, Orbax
checkpoints, the final evaluation, the plots and the report.

    python experiments/bench.py --section vectorize
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ml_collections

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/
from configs import digits_lstm  # noqa: E402
from fnn_jax.train import train_and_evaluate  # noqa: E402
from fnn_jax.train.vectorized import train_together  # noqa: E402

SEEDS = 8
CASES = {  # name: (hidden units, epochs) of the digits LSTM demo (configs/digits_lstm.py)
    "digits LSTM 16 units, 3 epochs": (16, 3),
    "digits LSTM 32 units, 10 epochs": (32, 10),
    "digits LSTM 128 units (the demo), 10 epochs": (128, 10),
}


def _config(seed: int, hidden: int, epochs: int) -> ml_collections.ConfigDict:
    config = digits_lstm.get_config()
    with config.unlocked():
        config.seed, config.model.hidden_size, config.train.num_epochs = seed, hidden, epochs
    return config


def _case(root: Path, hidden: int, epochs: int) -> dict[str, Any]:
    configs = [_config(seed, hidden, epochs) for seed in range(SEEDS)]
    start = time.perf_counter()
    together = train_together(configs, [root / f"together{k}" for k in range(SEEDS)])
    vectorized_s = time.perf_counter() - start
    start = time.perf_counter()
    alone = [train_and_evaluate(c, root / f"alone{k}") for k, c in enumerate(configs)]
    sequential_s = time.perf_counter() - start
    accuracy = lambda report: report["results"]["test"]["accuracy"]
    return {
        "steps": alone[0]["steps"],
        "sequential_s": sequential_s,
        "vectorized_s": vectorized_s,
        "speedup": sequential_s / vectorized_s,
        "test_accuracy": [accuracy(r) for r in together],
        "max_accuracy_difference": max(
            abs(accuracy(a) - accuracy(b)) for a, b in zip(alone, together, strict=True)
        ),
    }


def section_vectorize(cfg: Any) -> dict[str, Any]:
    """Total seconds for 8 seeds, vectorised and one by one, after an untimed warm-up (so
    neither pays the one-off imports and caches of the process)."""
    del cfg
    root = Path(tempfile.mkdtemp(prefix="bench_vectorize_"))
    try:
        warmup = [_config(seed, 8, 1) for seed in range(2)]
        train_together(warmup, [root / "warm0", root / "warm1"])
        train_and_evaluate(warmup[0], root / "warm2")
        result = {}
        for label, (hidden, epochs) in CASES.items():
            result[label] = _case(root / label.replace(" ", "_"), hidden, epochs)
            row = result[label]
            print(
                f"\nvectorize, {label} ({row['steps']} steps): {SEEDS} seeds one by one "
                f"{row['sequential_s']:.1f} s, vectorised {row['vectorized_s']:.1f} s, "
                f"speed-up {row['speedup']:.2f}x; test accuracy differs by at most "
                f"{row['max_accuracy_difference']:.4f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result
