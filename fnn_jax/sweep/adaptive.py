"""``search``: adaptive hyperparameter search with Optuna (``pip install -e '.[search]'``).

Each trial is still an ordinary run in ``workdir/trials/<name>`` (named by its values, as a
sweep's), with its checkpoints, report and resume. The study lives beside them::

    study.journal   Optuna's journal storage (a file: safe for several processes, and for
                    several hosts on shared storage); the same command resumes the study
    search.json     the base config and the search's spec (another spec is refused)
    sweep.{json,csv,md,png}   the trials as a sweep's tables and plot, pruned ones marked
    search_history.png, search_importances.png, search_slices.png   Optuna's plots
    search_pareto.png   the Pareto front, with several objectives

The objective is the task's selection metric on validation (at the trial's best
checkpoint), in its declared direction; or several (``SearchSpec.objectives``: the metric,
the parameter count, the trial's wall time), a multi-objective study whose Pareto-optimal
trials the tables mark. A space key may be ``Conditional`` on others' values (suggested in
dependency order, only where its condition holds). A pruner (median, successive halving,
Hyperband) sees each validation as it happens; a pruned trial keeps its last checkpoint and
is not run again. A trial interrupted (SIGTERM, a killed worker) is asked again with the
same values on the next invocation, so it resumes from its checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import math
import os
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from fnn_jax import config as config_lib
from fnn_jax.files import workdir_lock, write_atomic
from fnn_jax.sweep import results as results_lib
from fnn_jax.sweep import runner
from fnn_jax.sweep import space as space_lib
from fnn_jax.sweep.plot import plot_sweep
from fnn_jax.sweep.results import SweepResult, TrialResult
from fnn_jax.sweep.space import Conditional
from fnn_jax.sweep.spec import _field, apply_overrides, trial_name, validate_sweep
from fnn_jax.train import Preempted, train_and_evaluate

log = logging.getLogger("fnn_jax")
SAMPLERS = ("tpe", "cmaes", "gp", "random")
PRUNERS = ("none", "median", "halving", "hyperband")
STUDY = "search"  # the study's name inside study.journal
INTERRUPTED = "interrupted"  # user attribute of a trial a killed invocation left running
RETRY_OF = "retry_of"  # user attribute of the trial asked again for an interrupted one
ATTEMPT_S = "attempt_s"  # user attribute: an attempt's seconds so far (wall_time objective)
# What a study can optimise: the task's selection metric on validation (its direction), the
# model's parameter count and the trial's wall time in seconds (both minimised).
OBJECTIVES = ("metric", "params", "wall_time")


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """What to search: ``space`` maps dotted config keys to a list of choices or to
    ``("uniform", lo, hi)`` / ``("log_uniform", lo, hi)`` (an int key draws ints), or to a
    ``Conditional`` of either; ``trials`` in all; the sampler and pruner by name; ``seed``
    the sampler's; ``objectives`` from ``OBJECTIVES`` (several: a Pareto front, no pruner);
    ``direction`` ("maximize" | "minimize"; None: the metric's own), checked against the
    direction the task declares for its selection metric; ``startup_trials``: trials the
    sampler draws at random before it models (TPE, GP, CMA-ES) and that finish before the
    median pruner prunes (None: Optuna's defaults, 10 / 1 and 5)."""

    space: Mapping[str, Any]
    trials: int
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0
    objectives: tuple[str, ...] = ("metric",)
    direction: str | None = None
    startup_trials: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))  # a list from the CLI

    def record(self) -> dict[str, Any]:
        """The spec as JSON (search.json; conditions included), compared on resume."""
        record = json.loads(json.dumps(dataclasses.asdict(self), default=list))
        if self.objectives == ("metric",):  # as recorded before objectives existed
            del record["objectives"]
        del record["direction"]  # a check only: it must be the metric's own anyway
        if self.startup_trials is None:  # absent from older records
            del record["startup_trials"]
        return record


