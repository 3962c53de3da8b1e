"""Search methods compared at one compute budget (issue 26).

    python experiments/search_comparison.py --workdir runs/search_comparison

Searches the learning rate (log-uniform 1e-4..1e-1) and AdamW's weight decay (log-uniform
1e-6..1e-1) of configs/digits_search.py (digits, LSTM-64) with six methods, all at the same
budget B of optimizer steps: B = GRID x GRID full runs (--grid 4: 16 runs).

- ``grid``: the GRID x GRID log-spaced grid, run once (it is deterministic);
- ``random``: GRID² draws (``fnn_jax.sweep.random_search``, seed = the search seed);
- ``tpe``: Optuna's TPE, GRID² trials (``fnn_jax.sweep.search``);
- ``tpe_median``: TPE with the median pruner, up to --prune_trials trials, cut at B: only
  the trials whose steps, with all those before them, fit in B count (TPE is sequential,
  so that prefix is what a study stopped at B would have run);
- ``tpe_eager``: ``tpe_median`` with --eager_startup trials where Optuna's defaults wait
  (TPE draws 10 at random before it models, the median pruner waits for 5 to finish);
- ``halving``: N random draws (the first GRID² are ``random``'s) trained as one vmapped
  program with successive halving (--eta), N the most whose steps fit in B;
- ``pbt``: ``random``'s GRID² draws as one vmapped population, population-based training
  every --pbt_epochs epochs perturbing learning rate and weight decay (PBT seed = the
  search seed).

Each of the five non-grid methods runs with every search seed of --seeds. Every method's
sweep lives in <workdir>/<method>/seed<S> (the grid in <workdir>/grid) and is read back
from its sweep.json when finished, never run again; an unfinished one resumes. Per run:
the best trial by validation accuracy, its test accuracy, the optimizer steps spent (each
trial's steps; a pruned trial's up to its pruning) and the wall time of the method (its
sweep call, compilation included; for ``tpe_median`` up to the end of its last trial within
B). Writes <workdir>/comparison.md (mean ± std over search seeds) and comparison.json.
"""

from __future__ import annotations

import json
import logging as pylogging
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ import fnn_jax

from fnn_jax import sweep  # noqa: E402
from fnn_jax.train.pbt import PBTSpec  # noqa: E402

LR = ("log_uniform", 1e-4, 1e-1)
WD = ("log_uniform", 1e-6, 1e-1)
SPACE = {"optimizer.learning_rate": LR, "optimizer.weight_decay": WD}
METHODS = ("grid", "random", "tpe", "tpe_median", "tpe_eager", "halving", "pbt")
PRUNED_SEARCHES = ("tpe_median", "tpe_eager")  # cut at B: the prefix that fits
SEQUENTIAL = ("grid", "random", "tpe", *PRUNED_SEARCHES)

config_flags.DEFINE_config_file(
    "config", "configs/digits_search.py", "The config searched.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where every method's sweeps and the tables go.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Search seeds of the non-grid methods.")
