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
import contextlib
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from fnn_jax import config as config_lib
from fnn_jax.files import workdir_lock, write_atomic
from fnn_jax.sweep import results as results_lib
from fnn_jax.sweep.plot import plot_sweep
from fnn_jax.sweep.results import SweepResult, TrialResult
from fnn_jax.sweep.spec import Overrides, Trial, validate_sweep
from fnn_jax.train import Preempted, train_and_evaluate, train_together
from fnn_jax.train import pbt as pbt_lib
from fnn_jax.train.preemption import clear_preemption, interrupt, request_preemption
from fnn_jax.train.vectorized import group_key

log = logging.getLogger("fnn_jax")
BACKENDS = ("local", "ray")


def run(  # noqa: PLR0913 (the sweep's options, all keywords)
    config: ml_collections.ConfigDict,
    trials: Sequence[Overrides],
    workdir: str | os.PathLike,
    *,
    parallel: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    vectorize: bool = False,
    halving: int = 0,
    pbt: pbt_lib.PBTSpec | None = None,
) -> SweepResult:
    """Runs every trial of the sweep (``config`` with each trial's overrides) in ``workdir``.

    All trials are validated before any runs. A trial that raises is recorded (type, message;
    traceback in its error.txt) and the others go on. ``parallel`` > 1 runs that many trials
    at once in spawned worker processes, the machine's cores split among them (see
    ``_init_worker``). ``backend="ray"`` sends the trials to a Ray cluster instead
    (``ray.init(address=ray_address)``; None starts a local one); the trial workdirs must then
    be on storage every node can reach. ``vectorize``: trials that differ only in seed and
    scalar optimizer settings train together as one vmapped program (a unit of work; see
    ``vectorized.group_key``); the others run alone. ``halving`` (eta >= 2, with
    ``vectorize``): successive halving inside each vectorised group (``train_together``);
    a pruned trial keeps its checkpoint, shows as pruned and is not run again. ``pbt``
    (with ``vectorize``): population-based training inside each vectorised group
    (fnn_jax.train.pbt); each group's lineage is ``pbt.jsonl`` / ``pbt.png`` in its first
    trial's workdir, named in the result's paths.
    KeyboardInterrupt stops the sweep; running it again continues it.
    """
    if halving and not vectorize:
        raise ValueError("halving prunes inside a vectorised group: use it with vectorize")
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1; got {parallel}")
    config_lib.check_choice("backend", backend, BACKENDS)
    planned = validate_sweep(config, trials)
    if pbt is not None:
        _check_pbt(pbt, planned, vectorize, halving)
    workdir = Path(workdir).absolute()
    with workdir_lock(workdir):
        spec = _check_spec(workdir, config, planned)
        trial_results = [_previous(trial, workdir / "trials" / trial.name) for trial in planned]
        todo = [i for i, r in enumerate(trial_results) if r.status != "done"]
        log.info("sweep %s: %d trials, %d to run", workdir, len(planned), len(todo))

        def record(i: int, outcome: TrialOutcome) -> None:
            trial = trial_results[i]
            trial.status, trial.report, trial.error = outcome.status, outcome.report, outcome.error
            log.info("trial %s: %s", trial.name, trial.error or trial.status)
            results_lib.write_tables(_summarise(workdir, trial_results), spec)

        results_lib.write_tables(_summarise(workdir, trial_results), spec)
        units = _units(planned, todo, vectorize)
        work = [
            (
                [planned[i].config for i in unit],
                [str(trial_results[i].workdir) for i in unit],
                halving,
                pbt,
            )
            for unit in units
        ]
        if units:
            with _executor(backend, min(parallel, len(units)), ray_address) as executor:
                pending = {executor.submit(_run_unit, *unit): u for u, unit in enumerate(work)}
                for future in executor.as_completed(pending):
                    u = pending[future]
                    for i, outcome in zip(
                        units[u], _unit_outcomes(future, len(units[u])), strict=True
                    ):
                        record(i, outcome)

        result = _summarise(workdir, trial_results)
        result.paths["plot"] = workdir / "sweep.png"
        plot_sweep(result, result.paths["plot"])
        lineages = sorted((workdir / "trials").glob(f"*/{pbt_lib.PLOT}")) if pbt else []
        for n, path in enumerate(lineages):
            result.paths["pbt" if n == 0 else f"pbt{n + 1}"] = path
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


