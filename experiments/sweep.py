"""python experiments/sweep.py --config configs/digits_sweep.py --workdir runs/digits_sweep_grid

Runs a hyperparameter sweep: many runs of one config, each in workdir/trials/<name>, then
sweep.md / sweep.csv / sweep.json tables (best trial named; mean ± std over seeds) and
sweep.png. The trials come from the config file's get_sweep(), or from the command line:

    python experiments/sweep.py --config configs/test.py --workdir runs/s \
        --sweep optimizer.learning_rate=1e-3,3e-3 --sweep model.hidden_size=16,32 --seeds 2
    python experiments/sweep.py --config configs/test.py --workdir runs/r --random 8 \
        --sweep 'optimizer.learning_rate=log_uniform(1e-4,1e-2)' --sweep model.cell=lstm,gru
    python experiments/sweep.py ... --parallel 2      # two trials at once, cores split
    python experiments/sweep.py ... --backend ray --ray_address auto   # on a Ray cluster
    python experiments/sweep.py --config configs/test.py --workdir runs/v --seeds 8 --vectorize
        # trials that differ only in seed / lr / weight decay / momentum / l1 / l2 train
        # together in one vmapped program, each with its own early stopping and checkpoints
    python experiments/sweep.py --config configs/test.py --workdir runs/sh --vectorize \
        --sweep optimizer.learning_rate=1e-4,3e-3,1e-2,3e-2 --halving 2
        # successive halving inside the vectorised program: 4 -> 2 -> 1 trials
    python experiments/sweep.py --config configs/test.py --workdir runs/pbt --vectorize \
        --sweep optimizer.learning_rate=1e-4,3e-3,1e-2,3e-2 --pbt 8 --pbt_quantile 0.25
        # population-based training inside the vectorised program: every 8 steps the worst
        # quarter copies the best quarter and perturbs its learning rate / weight decay
    python experiments/sweep.py --config configs/test.py --workdir runs/tpe --search tpe \
        --trials 20 --pruner median --space 'optimizer.learning_rate=log_uniform(1e-4,1e-1)' \
        --space model.hidden_size=16,32,64
        # adaptive search with Optuna (pip install -e '.[search]'): the study resumes from
        # workdir/study.journal; the space may also come from the config's get_search_space()
    python experiments/sweep.py --config configs/test.py --workdir runs/mo --search tpe \
        --trials 20 --objectives metric,params --space optimizer.name=adam,sgd \
        --space 'optimizer.momentum=uniform(0.5,0.99)|optimizer.name=sgd'
        # a conditional key (momentum drawn only where the trial drew sgd) and a Pareto
        # front of validation metric against parameter count (also: wall_time, seconds);
        # sweep.md marks the Pareto-optimal trials, search_pareto.png draws the front

--config.key=value overrides change the base config of every trial. Running the same command
again skips finished trials, resumes interrupted ones and retries failed ones. Exit status 1
when a trial failed; 75 when SIGTERM stopped the sweep (run it again to go on).
"""

from __future__ import annotations

import importlib.util
import logging as pylogging
import sys
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ import fnn_jax

