"""A byte-level corpus larger than memory: documents packed into rows, kept on disk and
read a few rows at a time.

``prepare(files, out_dir, row_length=T)`` writes, per split (whole files held out by a hash
of their path, the rule of ``text_files(split_by="files")``):

    <split>.tokens      uint16 little-endian tokens: each document's bytes (0..255) after
                        the separator 256, then one closing separator
    <split>.starts.npy  int64 [documents]: each document's separator offset
    manifest.json       written last, atomically: a folder without it is not a corpus

The separator follows ``registry.lm_windows``: the state restarts where a document starts
(``resets``, at its separator), and the last byte of a document predicts the separator, so
no target crosses into the next document's text ("the document ends here" is learned).

Row i of a split is tokens[i*T : i*T + T + 1]: inputs [T] its first T tokens, targets [T]
its last T. The final row may be shorter (``lengths``), padded with input 0, target
IGNORE_LABEL and no reset. ``open_corpus(out_dir).split("train").rows(indices)`` reads rows
with ``os.pread``: memory is bounded by the rows asked for, whatever the corpus's size.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import itertools
import json
import math
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fnn_jax.data.arrays import DataError
from fnn_jax.data.base import SPLITS, Dataset, Split
from fnn_jax.data.registry import check_positive, register, require
from fnn_jax.data.sources import sha256_file
from fnn_jax.data.text import unigram_cross_entropy_of_counts
from fnn_jax.data.text_sources import _split_of_file
from fnn_jax.tasks import IGNORE_LABEL

SEPARATOR = 256  # before each document, and once after the last
VOCAB_SIZE = 257  # bytes 0..255 and the separator
TOKEN_DTYPE = np.dtype("<u2")  # fixed byte order: a corpus prepared here reads anywhere
MANIFEST = "manifest.json"
FORMAT = 1  # the manifest's "format": bumped when the layout on disk changes


class CorpusError(OSError):
    """A corpus file missing, unreadable, or not what its manifest says. The message
    starts with the file's path. Reading again works once the file is back."""


# ------------------------------------------------------------------------------ prepare


