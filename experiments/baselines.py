"""The strongest simple baselines on the shipped configs' own splits, with 95% intervals.

    python experiments/baselines.py --section all [--out baselines.json]

Every dataset is loaded exactly as its config loads it (config.data.name and
config.data.options through fnn_jax.data), so train, validation and test are the rows the
networks see. Every setting of a baseline (C, the AR order p, the ridge alpha) is chosen on
the validation split alone, ties going to the first value of its grid; the model is then
fitted on the train split and scored once on test.

- digits (configs/digits_lstm.py): logistic regression and an RBF SVC on the 8 x 8 = 64
  values of each flattened sequence, standardised per value with train statistics; C from
  C_GRID by validation accuracy. Test accuracy with an exact (Clopper-Pearson) interval.
- sunspots (every forecasting config in FORECAST_CONFIGS): the dataset's own last-value
  baseline, the seasonal naive forecast where the dataset reports one, and ridge AR(p): a
  ridge regression on the last p values a network has read when it predicts (for windows:
  the window's last p values; for per-step rows: the row's last p values, zeros, i.e. the
  train mean, before the row's start, as the network starts from a zero state). AR(24) with
  alpha from ALPHAS, and AR(p) with p from AR_ORDERS as well, both by validation MSE. Test
  MSE with a percentile bootstrap over the scored test points. The windows overlap and the
  errors are autocorrelated, so these intervals are narrower than they should be.
- reviews (configs/reviews_sentiment.py at each label budget in REVIEW_BUDGETS): TF-IDF of
  word 1-2 grams or character 2-5 grams of the whole review text, then logistic
  regression, plain or with balanced class weights; C from TEXT_C_GRID by validation macro
  F1. A budget of N uses the loader's own draw of N train and N validation reviews (seed 0,
  the config's default; ``--draws 3`` adds the draws of seeds 1 and 2 that
  experiments/reviews_study.py uses). Test accuracy (Clopper-Pearson) and macro F1
  (bootstrap) on the 800 test reviews.
- vowels (configs/japanese_vowels.py; needs sktime): experiments/japanese_vowels_baselines.py's
  1-NN baselines fitted on the train split, with Clopper-Pearson intervals. ``all`` runs it
  only where sktime is installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: configs/ and fnn_jax/

from fnn_jax import data  # noqa: E402
from fnn_jax.stats import binomial_interval, bootstrap_interval  # noqa: E402

SECTIONS = ("digits", "sunspots", "reviews", "vowels")
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
AR_ORDERS = (1, 2, 3, 6, 9, 12, 24)
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)
TEXT_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
FORECAST_CONFIGS = (
    "sunspots_jordan",
    "sunspots_pretrain",  # the same data as sunspots_jordan: skipped as a repeat
    "sunspots_monthly",
    "sunspots_monthly:tbptt",
)
REVIEW_BUDGETS = ("50", "200", "all")
TEXT_FEATURES = {
    "TF-IDF word 1-2 grams": {"ngram_range": (1, 2)},
    "TF-IDF char 2-5 grams": {"analyzer": "char", "ngram_range": (2, 5)},
}
LEVEL = 0.95
Row = dict[str, Any]


def config_dataset(spec: str) -> tuple[Any, data.Dataset]:
    """(config, dataset) of ``configs/NAME.py[:ARG]``, loaded as a run loads it."""
    name, _, arg = spec.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(arg or None)
    return config, data.load(config.data.name, **config.data.options.to_dict())


def row(dataset: str, baseline: str, metric: str, value: float, interval=None, **extra) -> Row:
    low, high = interval if interval is not None else (None, None)
    return {
        "dataset": dataset,
        "baseline": baseline,
        "metric": metric,
        "value": float(value),
        "low": low,
        "high": high,
    } | extra


def accuracy_row(dataset: str, baseline: str, correct: np.ndarray, **extra) -> Row:
    """Test accuracy of [rows] bool ``correct``, with its Clopper-Pearson interval."""
    k, n = int(np.sum(correct)), len(correct)
    return row(dataset, baseline, "accuracy", k / n, binomial_interval(k, n, LEVEL), **extra)


def mse_row(dataset: str, baseline: str, errors: np.ndarray, **extra) -> Row:
    """Test MSE of [points] errors, with a bootstrap interval over the points."""
    squared = np.asarray(errors, np.float64) ** 2
    interval = bootstrap_interval(squared, level=LEVEL)
    return row(dataset, baseline, "MSE", float(squared.mean()), interval, **extra)


def choose(grid: Sequence[Any], score: Callable[[Any], float]) -> tuple[Any, float]:
    """The grid value with the highest validation ``score`` (the first one on a tie)."""
    scores = [score(value) for value in grid]
    best = int(np.argmax(scores))
    return grid[best], scores[best]


# ----------------------------------------------------------------------------- digits


def _flat(split: data.Split) -> np.ndarray:
    return split.inputs.reshape(len(split.inputs), -1).astype(np.float64)


def digits_section(spec: str = "digits_lstm") -> list[Row]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    _, ds = config_dataset(spec)
    x = {s: _flat(getattr(ds, s)) for s in data.SPLITS}
    y = {s: getattr(ds, s).targets for s in data.SPLITS}
    models = {
        "logistic regression": lambda c: LogisticRegression(C=c, max_iter=5000),
        "RBF SVC": lambda c: SVC(C=c, kernel="rbf"),
    }
    rows = []
    for name, make in models.items():
        fitted = {}

        def validation_accuracy(c: float, make=make, fitted=fitted) -> float:
            fitted[c] = make_pipeline(StandardScaler(), make(c)).fit(x["train"], y["train"])
            return float(np.mean(fitted[c].predict(x["validation"]) == y["validation"]))

        c, _ = choose(C_GRID, validation_accuracy)
        correct = fitted[c].predict(x["test"]) == y["test"]
        rows.append(accuracy_row(ds.name, f"{name} (C={c:g})", correct, config=spec))
    return rows


# --------------------------------------------------------------------------- sunspots


def lagged(split: data.Split, task: str, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(features [points, p], targets [points]): for each scored point, the last p values
    that a network has read when it predicts it.

    forecast (windows [n, window, 1] -> [n, 1, 1]): the window's last p values.
    step_forecast (rows [n, time, 1], the next value at every step): the row's values up to
    and including the step, zero-padded on the left (the train mean; a network starts each
    row from a zero state), at every step before the row's length.
    """
    x = np.asarray(split.inputs[..., 0], np.float64)
    if task == "forecast":
        if split.targets.shape[1] != 1:
            raise ValueError(f"ridge AR scores one step ahead; horizon {split.targets.shape[1]}")
        return x[:, -p:], np.asarray(split.targets[:, 0, 0], np.float64)
    if task != "step_forecast":
        raise ValueError(f"not a forecasting task: {task!r}")
    padded = np.pad(x, ((0, 0), (p - 1, 0)))
    features = np.lib.stride_tricks.sliding_window_view(padded, p, axis=1)  # [n, time, p]
    valid = np.arange(x.shape[1])[None, :] < split.full_lengths[:, None]
    return features[valid], np.asarray(split.targets[..., 0], np.float64)[valid]


