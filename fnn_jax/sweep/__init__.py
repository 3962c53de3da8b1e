"""Hyperparameter sweeps: many runs of one config, each with a few values changed.

    from fnn_jax import sweep
    trials = sweep.seeds(sweep.product({"optimizer.learning_rate": [1e-3, 3e-3],
                                        "model.hidden_size": [64, 128]}), 3)
    result = sweep.run(config, trials, "runs/my_sweep", parallel=2)
    print(result.table(), result.best.name)
    sweep.run(config, sweep.seeds([{}], 8), "runs/seeds", vectorize=True)  # one vmapped program
    space = {"optimizer.learning_rate": ("log_uniform", 1e-4, 1e-1), "model.hidden_size": [32, 64]}
    sweep.search(config, sweep.SearchSpec(space, trials=20, pruner="median"), "runs/tpe")
    space |= {"optimizer.name": ["adam", "sgd"], "optimizer.momentum": sweep.Conditional(
        ("uniform", 0.5, 0.99), when={"optimizer.name": ["sgd"]})}  # momentum only for sgd
    sweep.search(config, sweep.SearchSpec(space, 20, objectives=("metric", "params")), "runs/mo")

A trial is a dict of dotted config keys to values; a sweep is a list of them (``product``,
``zipped``, ``random_search``, ``seeds``, ``parse_cli``, or any list you write). Every trial is
an ordinary run in ``workdir/trials/<name>``, so the runner's resume applies to each, and a
re-run of the sweep skips the finished ones.
"""

from fnn_jax.sweep.adaptive import OBJECTIVES, PRUNERS, SAMPLERS, SearchSpec, search
from fnn_jax.sweep.results import SeedGroup, SweepResult, TrialResult
from fnn_jax.sweep.runner import run
from fnn_jax.sweep.space import Conditional, parse_space
from fnn_jax.sweep.spec import (
    Trial,
    apply_overrides,
    parse_axes,
    parse_cli,
    product,
    random_search,
    seeds,
    trial_name,
    validate_sweep,
    zipped,
)

__all__ = [
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "Conditional",
    "SearchSpec",
    "SeedGroup",
    "SweepResult",
    "Trial",
    "TrialResult",
    "apply_overrides",
    "parse_axes",
    "parse_cli",
    "parse_space",
    "product",
    "random_search",
    "run",
    "search",
    "seeds",
    "trial_name",
    "validate_sweep",
    "zipped",
]
