"""Adaptive search (fnn_jax.sweep.search, Optuna): trials are runs in their own folders,
the study resumes from its journal (after kill -9 too), pruned trials keep their checkpoint
and stay pruned, an interrupted trial resumes with its values, conditional keys are
suggested only where their condition holds, several objectives give a Pareto front, bad
specs are refused before any write."""

import csv
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optuna
import pytest

from fnn_jax import config as config_lib
from fnn_jax import sweep
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.sweep import adaptive as search_lib
from fnn_jax.train import Preempted, train_and_evaluate
from fnn_jax.train.trial import setup
from tests.kill9 import kill_until_finished
from tests.test_reliability import _config

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"optimizer.learning_rate": ("log_uniform", 1e-3, 3e-2), "model.hidden_size": [8, 16]}
SPACE_LR = "optimizer.learning_rate"
WHEN_SGD = {"optimizer.name": ["sgd"]}
# The momentum is listed before the key its condition names: suggested after it all the same.
MOMENTUM = sweep.Conditional(("uniform", 0.5, 0.99), when={"optimizer.name": ["sgd"]})
CONDITIONAL = {"optimizer.momentum": MOMENTUM, "optimizer.name": ["adam", "sgd"]}


def _small(**overrides):
    return _config(**{"train.num_steps": 16, "train.eval_every_steps": 8, **overrides})


def _study(workdir):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "study.journal"))
    )
    return optuna.load_study(study_name=search_lib.STUDY, storage=storage)


def _final_params(workdir, step=16):
    return jax.tree.leaves(Checkpoints(workdir / "checkpoints").restore_saved(step)[0]["params"])


@pytest.mark.slow
def test_each_trial_is_a_run_scored_by_its_validation_metric_and_a_rerun_runs_none(tmp_path):
    spec = sweep.SearchSpec(SPACE, trials=3, sampler="random", seed=1)
    result = sweep.search(_small(), spec, tmp_path)
    assert [t.status for t in result.trials] == ["done"] * 3
    study = _study(tmp_path)
    for trial, frozen in zip(result.trials, study.trials, strict=True):
        report = json.loads((trial.workdir / "report.json").read_text())
        assert frozen.value == report["results"]["validation"]["accuracy"]
        assert frozen.params == trial.overrides
        assert 1e-3 <= trial.overrides["optimizer.learning_rate"] <= 3e-2
    best = max(result.trials, key=lambda t: t.value("validation", "accuracy"))
    assert result.best.name == best.name == study.best_trial.user_attrs["name"]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for name in ("sweep.md", "sweep.png", "search_history.png", "search_slices.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    reports = {t.name: (t.workdir / "report.json").stat().st_mtime_ns for t in result.trials}
    again = sweep.search(_small(), spec, tmp_path)
    assert len(_study(tmp_path).trials) == 3
    assert {t.name: (t.workdir / "report.json").stat().st_mtime_ns for t in again.trials} == (
        reports
    )


@pytest.mark.slow
def test_a_pruned_trial_keeps_its_last_checkpoint_and_is_not_run_again(tmp_path, monkeypatch):
    # A pruner that prunes every trial at its first validation (accuracy is below 2).
    monkeypatch.setattr(search_lib, "_pruner", lambda name: optuna.pruners.ThresholdPruner(2.0))
    spec = sweep.SearchSpec(SPACE, trials=2, sampler="random", pruner="median")
    rarely = _small(**{"train.checkpoint_every_s": 3600.0})  # only the pruned step saves
    result = sweep.search(rarely, spec, tmp_path)
    assert [t.status for t in result.trials] == ["pruned", "pruned"]
    for trial in result.trials:
        assert trial.error == "pruned at step 8"
        assert Checkpoints(trial.workdir / "checkpoints").steps() == [8]
        assert not (trial.workdir / "report.json").exists()
    assert "2 pruned" in (tmp_path / "sweep.md").read_text()
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in _study(tmp_path).trials)

    monkeypatch.undo()
    sweep.search(rarely, spec, tmp_path)
    assert len(_study(tmp_path).trials) == 2  # nothing asked again
    for trial in result.trials:
        assert Checkpoints(trial.workdir / "checkpoints").steps() == [8]