def last_value_errors(split: data.Split, task: str) -> np.ndarray:
    """[points] errors of forecasting each scored point by the last value read."""
    features, targets = lagged(split, task, 1)
    return targets - features[:, -1]


def ridge_ar(ds: data.Dataset, orders: Sequence[int]) -> tuple[int, float, np.ndarray]:
    """(p, alpha, [points] test errors) of the ridge AR(p) with the lowest validation MSE
    over ``orders`` x ALPHAS, fitted on the train split."""
    from sklearn.linear_model import Ridge

    fitted = {}

    def negative_mse(setting: tuple[int, float]) -> float:
        p, alpha = setting
        model = Ridge(alpha=alpha).fit(*lagged(ds.train, ds.task, p))
        fitted[setting] = model
        x, y = lagged(ds.validation, ds.task, p)
        return -float(np.mean((model.predict(x) - y) ** 2))

    (p, alpha), _ = choose([(p, a) for p in orders for a in ALPHAS], negative_mse)
    x, y = lagged(ds.test, ds.task, p)
    return p, alpha, y - fitted[p, alpha].predict(x)


def forecast_rows(spec: str, ds: data.Dataset) -> list[Row]:
    name = ds.name if ":" not in spec else f"{ds.name} ({spec.partition(':')[2]})"
    errors = last_value_errors(ds.test, ds.task)
    reported = ds.baselines["mse_naive_last_value"]
    if not np.isclose(np.mean(errors**2), reported, rtol=1e-6):
        raise RuntimeError(f"{spec}: last value {np.mean(errors**2)} != the dataset's {reported}")
    rows = [mse_row(name, "last value", errors, config=spec)]
    if "mse_seasonal_naive" in ds.baselines:  # reported by the dataset, without its errors
        rows.append(row(name, "seasonal naive", "MSE", ds.baselines["mse_seasonal_naive"]))
    longest = max(AR_ORDERS)
    if ds.task == "forecast":
        longest = min(longest, ds.train.inputs.shape[1])
    orders = [p for p in AR_ORDERS if p <= longest]
    for grid in ([longest], orders):
        p, alpha, errors = ridge_ar(ds, grid)
        label = f"ridge AR({p}), alpha={alpha:g}" + (", p chosen" if len(grid) > 1 else "")
        rows.append(mse_row(name, label, errors, config=spec))
    return rows