def stdlib_files() -> list[Path]:
    """The Python standard library's own ``.py`` files (site-packages excluded), sorted:
    about 30 MB of source on every machine with Python 3.11."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages"}
    return sorted(
        p for p in root.rglob("*.py") if p.is_file() and not skip & set(p.relative_to(root).parts)
    )


def find_files(files: Sequence[str | Path] | str) -> list[Path]:
    """Absolute paths, sorted and distinct: a str is a glob (``**`` recursive), a Path a
    file. DataError naming the first pattern or path that matches no file."""
    patterns = [files] if isinstance(files, str | Path) else list(files)
    found: set[Path] = set()
    for pattern in patterns:
        if isinstance(pattern, Path):  # a literal name: '[' in it is no glob
            matches = [pattern] if pattern.is_file() else []
        else:
            matches = [
                Path(p)
                for p in globlib.glob(str(Path(pattern).expanduser()), recursive=True)
                if Path(p).is_file()
            ]
        if not matches:
            raise DataError(f"corpus: no file matches {str(pattern)!r}")
        found.update(p.absolute() for p in matches)
    return sorted(found)


def prepare(
    files: Sequence[str | Path] | str,
    out_dir: str | Path,
    *,
    row_length: int,
    validation: float = 0.05,
    test: float = 0.05,
) -> Path:
    """Writes the corpus of ``files`` (globs or paths, each file one document) into
    ``out_dir`` and returns the manifest's path. Memory: one file at a time.

    DataError, one line, for: a pattern matching no file, a file that cannot be read, a
    split with no document or with fewer than row_length + 1 tokens (one full row)."""
    check_positive("row_length", row_length)
    if not (validation > 0 and test > 0 and validation + test < 1):
        raise DataError(
            f"corpus: need 0 < validation, test and validation + test < 1; got "
            f"validation={validation}, test={test}"
        )
    found = find_files(files)
    out = Path(out_dir).absolute()
    inside = [p for p in found if p.is_relative_to(out)]
    if inside:  # the corpus's own files would be read while they are written
        raise DataError(f"corpus: {inside[0]} lies inside the output folder {out}")
    out.mkdir(parents=True, exist_ok=True)
    # A manifest left from an earlier corpus would vouch for the files rewritten below.
    (out / MANIFEST).unlink(missing_ok=True)
    # Hashed by the path below the files' common folder (as text_files does): the corpus
    # moved elsewhere keeps its splits.
    root = Path(os.path.commonpath([str(p.parent) for p in found]))
    names = [p.relative_to(root).as_posix() for p in found]
    split_of = [_split_of_file(name, validation, test) for name in names]
    for split in SPLITS:
        if split not in split_of:
            raise DataError(
                f"corpus: split {split!r} gets none of the {len(found)} files (held out by a "
                f"hash of their path: validation={validation}, test={test}); use more files"
            )
    writers = {split: _SplitWriter(out, split) for split in SPLITS}
    try:
        for path, name, split in zip(found, names, split_of, strict=True):
            writers[split].add(path, name)
        splits = {split: w.finish(row_length) for split, w in writers.items()}
    finally:
        for w in writers.values():
            w.close()
    manifest = {
        "format": FORMAT,
        "row_length": row_length,
        "vocab_size": VOCAB_SIZE,
        "separator": SEPARATOR,
        "token_dtype": TOKEN_DTYPE.str,
        "validation": validation,
        "test": test,
        "root": str(root),
        "splits": splits,
    }
    return _write_atomically(out / MANIFEST, json.dumps(manifest, indent=1))


class _SplitWriter:
    """Appends documents to ``<split>.tokens``, hashing what it writes on the way."""

    def __init__(self, out: Path, split: str):
        self.out, self.split = out, split
        self.file = open(out / f"{split}.tokens", "wb")  # noqa: SIM115 (closed by close())
        self.digest = hashlib.sha256()
        self.tokens = 0
        self.starts: list[int] = []
        self.sources: list[dict[str, Any]] = []

    def _write(self, tokens: np.ndarray) -> None:
        raw = tokens.tobytes()
        self.file.write(raw)
        self.digest.update(raw)
        self.tokens += len(tokens)

    def add(self, path: Path, name: str) -> None:
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
        tokens = np.empty(len(raw) + 1, TOKEN_DTYPE)  # memory: twice the file's size
        tokens[0], tokens[1:] = SEPARATOR, np.frombuffer(raw, np.uint8)
        self.starts.append(self.tokens)
        self._write(tokens)
        self.sources.append({"path": name, "bytes": len(raw)})

    def finish(self, row_length: int) -> dict[str, Any]:
        """Closes the token file (the closing separator, synced to disk), writes the
        starts, and returns the split's manifest entry."""
        self._write(np.array([SEPARATOR], TOKEN_DTYPE))
        if self.tokens < row_length + 1:
            raise DataError(
                f"corpus: split {self.split!r} has {self.tokens} tokens ({len(self.starts)} "
                f"documents), fewer than row_length + 1 = {row_length + 1}; use a smaller "
                "row_length or more files"
            )
        self.file.flush()
        os.fsync(self.file.fileno())
        tokens_name, starts_name = f"{self.split}.tokens", f"{self.split}.starts.npy"
        np.save(self.out / starts_name, np.asarray(self.starts, np.int64))
        return {
            "tokens": self.tokens,
            "rows": num_rows(self.tokens, row_length),
            "documents": len(self.starts),
            "files": {
                tokens_name: self.digest.hexdigest(),
                starts_name: sha256_file(self.out / starts_name),
            },
            "sources": self.sources,
        }

    def close(self) -> None:
        self.file.close()