flags.DEFINE_integer("grid", 4, "Grid points per axis; the budget is GRID² full runs.")
flags.DEFINE_list("methods", list(METHODS), f"Methods to run, of {', '.join(METHODS)}.")
flags.DEFINE_integer("prune_trials", 32, "tpe_median: the study's trials (then cut at B).")
flags.DEFINE_integer(
    "eager_startup", 3, "tpe_eager: random trials before TPE models and the pruner prunes."
)
flags.DEFINE_integer("eta", 3, "halving: keep the best 1/ETA at validations 1, ETA, ETA²...")
flags.DEFINE_integer("pbt_epochs", 2, "pbt: epochs between PBT points.")
flags.DEFINE_float("pbt_quantile", 0.25, "pbt: the fraction exploiting (and exploited).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS
PRUNED = re.compile(r"pruned at step (\d+)")


# ---------------------------------------------------------------------------- budget


def run_steps(config: Any) -> tuple[int, int]:
    """(steps of one full run, steps between validations) of ``config``."""
    from fnn_jax.train.trial import setup

    plan = setup(config)
    steps = config.train.num_steps or config.train.num_epochs * plan.steps_per_epoch
    return steps, plan.eval_every


def halving_steps(n: int, eta: int, steps: int, every: int) -> int:
    """Optimizer steps successive halving spends on ``n`` trials (engine._halving_cut: at
    the validations numbered 1, eta, eta², ... the best ceil(n / eta) go on)."""
    total, alive = 0, n
    for number in range(1, steps // every + 1):
        total += alive * every
        if alive > 1 and eta ** round(math.log(number, eta)) == number:
            alive = math.ceil(alive / eta)
    return total + alive * (steps % every)


def halving_size(budget: int, eta: int, steps: int, every: int) -> int:
    """The most trials whose successive halving fits in ``budget`` steps."""
    n = 2
    while halving_steps(n + 1, eta, steps, every) <= budget:
        n += 1
    return n


# ---------------------------------------------------------------------------- methods


def grid_trials(n: int) -> list[dict]:
    axes = {key: np.geomspace(lo, hi, n) for key, (_, lo, hi) in SPACE.items()}
    return sweep.product(axes)


def finished(path: Path, expected: int) -> dict | None:
    """The sweep.json of a finished sweep of ``expected`` trials in ``path`` (every trial
    done, pruned or failed: nothing left to run), else None."""
    file = path / "sweep.json"
    if not file.exists():
        return None
    record = json.loads(file.read_text())
    trials = record["trials"]
    if len(trials) != expected or any(t["status"] == "pending" for t in trials):
        return None
    return record


def run_method(method: str, seed: int, config: Any, plan: dict) -> dict:
    """The method's sweep in its folder: read back when finished, else run (or resumed).
    Returns its sweep.json record and the wall time of the call that finished it."""
    path = Path(FLAGS.workdir) / (method if method == "grid" else f"{method}/seed{seed}")
    label = method if method == "grid" else f"{method} seed {seed}"
    timing = path.parent / f"{path.name}.timing.json"
    n = FLAGS.grid**2
    expected = {
        "grid": n,
        "random": n,
        "tpe": n,
        "tpe_median": FLAGS.prune_trials,
        "tpe_eager": FLAGS.prune_trials,
        "halving": plan["halving_trials"],
        "pbt": n,
    }[method]
    record = finished(path, expected)
    if record is not None and timing.exists():
        print(f"{label}: read back from {path / 'sweep.json'}")
        return {"record": record, "timing": json.loads(timing.read_text()), "path": str(path)}
    print(f"{label}: running in {path}", flush=True)
    started = time.time()
    if method == "grid":
        sweep.run(config, grid_trials(FLAGS.grid), path)
    elif method == "random":
        sweep.run(config, sweep.random_search(SPACE, n, seed), path)
    elif method in ("tpe", *PRUNED_SEARCHES):
        pruner = "median" if method in PRUNED_SEARCHES else "none"
        startup = FLAGS.eager_startup if method == "tpe_eager" else None
        spec = sweep.SearchSpec(
            SPACE, expected, sampler="tpe", pruner=pruner, seed=seed, startup_trials=startup
        )
        sweep.search(config, spec, path)
    elif method == "halving":
        trials = sweep.random_search(SPACE, expected, seed)
        sweep.run(config, trials, path, vectorize=True, halving=FLAGS.eta)
    elif method == "pbt":
        spec = PBTSpec(
            interval=FLAGS.pbt_epochs * plan["eval_every"], quantile=FLAGS.pbt_quantile, seed=seed
        )
        sweep.run(config, sweep.random_search(SPACE, n, seed), path, vectorize=True, pbt=spec)
    finished_at = time.time()
    record = json.loads((path / "sweep.json").read_text())
    times = {"started": started, "finished": finished_at, "wall_s": finished_at - started}
    timing.write_text(json.dumps(times, indent=2) + "\n")
    return {"record": record, "timing": times, "path": str(path)}


# ---------------------------------------------------------------------------- results


def trial_steps(trial: dict) -> int:
    """Optimizer steps a trial spent: its report's, or those up to its pruning."""
    if trial["status"] == "done":
        return int(trial["steps"])
    match = PRUNED.search(trial.get("error") or "")
    return int(match.group(1)) if match else 0


def completion_times(path: Path) -> list[float] | None:
    """Each trial's end (seconds since the epoch) in study order, from the Optuna journal."""
    journal = path / "study.journal"
    if not journal.exists():
        return None
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="search", storage=storage)
    return [
        t.datetime_complete.timestamp() if t.datetime_complete else math.nan
        for t in study.get_trials(deepcopy=False)
        if not t.user_attrs.get("interrupted") and "name" in t.user_attrs
    ]


def summarise(method: str, seed: int | None, outcome: dict, budget: int, grid_best: float) -> dict:
    """One run of a method: its best trial (within the budget), steps and wall time."""
    trials = outcome["record"]["trials"]
    wall = outcome["timing"]["wall_s"]
    sequential = method in SEQUENTIAL
    counted, spent = [], 0
    for trial in trials:
        steps = trial_steps(trial)
        if sequential and spent + steps > budget:
            break  # past the budget: a study stopped at B would not have run it
        counted.append(trial)
        spent += steps
    if method in PRUNED_SEARCHES and len(counted) < len(trials):
        times = completion_times(Path(outcome["path"]))
        if times is not None and len(times) == len(trials):
            wall = times[len(counted) - 1] - outcome["timing"]["started"]
    done = [t for t in counted if t["status"] == "done" and t["validation"] is not None]
    best = max(done, key=lambda t: t["validation"]) if done else None  # first on ties
    reach, cumulative = None, 0
    if sequential and math.isfinite(grid_best):
        for trial in counted:
            cumulative += trial_steps(trial)
            if trial["status"] == "done" and (trial["validation"] or -1) >= grid_best - 1e-9:
                reach = cumulative
                break
    third = [t for t in _prefix(counted, budget / 3) if t["status"] == "done"] if sequential else []
    return {
        "method": method,
        "seed": seed,
        "trials_run": len(trials),
        "trials_counted": len(counted),
        "done": sum(t["status"] == "done" for t in counted),
        "pruned": sum(t["status"] == "pruned" for t in counted),
        "failed": sum(t["status"] == "failed" for t in counted),
        "best": best["name"] if best else None,
        "best_overrides": best["overrides"] if best else None,
        "validation": best["validation"] if best else math.nan,
        "test": best["test"] if best else math.nan,
        "steps": spent,
        "wall_s": wall,
        "steps_to_grid_best": reach,
        "validation_at_third": max((t["validation"] for t in third), default=math.nan),
        "path": outcome["path"],
    }


def _prefix(trials: list[dict], budget: float) -> list[dict]:
    out, spent = [], 0
    for trial in trials:
        spent += trial_steps(trial)
        if spent > budget:
            break
        out.append(trial)
    return out


def mean_std(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(rows: list[dict], budget: int) -> str:
    lines = [
        "| method | runs | trials counted (done / pruned) | best validation accuracy | "
        "its test accuracy | optimizer steps (% of B) | wall time (s) | "
        "steps to reach grid's best validation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        counts = " / ".join(f"{np.mean([r[k] for r in runs]):.3g}" for k in ("done", "pruned"))
        steps = [float(r["steps"]) for r in runs]
        reach = ", ".join(
            "not reached" if r["steps_to_grid_best"] is None else str(r["steps_to_grid_best"])
            for r in runs
        )
        lines.append(
            f"| {method} | {len(runs)} | {counts} | {mean_std([r['validation'] for r in runs])} | "
            f"{mean_std([r['test'] for r in runs])} | {np.mean(steps):.0f} "
            f"({100 * np.mean(steps) / budget:.0f}%) | {mean_std([r['wall_s'] for r in runs], 1)} "
            f"| {reach if method in SEQUENTIAL else 'n/a'} |"
        )
    return "\n".join(lines)


def per_run_table(rows: list[dict]) -> str:
    lines = [
        "| method | seed | best trial | validation | test | steps | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seed = "—" if r["seed"] is None else r["seed"]
        lines.append(
            f"| {r['method']} | {seed} | {r['best']} | {r['validation']:.4f} | {r['test']:.4f} "
            f"| {r['steps']} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def claims(rows: list[dict], budget: int, grid_best: float) -> list[str]:
    """The two claims of issue 26, answered from the numbers."""
    out = []
    names = {"tpe_median": "TPE + median pruning", "tpe_eager": "TPE + median pruning, eager"}
    for method in PRUNED_SEARCHES:
        runs = [r for r in rows if r["method"] == method]
        if not runs or not math.isfinite(grid_best):
            continue
        reached = [r["steps_to_grid_best"] for r in runs]
        within = [s is not None and s <= budget / 3 for s in reached]
        out.append(
            f"- {names[method]} reaches the grid's best validation accuracy "
            f"({grid_best:.4f}) within a third of the grid's {budget} steps in "
            f"{sum(within)} of {len(runs)} search seeds (steps to reach it: "
            + ", ".join("never" if s is None else str(s) for s in reached)
            + f"; best validation within {budget // 3} steps: "
            + ", ".join(f"{r['validation_at_third']:.4f}" for r in runs)
            + ")."
        )
    pruned = [r for r in rows if r["method"] == "tpe_median"]
    pbt = [r for r in rows if r["method"] == "pbt"]
    if pbt and pruned:
        out.append(
            f"- Test accuracy of the best-by-validation trial: vectorised PBT "
            f"{mean_std([r['test'] for r in pbt])} in {mean_std([r['wall_s'] for r in pbt], 1)} s, "
            f"TPE + median pruning {mean_std([r['test'] for r in pruned])} in "
            f"{mean_std([r['wall_s'] for r in pruned], 1)} s."
        )
    return out


def _finite(value: Any) -> Any:
    """``value`` with every NaN as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = set(FLAGS.methods) - set(METHODS)
    if unknown:
        raise app.UsageError(f"unknown methods {sorted(unknown)}; of {', '.join(METHODS)}")
    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("fnn_jax").setLevel(pylogging.INFO)  # one line per finished trial
    config = FLAGS.config
    workdir = Path(FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps, every = run_steps(config)
    budget = FLAGS.grid**2 * steps
    plan = {
        "steps_per_run": steps,
        "eval_every": every,
        "budget": budget,
        "halving_trials": halving_size(budget, FLAGS.eta, steps, every),
    }
    plan["halving_steps"] = halving_steps(plan["halving_trials"], FLAGS.eta, steps, every)
    print(f"budget: {budget} optimizer steps ({FLAGS.grid}² runs of {steps}); plan {plan}")
    seeds = [int(s) for s in FLAGS.seeds]
    order = [("grid", None)] if "grid" in FLAGS.methods else []
    order += [(m, s) for s in seeds for m in METHODS[1:] if m in FLAGS.methods]
    outcomes = [(m, s, run_method(m, s, config, plan)) for m, s in order]
    grid_best = math.nan
    for method, seed, outcome in outcomes:
        if method == "grid":
            grid_best = summarise(method, seed, outcome, budget, math.nan)["validation"]
    rows = [summarise(m, s, o, budget, grid_best) for m, s, o in outcomes]
    command = "python experiments/search_comparison.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            "# Search methods at a fixed budget",
            "",
            f"`{command}`",
            "",
            f"Budget B = {budget} optimizer steps ({FLAGS.grid}x{FLAGS.grid} runs of {steps}); "
            f"learning rate log-uniform 1e-4..1e-1, weight decay log-uniform 1e-6..1e-1 "
            f"(AdamW). halving: {plan['halving_trials']} trials, eta {FLAGS.eta} "
            f"({plan['halving_steps']} steps planned); pbt: {FLAGS.grid**2} trials, every "
            f"{FLAGS.pbt_epochs} epochs, quantile {FLAGS.pbt_quantile}; tpe_median: up to "
            f"{FLAGS.prune_trials} trials, cut at B; tpe_eager: the same with "
            f"{FLAGS.eager_startup} startup trials. Mean ± sample std over search seeds "
            f"{', '.join(FLAGS.seeds)} (grid: one run).",
            "",
            table(rows, budget),
            "",
            *claims(rows, budget, grid_best),
            "",
            f"Sum of the {len(outcomes)} sweeps' wall times (uncut): "
            f"{sum(o['timing']['wall_s'] for _, _, o in outcomes):.0f} s. A pbt trial is named "
            "by its first settings; after a copy it holds another trial's state and settings.",
            "",
            "## Per run",
            "",
            per_run_table(rows),
            "",
        ]
    )
    (workdir / "comparison.md").write_text(text)
    record = {"plan": plan, "command": command, "grid_best_validation": grid_best, "runs": rows}
    as_json = json.dumps(_finite(record), indent=2, default=str)
    (workdir / "comparison.json").write_text(as_json + "\n")
    print("\n" + text)


if __name__ == "__main__":
    app.run(main)
