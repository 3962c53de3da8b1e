"""Text from your own files: a corpus of UTF-8 files for a character language model
("text_files") and a CSV/Parquet table of (text, label) for text classification
("text_table"). Token ids: 0 the unknown symbol, 1 the separator before each document,
then the train split's characters in sorted order (info["vocab"])."""

from __future__ import annotations

import glob as globlib
import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fnn_jax.data.arrays import DataError, from_arrays
from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import check_positive, lm_windows, register
from fnn_jax.data.sources import hashes
from fnn_jax.data.tables import check_complete, chronological, column, read_tables
from fnn_jax.data.text import unigram_cross_entropy

UNKNOWN, SEPARATOR = 0, 1
_RECORD = "\x1e"  # the separator as a character: ASCII record separator


def read_text(path: Path) -> str:
    """A file's text; DataError naming the file and the first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text (byte {error.start}: {raw[error.start : error.start + 1]!r})"
        ) from None


def _vocab(train_texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    chars = sorted(set("".join(train_texts)) - {_RECORD})
    vocab = ["\ufffd", _RECORD, *chars]  # unknown, separator, then the train characters
    return vocab, {_RECORD: SEPARATOR} | {c: i + 2 for i, c in enumerate(chars)}


def _encode(text: str, lookup: dict[str, int]) -> np.ndarray:
    return np.fromiter((lookup.get(c, UNKNOWN) for c in text), np.int32, count=len(text))


def _split_of_file(name: str, validation: float, test: float) -> str:
    """A file's split from a hash of its path: the same file, the same split, everywhere."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "validation" if u < test + validation else "train"


@register("text_files")
def text_files(
    *,
    paths: str | Sequence[str],
    seq_len: int = 128,
    split_by: str = "characters",
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Dataset:
    """A corpus of UTF-8 files (globs, sorted) for next-character prediction (tagging),
    like the built-in "text". Each document starts with a separator (``resets`` mark it).
    split_by "characters": the joined corpus cut 90/5/5 in order; "files": whole files
    held out by a hash of their path. Vocabulary: the train split's characters, after the
    unknown symbol (id 0) and the separator (id 1). ``seed`` is accepted for a uniform
    loader interface; nothing here is random."""
    check_positive("seq_len", seq_len)
    patterns = [paths] if isinstance(paths, str) else list(paths)
    found = sorted(
        {
            Path(p).absolute()
            for pat in patterns
            for p in globlib.glob(str(Path(pat).expanduser()), recursive=True)
            if Path(p).is_file()
        }
    )
    if not found:
        raise DataError(f"text_files: no file matches {patterns}")
    docs = [_RECORD + read_text(p) for p in found]  # each document after a separator
    if split_by == "files":
        # Hashed by the path below the files' common folder: the corpus moved elsewhere
        # keeps its splits.
        base = Path(os.path.commonpath([str(p.parent) for p in found]))
        parts = {s: "" for s in SPLITS}
        for p, d in zip(found, docs, strict=True):
            name = p.relative_to(base).as_posix()
            parts[_split_of_file(name, validation_fraction, test_fraction)] += d
    elif split_by == "characters":
        joined = "".join(docs)
        b = chronological(len(joined), validation_fraction, test_fraction, "text_files")
        parts = {s: joined[lo:hi] for s, (lo, hi) in b.items()}
    else:
        raise DataError(f"text_files: split_by must be 'characters' or 'files'; got {split_by!r}")
    vocab, lookup = _vocab([parts["train"]])
    splits = {}
    for split, text in parts.items():
        try:
            splits[split] = lm_windows(
                _encode(text, lookup), seq_len, f"text_files: split {split!r}", SEPARATOR
            )
        except ValueError as error:
            raise DataError(str(error)) from None
    train, test = splits["train"].targets.ravel(), splits["test"].targets.ravel()
    unigram = unigram_cross_entropy(train, test, len(vocab))
    return Dataset(
        name="text_files",
        task="tagging",
        **splits,
        num_classes=len(vocab),
        baselines={"cross_entropy_uniform": math.log(len(vocab)), "cross_entropy_unigram": unigram},
        info={"vocab": vocab, "files": hashes(found), "split_by": split_by},
    )


@register("text_table")
def text_table(  # noqa: PLR0913 (a loader's keyword arguments are its config options)
    *,
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str | None = None,
    max_len: int = 256,
    classes: Sequence[Any] | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> Dataset:
    """Text classification from a CSV/Parquet table of (text, label), like the reviews:
    inputs [n, max_len] int32 characters (the separator first, cut after max_len),
    lengths [n], targets [n]; vocabulary from the train split's texts."""
    check_positive("max_len", max_len)
    data, files = read_tables(path)
    where = str(next(iter(files.values())) if len(files) == 1 else path)
    for name in (text_column, label_column):
        check_complete(column(data, name, where), name, where)
    texts = column(data, text_column, where).astype(str)
    split_name = "__split__" if "__split__" in data else split_column
    known = {text_column, label_column, split_name, split_column}
    extra = sorted(c for c in data if c not in known)
    if extra:
        raise DataError(
            f"{where}: unexpected columns {extra}; the table holds "
            f"{text_column!r}, {label_column!r} and optionally a split column"
        )
    marker = np.zeros((len(texts), 1, 1))  # rows only: the labels and split are the point
    plan = from_arrays(
        marker,
        labels=column(data, label_column, where),
        split=data[split_name] if split_name else None,
        classes=classes,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=False,
        where=where,
    )
    rows = plan.info["split_index"]
    vocab, lookup = _vocab([texts[i] for i in rows["train"]])
    splits = {}
    for split in SPLITS:
        idx = rows[split]
        inputs = np.zeros((len(idx), max_len), np.int32)
        lengths = np.zeros(len(idx), np.int32)
        for j, i in enumerate(idx):
            tokens = _encode(_RECORD + texts[i], lookup)[:max_len]
            inputs[j, : len(tokens)], lengths[j] = tokens, len(tokens)
        splits[split] = Split(inputs, plan.split(split).targets, lengths)
    return Dataset(
        name="text_table",
        task="classification",
        **splits,
        num_classes=plan.num_classes,
        info={
            "input_vocab_size": len(vocab),
            "vocab": vocab,
            "files": hashes(files),
            "class_names": plan.info["class_names"],
            "split_index": rows,
        },
    )