@pytest.mark.slow
def test_an_interrupted_trial_is_asked_again_and_ends_as_it_would_have(tmp_path, monkeypatch):
    """SIGTERM in the second trial (after 8 of its 16 steps): the rerun asks that trial
    again with its values, in its folder, and its final parameters equal a run that was
    never interrupted, bit for bit."""
    calls = []

    def preempted_second(config, workdir, **kwargs):
        calls.append(workdir)
        if len(calls) == 2:
            train_and_evaluate(config, workdir, stop_after_steps=8, **kwargs)
            raise Preempted("SIGTERM: saved step 8")
        return train_and_evaluate(config, workdir, **kwargs)

    monkeypatch.setattr(search_lib, "train_and_evaluate", preempted_second)
    spec = sweep.SearchSpec(SPACE, trials=3, sampler="random", seed=3)
    with pytest.raises(Preempted):
        sweep.search(_small(), spec, tmp_path)
    interrupted = calls[1]
    assert Checkpoints(interrupted / "checkpoints").steps() == [8]

    monkeypatch.undo()
    result = sweep.search(_small(), spec, tmp_path)
    assert [t.status for t in result.trials] == ["done"] * 3
    assert interrupted in [t.workdir for t in result.trials]
    flagged = [t for t in _study(tmp_path).trials if t.user_attrs.get(search_lib.INTERRUPTED)]
    assert len(flagged) == 1 and flagged[0].params == result.trials[1].overrides

    alone = tmp_path / "alone"
    train_and_evaluate(sweep.apply_overrides(_small(), result.trials[1].overrides), alone)
    for got, want in zip(_final_params(interrupted), _final_params(alone), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"space": {"optimizer.learnig_rate": [1e-3]}}, "learnig_rate"),
        ({"space": {"model.hidden_size": ("uniform", 0, 4)}}, "model.hidden_size"),
        ({"space": {"model.cell": ["lstm", "lsmt"]}}, "lsmt"),
        ({"sampler": "bayes"}, "sampler='bayes'"),
        ({"pruner": "asha"}, "pruner='asha'"),
        ({"trials": 0}, "trials must be >= 1"),
        ({"space": {"optimizer.momentum": MOMENTUM}}, "'optimizer.momentum'.*'optimizer.name'"),
        (
            {"space": {**CONDITIONAL, "optimizer.name": ["adam", "rmsprop"]}},
            "'optimizer.momentum'.*optimizer.name='sgd' is not among",
        ),
        (
            {
                "space": {
                    "optimizer.nesterov": sweep.Conditional([True], {"model.cell": ["gru"]}),
                    "model.cell": sweep.Conditional(
                        ["lstm", "gru"], {"optimizer.nesterov": [True]}
                    ),
                }
            },
            "circular conditions",
        ),
        (
            {"space": {**SPACE, "model.cell": sweep.Conditional(["gru"], {"model.cell": ["gru"]})}},
            "'model.cell': circular conditions model.cell -> model.cell",
        ),
        (
            {
                "space": {
                    **SPACE,
                    "optimizer.momentum": sweep.Conditional([0.9], {SPACE_LR: [1e-3]}),
                }
            },
            "'optimizer.momentum'.*needs a list of choices there, not a log_uniform range",
        ),
        (
            {"space": {**CONDITIONAL, "optimizer.momentum": {"space": [0.9], "when": {}}}},
            "'optimizer.momentum'.*sweep.Conditional",
        ),
        (
            {"space": {**CONDITIONAL, "optimizer.momentum": sweep.Conditional([0.5, 1.5], {})}},
            "'optimizer.momentum'.*when= takes",
        ),
        (
            {"space": {**CONDITIONAL, "optimizer.momentum": sweep.Conditional([1.5], WHEN_SGD)}},
            "optimizer.momentum.*1.5",
        ),
        ({"objectives": ("metric", "latency")}, "objectives='latency'"),
        ({"objectives": ("metric", "metric")}, "objectives: each once"),
        ({"objectives": ("metric", "params"), "pruner": "median"}, "pruner 'median' with object"),
        ({"direction": "minimize"}, "'minimize' contradicts the metric: validation 'accuracy'"),
        ({"direction": "up"}, "direction='up'"),
    ],
)
def test_a_bad_search_is_refused_before_anything_is_written(spec, message, tmp_path):
    """One ValueError naming the key, before the sweep folder exists."""
    fields = {"space": SPACE, "trials": 2} | spec
    with pytest.raises(ValueError, match=message):
        sweep.search(_small(), sweep.SearchSpec(**fields), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_another_search_in_the_same_workdir_is_refused(tmp_path):
    tmp_path.joinpath("search.json").write_text(
        json.dumps(
            {
                "config": json.loads(json.dumps(config_lib.to_dict(_small()), default=list)),
                "search": sweep.SearchSpec(SPACE, trials=2).record(),
            }
        )
    )
    with pytest.raises(ValueError, match=r"different search(.|\n)*search.trials: 2 -> 5"):
        sweep.search(_small(), sweep.SearchSpec(SPACE, trials=5), tmp_path)
    assert not (tmp_path / "study.journal").exists()


@pytest.mark.slow
def test_parallel_workers_draw_from_one_study_and_start_exactly_the_trials_asked(tmp_path):
    spec = sweep.SearchSpec(SPACE, trials=3, sampler="random")
    result = sweep.search(_small(), spec, tmp_path, parallel=2)
    assert [t.status for t in result.trials] == ["done"] * 3
    assert len(_study(tmp_path).trials) == 3
    assert len({t.name for t in result.trials}) == 3


@pytest.mark.slow
def test_ray_workers_draw_from_one_study_each_trial_recorded_once(tmp_path):
    """--backend ray: two Ray tasks ask the study in the sweep folder's journal under its
    lock, as worker processes do: three trials, numbered 0, 1, 2, each run once."""
    ray = pytest.importorskip("ray")
    spec = sweep.SearchSpec(SPACE, trials=3, sampler="random")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = sweep.search(_small(), spec, tmp_path, parallel=2, backend="ray")
    finally:
        ray.shutdown()
    assert [t.status for t in result.trials] == ["done"] * 3
    study = _study(tmp_path).trials
    assert sorted(t.number for t in study) == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study)
    assert len({t.name for t in result.trials}) == 3


