"""python experiments/prepare_corpus.py --stdlib --out corpora/stdlib --row_length 256

Packs a byte-level corpus into rows on disk for streaming (fnn_jax.data.corpus): whole files
held out for validation and test by a hash of their path, each split one token file, a
manifest written last. --files takes a glob ('texts/**/*.txt', quoted: ** is recursive);
--stdlib takes the Python standard library's own .py files (about 30 MB).
"""

from __future__ import annotations

import sys

from absl import app, flags

from fnn_jax.data import DataError, corpus

flags.DEFINE_string("files", None, "Glob of the documents (one file, one document).")
flags.DEFINE_bool("stdlib", False, "The Python standard library's .py files instead.")
flags.DEFINE_string("out", None, "Folder to write the corpus into.", required=True)
flags.DEFINE_integer("row_length", 256, "Tokens (bytes) per row: T.")
flags.DEFINE_float("validation", 0.05, "Fraction of files held out for validation.")
flags.DEFINE_float("test", 0.05, "Fraction of files held out for test.")
FLAGS = flags.FLAGS


def summary(manifest: dict) -> str:
    """One line per split: files, tokens, rows, and the token file's size."""
    lines = [f"row_length {manifest['row_length']}, vocabulary {manifest['vocab_size']}"]
    for split, entry in manifest["splits"].items():
        mb = entry["tokens"] * 2 / 2**20
        lines.append(
            f"{split:>10}: {entry['documents']:>6} files {entry['tokens']:>12,} tokens "
            f"{entry['rows']:>10,} rows ({mb:.1f} MB)"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.stdlib == (FLAGS.files is not None):
        raise app.UsageError("give exactly one of --files GLOB and --stdlib")
    files = corpus.stdlib_files() if FLAGS.stdlib else FLAGS.files
    try:
        path = corpus.prepare(
            files,
            FLAGS.out,
            row_length=FLAGS.row_length,
            validation=FLAGS.validation,
            test=FLAGS.test,
        )
    except DataError as error:
        sys.exit(f"prepare_corpus: {error}")
    print(summary(corpus.open_corpus(path.parent).manifest))
    print(f"wrote {path.parent}")


if __name__ == "__main__":
    app.run(main)