from fnn_jax import cli, sweep  # noqa: E402
from fnn_jax.train import EXIT_PREEMPTED, REFUSALS, Preempted  # noqa: E402
from fnn_jax.train.pbt import PBTSpec  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Sweep directory: trials/, sweep.{json,csv,md,png}.")
flags.DEFINE_multi_string(
    "sweep", [], "An axis, key=v1,v2,... (repeatable; grid over all). Default: get_sweep()."
)
flags.DEFINE_integer("random", 0, "> 0: this many random trials from the --sweep axes.")
flags.DEFINE_integer("random_seed", 0, "Seed of --random.")
flags.DEFINE_integer("seeds", 0, "> 0: repeat every trial with seed=0..N-1.")
flags.DEFINE_integer("parallel", 1, "Trials run at once, in worker processes.")
flags.DEFINE_enum(
    "backend", "local", ["local", "ray"], "Where trials run (ray: pip install -e '.[ray]')."
)
flags.DEFINE_string(
    "ray_address", None, "Ray cluster address for --backend ray; none starts a local Ray."
)
flags.DEFINE_bool(
    "vectorize",
    False,
    "Train trials that differ only in seed and scalar optimizer settings together (jax.vmap).",
)
flags.DEFINE_integer(
    "halving",
    0,
    "With --vectorize: successive halving inside each group, keeping the best 1/ETA at "
    "the validations numbered 1, ETA, ETA^2, ... (the program shrinks with them).",
)
flags.DEFINE_integer(
    "pbt",
    0,
    "With --vectorize: population-based training inside each group every PBT steps (a "
    "multiple of config.train.eval_every_steps): the bottom --pbt_quantile of the trials "
    "copy a top trial's parameters and optimizer state, then perturb its --pbt_keys.",
)
flags.DEFINE_float("pbt_quantile", 0.25, "--pbt: the fraction exploiting (and exploited), <= 0.5.")
flags.DEFINE_list("pbt_perturb", ["0.8", "1.25"], "--pbt: the factors explore draws from.")
flags.DEFINE_list(
    "pbt_keys",
    ["learning_rate", "weight_decay"],
    "--pbt: the settings perturbed (learning_rate, weight_decay, momentum, l1, l2).",
)
flags.DEFINE_integer("pbt_seed", 0, "--pbt: the seed of the copies' sources and factors.")
flags.DEFINE_enum("search", None, list(sweep.SAMPLERS), "Adaptive search with this Optuna sampler.")
flags.DEFINE_integer("trials", 20, "--search: trials in the study.")
flags.DEFINE_multi_string(
    "space",
    [],
    "--search: key=v1,v2,... or key=log_uniform(lo,hi) / uniform(lo,hi); a suffix "
    "|other=v1,v2 suggests the key only where the trial drew one of those values of other.",
)
flags.DEFINE_list(
    "objectives",
    ["metric"],
    "--search: what the study optimises, of metric (the task's selection metric, its "
    "direction), params (parameter count, minimised), wall_time (trial seconds, minimised); "
    "several give a Pareto front (then --pruner none).",
)
flags.DEFINE_enum("pruner", "none", list(sweep.PRUNERS), "--search: Optuna's pruner.")
flags.DEFINE_integer(
    "startup_trials",
    None,
    "--search: random trials before the sampler models, and finished trials before the "
    "median pruner prunes (default: Optuna's, 10 for TPE and 5 for the pruner).",
)
flags.DEFINE_string(
    "direction",
    None,
    "--search: maximize or minimize; must agree with the task's selection metric "
    "(default: the metric's own direction).",
)
flags.DEFINE_integer("search_seed", 0, "--search: the sampler's seed.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
DATASET_OPTIONS: dict = {}  # --config.data.options.X=V, set by cli.preflight


def config_module() -> tuple[str, object]:
    """The config file's path and module (for get_sweep and get_search_space)."""
    path = config_flags.get_config_filename(FLAGS["config"]).split(":", 1)[0]
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def config_file_sweep() -> list[dict]:
    """The trial list from the config file's ``get_sweep()``."""
    path, module = config_module()
    if not hasattr(module, "get_sweep"):
        if FLAGS.seeds:
            return [{}]  # the config itself, repeated over seeds
        raise app.UsageError(f"{path} has no get_sweep(); give the axes with --sweep key=v1,v2")
    return module.get_sweep()


def trials_from_flags(config: ml_collections.ConfigDict) -> list[dict]:
    """The trial list: --random over --sweep axes, else the --sweep grid, else get_sweep()."""
    if FLAGS.random and not FLAGS.sweep:
        raise app.UsageError("--random needs the space as --sweep axes")
    try:
        if FLAGS.random:
            axes = sweep.parse_axes(FLAGS.sweep, config)
            trials = sweep.random_search(axes, FLAGS.random, FLAGS.random_seed)
        else:
            trials = sweep.parse_cli(FLAGS.sweep, config) if FLAGS.sweep else config_file_sweep()
        return sweep.seeds(trials, FLAGS.seeds) if FLAGS.seeds else trials
    except ValueError as e:
        raise app.UsageError(str(e)) from e


def search_from_flags(config: ml_collections.ConfigDict) -> sweep.SearchSpec:
    """--search's spec: the space from --space, else the config's get_search_space()."""
    if FLAGS.sweep or FLAGS.random or FLAGS.seeds or FLAGS.vectorize:
        raise app.UsageError("--search takes its space from --space, not --sweep/--random")
    try:
        if FLAGS.space:
            space = sweep.parse_space(FLAGS.space, config)
        else:
            path, module = config_module()
            if not hasattr(module, "get_search_space"):
                raise ValueError(f"{path} has no get_search_space(); give --space key=...")
            space = module.get_search_space()
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    return sweep.SearchSpec(
        space,
        FLAGS.trials,
        sampler=FLAGS.search,
        pruner=FLAGS.pruner,
        seed=FLAGS.search_seed,
        objectives=tuple(FLAGS.objectives),
        direction=FLAGS.direction,
        startup_trials=FLAGS.startup_trials,
    )


def pbt_from_flags() -> PBTSpec | None:
    """--pbt's spec (None without it); a ValueError naming a bad value."""
    options = ("pbt_quantile", "pbt_perturb", "pbt_keys", "pbt_seed")
    if not FLAGS.pbt:
        given = [f"--{name}" for name in options if FLAGS[name].present]
        if given:
            raise app.UsageError(f"{', '.join(given)} without --pbt INTERVAL")
        return None
    try:
        perturb = tuple(float(f) for f in FLAGS.pbt_perturb)
    except ValueError:
        raise ValueError(f"--pbt_perturb takes numbers; got {FLAGS.pbt_perturb}") from None
    return PBTSpec(
        interval=FLAGS.pbt,
        quantile=FLAGS.pbt_quantile,
        perturb=perturb,
        keys=tuple(FLAGS.pbt_keys),
        seed=FLAGS.pbt_seed,
    )


def print_summary(result: sweep.SweepResult) -> None:
    print()
    print(result.table())
    if result.seed_groups:
        print(f"\nover seeds (mean ± sample std):\n{result.seed_table()}")
    if result.best is not None:
        best = result.best
        print(
            f"\nbest trial: {best.name} (validation {result.metric} "
            f"{best.value('validation', result.metric):.4f}, "
            f"test {best.value('test', result.metric):.4f}) in {best.workdir}"
        )
    if result.objectives:
        print(f"\nPareto-optimal over {', '.join(result.objectives)}:")
        for trial in result.pareto:
            values = ", ".join(f"{k}={v:.4g}" for k, v in trial.objectives.items())
            print(f"  {trial.name}: {values}")
    for trial in result.failed:
        print(f"failed: {trial.name}: {trial.error}  ({trial.workdir / 'error.txt'})")
    for what, path in result.paths.items():
        print(f"{what:>6}: {path}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("fnn_jax").setLevel(pylogging.INFO)  # one line per finished trial
    config = cli.with_options(FLAGS.config, DATASET_OPTIONS)
    where = dict(parallel=FLAGS.parallel, backend=FLAGS.backend, ray_address=FLAGS.ray_address)
    try:
        if FLAGS.search and FLAGS.pbt:
            raise app.UsageError("--pbt trains a vectorised group, not an adaptive --search")
        for name in ("objectives", "direction", "startup_trials"):
            if FLAGS[name].present and not FLAGS.search:
                raise app.UsageError(f"--{name} needs --search SAMPLER")
        if FLAGS.search:
            result = sweep.search(config, search_from_flags(config), FLAGS.workdir, **where)
        else:
            trials = trials_from_flags(config)
            result = sweep.run(
                config,
                trials,
                FLAGS.workdir,
                vectorize=FLAGS.vectorize,
                halving=FLAGS.halving,
                pbt=pbt_from_flags(),
                **where,
            )
    except (ValueError, *REFUSALS) as e:  # a bad spec or a busy workdir: nothing ran
        sys.exit(f"error: {e}")
    except Preempted as stop:  # SIGTERM: the running trial saved its state
        print(stop, file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        sys.exit("interrupted: the last checkpoint is intact; run the same command to resume")
    print_summary(result)
    if result.failed:
        sys.exit(1)


if __name__ == "__main__":
    sys.argv, DATASET_OPTIONS = cli.preflight(sys.argv)
    app.run(main)