def sunspots_section(specs: Sequence[str] = FORECAST_CONFIGS) -> list[Row]:
    rows, seen = [], set()
    for spec in specs:
        config, ds = config_dataset(spec)
        key = (config.data.name, json.dumps(config.data.options.to_dict(), sort_keys=True))
        if key not in seen:
            seen.add(key)
            rows += forecast_rows(spec, ds)
    return rows


# ---------------------------------------------------------------------------- reviews


def macro_f1(pairs: np.ndarray) -> float:
    """Macro F1 of [rows, 2] int (truth, prediction) pairs over the classes that occur in
    either column (a class with no true and no predicted row is left out, as in sklearn)."""
    truth, predicted = pairs[:, 0], pairs[:, 1]
    k = int(pairs.max()) + 1
    tp = np.bincount(truth[truth == predicted], minlength=k)
    true, pred = np.bincount(truth, minlength=k), np.bincount(predicted, minlength=k)
    present = (true + pred) > 0
    return float(np.mean(2 * tp[present] / (true + pred)[present]))


def review_texts(ds: data.Dataset) -> dict[str, list[str]]:
    """The whole texts of each split's reviews (the network reads the first 511 characters)."""
    from fnn_jax.data import reviews

    texts, _ = reviews.source()
    return {s: [texts[i] for i in ds.info["source_index"][s]] for s in data.SPLITS}


