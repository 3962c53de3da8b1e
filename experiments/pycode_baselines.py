"""python experiments/pycode_baselines.py --corpus runs/pycode_corpus

The simple baselines of configs/pycode_charlm.py, on the same held-out files: bits per byte
(per token: a byte, or the separator that ends a file) of

- a unigram model (add-one), the one every language-model report here carries;
- n-gram models of order 2 to 6, counted in NumPy over the train split, interpolated by
  Witten-Bell down to the unigram (``ngram_bits``); the order is chosen on validation;
- lzma (preset 9, extreme) compressing the test files' bytes: a strong general-purpose
  compressor, given the test text itself (so it learns from the test files as it goes).

Prints a markdown table; the numbers stand in README.md beside the command.
"""

from __future__ import annotations

import argparse
import lzma
import math
import time

import numpy as np

from fnn_jax.data import corpus

VOCAB = corpus.VOCAB_SIZE  # 256 bytes and the separator


def _keys(tokens: np.ndarray, n: int, positions: np.ndarray) -> np.ndarray:
    """int64 [positions]: the n tokens ending at each position, as one base-VOCAB number
    (the last token the least significant digit)."""
    key = np.zeros(len(positions), np.int64)
    for back in range(n - 1, -1, -1):
        key = key * VOCAB + tokens[positions - back]
    return key


def ngram_bits(train: np.ndarray, test: np.ndarray, order: int) -> float:
    """Bits per token of ``test`` [m] under an interpolated Witten-Bell n-gram model of
    ``order`` counted on ``train`` [k] (int token ids < VOCAB), scored at every test
    position with a full context (from ``order - 1`` on):

        P_n(w | h) = (c(h w) + N1+(h .) P_{n-1}(w | h')) / (c(h) + N1+(h .)),

    h' the context without its oldest token, N1+(h .) the distinct tokens seen after h;
    an unseen context falls back to P_{n-1}; P_1 is add-one."""
    train, test = np.asarray(train, np.int64), np.asarray(test, np.int64)
    at = np.arange(order - 1, len(test))
    counts = np.bincount(train, minlength=VOCAB) + 1.0
    p = (counts / counts.sum())[test[at]]
    for n in range(2, order + 1):
        seen, c_hw = np.unique(_keys(train, n, np.arange(n - 1, len(train))), return_counts=True)
        contexts, first = np.unique(seen // VOCAB, return_index=True)
        c_h = np.add.reduceat(c_hw, first)
        n1_h = np.diff(np.append(first, len(seen)))
        query = _keys(test, n, at)
        hw = np.searchsorted(seen, query)
        hw_found = (hw < len(seen)) & (seen[np.minimum(hw, len(seen) - 1)] == query)
        count_hw = np.where(hw_found, c_hw[np.minimum(hw, len(seen) - 1)], 0)
        h = np.searchsorted(contexts, query // VOCAB)
        h_found = (h < len(contexts)) & (
            contexts[np.minimum(h, len(contexts) - 1)] == query // VOCAB
        )
        ch = np.where(h_found, c_h[np.minimum(h, len(contexts) - 1)], 0)
        n1 = np.where(h_found, n1_h[np.minimum(h, len(contexts) - 1)], 0)
        p = np.where(h_found, (count_hw + n1 * p) / np.maximum(ch + n1, 1), p)
    return float(-np.mean(np.log2(p)))


def unigram_bits(train: np.ndarray, test: np.ndarray) -> float:
    """Bits per token of ``test`` under add-one unigram frequencies of ``train``."""
    counts = np.bincount(train, minlength=VOCAB) + 1.0
    return float(-np.mean(np.log2((counts / counts.sum())[test])))


def lzma_bits(test: np.ndarray) -> float:
    """lzma's compressed size of the test files' bytes (separators dropped), in bits per byte."""
    raw = np.asarray(test[test != corpus.SEPARATOR], np.uint8).tobytes()
    return 8.0 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / len(raw)


def tokens_of(split: corpus.CorpusSplit) -> np.ndarray:
    return np.fromfile(split.path, corpus.TOKEN_DTYPE).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="runs/pycode_corpus")
    parser.add_argument("--orders", default="2,3,4,5,6")
    args = parser.parse_args()
    prepared = corpus.open_corpus(args.corpus, verify=True)
    train, validation, test = (tokens_of(prepared.split(s)) for s in corpus.SPLITS)
    rows = [("unigram (add-one)", unigram_bits(train, validation), unigram_bits(train, test))]
    for order in (int(o) for o in args.orders.split(",")):
        start = time.time()
        scores = (ngram_bits(train, validation, order), ngram_bits(train, test, order))
        rows.append((f"{order}-gram, Witten-Bell", *scores))
        print(f"{order}-gram: {time.time() - start:.0f} s", flush=True)
    rows.append(("lzma -9e on the test files", math.nan, lzma_bits(test)))
    best = min((r for r in rows if "gram," in r[0]), key=lambda r: r[1])
    print("| baseline | validation bits/byte | test bits/byte |\n|---|---|---|")
    for name, v, t in rows:
        mark = " (best on validation)" if name == best[0] else ""
        print(f"| {name}{mark} | {'—' if math.isnan(v) else f'{v:.3f}'} | {t:.3f} |")


if __name__ == "__main__":
    main()