def _check_pbt(spec: pbt_lib.PBTSpec, planned: list[Trial], vectorize: bool, halving: int) -> None:
    """PBT's refusals, before any trial runs: without ``vectorize``, with halving, in a
    group of one trial (named), or (where the config says) between validations."""
    if not vectorize:
        raise ValueError("pbt exploits and explores inside a vectorised group: use vectorize")
    groups: dict[str, list[Trial]] = {}
    for trial in planned:
        groups.setdefault(group_key(trial.config), []).append(trial)
    for members in groups.values():
        try:
            pbt_lib.check(spec, [t.config for t in members], halving=halving)
        except ValueError as error:
            names = ", ".join(t.name for t in members)
            raise ValueError(f"trials [{names}]: {error}") from None


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
    saved = config_lib.in_current_schema(old["config"])  # keys added since: their defaults
    differ = config_lib.differences(saved, spec["config"])
    how = [d for d in differ if d.split(":")[0] in config_lib.EXECUTION_KEYS]
    if how:  # how the model runs, not what the experiment is
        log.warning("resuming sweep %s with changed settings:\n  %s", workdir, "\n  ".join(how))
    problems = [f"base config {d}" for d in differ if d not in how]
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
        # A report beside an error.txt: an attempt failed (e.g. the trial was busy in a
        # worker of a killed sweep) and a later one finished it; the error is stale.
        (trial_dir / "error.txt").unlink(missing_ok=True)
        result.status, result.reused = "done", True
        result.report = json.loads(report.read_text())
    return result


def _units(planned: list[Trial], todo: list[int], vectorize: bool) -> list[list[int]]:
    """The ``todo`` trials as units of work: each alone, or with ``vectorize`` grouped by
    ``group_key`` (in order of first appearance)."""
    if not vectorize:
        return [[i] for i in todo]
    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(group_key(planned[i].config), []).append(i)
    units = list(groups.values())
    log.info("vectorised: %d trials in %d programs", len(todo), len(units))
    return units


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """What one run of a trial gave: done (with its report), failed (``"Type: message"``;
    the traceback in its error.txt) or pending (it stopped early on its own; resumable)."""

    status: str
    report: dict[str, Any] | None = None
    error: str = ""


def _run_unit(
    configs: list[ml_collections.ConfigDict],
    dirs: list[str],
    halving: int = 0,
    pbt: pbt_lib.PBTSpec | None = None,
) -> list[TrialOutcome]:
    """One unit of work, in this process, a worker or a Ray task: one outcome per trial.

    Exceptions become a failed outcome (traceback to error.txt). Preempted (SIGTERM: the
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
            results = train_together(configs, paths, halving=halving, pbt=pbt)
    except Preempted:
        raise
    except Exception as e:  # for a group: the whole program failed, so every trial did
        results = [e] * len(configs)
    return [_outcome(result, path) for result, path in zip(results, paths, strict=True)]


def _outcome(result: dict[str, Any] | Exception, trial_dir: Path) -> TrialOutcome:
    """A run's report, interruption or exception, as the sweep records it."""
    if isinstance(result, Exception):
        write_atomic(trial_dir / "error.txt", "".join(traceback.format_exception(result)))
        return TrialOutcome("failed", error=f"{type(result).__name__}: {result}")
    if "interrupted_at" in result:
        return TrialOutcome("pending")
    if "pruned_at" in result:
        return TrialOutcome("pruned", error=f"pruned at step {result['pruned_at']}")
    return TrialOutcome("done", report=result)


def _unit_outcomes(future: futures.Future, size: int) -> list[TrialOutcome]:
    """A finished unit's outcomes. Preempted stops the sweep; any other exception here is
    the backend's (a worker process or Ray node lost), so every trial of the unit failed."""
    try:
        return future.result()
    except Preempted:
        raise
    except Exception as e:
        return [TrialOutcome("failed", error=f"{type(e).__name__}: {e}")] * size