def test_a_changed_condition_is_refused_on_resume(tmp_path):
    config = _small()
    space = {**SPACE, **CONDITIONAL}
    tmp_path.joinpath("search.json").write_text(
        json.dumps(
            {
                "config": json.loads(json.dumps(config_lib.to_dict(config), default=list)),
                "search": sweep.SearchSpec(space, trials=2).record(),
            }
        )
    )
    other = sweep.Conditional(MOMENTUM.space, when={"optimizer.name": ["adam", "sgd"]})
    with pytest.raises(ValueError, match=r"different search(.|\n)*search.space.*'adam', 'sgd'"):
        sweep.search(config, sweep.SearchSpec({**space, "optimizer.momentum": other}, 2), tmp_path)
    with pytest.raises(ValueError, match=r"search.objectives: None -> \['metric', 'params'\]"):
        sweep.search(config, sweep.SearchSpec(space, 2, objectives=("metric", "params")), tmp_path)
    assert not (tmp_path / "study.journal").exists()


def test_the_command_line_reads_a_condition_after_a_bar():
    specs = ["optimizer.name=adam,sgd", "optimizer.momentum=uniform(0.5,0.99)|optimizer.name=sgd"]
    assert sweep.parse_space(specs, _small()) == {
        "optimizer.name": ["adam", "sgd"],
        "optimizer.momentum": MOMENTUM,
    }
    two = sweep.parse_space(["model.hidden_size=8|optimizer.name=sgd|model.cell=lstm,gru"])
    assert two["model.hidden_size"].when == {
        "optimizer.name": ["sgd"],
        "model.cell": ["lstm", "gru"],
    }
    with pytest.raises(ValueError, match="'optimizer.momentum'.*not a uniform range"):
        sweep.parse_space(["optimizer.momentum=0.9|optimizer.learning_rate=uniform(0.1,0.2)"])


