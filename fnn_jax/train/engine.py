"""The one training engine: K trials driven step by step, a single run being K = 1.

Read top to bottom: ``run`` trains every stage (``_train_stages``), then finishes each
trial (``_finish``: report, export, plots). ``_train_stage`` is the loop: dispatch the
steps up to the next point where something is due, count the non-finite steps skipped,
run the periodic actions registered in ``__init__`` (log: train metrics with the gradient,
parameter and update norms; validate: best step, early stopping, pruning, PBT's exploit
and explore (fnn_jax.train.pbt), save, stage end),
re-pack a group a halving rung shrank, start or stop the profile, and save and stop on an
interruption. This is written once here; only the stepper (``jit(step)`` or
``jit(vmap(step))``, see fnn_jax.train.steppers) differs between a run alone and a
vectorised group, whose bookkeeping hides in ``trial.Group``.

The trials of a group share the data, the model and the stage list; they differ only in
seed and scalar settings (fnn_jax.train.vectorized.VECTORIZABLE). They go through the stages
together: a trial whose stage ended (or stopped early) waits until every trial has ended
that stage, then all start the next one with fresh optimizer states. Waiting changes
nothing, since a trial's batches and dropout keys are functions of its own step, so each
trial ends as it would alone.

What the trials share and what each holds: fnn_jax.train.trial. A finished trial's report,
export and plots (from which parameters): fnn_jax.train.finish.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fnn_jax import finetune, reporting
from fnn_jax.cells import fixed_point
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.data import augment
from fnn_jax.finetune import Stage
from fnn_jax.optim import make_optimizer, schedule
from fnn_jax.train import diagnostics, distributed, feeds, finish, mesh, steppers
from fnn_jax.train import pbt as pbt_lib
from fnn_jax.train.preemption import (
    Preempted,
    PreemptionFlag,
    clear_preemption,
    request_preemption,
    requested_by,
)
from fnn_jax.train.profile import Profile
from fnn_jax.train.steps import (
    StepSpec,
    TrainState,
    build_model,
    compute_features,
    init_params,
    initial_carry,
    make_eval_step,
    split_sums,
    zero_sums,
)
from fnn_jax.train.trial import Group, Progress, Setup, Trial, improves, restore, setup
from fnn_jax.tree import paths, require_matches

log = logging.getLogger("fnn_jax")


@dataclasses.dataclass(frozen=True)
class Periodic:
    """An action run after a dispatch for the rows of a Group at a multiple of ``every``
    steps or at their stage's end: ``run(group, due, stepper)``."""

    name: str
    every: int
    run: Callable[[Group, list[bool], steppers.Stepper], None]


def _raises_on_nonconvergence(config: ml_collections.ConfigDict) -> bool:
    return config.model.cell == "equilibrium" and (
        config.model.equilibrium.on_nonconvergence == "raise"
    )


def _with_policy(model: ml_collections.ConfigDict, policy: str) -> ml_collections.ConfigDict:
    """config.model with the equilibrium cell's on_nonconvergence set to ``policy``."""
    model = ml_collections.ConfigDict(model.to_dict())
    model.equilibrium.on_nonconvergence = policy
    return model


def rows_on_host() -> bool:
    """Whether the train rows stay on the host (several processes: each sends its devices
    only their slice of every batch) rather than on every device."""
    return jax.process_count() > 1