def _write_atomically(path: Path, text: str) -> Path:
    """``text`` into ``path`` through a temporary file and a rename: readers see the old
    file or the whole new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def num_rows(tokens: int, row_length: int) -> int:
    """Rows of a split of ``tokens`` tokens: every token but the last is an input once."""
    return -(-(tokens - 1) // row_length)


# --------------------------------------------------------------------------------- read


@dataclasses.dataclass(frozen=True)
class CorpusSplit:
    """One split's rows, read from ``path`` on demand (picklable: grain workers get it).

    path: the split's token file; tokens: its length in tokens; row_length: T;
    max_rows: only the first rows (None: all)."""

    name: str
    path: Path
    tokens: int
    row_length: int
    max_rows: int | None = None

    def __len__(self) -> int:
        rows = num_rows(self.tokens, self.row_length)
        return rows if self.max_rows is None else min(rows, self.max_rows)

    def token_counts(self, chunk: int = 1 << 22) -> np.ndarray:
        """[VOCAB_SIZE] int64 counts of the tokens that are targets of its rows, read in
        chunks (memory stays bounded): a unigram model's counts."""
        end = min(self.tokens, len(self) * self.row_length + 1)
        counts = np.zeros(VOCAB_SIZE, np.int64)
        with _Reader(self.path, self.tokens) as reader:
            for start in range(1, end, chunk):
                block = reader.read(start, min(chunk, end - start))
                counts += np.bincount(block, minlength=VOCAB_SIZE)
        return counts

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``indices`` [k]: {"inputs": int32 [k, T], "targets": int32 [k, T],
        "lengths": int32 [k], "resets": bool [k, T]}. IndexError naming a row out of
        range; CorpusError naming the file when it is missing, unreadable or resized."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"row indices must be integers [k]; got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = int(idx[(idx < 0) | (idx >= len(self))][0])
            raise IndexError(f"{self.path}: row {bad} out of range [0, {len(self)})")
        windows = np.zeros((len(idx), self.row_length + 1), np.int32)
        lengths = np.zeros(len(idx), np.int32)
        with _Reader(self.path, self.tokens) as reader:
            # Consecutive rows overlap by one token: one read per run of them.
            bounds = [0, *(np.flatnonzero(np.diff(idx) != 1) + 1).tolist(), len(idx)]
            for lo, hi in itertools.pairwise(bounds):
                if hi > lo:
                    self._read_run(reader, int(idx[lo]), slice(lo, hi), windows, lengths)
        valid = np.arange(self.row_length) < lengths[:, None]
        # Past a short row's length: input 0 (not the closing separator, which is only a
        # target), the ignored label, no reset.
        inputs = np.where(valid, windows[:, :-1], 0).astype(np.int32)
        targets = np.where(valid, windows[:, 1:], IGNORE_LABEL).astype(np.int32)
        return {
            "inputs": inputs,
            "targets": targets,
            "lengths": lengths,
            "resets": inputs == SEPARATOR,
        }

    def _read_run(
        self,
        reader: _Reader,
        first: int,
        run: slice,
        windows: np.ndarray,
        lengths: np.ndarray,
    ) -> None:
        """Rows first, first+1, ... into windows[run] (zeros past the split's end)."""
        t, count = self.row_length, run.stop - run.start
        start = first * t
        block = reader.read(start, min(start + count * t + 1, self.tokens) - start)
        if count == 1:  # the common case of a shuffled batch, without the views below
            windows[run.start, : len(block)] = block
            lengths[run.start] = len(block) - 1
            return
        padded = np.zeros(count * t + 1, np.int32)
        padded[: len(block)] = block
        windows[run] = np.lib.stride_tricks.sliding_window_view(padded, t + 1)[::t]
        lengths[run] = np.clip(len(block) - 1 - t * np.arange(count), 0, t)


class _Reader:
    """An open token file whose size is checked against the manifest; closed on exit.
    Opened per read, so a file replaced or restored is seen at the next read."""

    def __init__(self, path: Path, tokens: int):
        self.path, self.tokens = path, tokens

    def __enter__(self) -> _Reader:
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as error:
            raise CorpusError(f"{self.path}: cannot open ({error.strerror})") from None
        size, want = os.fstat(self.fd).st_size, self.tokens * TOKEN_DTYPE.itemsize
        if size != want:
            os.close(self.fd)
            raise CorpusError(
                f"{self.path}: {size} bytes, but the manifest says {want}; the corpus "
                "changed since it was prepared: prepare it again"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count)."""
        size = TOKEN_DTYPE.itemsize
        want, offset, parts = count * size, start * size, []
        try:
            while want:  # a regular file reads whole at once; the loop is for the rest
                raw = os.pread(self.fd, want, offset)
                if not raw:
                    raise CorpusError(f"{self.path}: ends before token {start + count}")
                parts.append(raw)
                want -= len(raw)
                offset += len(raw)
        except CorpusError:
            raise
        except OSError as error:
            raise CorpusError(f"{self.path}: cannot read ({error.strerror})") from None
        return np.frombuffer(b"".join(parts), TOKEN_DTYPE)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A prepared corpus: its manifest and a CorpusSplit per split."""

    root: Path
    manifest: dict[str, Any]

    @property
    def row_length(self) -> int:
        return int(self.manifest["row_length"])

    def split(self, name: str) -> CorpusSplit:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {name!r}")
        entry = self.manifest["splits"][name]
        return CorpusSplit(name, self.root / f"{name}.tokens", entry["tokens"], self.row_length)

    def starts(self, split: str) -> np.ndarray:
        """int64 [documents]: each document's separator offset in the split's tokens."""
        return np.load(self.root / f"{split}.starts.npy")

    def fingerprint(self) -> dict[str, Any]:
        """The data fingerprint (fnn_jax.data.fingerprint's layout, for ``changes``): rows
        and array shapes per split, a SHA-256 per split over its files' hashes and the row
        length, and each file's SHA-256 (from the manifest: ``verify`` checks them)."""
        t = self.row_length
        out: dict[str, Any] = {"rows": {}, "arrays": {}, "sha256": {}, "files": {}}
        for split in SPLITS:
            entry = self.manifest["splits"][split]
            n = entry["rows"]
            out["rows"][split] = n
            out["arrays"][split] = {
                "inputs": f"int32[{n}, {t}]",
                "targets": f"int32[{n}, {t}]",
                "lengths": f"int32[{n}]",
                "resets": f"bool[{n}, {t}]",
            }
            summary = json.dumps({"row_length": t, "files": entry["files"]}, sort_keys=True)
            out["sha256"][split] = hashlib.sha256(summary.encode()).hexdigest()
            for name, digest in entry["files"].items():
                out["files"][str(self.root / name)] = digest
        return out

    def verify(self) -> None:
        """Hashes every file again: CorpusError naming the first that differs from the
        manifest (reads the whole corpus once)."""
        for split in SPLITS:
            for name, digest in self.manifest["splits"][split]["files"].items():
                path = self.root / name
                try:
                    actual = sha256_file(path)
                except OSError as error:
                    raise CorpusError(f"{path}: cannot read ({error.strerror})") from None
                if actual != digest:
                    raise CorpusError(
                        f"{path}: sha256 {actual[:12]}..., but the manifest says "
                        f"{digest[:12]}...; prepare the corpus again"
                    )