# ---------------------------------------------------------------------------- backends


@contextlib.contextmanager
def _executor(backend: str, workers: int, ray_address: str | None) -> Iterator[Any]:
    """Where units run: an object with ``submit(fn, *args) -> Future`` and
    ``as_completed(futures)``: in this process, in worker processes, or on Ray."""
    if backend == "ray":
        with _ray_executor(ray_address) as executor:
            yield executor
    elif workers > 1:
        with _process_pool(workers) as executor:
            yield executor
    else:
        yield _InlineExecutor()


class _InlineExecutor:
    """Runs each unit in this process, in order, as the loop asks for the next result."""

    def __init__(self):
        self._calls: dict[futures.Future, tuple] = {}

    def submit(self, fn, *args) -> futures.Future:
        future = futures.Future()
        self._calls[future] = (fn, args)
        return future

    def as_completed(self, pending) -> Iterator[futures.Future]:
        for future in pending:
            fn, args = self._calls.pop(future)
            try:
                future.set_result(fn(*args))
            except Exception as e:  # KeyboardInterrupt and the like stop the sweep at once
                future.set_exception(e)
            yield future


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
    _die_with_parent(os.getppid())
    cpus = shares.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    threads = str(len(cpus))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # SIGTERM (forwarded by the parent) and Ctrl-C (the terminal's, sent to every process
    # of the group) must never kill a worker mid-setup: the trial's run notices and stops
    # at a step boundary with its state saved.
    signal.signal(signal.SIGTERM, request_preemption)
    signal.signal(signal.SIGINT, interrupt)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its sweep: after kill -9 of the sweep, idle workers would
    otherwise live on for good, and running ones hold their trials' workdir locks. Linux
    sends SIGKILL on the parent's death (the trial resumes from its last checkpoint, as
    after any kill -9); elsewhere a watchdog thread polls the parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL) == 0:
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def _process_pool(workers: int) -> Iterator[Any]:
    """``workers`` spawned processes ('spawn': a fork of a process that already started
    JAX's threads can deadlock), the cores split among them. SIGTERM and a first Ctrl-C are
    forwarded to them as SIGTERM; on Preempted the running trials finish saving before we
    exit; on KeyboardInterrupt (a second Ctrl-C) units not yet started are cancelled."""
    context = multiprocessing.get_context("spawn")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus = cpus or list(range(os.cpu_count() or 1))
    shares = context.Queue()
    for share in _split_cpus(cpus, workers):
        shares.put(share)
    pool = futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(shares,)
    )
    pool.as_completed = futures.as_completed

    def forward_sigterm(signum, frame) -> None:
        # Preemption: each worker's run saves at its next step boundary and raises
        # Preempted, which reaches this process through the futures and stops the sweep.
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def forward_interrupt(signum, frame) -> None:
        # The first Ctrl-C stops the workers as SIGTERM does; a second aborts this process
        # (the workers die with it; their trials resume from their last checkpoints).
        interrupt(signum, frame)
        forward_sigterm(signum, frame)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, forward_sigterm)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, forward_interrupt)
    try:
        yield pool
    except Preempted:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        clear_preemption()  # this process's own flag, set by a Ctrl-C
    pool.shutdown()


# ---------------------------------------------------------------------------- ray


@contextlib.contextmanager
def _ray_executor(address: str | None) -> Iterator[Any]:
    """Units as Ray tasks (one CPU each); their ObjectRefs as concurrent futures. A task
    that dies (its node lost, say) is recorded as failed and retried by the next run."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "backend='ray' needs the optional package ray: pip install -e '.[ray]'"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remotes: dict[Any, Any] = {}  # fn -> its Ray task (a sweep's units, a search's workers)

    def submit(fn, *args) -> futures.Future:
        if fn not in remotes:
            remotes[fn] = ray.remote(num_cpus=1)(fn)
        return remotes[fn].remote(*args).future()

    executor = types.SimpleNamespace(submit=submit, as_completed=futures.as_completed)
    try:
        yield executor
    finally:
        if started_here:
            ray.shutdown()
