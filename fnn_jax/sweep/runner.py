"""``run``: a list of trials, each a ``train_and_evaluate`` in its own sub-workdir.

Layout of a sweep workdir::

    sweep.json  the spec (base config + trials; a re-run with another spec is refused) and results
    sweep.csv   one row per trial          sweep.md   the same, plus seed averages and failures
    sweep.png   metric vs swept values, and all validation curves
    trials/<name>/   an ordinary run workdir (config.json, checkpoints, report.json, ...)

Re-running the same sweep skips finished trials (report.json present, config.json equal to
the trial's config), resumes interrupted ones from their checkpoints (the runner does that)
and re-tries failed ones.

Work is handed out in units: one trial, or with ``vectorize`` a group of trials that differ
only in seed and scalar optimizer settings, trained together by
``fnn_jax.train.vectorized.train_together`` (each still in its own sub-workdir).
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from fnn_jax import config as config_lib
from fnn_jax.files import workdir_lock, write_atomic
from fnn_jax.sweep import results as results_lib
from fnn_jax.sweep.plot import plot_sweep
from fnn_jax.sweep.results import SweepResult, TrialResult
from fnn_jax.sweep.spec import Overrides, Trial, validate_sweep
from fnn_jax.train import train_and_evaluate
from fnn_jax.train.loop import Preempted, request_preemption
from fnn_jax.train.vectorized import group_key, train_together

log = logging.getLogger("fnn_jax")
BACKENDS = ("local", "ray")
# A unit of work: the configs of its trials and their workdirs (one trial, or a vectorised
# group); picklable, for worker processes and Ray tasks.
Work = tuple[list[ml_collections.ConfigDict], list[str]]


def run(
    config: ml_collections.ConfigDict,
    trials: Sequence[Overrides],
    workdir: str | os.PathLike,
    *,
    parallel: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    vectorize: bool = False,
) -> SweepResult:
    """Runs every trial of the sweep (``config`` with each trial's overrides) in ``workdir``.

    All trials are validated before any runs. A trial that raises is recorded (type, message;
    traceback in its error.txt) and the others go on. ``parallel`` > 1 runs that many trials
    at once in spawned worker processes, the machine's cores split among them (see
    ``_init_worker``). ``backend="ray"`` sends the trials to a Ray cluster instead
    (``ray.init(address=ray_address)``; None starts a local one); the trial workdirs must then
    be on storage every node can reach. ``vectorize``: trials that differ only in seed and
    scalar optimizer settings train together as one vmapped program (a unit of work; see
    ``vectorized.group_key``); the others run alone. KeyboardInterrupt stops the sweep;
    running it again continues it.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1; got {parallel}")
    config_lib.check_choice("backend", backend, BACKENDS)
    planned = validate_sweep(config, trials)
    workdir = Path(workdir).absolute()
    with workdir_lock(workdir):
        spec = _check_spec(workdir, config, planned)
        trial_results = [_previous(trial, workdir / "trials" / trial.name) for trial in planned]
        todo = [i for i, r in enumerate(trial_results) if r.status != "done"]
        log.info("sweep %s: %d trials, %d to run", workdir, len(planned), len(todo))

        def record(i: int, outcome: dict[str, Any]) -> None:
            trial = trial_results[i]
            trial.status, trial.report, trial.error = (
                outcome["status"],
                outcome.get("report"),
                outcome.get("error", ""),
            )
            log.info("trial %s: %s %s", trial.name, trial.status, trial.error)
            results_lib.write_tables(_summarise(workdir, trial_results), spec)

        results_lib.write_tables(_summarise(workdir, trial_results), spec)
        units = _units(planned, todo, vectorize)
        work = [
            ([planned[i].config for i in unit], [str(trial_results[i].workdir) for i in unit])
            for unit in units
        ]

        def record_unit(u: int, outcomes: list[dict[str, Any]]) -> None:
            for i, outcome in zip(units[u], outcomes, strict=True):
                record(i, outcome)

        workers = min(parallel, len(units))
        if backend == "ray" and units:
            _run_ray(work, ray_address, record_unit)
        elif workers <= 1:
            for u, (configs, dirs) in enumerate(work):
                record_unit(u, _run_unit(configs, dirs))
        else:
            _run_parallel(work, workers, record_unit)

        result = _summarise(workdir, trial_results)
        result.paths["plot"] = workdir / "sweep.png"
        plot_sweep(result, result.paths["plot"])
        results_lib.write_tables(result, spec)
        return result


