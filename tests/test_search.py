"""Adaptive search (fnn_jax.sweep.search, Optuna): trials are runs in their own folders,
the study resumes from its journal, pruned trials keep their checkpoint and stay pruned,
an interrupted trial resumes with its values, bad specs are refused before any write."""

import json

import jax
import numpy as np
import optuna
import pytest

from fnn_jax import config as config_lib
from fnn_jax import sweep
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.sweep import adaptive as search_lib
from fnn_jax.train import Preempted, train_and_evaluate
from tests.test_reliability import _config

SPACE = {"optimizer.learning_rate": ("log_uniform", 1e-3, 3e-2), "model.hidden_size": [8, 16]}


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
    ],
)
def test_a_bad_search_is_refused_before_anything_is_written(spec, message, tmp_path):
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