@pytest.mark.slow
def test_a_conditional_key_is_suggested_exactly_where_its_condition_holds(tmp_path):
    """Momentum only in the sgd trials: absent from Optuna's params, overrides and name
    elsewhere, where the trial's config keeps the base config's momentum."""
    config = _small(**{"train.num_steps": 8})
    spec = sweep.SearchSpec({**CONDITIONAL, "model.hidden_size": [8, 16]}, 5, "random", seed=2)
    result = sweep.search(config, spec, tmp_path)
    study = _study(tmp_path).trials
    assert {t.params["optimizer.name"] for t in study} == {"adam", "sgd"}
    for frozen, trial in zip(study, result.trials, strict=True):
        sgd = frozen.params["optimizer.name"] == "sgd"
        assert ("optimizer.momentum" in frozen.params) == sgd
        assert trial.overrides == frozen.params
        assert ("momentum=" in trial.name) == sgd
        saved = json.loads((trial.workdir / "config.json").read_text())["optimizer"]
        want = frozen.params["optimizer.momentum"] if sgd else config.optimizer.momentum
        assert saved["momentum"] == want
        assert list(trial.overrides)[0] == "optimizer.name"  # the condition's key first


def _pareto_front(values, signs):
    """Indices of the points no other point dominates (as good in every objective, better
    in one); ``signs``: +1 where higher is better, -1 where lower is."""
    front = []
    for i, a in enumerate(values):
        dominated = False
        for j, b in enumerate(values):
            pairs = [(s * x, s * y) for s, x, y in zip(signs, b, a, strict=True)]
            if j != i and all(x >= y for x, y in pairs) and any(x > y for x, y in pairs):
                dominated = True
        if not dominated:
            front.append(i)
    return front