def search(
    config: ml_collections.ConfigDict,
    spec: SearchSpec,
    workdir: str | os.PathLike,
    *,
    parallel: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
) -> SweepResult:
    """Runs the study until it holds ``spec.trials`` trials (finished, pruned or failed).

    ``parallel`` workers (processes, or Ray tasks with ``backend="ray"``) draw from the
    same study. The space's bounds and choices are checked against ``config`` before
    anything is written (ValueError naming the key).
    """
    optuna = _optuna()
    _check_spec(config, spec)
    from fnn_jax.train.trial import setup  # the task's metric and its direction

    plan = setup(config)
    _check_direction(spec, plan.metric, plan.mode)
    workdir = Path(workdir).absolute()
    with workdir_lock(workdir):
        record = _check_saved(workdir, config, spec)
        write_atomic(workdir / "search.json", json.dumps(record, indent=2) + "\n")
        # Optuna's journal lock of a process killed while writing (no other can be writing:
        # this one holds the workdir); left in place, every write would wait 30 s for it.
        (workdir / "study.journal.lock").unlink(missing_ok=True)
        study = _study(workdir, spec, plan.mode)
        _ask_again_for_interrupted(study, optuna)
        job = (config, spec, str(workdir), plan.metric, plan.mode)
        workers = max(1, min(parallel, spec.trials))
        if workers == 1 and backend == "local":
            _work(*job, 0)
        else:
            with runner._executor(backend, workers, ray_address) as executor:
                pending = [executor.submit(_work, *job, k) for k in range(workers)]
                for future in executor.as_completed(pending):
                    future.result()
        result = _result(study, workdir, spec, plan.metric, plan.mode)
        result.paths["plot"] = workdir / "sweep.png"
        plot_sweep(result, result.paths["plot"])
        result.paths |= _optuna_plots(study, workdir, _labels(spec, plan.metric))
        results_lib.write_tables(result, record)
        return result


# ---------------------------------------------------------------------------- the study


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ValueError("adaptive search needs Optuna: pip install -e '.[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _study(workdir: Path, spec: SearchSpec, mode: str, worker: int = 0) -> Any:
    """The study in workdir/study.journal (created on first use) with the spec's sampler and
    pruner (which Optuna does not store: every worker builds its own, its sampler seeded
    with the spec's seed plus the worker's index, and on a resumed study with the trials
    already in it too: the same seed again would draw the first trials' values again)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(workdir / "study.journal")))
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage,
        sampler=_sampler(spec, worker),
        pruner=_pruner(spec),
        directions=_directions(spec, mode),
        load_if_exists=True,
    )
    if held := len(study.get_trials(deepcopy=False)):
        study.sampler = _sampler(spec, worker, held)
    return study


def _directions(spec: SearchSpec, mode: str) -> list[str]:
    """Optuna's direction of each objective: the metric's ``mode``, the others minimised."""
    return [
        "maximize" if name == "metric" and mode == "max" else "minimize" for name in spec.objectives
    ]


def _labels(spec: SearchSpec, metric: str) -> list[str]:
    """Each objective's column name in the tables (the metric's is its validation column)."""
    names = {"metric": f"validation_{metric}", "params": "parameters", "wall_time": "trial_time_s"}
    return [names[name] for name in spec.objectives]


def _sampler(spec: SearchSpec, worker: int = 0, held: int = 0) -> Any:
    """The spec's sampler for ``worker``, seeded by the spec's seed, the worker and the
    trials the study ``held`` when it started (none: the spec's seed plus the worker)."""
    import optuna

    samplers = {
        "tpe": optuna.samplers.TPESampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }
    try:
        seed = spec.seed + worker
        if held:
            seed = int(np.random.SeedSequence([spec.seed, worker, held]).generate_state(1)[0])
        startup = (
            {}
            if spec.startup_trials is None or spec.sampler == "random"
            else {"n_startup_trials": spec.startup_trials}
        )
        return samplers[spec.sampler](seed=seed, **startup)
    except ImportError as error:  # cmaes, or gp's torch and scipy
        raise ValueError(f"sampler {spec.sampler!r}: {error}") from None


def _pruner(spec: SearchSpec) -> Any:
    import optuna

    if spec.pruner == "median" and spec.startup_trials is not None:
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials)
    return {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }[spec.pruner]()