def text_variants(ds: data.Dataset) -> list[dict[str, Any]]:
    """Each TF-IDF + logistic regression variant (TEXT_FEATURES x plain/balanced), C chosen
    by validation macro F1: {"name", "validation_f1", "guess": test predictions [800]}."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = review_texts(ds)
    y = {s: getattr(ds, s).targets for s in data.SPLITS}
    variants = []
    for features, options in TEXT_FEATURES.items():
        vectorizer = TfidfVectorizer(**options).fit(texts["train"])
        x = {s: vectorizer.transform(texts[s]) for s in data.SPLITS}
        for weights in (None, "balanced"):
            fitted = {}

            def validation_f1(c: float, weights=weights, fitted=fitted, x=x) -> float:
                model = LogisticRegression(C=c, max_iter=1000, class_weight=weights)
                fitted[c] = model.fit(x["train"], y["train"])
                guess = model.predict(x["validation"])
                return macro_f1(np.stack([y["validation"], guess], 1))

            c, score = choose(TEXT_C_GRID, validation_f1)
            name = f"{features} + LR{', balanced' if weights else ''} (C={c:g})"
            variants.append(
                {"name": name, "validation_f1": score, "guess": fitted[c].predict(x["test"])}
            )
    return variants


def strongest_text_baseline(ds: data.Dataset) -> dict[str, Any]:
    """The TF-IDF variant with the best validation macro F1 (ties: the first), as a network
    would be chosen: {"name", "accuracy", "f1"} on the test split."""
    best = max(text_variants(ds), key=lambda v: v["validation_f1"])
    truth = ds.test.targets
    pairs = np.stack([truth, best["guess"]], 1)
    return {
        "name": best["name"],
        "accuracy": float(np.mean(best["guess"] == truth)),
        "f1": macro_f1(pairs),
    }


def text_rows(ds: data.Dataset, budget: str, draw: int) -> list[Row]:
    where = f"reviews, {budget} labels" + ("" if budget == "all" else f" (draw {draw})")
    spec = f"reviews_sentiment:scratch,{budget}"
    rows = []
    truth = ds.test.targets
    for variant in text_variants(ds):
        name, guess = variant["name"], variant["guess"]
        pairs = np.stack([truth, guess], 1)
        interval = bootstrap_interval(pairs, macro_f1, level=LEVEL)
        rows += [
            accuracy_row(where, name, guess == truth, config=spec),
            row(where, name, "macro F1", macro_f1(pairs), interval, config=spec),
        ]
    return rows


def reviews_section(budgets: Sequence[str] = REVIEW_BUDGETS, draws: int = 1) -> list[Row]:
    reviews_sentiment = importlib.import_module("configs.reviews_sentiment")
    rows = []
    for budget in budgets:
        for draw in range(1 if budget == "all" else draws):
            config = reviews_sentiment.get_config(f"scratch,{budget}")
            options = config.data.options.to_dict() | {"seed": draw}  # as reviews_study.py
            ds = data.load(config.data.name, **options)
            if budget == "all":
                y = ds.test.targets
                majority = np.bincount(ds.train.targets).argmax()
                rows.append(accuracy_row("reviews, all labels", "majority class", y == majority))
            rows += text_rows(ds, budget, draw)
    return rows


# ----------------------------------------------------------------------------- vowels


def vowels_section() -> list[Row]:
    """experiments/japanese_vowels_baselines.py's baselines fitted on the train split."""
    jv = importlib.import_module("experiments.japanese_vowels_baselines")
    _, ds = config_dataset("japanese_vowels")
    rows = []
    for method in jv.METHODS[1:]:
        correct = jv.predict(method, ds.train, ds.test) == ds.test.targets
        rows.append(accuracy_row("japanese_vowels", method, correct, config="japanese_vowels"))
    return rows


def has_sktime() -> bool:
    return importlib.util.find_spec("sktime") is not None


# ------------------------------------------------------------------------------- main


def run(sections: Sequence[str], draws: int = 1) -> tuple[list[Row], dict[str, float]]:
    """(table rows, seconds per section) of the named sections."""
    makers = {
        "digits": digits_section,
        "sunspots": sunspots_section,
        "reviews": lambda: reviews_section(draws=draws),
        "vowels": vowels_section,
    }
    rows, seconds = [], {}
    for section in sections:
        start = time.perf_counter()
        rows += makers[section]()
        seconds[section] = round(time.perf_counter() - start, 1)
    return rows, seconds


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| dataset | baseline | metric | value | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        interval = "—" if r["low"] is None else f"{r['low']:.4f} – {r['high']:.4f}"
        lines.append(
            f"| {r['dataset']} | {r['baseline']} | {r['metric']} | {r['value']:.4f} | {interval} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=(*SECTIONS, "all"), default="all")
    parser.add_argument("--draws", type=int, default=1, help="label-budget draws (seeds 0..N-1)")
    parser.add_argument("--out", help="also write the rows and timings to this JSON file")
    args = parser.parse_args(argv)
    if args.section != "all":
        sections = [args.section]
    else:
        sections = [s for s in SECTIONS if s != "vowels" or has_sktime()]
        if "vowels" not in sections:
            print("(vowels skipped: sktime is not installed; pip install -e '.[timeseries]')")
    rows, seconds = run(sections, draws=args.draws)
    print(markdown(rows))
    print()
    print("seconds per section: " + ", ".join(f"{s} {t:.1f}" for s, t in seconds.items()))
    if args.out:
        report = {"rows": rows, "seconds": seconds, "level": LEVEL, "sections": sections}
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
