"""experiments/pycode_baselines.py: the NumPy n-gram model equals Witten-Bell interpolation
written out with Python dicts, and lzma's figure is its compressed size."""

import collections
import lzma
import math
from pathlib import Path

import numpy as np
import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
V = 257


@pytest.fixture(scope="module")
def baselines():
    return load_script("pycode_baselines")


def _reference_bits(train: list[int], test: list[int], order: int) -> float:
    """Witten-Bell, one test position at a time, counts in dicts."""
    unigram = collections.Counter(train)
    follow = collections.defaultdict(collections.Counter)  # context tuple -> next-token counts
    for n in range(2, order + 1):
        for i in range(n - 1, len(train)):
            follow[tuple(train[i - n + 1 : i])][train[i]] += 1
    total = 0.0
    positions = range(order - 1, len(test))
    for t in positions:
        w = test[t]
        p = (unigram[w] + 1) / (len(train) + V)
        for n in range(2, order + 1):
            seen = follow.get(tuple(test[t - n + 1 : t]))
            if seen:
                p = (seen[w] + len(seen) * p) / (sum(seen.values()) + len(seen))
        total -= math.log2(p)
    return total / len(positions)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_ngram_bits_equal_witten_bell_written_out(baselines, order):
    rng = np.random.default_rng(0)
    text = b"def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 3
    train = [256, *text, 256, *rng.integers(0, 256, 40).tolist(), 256]
    test = [256, *b"def g(y):\n    return y + 2\n", 256, 7, 7, 7, 300 - 44]
    want = _reference_bits(train, test, order)
    if order == 1:
        got = baselines.unigram_bits(np.array(train), np.array(test))
    else:
        got = baselines.ngram_bits(np.array(train), np.array(test), order)
    assert got == pytest.approx(want, rel=1e-12)


def test_more_context_helps_on_repetitive_text_and_lzma_is_its_compressed_size(baselines):
    text = np.frombuffer(b"for i in range(10):\n    print(i)\n" * 50, np.uint8).astype(np.int64)
    train, test = text[:1000], text[1000:]
    five, two = baselines.ngram_bits(train, test, 5), baselines.ngram_bits(train, test, 2)
    assert five < 0.1 < two < baselines.unigram_bits(train, test)
    with_separators = np.concatenate([[256], test, [256]])
    raw = test.astype(np.uint8).tobytes()
    expected = 8 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / len(raw)
    assert baselines.lzma_bits(with_separators) == expected