def _ask_again_for_interrupted(study: Any, optuna: Any) -> None:
    """Trials a killed invocation left running (none can still run: this process holds the
    workdir's lock) are asked again with the same values, so the new trial lands in the
    same trial folder and resumes from its checkpoints, then marked interrupted (failed, not
    counted). Queued first: a kill between the steps leaves the trial running with its
    retry queued (``RETRY_OF``), so the next invocation only marks it."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    for trial in trials:
        if trial.state != optuna.trial.TrialState.RUNNING:
            continue
        if trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        log.info("trial %d was interrupted: asked again with the same values", trial.number)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _next_trial(study: Any, spec: SearchSpec, workdir: Path) -> Any | None:
    """A new trial while the study holds fewer than ``spec.trials`` (the interrupted ones
    not counted), or an enqueued one; None when the search is complete. Workers ask under
    a file lock, so together they never start more than ``spec.trials``."""
    import optuna

    with _locked(workdir / "ask.lock"):
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(INTERRUPTED)]
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
        if len(trials) >= spec.trials and not waiting:
            return None
        return study.ask()


def _on_validation(trial: Any, spec: SearchSpec, metric: str, started: float) -> Any:
    """The engine's hook for one attempt of ``trial``: records the attempt's seconds when
    wall time is an objective (what a kill -9 leaves for the next attempt to add), and
    reports the metric to the pruner (a single-objective study: Optuna prunes no other)."""

    def report(step: int, values: dict[str, float]) -> bool:
        if "wall_time" in spec.objectives:
            trial.set_user_attr(ATTEMPT_S, time.monotonic() - started)
        if spec.objectives != ("metric",):
            return False
        trial.report(values[metric], step)
        return trial.should_prune()

    return report


def _earlier_attempts_s(study: Any, name: str) -> float:
    """Seconds the interrupted attempts of trial ``name`` recorded: each up to its
    preemption, or (kill -9) its last validation."""
    return sum(
        t.user_attrs.get(ATTEMPT_S, 0.0)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(INTERRUPTED) and t.user_attrs.get("name") == name
    )


def _seconds_of_a_finished_twin(
    study: Any, spec: SearchSpec, trial: Any, name: str
) -> float | None:
    """The wall time of an earlier finished trial with the same values (a sampler may
    suggest them again: the same folder, whose run only evaluates again), else None."""
    import optuna

    if "wall_time" not in spec.objectives:
        return None
    finished = (optuna.trial.TrialState.COMPLETE,)
    for other in study.get_trials(deepcopy=False, states=finished):
        if other.number != trial.number and other.user_attrs.get("name") == name:
            return other.values[spec.objectives.index("wall_time")]
    return None


def _objective_values(
    spec: SearchSpec, outcome: dict[str, Any], metric: str, seconds: float
) -> list[float]:
    """A finished trial's objectives, in ``spec.objectives``' order (what study.tell takes)."""
    values = {
        "metric": outcome["results"]["validation"][metric],
        "params": float(outcome["parameters"]),
        "wall_time": seconds,
    }
    return [values[name] for name in spec.objectives]


def _work(  # noqa: PLR0913, PLR0917 (the job of one worker, submitted positionally)
    config: ml_collections.ConfigDict,
    spec: SearchSpec,
    workdir: str,
    metric: str,
    mode: str,
    worker: int,
) -> None:
    """A worker: asks for trials and runs each until the search is complete."""
    optuna = _optuna()
    workdir = Path(workdir)
    study = _study(workdir, spec, mode, worker)
    while (trial := _next_trial(study, spec, workdir)) is not None:
        overrides = space_lib.suggest(trial, config, spec.space)
        name = trial_name(overrides)
        trial.set_user_attr("name", name)
        trial.set_user_attr("overrides", overrides)
        trial_dir = workdir / "trials" / name
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "error.txt").unlink(missing_ok=True)
        started = time.monotonic()
        try:
            outcome = train_and_evaluate(
                apply_overrides(config, overrides),
                trial_dir,
                on_validation=_on_validation(trial, spec, metric, started),
            )
        except Preempted:
            if "wall_time" in spec.objectives:
                trial.set_user_attr(ATTEMPT_S, time.monotonic() - started)
            raise  # left running: the next invocation asks it again
        except Exception as error:
            write_atomic(trial_dir / "error.txt", "".join(traceback.format_exception(error)))
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.info("trial %s: failed %s: %s", name, type(error).__name__, error)
            continue
        if "pruned_at" in outcome:
            trial.set_user_attr("pruned_at", outcome["pruned_at"])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("trial %s: pruned at step %d", name, outcome["pruned_at"])
        else:
            seconds = _seconds_of_a_finished_twin(study, spec, trial, name)
            if seconds is None:
                seconds = time.monotonic() - started + _earlier_attempts_s(study, name)
            study.tell(trial, _objective_values(spec, outcome, metric, seconds))
            value = outcome["results"]["validation"][metric]
            log.info("trial %s: validation %s %.4f", name, metric, value)


# ---------------------------------------------------------------------------- checks


def _check_spec(config: ml_collections.ConfigDict, spec: SearchSpec) -> None:
    """The sampler, pruner and count, and every key's bounds and choices, as trials of the
    config (config.validate on each): a typo fails before anything is written."""
    config_lib.check_choice("sampler", spec.sampler, SAMPLERS)
    config_lib.check_choice("pruner", spec.pruner, PRUNERS)
    if spec.trials < 1:
        raise ValueError(f"trials must be >= 1; got {spec.trials}")
    if spec.startup_trials is not None and spec.startup_trials < 0:
        raise ValueError(f"startup_trials must be >= 0; got {spec.startup_trials}")
    if not spec.space:
        raise ValueError("the search space is empty: give --space key=... or get_search_space()")
    _check_objectives(spec)
    space_lib.order(spec.space)  # the conditions: keys in the space, values among its choices
    probes = []
    for key, space in spec.space.items():
        space = space.space if isinstance(space, Conditional) else space
        if space_lib.is_range(space):
            values = list(space[1:])
            if isinstance(_field(config, key)[1], int):
                values = [math.ceil(space[1]), math.floor(space[2])]
        else:
            values = list(space)
        for value in values:
            probe = {**space_lib.enabling(key, spec.space), key: value}
            if probe not in probes:
                probes.append(probe)
    validate_sweep(config, probes)


def _check_direction(spec: SearchSpec, metric: str, mode: str) -> None:
    """A direction asked for must be the one the task declares for its metric."""
    if spec.direction is None:
        return
    config_lib.check_choice("direction", spec.direction, ("maximize", "minimize"))
    declared = "maximize" if mode == "max" else "minimize"
    if spec.direction != declared:
        raise ValueError(
            f"direction {spec.direction!r} contradicts the metric: validation {metric!r} "
            f"improves when it goes {'up' if mode == 'max' else 'down'} ({declared}); "
            "choose another metric with --config.train.early_stopping_metric"
        )


def _check_objectives(spec: SearchSpec) -> None:
    """Known, distinct objectives; a pruner only for the metric alone."""
    if not spec.objectives:
        raise ValueError(f"objectives: give at least one of {list(OBJECTIVES)}")
    for name in spec.objectives:
        config_lib.check_choice("objectives", name, OBJECTIVES)
    if len(set(spec.objectives)) < len(spec.objectives):
        raise ValueError(f"objectives: each once; got {list(spec.objectives)}")
    if spec.pruner != "none" and spec.objectives != ("metric",):
        raise ValueError(
            f"pruner {spec.pruner!r} with objectives {list(spec.objectives)}: Optuna prunes "
            "only single-objective studies of the metric; use pruner 'none'"
        )


def _check_saved(
    workdir: Path, config: ml_collections.ConfigDict, spec: SearchSpec
) -> dict[str, Any]:
    """The search's record; refuses a workdir that holds a search with another config or
    spec (one study, one experiment)."""
    record = {"config": config_lib.to_dict(config), "search": spec.record()}
    record = json.loads(json.dumps(record, default=list))
    path = workdir / "search.json"
    if not path.exists():
        if (workdir / "sweep.json").exists():
            raise ValueError(f"{workdir} holds a sweep, not a search: use a new workdir")
        return record
    saved = json.loads(path.read_text())
    differ = config_lib.differences(config_lib.in_current_schema(saved["config"]), record["config"])
    differ += [
        f"search.{key}: {saved['search'].get(key)!r} -> {value!r}"
        for key, value in record["search"].items()
        if saved["search"].get(key) != value
    ]
    if differ:
        raise ValueError(
            f"{workdir} holds a different search; refusing to mix the two (use a new workdir):"
            "\n  " + "\n  ".join(differ)
        )
    return record


# ---------------------------------------------------------------------------- results


def _result(study: Any, workdir: Path, spec: SearchSpec, metric: str, mode: str) -> SweepResult:
    """The study's trials (the interrupted attempts left out) as a sweep's results; with
    several objectives, each finished trial's values and whether Optuna puts it on the
    Pareto front (``study.best_trials``)."""
    import optuna

    states = optuna.trial.TrialState
    labels = _labels(spec, metric)
    multi = len(labels) > 1
    front = {t.number for t in study.best_trials} if multi else set()
    trials = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(INTERRUPTED) or "name" not in trial.user_attrs:
            continue
        name = trial.user_attrs["name"]
        result = TrialResult(name, dict(trial.user_attrs["overrides"]), workdir / "trials" / name)
        report = result.workdir / "report.json"
        if trial.state == states.COMPLETE and report.exists():
            result.status, result.report = "done", json.loads(report.read_text())
            if multi:
                result.objectives = dict(zip(labels, trial.values, strict=True))
                result.pareto = trial.number in front
        elif trial.state == states.PRUNED:
            result.status = "pruned"
            result.error = f"pruned at step {trial.user_attrs.get('pruned_at')}"
        elif trial.state == states.FAIL:
            result.status, result.error = "failed", trial.user_attrs.get("error", "")
        trials.append(result)
    summary = runner._summarise(workdir, trials)
    if multi:
        directions = _directions(spec, mode)
        summary.objectives = {k: d[:3] for k, d in zip(labels, directions, strict=True)}
    return summary


def _optuna_plots(study: Any, workdir: Path, labels: list[str]) -> dict[str, Path]:
    """Optuna's optimisation history, parameter importances and slices (of the first
    objective), where the study has enough finished trials for each (importances need
    two), and with two or three objectives the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as views
    from optuna.exceptions import ExperimentalWarning

    finished = [t for t in study.trials if t.state == t.state.COMPLETE]
    target, ranked = {"target_name": labels[0].replace("_", " ")}, {}
    if len(labels) > 1:  # these plots take one objective: the first
        target["target"] = lambda t: t.values[0]
        # Importances of a target are for low values: a maximised metric's sign flipped.
        sign = -1.0 if study.directions[0] == study.directions[0].MAXIMIZE else 1.0
        ranked["target"] = lambda t: sign * t.values[0]
    plots = {
        "history": functools.partial(views.plot_optimization_history, **target),
        "slices": functools.partial(views.plot_slice, **target),
    }
    if len(finished) >= 2 and len(study.trials[0].params) >= 1:
        importances = functools.partial(views.plot_param_importances, **(target | ranked))
        plots["importances"] = importances
    if len(labels) in (2, 3):
        plots["pareto"] = functools.partial(views.plot_pareto_front, target_names=labels)
    written = {}
    for name, draw in plots.items():
        if not finished:
            break
        try:
            with warnings.catch_warnings():  # "experimental": we pin optuna's major version
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.filterwarnings("ignore", "PedAnova.* low `target`")  # signed above
                axes = draw(study)
        except (ValueError, RuntimeError) as error:  # e.g. one distinct value
            log.info("search_%s.png not drawn: %s", name, error)
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        path = workdir / f"search_{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written[name] = path
    return written