class Engine:
    """Trains K trials (K = 1 for a single run) in their workdirs; see the module docstring."""

    def __init__(
        self,
        configs: Sequence[ml_collections.ConfigDict],
        workdirs: Sequence[Path],
        plan: Setup | None = None,
        on_validation: Callable[[int, dict[str, float]], bool] | None = None,
        halving: int = 0,
        *,
        pbt: pbt_lib.PBTSpec | None = None,
    ):
        """``on_validation(step, metrics)``, for a single run: called at every validation;
        True prunes the run there (it saves that step and returns ``{"pruned_at": step}``:
        an adaptive search's pruner, fnn_jax.sweep.adaptive). ``halving`` (eta >= 2), for a
        vectorised group: successive halving, at the validations numbered 1, eta, eta^2,
        ... the best 1/eta of the trials go on and the others are pruned there; the
        program is re-packed to the survivors, so the compute falls with them. ``pbt``,
        for a vectorised group: population-based training at its validations
        (fnn_jax.train.pbt; checked by ``pbt.check`` before the engine opens)."""
        self.started = time.time()
        self.on_validation = on_validation
        self.halving = halving
        self.pbt = pbt
        self.lineage: pbt_lib.Lineage | None = None  # pbt.jsonl, opened by ``run``
        self.plan = plan = plan or setup(configs[0])  # what the trials share
        self.config = configs[0]
        # "raise" on a missed fixed point stops only the trial that missed, in a group.
        self.halts_alone = len(configs) > 1 and _raises_on_nonconvergence(configs[0])
        if self.halts_alone:
            model = build_model(_with_policy(configs[0].model, fixed_point.HALT), plan.dataset)
            self.plan = plan = dataclasses.replace(plan, model=model)
        self.to_model = finetune.model_params(configs[0])
        self.eval_step = make_eval_step(plan.model, plan.task, self.to_model)
        self.log_every = configs[0].train.log_every_steps
        self._schedules: dict[tuple, Any] = {}  # (id(stage), unit) -> its jitted schedule
        # Zero train sums, shaped by the task (from abstract parameters: nothing is computed).
        abstract_params = plan.abstract_params
        # The devices (config.mesh), then the train rows and the validation batches, sent
        # to them once.
        self.layout = mesh.from_config(configs[0], abstract_params, batch_size=plan.batch_size)
        self.train_table = self._in_memory_feed()  # None for a streamed dataset
        self.validation_batches = feeds.eval_batches(
            plan.dataset, "validation", configs[0].data.eval_batch_size, self.layout
        )
        self.sums0 = zero_sums(plan.model, plan.task, abstract_params, plan.sample)
        # An L1/L2 term that is 0 in every trial stays out of the loss.
        self.penalties = tuple(
            name for name in ("l1", "l2") if any(c.regularization[name] for c in configs)
        )
        self.trials = [
            self._open(c, Path(w), len(configs) > 1) for c, w in zip(configs, workdirs, strict=True)
        ]
        # A streamed dataset: a reader per trial, each in its own order and position.
        self.streams: dict[Path, feeds.StreamedRows] = {}
        if plan.dataset.streams is not None:
            self.streams = {t.workdir: self._open_stream(t) for t in self.trials if t.in_training}
        # What happens between dispatches, in this order, for each trial whose step calls
        # for it (a multiple of ``every``, or its stage's last step); a dispatch ends at
        # the nearest such step. Non-finite steps are counted first (_read_health), an
        # interruption (preemption, stop_after_steps) saves last.
        self.periodic = (
            Periodic("log", self.log_every, self._log_train),
            Periodic("validate", plan.eval_every, self._validate),  # best, save, stage end
        )
        self.profile = Profile(configs[0].train.profile_steps, Path(workdirs[0]) / "profile")
        # The trials that train together in this process (a resumed group may hold some
        # that had already finished their training, or were pruned).
        self.group_size = sum(
            t.in_training and t.step < sum(s.num_steps for s in t.stages) for t in self.trials
        )

    # ------------------------------------------------------------------------ set-up

    def _in_memory_feed(self) -> Any:
        """The train rows on every device (a dispatch sends indices), or on the host
        (several processes: each sends only its slice of every batch); None for a
        streamed dataset (``_open_stream``)."""
        plan = self.plan
        if plan.dataset.streams is not None:
            return None
        table = steppers.host_train_table(plan.dataset.train, plan.window * plan.windows)
        if rows_on_host():
            return steppers.RowsOnHost(table)
        return self.layout.put(table, self.layout.replicated)

    def _open_stream(self, trial: Trial) -> feeds.StreamedRows:
        """A streamed dataset's reader for ``trial`` (its seed's order), at the step it
        resumes from and at the position saved with that step (every save keeps it)."""
        from fnn_jax.data.stream import EpochOrder  # grain: the stream extra

        plan, config = self.plan, trial.config
        order = EpochOrder(
            plan.dataset.num_rows("train"), plan.batch_size, seed=config.seed, windows=plan.windows
        )
        feed = feeds.StreamedRows(
            plan.dataset.streams["train"],
            order,
            sum(stage.num_steps for stage in trial.stages),
            workers=config.data.stream_workers,
            prefetch=config.data.stream_prefetch,
            time=plan.window * plan.windows,
        )
        if trial.step in trial.checkpoints.steps():
            saved = trial.checkpoints.restore_data(trial.step)
            if saved is None:
                log.info(
                    "step %d was saved without a data position: reading on from it", trial.step
                )
            feed.seek(trial.step, saved)
        elif trial.step:
            feed.seek(trial.step)
        trial.data_position = feed.position
        return feed

    def _fresh_state(self, params: Any, stage: Stage, step: int, carry: Any = None) -> TrainState:
        """A stage's first state; truncated BPTT's ``carry`` (default zeros) passes on."""
        tx = make_optimizer(
            stage.optimizer,
            stage.num_steps,
            params=params,
            rules=stage.rules,
            lr_mults=stage.lr_mults,
        )
        sums = jax.tree.map(jnp.zeros_like, self.sums0)
        if carry is None and self.plan.window:
            model_params = self.to_model(params)
            carry = initial_carry(self.plan.model, model_params, self.plan.sample, self.plan.window)
        return TrainState(jnp.asarray(step, jnp.int32), params, tx.init(params), sums, carry)

    def _open(self, config: ml_collections.ConfigDict, workdir: Path, grouped: bool) -> Trial:
        """A trial restored from its workdir's newest intact checkpoint, else fresh."""
        plan = self.plan
        init_key, dropout_key, lora_key = jax.random.split(jax.random.key(config.seed), 3)
        model_params = init_params(plan.model, init_key, plan.sample)
        # What the optimizer trains: the model's parameters, or those plus LoRA adapters.
        params = finetune.training_tree(config, model_params, lora_key)
        reg = config.regularization
        if (reg.l1 or reg.l2) and reg.exclude:
            require_matches(paths(params), [reg.exclude], "config.regularization.exclude")
        stages = finetune.stages(config, plan.steps_per_epoch, params)
        checkpoints = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
        restored = restore(
            checkpoints,
            lambda record: self._fresh_state(params, stages[record["stage"]], 0),
            reset_optimizer=config.train.reset_optimizer,
        )
        if restored is not None:
            step, state, record = restored
            progress = Progress.from_record(record)
            log.info("resumed %s from step %d", workdir, step)
        else:
            params, loaded = finetune.initial_params(config, params)
            state, step = self._fresh_state(params, stages[0], 0), 0
            ft = config.finetune
            progress = Progress(lora_rank=ft.lora_rank, lora_alpha=ft.lora_alpha, init_step=loaded)
        return Trial(
            # Pruned by an earlier run (a search's pruner or a halving rung): it stays so.
            outcome=None if progress.pruned_at is None else {"pruned_at": progress.pruned_at},
            config=config,
            workdir=workdir,
            checkpoints=checkpoints,
            metrics_log=reporting.MetricsLog(
                workdir, resume_step=step, writes=distributed.is_primary()
            ),
            stages=stages,
            progress=progress,
            state=steppers.host_copy(state),
            step=step,
            dropout_key=dropout_key,
            label=f"{workdir.name}: " if grouped else "",
        )

    # ------------------------------------------------------------------------ the loop

    def run(self, stop_after_steps: int | None = None) -> list[dict[str, Any] | Exception]:
        """Trains every trial to its end; per trial its report, ``{"interrupted_at": step}``
        after ``stop_after_steps`` group steps, or the exception that stopped it alone.
        SIGTERM or Ctrl-C saves every trial and raises Preempted; in the final evaluation
        too, once the trial being finished is (the next run finishes the others)."""
        preemption = PreemptionFlag()
        if self.pbt is not None:
            self._open_lineage()
        try:
            interrupted = self._train_stages(stop_after_steps, preemption)
            if self.lineage is not None and self.lineage.writes:
                pbt_lib.plot(self.trials[0].workdir, max(t.step for t in self.trials))
            if not preemption.requested:
                self._finish(interrupted, preemption)
        finally:
            preemption.restore()
        self._close(self.trials)
        if preemption.requested:
            by, phase = requested_by(), "" if interrupted else " in the final evaluation"
            clear_preemption()
            saved = ", ".join(f"step {t.step} in {t.workdir}" for t in self.trials)
            raise Preempted(f"{by}{phase}: saved {saved}; run again to resume")
        return [t.outcome for t in self.trials]

    def _train_stages(self, stop_after_steps: int | None, preemption: PreemptionFlag) -> bool:
        """Every stage of every trial in turn; True when interrupted (every trial saved)."""
        total = sum(s.num_steps for s in self.trials[0].stages)
        bar = reporting.Progress(
            total, min(t.step for t in self.trials), self.config.train.log_every_steps
        )
        self.ran = 0
        try:
            for index in range(len(self.trials[0].stages)):
                members = [t for t in self.trials if t.in_training and t.progress.stage == index]
                for trial in members:
                    if trial.step >= trial.stage_end or trial.patience_spent():
                        self._end_stage(trial)  # resumed at its end, or after its early stop
                members = [t for t in members if t.in_training and t.progress.stage == index]
                if members and self._train_stage(members, stop_after_steps, preemption, bar):
                    return True
            return False
        finally:
            self.profile.stop()
            bar.close()
            for trial in self.trials:
                trial.checkpoints.wait()
                trial.metrics_log.flush()

    def _finish(self, interrupted: bool, preemption: PreemptionFlag) -> None:
        """Each trial's outcome: ``{"interrupted_at": step}``, or its report (the best
        checkpoint evaluated, exported, plotted); a signal stops before the next trial."""
        trained = time.time()  # a group's trials share their training time
        for trial in self.trials:
            if preemption.requested:
                return
            if interrupted and trial.outcome is None:
                trial.outcome = {"interrupted_at": trial.step}
            elif trial.outcome is None:
                trial.outcome = self._finish_trial(trial, trained)

    def _finish_trial(self, trial: Trial, trained: float) -> dict[str, Any] | Exception:
        """The trial's report; in a group, a final evaluation that missed its fixed point
        under "raise" is that trial's outcome alone."""
        try:
            return finish.finish_trial(
                trial,
                self.plan,
                self._evaluate,
                self.to_model,
                wall_time_s=trained - self.started,
                group_size=self.group_size,
            )
        except fixed_point.NonConvergenceError as error:
            if not self.halts_alone:
                raise
            return error

    def _train_stage(
        self,
        members: list[Trial],
        stop_after_steps: int | None,
        preemption: PreemptionFlag,
        bar: reporting.Progress,
    ) -> bool:
        """Trains ``members`` (all in the same stage) until each ends it; True when
        interrupted (preemption or ``stop_after_steps``), every member saved.

        Each dispatch runs the steps up to the nearest point where some member logs,
        evaluates, ends its stage, the profile starts or stops or the run stops (at most
        the stepper's dispatch size), so every such point falls on the step it would fall
        on one step at a time. After it, the periodic actions run in their order."""
        for trial in members:
            self._announce_stage(trial)
        stepper = self._stepper(members)
        group = Group(members)
        while group.training:
            count = self._steps_to_next_point(group, stop_after_steps, stepper.dispatch_size)
            stepper.run(group.batch_indices(self.plan, count), count)
            group.advance(count)
            self.ran += count
            interrupt = self._interrupted(stop_after_steps, preemption)
            if interrupt or any(any(group.due(action.every)) for action in self.periodic):
                self._read_health(group, stepper)
            group.saved = set()
            for action in self.periodic:
                due = group.due(action.every)
                if any(due):
                    action.run(group, due, stepper)
            if group.shrunk and group.training:  # a halving rung cut trials
                group, stepper = self._repack(group, stepper)
            wait = functools.partial(jax.block_until_ready, stepper.state)
            self.profile.after_dispatch(self.ran, wait)
            self._show(bar, group)
            if interrupt:
                states = stepper.states()
                for i, trial in group.training:
                    if i not in group.saved:
                        trial.checkpoint(states[i], self.plan.steps_per_epoch, now=True)
                return True
        return False

    def _interrupted(self, stop_after_steps: int | None, preemption: PreemptionFlag) -> bool:
        """Whether to save and stop here: ``stop_after_steps`` reached, or SIGTERM or
        Ctrl-C on any process (all processes stop at this same step). Read once a pass: a
        signal arriving later is honoured at the next, so no trial is saved before its
        non-finite count is read."""
        asked, reached = preemption.requested, self.ran == stop_after_steps
        interrupt = distributed.on_any_process(asked or reached)
        if interrupt and not (asked or reached):
            request_preemption()  # another process was asked to stop: so is this one
        return interrupt

    def _steps_to_next_point(
        self, group: Group, stop_after_steps: int | None, dispatch_size: int
    ) -> int:
        """Steps until the nearest periodic action, stage end or stop of a training member,
        or the profile's stop; at most ``dispatch_size``."""
        count = dispatch_size
        if stop_after_steps is not None:
            count = min(count, stop_after_steps - self.ran)
        for _, trial in group.training:
            for action in self.periodic:
                count = min(count, action.every - trial.step % action.every)
            count = min(count, trial.stage_end - trial.step)
        profile_stop = self.profile.steps_to_next(self.ran)
        if profile_stop is not None:
            count = min(count, profile_stop)
        return max(count, 1)

    @staticmethod
    def _announce_stage(trial: Trial) -> None:
        """The stage's whole optimizer (stages inherit config.optimizer: say what they got)."""
        stage = trial.stage
        trainable = finish.trainable_counts([stage], trial.state.params)[stage.name]
        log.info(
            "%sstage %r: steps %d to %d, %d trainable parameters%s, optimizer %s",
            trial.label,
            stage.name,
            trial.step,
            trial.stage_end,
            trainable,
            "" if stage.rules is None else f" (rules {list(stage.rules)})",
            stage.optimizer.to_dict(),
        )

    def _stepper(self, members: list[Trial]) -> steppers.Stepper:
        """The stepper for ``members``' shared stage. A stage that trains only the head on
        a frozen encoder gets each member's encoder features of the train rows, computed
        once per stage rather than once per step."""
        plan, stage = self.plan, members[0].stage
        frozen = finetune.frozen_tree(members[0].state.params, stage.rules)
        cached = finetune.caches_features(self.config, plan.model, plan.task, frozen)
        spec = StepSpec(
            model=plan.model,
            task=plan.task,
            exclude=self.config.regularization.exclude,
            frozen=frozen,
            to_model=self.to_model,
            cached_features=cached,
            augment=augment.Augment.from_config(self.config.data.augment),
            window=plan.window,
            windows=plan.windows,
            norms=self.config.train.log_norms,
            halt_on_nonconvergence=self.halts_alone,
        )
        batch_size = self.config.data.eval_batch_size
        train = plan.dataset.train
        return steppers.make_stepper(
            spec,
            stage,
            [
                steppers.Member(
                    state=t.state,
                    settings=self._settings(t),
                    dropout_key=t.dropout_key,
                    nonfinite_steps=t.progress.nonfinite_steps,
                    max_nonfinite_steps=t.config.train.max_nonfinite_steps,
                    features=compute_features(
                        plan.model, self.to_model(t.state.params), train, batch_size
                    )
                    if cached
                    else None,
                )
                for t in members
            ],
            table=self._train_feed(members),
            eval_step=self.eval_step,
            steps_per_dispatch=self.config.train.steps_per_dispatch,
            layout=self.layout,
        )

    def _train_feed(self, members: list[Trial]) -> Any:
        """Where ``members``' train batches come from: the rows in memory (or on the host),
        or each member's reader of a streamed dataset."""
        if not self.streams:
            return self.train_table
        readers = [self.streams[t.workdir] for t in members]
        return readers[0] if len(readers) == 1 else feeds.StreamedGroup(readers)

    def _settings(self, trial: Trial) -> steppers.Settings:
        """The trial's scalar settings: its stage's, except those PBT set since (saved in
        its Progress with every checkpoint, so a resumed trial goes on with them)."""
        settings = steppers.trial_settings(
            trial.stage.optimizer, trial.config.regularization, self.penalties
        )
        saved = trial.progress.settings or {}
        return {key: np.float32(saved.get(key, value)) for key, value in settings.items()}

    def _open_lineage(self) -> None:
        """pbt.jsonl in the first trial's workdir, cut back to the step the group resumes
        from (a PBT point is saved by every trial it ranked)."""
        if any(len(t.stages) > 1 for t in self.trials):
            raise ValueError("pbt with fine-tuning stages is not supported (one stage)")
        self.lineage = pbt_lib.Lineage(
            self.trials[0].workdir,
            max(t.step for t in self.trials),
            writes=distributed.is_primary(),
        )

    # ------------------------------------------------------------------------ the actions

    def _read_health(self, group: Group, stepper: steppers.Stepper) -> None:
        """Counts the non-finite steps the device skipped since the last read; a trial that
        went past config.train.max_nonfinite_steps stops there, alone, with that error."""
        health = stepper.health()
        for i, trial in group.training:
            if health[i].nonconverged_at:
                trial.step = health[i].nonconverged_at
                trial.outcome = fixed_point.NonConvergenceError(
                    f"forward fixed-point solve did not converge at step {trial.step} "
                    f"(config.model.equilibrium.on_nonconvergence='raise'; this trial "
                    "stopped there, the rest of its vectorised group goes on)"
                )
                group.leave(i)
                trial.write_unsaved_best()
                continue
            skipped = health[i].nonfinite_steps - trial.progress.nonfinite_steps
            if not skipped:
                continue
            trial.progress.nonfinite_steps = health[i].nonfinite_steps
            log.warning(
                "%s%d step(s) with a non-finite loss or gradient, the last at step %d; "
                "update(s) skipped",
                trial.label,
                skipped,
                health[i].last_nonfinite,
            )
            if health[i].halted_at:
                limit = trial.config.train.max_nonfinite_steps
                trial.step = health[i].halted_at
                adjoint = (  # fixed_point.HALT: an adjoint miss makes the gradient NaN
                    "; or an adjoint fixed-point solve that missed its tolerance"
                    if self.halts_alone
                    else ""
                )
                trial.outcome = FloatingPointError(
                    f"non-finite loss or gradient at step {trial.step} "
                    f"({health[i].nonfinite_steps} such steps; "
                    f"config.train.max_nonfinite_steps={limit}{adjoint})"
                )
                group.leave(i)
                trial.write_unsaved_best()  # the halted state itself is never saved

    def _log_train(self, group: Group, due: list[bool], stepper: steppers.Stepper) -> None:
        """The train metrics since the last log line (with the mean global norms of the
        gradients, parameters and updates) of the rows ``due``; resets their sums."""
        for trial, sums, now in zip(group.trials, stepper.sums(), due, strict=True):
            if now:
                values = diagnostics.metrics(self.plan.task, sums)
                values["learning_rate"] = self._learning_rate(trial)
                trial.metrics_log.write(trial.step, "train", values)
                trial.summary = f"loss {values['loss']:.4f}"
        stepper.reset_sums(due)

    def _validate(self, group: Group, due: list[bool], stepper: steppers.Stepper) -> None:
        """Validation metrics, the best step and early stopping, pruning (a search's
        pruner, a halving rung), the checkpoint and the stage's end, for the rows ``due``."""
        sums = stepper.evaluate_sums(self.validation_batches)
        states = stepper.states()  # one trial's on the devices: nothing gathered to save it
        values = {
            i: diagnostics.metrics(self.plan.task, sums[i]) for i, now in enumerate(due) if now
        }
        cut = self._halving_cut(group, values)
        # PBT: the copies change ``states`` and the stepper before anything is saved, so
        # the checkpoint of a PBT point resumes after it. Its trials save together.
        sources, lineage = self._exploit_explore(group, values, states, stepper)
        together = bool(sources) or self._group_save_due(group, due)
        for i, trial in enumerate(group.trials):
            if not due[i]:
                continue
            trial.metrics_log.write(trial.step, "validation", values[i])
            if i in lineage:
                trial.metrics_log.write(trial.step, "pbt", lineage[i])
            if self.halts_alone and values[i].get("solver_converged_fraction", 1.0) < 1.0:
                trial.outcome = self._missed(values[i], f"validation at step {trial.step}")
                group.leave(i)
                trial.write_unsaved_best()
                continue
            # A trial that copied another holds its state now, and so its validation value.
            ends_stage = self._track_best(trial, values[sources.get(i, i)][self.plan.metric])
            pruned = i in cut or (
                self.on_validation is not None and self.on_validation(trial.step, values[i])
            )
            if pruned:
                trial.progress.pruned_at = trial.step  # saved with the step: stays pruned
            saved = trial.checkpoint(
                states[i], self.plan.steps_per_epoch, stage_end=ends_stage, now=pruned or together
            )
            if saved:
                group.saved.add(i)
            trial.metrics_log.flush()
            if pruned:
                log.info("%spruned at step %d", trial.label, trial.step)
                trial.outcome = {"pruned_at": trial.step}
                group.leave(i)
            elif ends_stage:
                trial.state = steppers.host_copy(states[i])
                self._end_stage(trial)
                group.leave(i)
        if cut:
            group.shrunk = True

    def _halving_cut(self, group: Group, values: dict[int, dict[str, float]]) -> set[int]:
        """The rows successive halving cuts now: at a rung (the validations numbered 1,
        eta, eta^2, ...) all but the best ceil(n / eta) of the n trials still training,
        ranked by the validation metric (NaN last, ties to the earlier row)."""
        training = [i for i, _ in group.training if i in values]
        if self.halving < 2 or len(training) < 2:
            return set()
        trials = [group.trials[i] for i in training]
        if all(t.progress.stage == len(t.stages) - 1 and t.step >= t.stage_end for t in trials):
            return set()  # their training is over: a rung here would prune finished trials
        number, on_rung = divmod(group.trials[training[0]].step, self.plan.eval_every)
        if on_rung or number < 1 or self.halving ** round(math.log(number, self.halving)) != number:
            return set()
        sign = -1.0 if self.plan.mode == "max" else 1.0
        score = lambda i: (math.isnan(v := values[i][self.plan.metric]), sign * v if v == v else 0)
        ranked = sorted(training, key=lambda i: (*score(i), i))
        keep = math.ceil(len(training) / self.halving)
        log.info(
            "successive halving at step %d: %d of %d trials go on",
            group.trials[training[0]].step,
            keep,
            len(training),
        )
        return set(ranked[keep:])

    def _exploit_explore(
        self,
        group: Group,
        values: dict[int, dict[str, float]],
        states: list[TrainState],
        stepper: steppers.Stepper,
    ) -> tuple[dict[int, int], dict[int, dict[str, float]]]:
        """PBT at a point (fnn_jax.train.pbt): the trials still training, ranked by the
        validation metric; the bottom ones take a top one's parameters, optimizer state
        (in ``states`` and on the devices) and perturbed settings. Returns the row each
        ranked trial's state now comes from, and each one's metrics-log record."""
        spec = self.pbt
        if spec is None:
            return {}, {}
        rows = [
            i
            for i, t in group.training
            if i in values and t.step % spec.interval == 0 and t.step < t.stage_end
        ]
        steps = {group.trials[i].step for i in rows}
        if len(rows) < 2 or len(steps) > 1:
            if len(steps) > 1:
                log.warning("pbt: the trials are at different steps %s; no PBT", sorted(steps))
            return {}, {}
        step = steps.pop()
        scores = {i: values[i][self.plan.metric] for i in rows}
        ranked = pbt_lib.rank(rows, scores, self.plan.mode)
        copies = pbt_lib.plan(spec, ranked, step)
        before = stepper.settings
        after, sources = list(before), list(range(len(group.trials)))
        for copy in copies:
            sources[copy.target] = copy.source
            after[copy.target] = pbt_lib.explored(
                before[copy.source], before[copy.target], copy.factors
            )
            source = states[copy.source]
            states[copy.target] = states[copy.target].replace(
                params=source.params, opt_state=source.opt_state
            )
        stepper.exploit(sources, after)
        factors = {copy.target: copy.factors for copy in copies}
        entries, records = [], {}
        for i in rows:
            trial, source = group.trials[i], group.trials[sources[i]]
            trial.progress.settings = {k: float(v) for k, v in after[i].items()}
            settings_before = {k: float(v) for k, v in before[i].items()}
            entries.append(
                {
                    "trial": trial.workdir.name,
                    "row": i,
                    "value": scores[i],
                    "rank": ranked.index(i),
                    "source": source.workdir.name,
                    "source_row": sources[i],
                    "factors": factors.get(i, {}),
                    "settings_before": settings_before,
                    "settings_after": trial.progress.settings,
                }
            )
            records[i] = {
                "rank": ranked.index(i),
                "source": sources[i],
                "copied": int(sources[i] != i),
                **{f"{k}_before": v for k, v in settings_before.items()},
                **trial.progress.settings,
            }
            if sources[i] != i:
                log.info(
                    "%spbt at step %d: copied %s, settings %s -> %s",
                    trial.label,
                    step,
                    source.workdir.name,
                    settings_before,
                    trial.progress.settings,
                )
        if self.lineage is not None:
            point = {"step": step, "metric": self.plan.metric, "mode": self.plan.mode}
            self.lineage.append({**point, "trials": entries})
        return {i: sources[i] for i in rows}, records

    def _group_save_due(self, group: Group, due: list[bool]) -> bool:
        """PBT: whether any trial validating now is due to save by the clock, so all save
        (a group resumes from one step, so its PBT points fall where they would have)."""
        if self.pbt is None:
            return False
        now = time.monotonic()
        late = any(
            now - t.saved_at >= t.config.train.checkpoint_every_s
            for t, on in zip(group.trials, due, strict=True)
            if on
        )
        return distributed.on_any_process(late)

    def _repack(self, group: Group, stepper: steppers.Stepper) -> tuple[Group, steppers.Stepper]:
        """The survivors of a halving rung in a new, smaller program (their states carried
        over; which of them were saved at this point too)."""
        states = stepper.host_states()
        survivors = []
        for i, trial in group.training:
            trial.state = states[i]
            survivors.append(trial)
        smaller = Group(survivors)
        smaller.saved = {k for k, (i, _) in enumerate(group.training) if i in group.saved}
        return smaller, self._stepper(survivors)

    def _learning_rate(self, trial: Trial) -> float:
        """The base learning rate of the step just taken (its stage's schedule, counted
        from the stage's start; per-group ``lr_mults`` scale it further)."""
        stage = trial.stage
        peak = (trial.progress.settings or {}).get("learning_rate")  # PBT's, once it set one
        key = (id(stage), peak is not None)
        if key not in self._schedules:  # jitted: op by op, a call takes ~8 ms
            unit = None if peak is None else 1.0  # PBT's: its peak times the unit schedule
            self._schedules[key] = jax.jit(schedule(stage.optimizer, stage.num_steps, unit))
        count = trial.step - 1 - trial.progress.stage_start
        rate = self._schedules[key](count)
        return float(rate) if peak is None else float(np.float32(peak) * np.float32(rate))

    def _show(self, bar: reporting.Progress, group: Group) -> None:
        """Alone: this step's loss and validation metric; in a group: how many still train."""
        steps = [t.step for _, t in group.training] or [group.trials[0].step]
        if len(self.trials) == 1:
            summary = group.trials[0].summary.strip()
        else:
            summary = f"{len(group.training)}/{len(group.trials)} trials training"
        bar.update(max(steps), summary)
        for trial in group.trials:
            trial.summary = ""

    def _track_best(self, trial: Trial, value: float) -> bool:
        """Best step and early stopping after a validation ``value``; True when the trial's
        stage ends here."""
        progress = trial.progress
        trial.summary += f"  val {self.plan.metric} {value:.4f}"
        if improves(value, progress.best_value, self.plan.mode, trial.config.train.min_delta):
            progress.best_value, progress.best_step, progress.bad_evals = value, trial.step, 0
        else:
            progress.bad_evals += 1
        stop_early = trial.patience_spent()
        if stop_early:
            log.info(
                "%searly stopping at step %d (stage %s)", trial.label, trial.step, trial.stage.name
            )
        return stop_early or trial.step == trial.stage_end

    def _end_stage(self, trial: Trial) -> None:
        """Moves a trial to its next stage (fresh optimizer state, fresh patience), or ends
        its training (``stopped`` when that came before the planned steps)."""
        progress = trial.progress
        progress.stage_ends.append(trial.step)
        progress.stage, progress.stage_start, progress.bad_evals = progress.stage + 1, trial.step, 0
        if progress.stage < len(trial.stages):
            state = trial.state  # a stage may end mid-row: the carry passes on
            fresh = self._fresh_state(state.params, trial.stage, trial.step, state.carry)
            trial.state = steppers.host_copy(fresh)
        else:
            progress.stopped = trial.step < sum(s.num_steps for s in trial.stages)

    # ------------------------------------------------------------------------ the end

    def _evaluate(self, params: Any, split: str) -> tuple[dict[str, float], dict[str, Any]]:
        """The task's metrics of ``params`` over a whole split (and its details: a
        classifier's confusion matrix and per-class scores), run by the program that
        evaluated validation during a single run's training: the same devices, shardings
        and batch rows (the test split's last batch padded), so a run's final evaluation
        compiles nothing (a vectorised group's, one program for all its trials)."""
        layout = self.layout
        batches: Iterable[dict] = self.validation_batches
        if split != "validation":  # in the validation batches' size: no new compile
            rows = feeds.batch_rows(self.validation_batches)
            batches = feeds.eval_batches(self.plan.dataset, split, rows, layout, rows=rows)
        placed = layout.put(params, layout.state_shardings(params))
        sums = mesh.host(split_sums(self.eval_step, placed, batches))
        values = diagnostics.metrics(self.plan.task, sums)
        if self.halts_alone and values.get("solver_converged_fraction", 1.0) < 1.0:
            raise self._missed(values, f"the {split} split")
        return values, self.plan.task.details(sums)

    @staticmethod
    def _missed(values: dict[str, float], where: str) -> fixed_point.NonConvergenceError:
        """A vectorised trial's "raise" (fixed_point.HALT), from its evaluation's metrics."""
        return fixed_point.NonConvergenceError(
            f"forward fixed-point solve did not converge on {where}: residual "
            f"{values['solver_residual_max']:.3g}, converged fraction "
            f"{values['solver_converged_fraction']:.4f} "
            "(config.model.equilibrium.on_nonconvergence='raise'; this trial stopped alone)"
        )

    @staticmethod
    def _close(trials: list[Trial]) -> None:
        for trial in trials:
            trial.checkpoints.close()
            trial.metrics_log.close()