def _summarise(workdir: Path, trials: list[TrialResult]) -> SweepResult:
    metric, mode = results_lib.sweep_metric(trials)
    return SweepResult(
        workdir=workdir,
        trials=trials,
        metric=metric,
        mode=mode,
        best=results_lib.best_trial(trials, metric, mode),
        seed_groups=results_lib.seed_groups(trials, metric),
        paths={name: workdir / f"sweep.{name}" for name in ("json", "csv", "md")},
    )


def _check_spec(
    workdir: Path, config: ml_collections.ConfigDict, planned: list[Trial]
) -> dict[str, Any]:
    """The sweep's spec; refuses a workdir that holds a sweep with another base config or
    other trials (mixing them would make one table out of two experiments)."""
    spec = json.loads(
        json.dumps(
            {
                "config": config_lib.to_dict(config),
                "trials": [{"name": t.name, "overrides": t.overrides} for t in planned],
            },
            default=list,
        )
    )
    path = workdir / "sweep.json"
    if not path.exists():
        return spec
    old = json.loads(path.read_text())["spec"]
    problems = [f"base config {d}" for d in config_lib.differences(old["config"], spec["config"])]
    before = {t["name"]: t["overrides"] for t in old["trials"]}
    after = {t["name"]: t["overrides"] for t in spec["trials"]}
    problems += [f"trial {n} is new" for n in after if n not in before]
    problems += [f"trial {n} was dropped" for n in before if n not in after]
    problems += [f"trial {n} changed" for n in after if n in before and after[n] != before[n]]
    if problems:
        raise ValueError(
            f"{workdir} holds a different sweep; refusing to mix the two (use a new workdir):\n  "
            + "\n  ".join(problems)
        )
    return spec


def _previous(trial: Trial, trial_dir: Path) -> TrialResult:
    """The trial as done if its workdir holds a finished run of exactly this config."""
    result = TrialResult(trial.name, trial.overrides, trial_dir)
    report, saved = trial_dir / "report.json", trial_dir / "config.json"
    finished = report.exists() and saved.exists()
    if finished and json.loads(saved.read_text()) == config_lib.to_dict(trial.config):
        result.status, result.reused = "done", True
        result.report = json.loads(report.read_text())
    return result


def _units(planned: list[Trial], todo: list[int], vectorize: bool) -> list[list[int]]:
    """The ``todo`` trials as units of work: each alone, or with ``vectorize`` grouped by
    ``group_key`` (in order of first appearance; a trial that fine-tunes stays alone)."""
    if not vectorize:
        return [[i] for i in todo]
    groups: dict[str, list[int]] = {}
    units = []
    for i in todo:
        key = group_key(planned[i].config)
        if key is None:
            units.append([i])
        elif key in groups:
            groups[key].append(i)
        else:
            groups[key] = [i]
            units.append(groups[key])
    log.info("vectorised: %d trials in %d programs", len(todo), len(units))
    return units


def _run_unit(configs: list[ml_collections.ConfigDict], dirs: list[str]) -> list[dict[str, Any]]:
    """One unit of work, in this process, a worker or a Ray task: per trial, {"status",
    "report"} or {"status", "error"}.

    Exceptions become a failed status (traceback to error.txt). Preempted (SIGTERM: the
    trials saved their state), KeyboardInterrupt and other BaseExceptions propagate and stop
    the sweep: the trials are not broken, and the next invocation resumes them.
    """
    paths = [Path(d) for d in dirs]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        (path / "error.txt").unlink(missing_ok=True)
    try:
        if len(configs) == 1:
            results = [train_and_evaluate(configs[0], paths[0])]
        else:
            results = train_together(configs, paths)
    except Preempted:
        raise
    except Exception as e:  # for a group: the whole program failed, so every trial did
        results = [e] * len(configs)
    return [_outcome(result, path) for result, path in zip(results, paths, strict=True)]


