"""A researcher's own data, written to disk for the tests: variable-length gesture-like
sequences of 4 features in 3 classes, and the matching config files and loader module."""

from pathlib import Path

import numpy as np

CLASSES = ("down", "flat", "up")


def gestures(n: int = 450, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """n ragged [time_i, 4] float64 sequences (5..19 steps) and their string labels. The
    class sets the frequency of two sinusoidal features; two more are noise."""
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for i in range(n):
        c = i % 3
        t = np.arange(rng.integers(5, 20))[:, None]
        waves = [np.sin(0.3 * (c + 1) * t), np.cos(0.2 * (c + 1) * t)]
        sequences.append(np.concatenate([*waves, rng.normal(size=(len(t), 2))], axis=1))
        labels.append(CLASSES[c])
    return sequences, np.array(labels)


def padded(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences])
    out = np.zeros((len(sequences), lengths.max(), sequences[0].shape[1]))
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out, lengths


def write_npz(path: Path, n: int = 450, seed: int = 0, keep=None) -> Path:
    sequences, labels = gestures(n, seed)
    x, lengths = padded(sequences)
    rows = np.arange(n) if keep is None else keep
    np.savez(path, inputs=x[rows], lengths=lengths[rows], labels=labels[rows])
    return path


CONFIG = '''"""python experiments/main.py --config {name} --workdir runs/mine"""

from fnn_jax.config import default_config
{imports}

def get_config(arg=None):
    config = default_config()
    config.data.name = {data_name!r}
    config.data.options.update({options!r})
    config.data.batch_size = 16
    config.model.hidden_size = 16
    config.train.num_steps = {steps}
    config.train.eval_every_steps = 6
    config.train.log_every_steps = 2
    config.train.steps_per_dispatch = 2
    config.train.checkpoint_every_s = 0.0
    return config
'''

LOADER = '''"""A researcher's loader, outside the package: fnn_jax imports it by name."""

import numpy as np

from fnn_jax.data import from_arrays


def load(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(7)
    sequences = [rng.normal(size=(int(rng.integers(4, 12)), 3)) for _ in range(n)]
    labels = [int(s[:, 0].mean() > 0) for s in sequences]
    return from_arrays(sequences, labels=labels, class_names=("low", "high"), seed=seed,
                       name="my_sensors")


def not_a_dataset(n: int = 3):
    return [1, 2, 3]
'''


def write_config(
    folder: Path, name: str, data_name: str, options: dict, *, steps: int = 36, imports: str = ""
) -> Path:
    path = folder / name
    path.write_text(
        CONFIG.format(name=name, imports=imports, data_name=data_name, options=options, steps=steps)
    )
    return path


def write_loader(folder: Path, module: str = "my_sensors") -> Path:
    path = folder / f"{module}.py"
    path.write_text(LOADER)
    return path