@pytest.mark.slow
def test_the_pareto_column_marks_exactly_the_trials_no_other_dominates(tmp_path):
    """Validation accuracy (max) against parameter count (min): each trial's values from its
    report and its model's abstract parameters, the front from a plain double loop."""
    config = _small(**{"train.num_steps": 8})
    spec = sweep.SearchSpec(SPACE, 5, "random", seed=4, objectives=("metric", "params"))
    result = sweep.search(config, spec, tmp_path)
    study = _study(tmp_path)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] + [
        optuna.study.StudyDirection.MINIMIZE
    ]
    values = []
    for trial, frozen in zip(result.trials, study.trials, strict=True):
        accuracy = json.loads((trial.workdir / "report.json").read_text())["results"]
        abstract = setup(sweep.apply_overrides(config, trial.overrides)).abstract_params
        count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract))
        values.append((accuracy["validation"]["accuracy"], count))
        assert frozen.values == list(values[-1])
        assert trial.objectives == {"validation_accuracy": values[-1][0], "parameters": count}
    front = _pareto_front(values, signs=(1, -1))
    assert 0 < len(front) < len(values), "a seed whose front leaves some trials out"
    assert [i for i, t in enumerate(result.trials) if t.pareto] == front
    with open(tmp_path / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [i for i, row in enumerate(table) if row["pareto"] == "True"] == front
    assert [float(row["parameters"]) for row in table] == [v[1] for v in values]
    assert "Pareto-optimal (no other" in (tmp_path / "sweep.md").read_text()
    for name in ("search_pareto.png", "search_history.png"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.slow
def test_an_interrupted_trials_wall_time_adds_up_its_attempts(tmp_path, monkeypatch):
    """The first trial is preempted after 8 steps and a second of other work; its retry's
    wall-time objective is both attempts' time around train_and_evaluate."""
    durations = []

    def timed(config, workdir, **kwargs):
        start = time.monotonic()
        try:
            if not durations:
                train_and_evaluate(config, workdir, stop_after_steps=8, **kwargs)
                time.sleep(1.0)
                raise Preempted("SIGTERM: saved step 8")
            return train_and_evaluate(config, workdir, **kwargs)
        finally:
            durations.append((workdir, time.monotonic() - start))

    monkeypatch.setattr(search_lib, "train_and_evaluate", timed)
    spec = sweep.SearchSpec(SPACE, 2, "random", seed=5, objectives=("metric", "wall_time"))
    with pytest.raises(Preempted):
        sweep.search(_small(), spec, tmp_path)
    result = sweep.search(_small(), spec, tmp_path)
    assert [t.status for t in result.trials] == ["done"] * 2
    assert len({t.name for t in result.trials}) == 2  # the resumed sampler drew new values
    for trial in result.trials:
        want = sum(seconds for workdir, seconds in durations if workdir == trial.workdir)
        assert trial.objectives["trial_time_s"] == pytest.approx(want, abs=0.25), trial.name
    assert sum(w == result.trials[0].workdir for w, _ in durations) == 2


@pytest.mark.slow
def test_kill_9_of_the_search_loses_no_trial_and_runs_none_twice(tmp_path, monkeypatch):
    """experiments/sweep.py --search killed (SIGKILL) at random moments, then run until it
    finishes: read back from the journal, the study holds exactly --trials trials, each
    finished once under its own name, every interrupted attempt asked again exactly once
    with its values, and no trial folder outside them."""
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # the progress lines the kills are timed by
    command = [
        sys.executable,
        str(ROOT / "experiments" / "sweep.py"),
        f"--config={ROOT / 'configs' / 'test.py'}",
        f"--workdir={tmp_path}",
        "--search=random",
        "--trials=3",
        "--space=model.hidden_size=8,16",
        "--space=optimizer.learning_rate=log_uniform(1e-3,3e-2)",
        "--config.train.num_steps=16",
    ]
    kills = kill_until_finished(command, attempts=3, window=(0.0, 2.5), seed=1)
    assert kills >= 1, "the search finished before any kill: make it longer"

    trials = _study(tmp_path).trials
    assert len({t.number for t in trials}) == len(trials)
    counted = [t for t in trials if not t.user_attrs.get(search_lib.INTERRUPTED)]
    assert len(counted) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    names = [t.user_attrs["name"] for t in counted]
    assert len(set(names)) == 3
    for attempt in (t for t in trials if t.user_attrs.get(search_lib.INTERRUPTED)):
        assert attempt.state == optuna.trial.TrialState.FAIL
        (retry,) = [t for t in trials if t.user_attrs.get(search_lib.RETRY_OF) == attempt.number]
        assert attempt.params.items() <= retry.params.items()
        assert attempt.user_attrs.get("name", retry.user_attrs["name"]) == retry.user_attrs["name"]
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == sorted(names)
    for name in names:
        report = json.loads((tmp_path / "trials" / name / "report.json").read_text())
        assert report["steps"] == 16


def test_a_conditional_key_is_checked_in_a_trial_where_its_condition_holds():
    """data.options.length is an option of the adding problem, not of digits: checked with
    the dataset its condition names, accepted there and refused under digits."""
    adding = sweep.Conditional([20, 40], when={"data.name": ["adding"]})
    space = {"data.name": ["digits", "adding"], "data.options.length": adding}
    search_lib._check_spec(_small(), sweep.SearchSpec(space, trials=2))
    digits = sweep.Conditional([20], when={"data.name": ["digits"]})
    with pytest.raises(ValueError, match="length is not an option of dataset 'digits'"):
        search_lib._check_spec(
            _small(), sweep.SearchSpec({**space, "data.options.length": digits}, 2)
        )


def test_a_retry_queued_before_a_kill_is_not_queued_again(tmp_path):
    """A kill between queueing an interrupted trial's retry and marking it leaves the trial
    running with its retry queued: the next invocation marks it and queues nothing more."""
    study = search_lib._study(tmp_path, sweep.SearchSpec(SPACE, 2), "max")
    running = study.ask()
    running.suggest_categorical("model.hidden_size", [8, 16])
    study.enqueue_trial(running.params, user_attrs={search_lib.RETRY_OF: running.number})
    search_lib._ask_again_for_interrupted(study, optuna)
    search_lib._ask_again_for_interrupted(study, optuna)  # and again: nothing changes
    states = [(t.state, t.user_attrs) for t in _study(tmp_path).trials]
    assert states == [
        (optuna.trial.TrialState.FAIL, {search_lib.INTERRUPTED: True}),
        (optuna.trial.TrialState.WAITING, {search_lib.RETRY_OF: 0}),
    ]


@pytest.mark.slow
def test_a_journal_lock_left_by_a_killed_search_does_not_stall_the_next(tmp_path, caplog):
    """Optuna's journal lock (a symlink) of a process killed while writing: the next search
    (holding the workdir) removes it instead of waiting out Optuna's 30 s grace period."""
    (tmp_path / "study.journal.lock").symlink_to(tmp_path / "study.journal")
    optuna.logging.enable_propagation()
    try:
        started = time.monotonic()
        sweep.search(_small(**{"train.num_steps": 8}), sweep.SearchSpec(SPACE, 1), tmp_path)
    finally:
        optuna.logging.disable_propagation()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("optuna")] == []
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(("startup", "pruned"), [(None, False), (2, True)])
def test_startup_trials_let_the_median_pruner_prune_after_that_many_finished(startup, pruned):
    """Two finished trials at 1.0; a third reports 0.0 (accuracy, maximised): Optuna's
    default median pruner waits for 5 finished trials, startup_trials=2 for two."""
    spec = sweep.SearchSpec(SPACE, 3, pruner="median", startup_trials=startup)
    study = optuna.create_study(direction="maximize", pruner=search_lib._pruner(spec))
    for _ in range(2):
        trial = study.ask()
        trial.report(1.0, step=1)
        study.tell(trial, 1.0)
    third = study.ask()
    third.report(0.0, step=1)
    assert bool(third.should_prune()) is pruned


def test_tpe_with_startup_trials_models_after_that_many_random_draws():
    """TPE's first ``startup_trials`` draws are its random sampler's; the next is modelled
    (here: not the random sampler's next draw)."""
    spec = sweep.SearchSpec(SPACE, 4, startup_trials=2, seed=3)
    tpe = optuna.create_study(direction="maximize", sampler=search_lib._sampler(spec))
    alone = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(3))
    drawn = {"tpe": [], "random": []}
    for name, study in (("tpe", tpe), ("random", alone)):
        for value in (0.2, 0.9, 0.5):
            trial = study.ask()
            drawn[name].append(trial.suggest_float("x", 1e-3, 1.0, log=True))
            study.tell(trial, value)
    assert drawn["tpe"][:2] == drawn["random"][:2]
    assert drawn["tpe"][2] != drawn["random"][2]


@pytest.mark.slow
def test_values_suggested_again_keep_their_first_runs_wall_time(tmp_path):
    """One choice only: the second trial is the first's twin (the same folder, whose run
    only evaluates again); its wall-time objective is the first run's, not that."""
    spec = sweep.SearchSpec(
        {"model.hidden_size": [8]}, 2, "random", objectives=("metric", "wall_time")
    )
    result = sweep.search(_small(), spec, tmp_path)
    first, twin = (t.objectives["trial_time_s"] for t in result.trials)
    assert twin == first
    study = _study(tmp_path)
    assert [t.values[1] for t in study.trials] == [first, first] and first > 0.5