def _outcome(result: dict[str, Any] | Exception, trial_dir: Path) -> dict[str, Any]:
    """A run's report, interruption or exception, as the sweep records it."""
    if isinstance(result, Exception):
        write_atomic(trial_dir / "error.txt", "".join(traceback.format_exception(result)))
        return {"status": "failed", "error": f"{type(result).__name__}: {result}"}
    if "interrupted_at" in result:  # the runner stopped early on its own; resumable
        return {"status": "pending"}
    return {"status": "done", "report": result}


# ---------------------------------------------------------------------------- parallel


def _split_cpus(cpus: list[int], n: int) -> list[list[int]]:
    """n disjoint, near-equal shares of the CPUs (one each, reused, if there are fewer)."""
    if n <= len(cpus):
        return [cpus[i::n] for i in range(n)]
    return [[cpus[i % len(cpus)]] for i in range(n)]


def _init_worker(shares: Any) -> None:
    """Runs first in each worker: confines it to its share of the cores.

    JAX is already imported here (unpickling this function imports fnn_jax), but its backend
    is not yet started, and XLA sizes its thread pools from the affinity mask only when it
    starts. So: pin the process to its CPUs (rather than XLA_FLAGS, which also change the
    compilation-cache key); limit BLAS/OpenMP threads; and do not let each worker grab most
    of a GPU's memory up front.
    """
    cpus = shares.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    threads = str(len(cpus))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # SIGTERM (forwarded by the parent) must never kill a worker mid-setup: the trial's run
    # notices it and stops at a step boundary with its state saved.
    signal.signal(signal.SIGTERM, request_preemption)


def _run_parallel(work: list[Work], workers: int, record_unit: Any) -> None:
    """Runs the units of ``work`` in ``workers`` spawned processes ('spawn': a fork of a
    process that already started JAX's threads can deadlock). On KeyboardInterrupt, units not
    yet started are cancelled; running ones stop with their own SIGINT (Ctrl-C reaches the
    whole process group) or finish."""
    context = multiprocessing.get_context("spawn")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus = cpus or list(range(os.cpu_count() or 1))
    shares = context.Queue()
    for share in _split_cpus(cpus, workers):
        shares.put(share)
    pool = futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(shares,)
    )

    def forward_sigterm(signum, frame) -> None:
        # Preemption: each worker's run saves at its next step boundary and raises
        # Preempted, which reaches this process through the futures and stops the sweep.
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward_sigterm) if on_main_thread else None
    try:
        pending = {pool.submit(_run_unit, *unit): u for u, unit in enumerate(work)}
        for future in futures.as_completed(pending):
            u = pending[future]
            try:
                outcomes = future.result()
            except futures.process.BrokenProcessPool as e:  # a worker died (out of memory?)
                outcomes = [{"status": "failed", "error": f"BrokenProcessPool: {e}"}] * len(
                    work[u][0]
                )
            record_unit(u, outcomes)
    except Preempted:  # let the other running trials finish saving before we exit
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    pool.shutdown()


# ---------------------------------------------------------------------------- ray


def _run_ray(work: list[Work], address: str | None, record_unit: Any) -> None:
    """Runs the units of ``work`` as Ray tasks (one CPU each), recording each as it finishes.

    A task that dies (its node lost, say) is recorded as failed and retried by the next run.
    """
    try:
        import ray
    except ImportError:
        raise ImportError(
            "backend='ray' needs the optional package ray: pip install -e '.[ray]'"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(_run_unit)
        pending = {remote.remote(*unit): u for u, unit in enumerate(work)}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            u = pending.pop(ready)
            try:
                outcomes = ray.get(ready)
            except ray.exceptions.RayError as e:
                failed = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                outcomes = [failed] * len(work[u][0])
            record_unit(u, outcomes)
    finally:
        if started_here:
            ray.shutdown()