def open_corpus(out_dir: str | Path, *, verify: bool = False) -> Corpus:
    """The corpus ``prepare`` wrote into ``out_dir``; ``verify`` hashes every file again.
    CorpusError when the manifest is missing (not prepared, or its preparation did not
    finish), of another format, or a token file's size differs from it."""
    root = Path(out_dir).absolute()
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorpusError(
            f"{path}: no such file; {root} is not a prepared corpus, or its preparation "
            "did not finish (experiments/prepare_corpus.py writes one)"
        ) from None
    except (OSError, ValueError) as error:
        raise CorpusError(f"{path}: not a readable manifest ({error})") from None
    if manifest.get("format") != FORMAT:
        raise CorpusError(
            f"{path}: format {manifest.get('format')!r}, this code reads format {FORMAT}; "
            "prepare the corpus again"
        )
    corpus = Corpus(root, manifest)
    for split in SPLITS:
        with _Reader(corpus.split(split).path, manifest["splits"][split]["tokens"]):
            pass  # a missing or resized token file fails here, not mid-training
    if verify:
        corpus.verify()
    return corpus


def unpack(rows: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The documents in all of a split's rows, in order ({"inputs", "lengths", "resets"}
    of rows 0..n-1): the valid steps joined and cut at each reset, the separator
    dropped. uint8 [document length] each."""
    valid = np.arange(rows["inputs"].shape[1]) < rows["lengths"][:, None]
    tokens, resets = rows["inputs"][valid], rows["resets"][valid]
    cuts = np.flatnonzero(resets)
    if len(tokens) and (not len(cuts) or cuts[0] != 0):
        raise ValueError("rows do not start at a document: pass all of a split's rows")
    return [piece[1:].astype(np.uint8) for piece in np.split(tokens, cuts)[1:]]


SAMPLE_ROWS = 1024  # rows of each split a streamed dataset holds in memory (a sample)


@register("corpus")
def corpus_rows(
    *, path: str, max_rows: int | None = None, stream: bool = False, seed: int = 0
) -> Dataset:
    """A prepared corpus (next-byte prediction, tagging, 257 classes). ``path``: the
    folder ``prepare`` wrote; ``max_rows``: each split's first rows only. ``stream``: the
    splits stay on disk and the engine reads their rows as it goes (``Dataset.streams``;
    each split's first SAMPLE_ROWS rows are held as a sample); else they are held in
    memory (the in-memory twin of a streamed run: the same rows, the same batches). The
    files are hashed again first (``Corpus.verify``), so a changed corpus is refused on
    resume. ``seed`` is accepted for a uniform loader interface; nothing here is random."""
    check_positive("max_rows", max_rows, allow_none=True)
    if stream:
        require("grain", "grain", "corpus (stream=True)")
    try:
        corpus = open_corpus(path, verify=True)
    except CorpusError as error:
        raise DataError(str(error)) from None
    splits, streams = {}, {}
    for name in SPLITS:
        part = corpus.split(name)
        part = dataclasses.replace(part, max_rows=max_rows)
        streams[name] = part
        held = min(len(part), SAMPLE_ROWS) if stream else len(part)
        rows = part.rows(np.arange(held))
        splits[name] = Split(rows["inputs"], rows["targets"], rows["lengths"], rows["resets"])
    # The unigram model of the whole splits, counted in chunks (streamed or not).
    counts = (streams[s].token_counts() for s in ("train", "test"))
    unigram = unigram_cross_entropy_of_counts(*counts)
    return Dataset(
        name="corpus",
        task="tagging",
        **splits,
        num_classes=VOCAB_SIZE,
        baselines={
            "cross_entropy_uniform": math.log(VOCAB_SIZE),
            "cross_entropy_unigram": unigram,
        },
        info={
            "files": corpus.fingerprint()["files"],
            "root": str(corpus.root),
            "byte_level": True,  # tokens 0-255 are bytes (experiments/sample.py decodes UTF-8)
            "separator_id": SEPARATOR,
        },
        streams=streams if stream else None,
    )
