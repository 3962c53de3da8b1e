"""Scratch vs fine-tuned sentiment classifiers over label budgets and seeds.

    python experiments/reviews_study.py --workdir runs/reviews_study \
        --recipes scratch,finetune --labels 50,200,all --seeds 3

Runs configs/reviews_sentiment.py once per (recipe, labels, seed), each in
<workdir>/<recipe>_<labels>_seed<seed>, then writes study.md and study.json: test accuracy
and macro F1, mean ± sample std (ddof=1) over seeds. A seed sets both the model's seed
and which reviews make up the label budget; with all labels, the train split is a bootstrap
resample drawn by the seed (the loader's ``resample``), so every row's spread includes the
luck of the data as well as of the initialisation. The recipe ``tfidf`` is the strongest
simple baseline on each seed's very draw (experiments/baselines.py: TF-IDF + logistic
regression, the variant and C chosen by validation macro F1), and the study pairs each
recipe with ``scratch`` and ``tfidf`` seed by seed (fnn_jax.stats.paired_seeds: the mean
difference and its t interval). Finished runs are read back, not run again. The fine-tuning
recipes need the language model of configs/reviews_charlm.py in --pretrained (default
runs/reviews_charlm).
"""

from __future__ import annotations

import ast
import json
import logging as pylogging
import statistics
import sys
from pathlib import Path
from typing import Any

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ import fnn_jax

import baselines  # noqa: E402 (experiments/baselines.py, beside this file)
import ml_collections  # noqa: E402

from configs import reviews_sentiment  # noqa: E402
from fnn_jax import data, stats  # noqa: E402
from fnn_jax.sweep.spec import apply_overrides  # noqa: E402
from fnn_jax.train import train_and_evaluate  # noqa: E402

flags.DEFINE_string("workdir", None, "Folder of the study's runs and tables.")
flags.DEFINE_list(
    "recipes",
    ["tfidf", "scratch", "finetune"],
    "Recipes of configs/reviews_sentiment.py, and tfidf (the baseline).",
)
flags.DEFINE_list("labels", ["50", "200", "all"], "Label budgets.")
flags.DEFINE_integer("seeds", 5, "Seeds 0..N-1 per (recipe, labels).")
flags.DEFINE_string("pretrained", "runs/reviews_charlm", "The language model's workdir.")
flags.DEFINE_multi_string(
    "set",
    [],
    "Config overrides key=value (a Python literal), e.g. "
    "model.pooling='last'; applied to every run.",
)
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS
METRICS = ("accuracy", "f1")


def study_config(recipe: str, labels: str, seed: int) -> ml_collections.ConfigDict:
    """The config of one run: the seed draws the model, the budget and (all labels) the
    bootstrap resample of the train split."""
    config = reviews_sentiment.get_config(f"{'scratch' if recipe == 'tfidf' else recipe},{labels}")
    with config.unlocked():
        config.seed = seed
        config.data.options.seed = seed
        if labels == "all":
            config.data.options.resample = True
        if config.init_from:
            config.init_from = FLAGS.pretrained
    overrides = dict(item.split("=", 1) for item in FLAGS.set)
    return apply_overrides(config, {k: ast.literal_eval(v) for k, v in overrides.items()})


def run_one(recipe: str, labels: str, seed: int, workdir: Path) -> dict[str, Any]:
    """The test results of one run (trained or fitted now, or read back when finished)."""
    done = workdir / "report.json"
    if done.is_file():
        return json.loads(done.read_text())["results"]["test"]
    config = study_config(recipe, labels, seed)
    if recipe != "tfidf":
        return train_and_evaluate(config, workdir)["results"]["test"]
    dataset = data.load(config.data.name, **config.data.options.to_dict())
    test = baselines.strongest_text_baseline(dataset)
    workdir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"results": {"test": test}}, indent=1))
    return test


def comparisons(results: dict[tuple[str, str], list[dict]]) -> str:
    """Markdown: each recipe against scratch and tfidf, seed by seed (same draws)."""
    lines = [
        "| labels | recipe - reference | seeds | accuracy difference (95% t interval) "
        "| macro F1 difference (95% t interval) |",
        "|---|---|---|---|---|",
    ]
    for (recipe, labels), runs in sorted(results.items(), key=lambda kv: _order(kv[0][1])):
        for reference in ("scratch", "tfidf"):
            other = results.get((reference, labels))
            if recipe == reference or other is None or len(other) != len(runs) or len(runs) < 2:
                continue
            cells = []
            for metric in METRICS:
                d = stats.paired_seeds([r[metric] for r in runs], [r[metric] for r in other])
                cells.append(f"{d['mean_difference']:+.3f} ({d['low']:+.3f}, {d['high']:+.3f})")
            lines.append(
                f"| {labels} | {recipe} - {reference} | {len(runs)} | {' | '.join(cells)} |"
            )
    return "\n".join(lines)


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def table(results: dict[tuple[str, str], list[dict]]) -> str:
    """Markdown: one row per (labels, recipe), mean ± std and each seed's value."""
    lines = [
        "| labels | recipe | seeds | test accuracy | test macro F1 | accuracy per seed |",
        "|---|---|---|---|---|---|",
    ]
    for (recipe, labels), runs in sorted(
        results.items(), key=lambda kv: (_order(kv[0][1]), kv[0][0])
    ):
        acc = [r["accuracy"] for r in runs]
        f1 = [r["f1"] for r in runs]
        each = ", ".join(f"{a:.3f}" for a in acc)
        lines.append(
            f"| {labels} | {recipe} | {len(runs)} | {mean_std(acc)} | {mean_std(f1)} | {each} |"
        )
    return "\n".join(lines)


def _order(labels: str) -> int:
    return 10**9 if labels == "all" else int(labels)


def lm_line(pretrained: Path) -> str:
    """The language model's test bits per character against the unigram baseline."""
    path = pretrained / "report.json"
    if not path.is_file():
        return f"(no language model report in {pretrained})"
    report = json.loads(path.read_text())
    bpc = report["results"]["test"]["bits_per_char"]
    unigram = report["baselines"]["bits_per_char_unigram"]
    return f"language model test bits per char {bpc:.3f} (unigram baseline {unigram:.3f})"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("fnn_jax").setLevel(pylogging.WARNING)
    root = Path(FLAGS.workdir)
    results: dict[tuple[str, str], list[dict]] = {}
    for labels in FLAGS.labels:
        for recipe in FLAGS.recipes:
            for seed in range(FLAGS.seeds):
                test = run_one(recipe, labels, seed, root / f"{recipe}_{labels}_seed{seed}")
                results.setdefault((recipe, labels), []).append(test)
                print(
                    f"{recipe} labels={labels} seed={seed}: "
                    + ", ".join(f"{m} {test[m]:.4f}" for m in METRICS),
                    flush=True,
                )
    text = "\n\n".join(
        [
            table(results),
            comparisons(results),
            "Majority-class test accuracy: 0.650 (macro F1 0.394).",
            lm_line(Path(FLAGS.pretrained)),
        ]
    )
    (root / "study.md").write_text(text + "\n")
    flat = {f"{r},{lab}": runs for (r, lab), runs in results.items()}
    (root / "study.json").write_text(json.dumps(flat, indent=1))
    print(text)


if __name__ == "__main__":
    app.run(main)
