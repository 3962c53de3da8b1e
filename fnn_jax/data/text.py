"""Character-level language modelling on the help texts bundled with Python (pydoc_data)."""

from __future__ import annotations

import math

import numpy as np

from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import register

FRACTIONS = (0.90, 0.05, 0.05)  # chronological train / validation / test, in characters


def corpus(max_chars: int | None = None) -> str:
    """pydoc_data.topics.topics values joined in key order, optionally truncated."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    return text if max_chars is None else text[:max_chars]


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """[start, end) character offsets of each split in a corpus of n characters."""
    b1 = int(FRACTIONS[0] * n)
    b2 = int((FRACTIONS[0] + FRACTIONS[1]) * n)
    return {"train": (0, b1), "validation": (b1, b2), "test": (b2, n)}


def unigram_cross_entropy(train: np.ndarray, test: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats) of the ``test`` tokens under the ``train`` tokens' frequencies."""
    return unigram_cross_entropy_of_counts(
        np.bincount(train, minlength=vocab_size), np.bincount(test, minlength=vocab_size)
    )


def unigram_cross_entropy_of_counts(train: np.ndarray, test: np.ndarray) -> float:
    """``unigram_cross_entropy`` from token counts [vocab] (of a corpus read in chunks)."""
    # Add-one smoothing so characters unseen in train have finite loss.
    counts = np.asarray(train, np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    test = np.asarray(test, np.float64)
    return float(-(test * logp).sum() / test.sum())


@register("text")
def text(*, seq_len: int = 128, max_chars: int | None = None, seed: int = 0) -> Dataset:
    """Next-character prediction (tagging).

    The corpus is cut chronologically 90/5/5; each split is cut into non-overlapping windows
    of seq_len+1 characters (a trailing partial window is dropped). inputs [n, seq_len] int32
    are the first seq_len tokens of a window, targets [n, seq_len] int32 the last seq_len.
    Vocab: sorted set of the corpus's characters (info["vocab"]). info["window_starts"][split]
    holds each window's character offset in the corpus. ``seed`` is accepted for a uniform
    loader interface; nothing here is random.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1; got {seq_len}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be >= 1 or None; got {max_chars}")
    chars = corpus(max_chars)
    vocab = sorted(set(chars))
    lookup = {c: i for i, c in enumerate(vocab)}
    tokens = np.fromiter((lookup[c] for c in chars), dtype=np.int32, count=len(chars))
    bounds = split_bounds(len(chars))
    width = seq_len + 1
    splits, starts = {}, {}
    for split in SPLITS:
        lo, hi = bounds[split]
        count = (hi - lo) // width
        if count < 1:
            raise ValueError(
                f"text: split {split!r} has {hi - lo} characters, fewer than seq_len + 1 = "
                f"{width}; use a smaller seq_len or a larger max_chars"
            )
        windows = tokens[lo : lo + count * width].reshape(count, width)
        splits[split] = Split(
            np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
        )
        starts[split] = lo + width * np.arange(count)
    v = len(vocab)
    baselines = {
        "cross_entropy_uniform": math.log(v),
        "cross_entropy_unigram": unigram_cross_entropy(
            splits["train"].targets.ravel(), splits["test"].targets.ravel(), v
        ),
    }
    return Dataset(
        name="text",
        task="tagging",
        **splits,
        num_classes=v,
        baselines=baselines,
        info={
            "vocab": vocab,
            "corpus": "pydoc_data.topics",
            "num_chars": len(chars),
            "bounds": bounds,
            "window_starts": starts,
        },
    )
