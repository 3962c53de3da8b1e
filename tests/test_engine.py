"""The pieces of the one training engine, each against an independent reference: evaluation
against one pass over the whole split, the skipped non-finite step against the state before
it, both steppers against each other, penalties and schedules against their formulas."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fnn_jax import cells, data, tasks
from fnn_jax.config import default_config
from fnn_jax.finetune import Stage
from fnn_jax.optim import make_optimizer, penalty, schedule
from fnn_jax.train import steppers, steps
from fnn_jax.train.steps import (
    StepSpec,
    TrainState,
    build_model,
    evaluate,
    init_params,
    make_eval_step,
    to_device_batch,
    zero_sums,
)


@pytest.fixture(scope="module")
def digits():
    """Digits 0-2, 81 validation rows: eval batches of 8 leave a partial last batch of 1."""
    dataset = data.load("digits", classes=(0, 1, 2), train_per_class=6)
    model_config = ml_collections.ConfigDict(default_config().model)
    model_config.hidden_size = 8
    model = build_model(model_config, dataset)
    task = tasks.for_dataset(dataset)
    sample = to_device_batch(next(data.batches(dataset.train, 16, seed=0, epoch=0)))
    params = init_params(model, jax.random.key(0), sample)
    return dataset, model, task, sample, params


def test_evaluate_equals_one_pass_over_the_whole_split(digits):
    dataset, model, task, _, params = digits
    split = dataset.validation
    assert len(split) % 8 != 0
    got = evaluate(make_eval_step(model, task), params, split, 8, task)
    # The reference: every row at once, no padding, metrics straight from the logits.
    logits = model.apply({"params": params}, jnp.asarray(split.inputs), split.full_lengths)
    logits = np.asarray(logits, np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = np.asarray(split.targets)
    nll = -log_probs[np.arange(len(labels)), labels]
    np.testing.assert_allclose(got["loss"], nll.mean(), rtol=1e-5)
    assert got["accuracy"] == np.mean(logits.argmax(-1) == labels)


def _table(sample, nan_copy=False):
    """The sample's rows as a train table; with ``nan_copy``, a second copy of them whose
    first row has a NaN input (rows b..2b-1)."""
    table = {k: np.asarray(sample[k]) for k in ("inputs", "targets", "lengths")}
    if nan_copy:
        bad = np.array(table["inputs"])
        bad[0, 0, 0] = np.nan
        table = {k: np.concatenate([v, bad if k == "inputs" else v]) for k, v in table.items()}
    return jax.device_put(table)


def _rows(sample, bad=False, steps=1):
    """[steps, batch] indices: the sample's rows, or their NaN copy (see _table)."""
    b = len(sample["targets"])
    return np.tile(np.arange(b, dtype=np.int32) + (b if bad else 0), (steps, 1))


def _stepper(digits, num_trials, learning_rates=(1e-2, 3e-2), *, per_dispatch=1, **member):
    _, model, task, sample, params = digits
    cfg = default_config()
    stage = Stage("train", 10, cfg.optimizer)
    tx = make_optimizer(cfg.optimizer, 10)
    sums = zero_sums(model, task, params, sample)
    state = steppers.host_copy(TrainState(jnp.int32(0), params, tx.init(params), sums))
    members = []
    for k, lr in enumerate(learning_rates[:num_trials]):
        cfg.optimizer.learning_rate = lr
        settings = steppers.trial_settings(cfg.optimizer, cfg.regularization, ())
        members.append(steppers.Member(state, settings, jax.random.key(k), **member))
    stepper = steppers.make_stepper(
        StepSpec(model, task),
        stage,
        members,
        table=_table(sample, nan_copy=True),
        eval_step=make_eval_step(model, task),
        steps_per_dispatch=per_dispatch,
    )
    return stepper, state


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("num_trials", [1, 2], ids=["single", "vectorized"])
def test_a_skipped_nonfinite_step_leaves_params_and_optimizer_state_bit_identical(
    digits, num_trials
):
    """Trial 0 gets a NaN input; trial 1 (if any) a good batch and trains on."""
    sample = digits[3]
    stepper, before = _stepper(digits, num_trials, max_nonfinite_steps=1)
    stepper.run([_rows(sample, bad=True), _rows(sample)][:num_trials], 1)
    health = stepper.health()
    assert [h.nonfinite_steps for h in health] == [1, 0][:num_trials]
    assert (health[0].last_nonfinite, health[0].halted_at) == (1, 0)
    after = stepper.host_states()
    assert int(after[0].step) == 1  # the step is counted, nothing else changes
    _assert_trees_equal(after[0].params, before.params)
    _assert_trees_equal(after[0].opt_state, before.opt_state)
    _assert_trees_equal(after[0].sums, before.sums)
    if num_trials == 2:
        changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), after[1].params, before.params)
        assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("num_trials", [1, 2], ids=["single", "vectorized"])
def test_the_step_past_max_nonfinite_steps_halts_the_trial_on_the_device(digits, num_trials):
    """Limit 1, four steps in one dispatch: good, NaN (skipped, counted), good, NaN (halts
    at step 4). The halted trial is the state after step 3; trial 1 (good rows) trains on."""
    sample = digits[3]
    stepper, _ = _stepper(digits, num_trials, per_dispatch=4, max_nonfinite_steps=1)
    good, bad = _rows(sample)[0], _rows(sample, bad=True)[0]
    stepper.run([np.stack([good, bad, good, bad]), _rows(sample, steps=4)][:num_trials], 4)
    health = stepper.health()
    assert (health[0].nonfinite_steps, health[0].last_nonfinite, health[0].halted_at) == (2, 4, 4)
    three, _ = _stepper(digits, num_trials, per_dispatch=4, max_nonfinite_steps=1)
    three.run([np.stack([good, bad, good]), _rows(sample, steps=3)][:num_trials], 3)
    _assert_trees_equal(stepper.host_states()[0], three.host_states()[0])
    if num_trials == 2:
        assert health[1] == steppers.Health(0, 0, 0)
        assert int(stepper.host_states()[1].step) == 4


@pytest.mark.parametrize("num_trials", [1, 2], ids=["single", "vectorized"])
def test_steps_fused_in_one_dispatch_equal_the_same_steps_one_by_one(digits, num_trials):
    """Parameters, optimizer state, sums and step after 5 steps: one dispatch of 5 (in a
    capacity-8 program) against five plain steps, bit for bit (XLA compiles the loop body
    as it compiles the lone step on CPU)."""
    sample = digits[3]
    fused, _ = _stepper(digits, num_trials, per_dispatch=8)
    fused.run([_rows(sample, steps=5)] * num_trials, 5)
    alone, _ = _stepper(digits, num_trials, per_dispatch=1)
    for _ in range(5):
        alone.run([_rows(sample)] * num_trials, 1)
    for a, b in zip(fused.host_states(), alone.host_states(), strict=True):
        assert int(a.step) == int(b.step) == 5
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_vectorized_stepper_equals_single_steppers_of_each_trial(digits):
    sample = digits[3]
    together, _ = _stepper(digits, 2)
    for _ in range(3):
        together.run([_rows(sample)] * 2, 1)
    for k, lr in enumerate((1e-2, 3e-2)):
        alone, _ = _stepper(digits, 1, learning_rates=(lr,))
        alone.trial["dropout_key"] = jax.random.key(k)
        for _ in range(3):
            alone.run([_rows(sample)], 1)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            together.host_states()[k].params,
            alone.host_states()[0].params,
        )


@pytest.mark.parametrize("num_trials", [1, 2], ids=["single", "vectorized"])
def test_one_sgd_step_moves_each_trial_by_its_own_learning_rate(digits, num_trials):
    """Reference: params - lr * grad of the task loss, computed here from the model."""
    _, model, task, sample, params = digits
    cfg = default_config()
    cfg.optimizer.update(name="sgd", momentum=0.0, clip_norm=0.0)
    learning_rates = (0.1, 0.3)[:num_trials]
    stage = Stage("train", 10, cfg.optimizer)
    tx = make_optimizer(cfg.optimizer, 10)
    sums = zero_sums(model, task, params, sample)
    state = steppers.host_copy(TrainState(jnp.int32(0), params, tx.init(params), sums))
    members = []
    for k, lr in enumerate(learning_rates):
        cfg.optimizer.learning_rate = lr
        settings = steppers.trial_settings(cfg.optimizer, cfg.regularization, ())
        members.append(steppers.Member(state, settings, jax.random.key(k)))
    stepper = steppers.make_stepper(
        StepSpec(model, task),
        stage,
        members,
        table=_table(sample),
        eval_step=make_eval_step(model, task),
    )
    stepper.run([_rows(sample)] * num_trials, 1)

    def loss(p):
        outputs = model.apply({"params": p}, sample["inputs"], sample["lengths"])
        return task.loss_and_sums(outputs, sample)[0]

    grads = jax.grad(loss)(params)
    for lr, after in zip(learning_rates, stepper.host_states(), strict=True):
        want = jax.tree.map(lambda p, g, lr=lr: p - lr * g, params, grads)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, 1e-5, 1e-6), after.params, want)


def test_an_inactive_vectorized_trial_is_left_exactly_as_it_was(digits):
    sample = digits[3]
    stepper, before = _stepper(digits, 2)
    stepper.run([None, _rows(sample)], 1)
    assert [h.nonfinite_steps for h in stepper.health()] == [0, 0]
    state = stepper.host_states()[0]
    assert int(state.step) == 0
    _assert_trees_equal(state.params, before.params)
    _assert_trees_equal(state.opt_state, before.opt_state)


def test_regularization_exclude_keeps_matching_paths_out_of_the_penalty():
    params = {
        "encoder": {"w_ih": jnp.array([1.0, -2.0]), "b_ih": jnp.array([5.0])},
        "head": {"kernel": jnp.array([[3.0]]), "bias": jnp.array([7.0, 7.0])},
    }
    exclude = default_config().regularization.exclude
    got = penalty(params, 0.1, 0.01, exclude)
    kept = [np.array([1.0, -2.0]), np.array([3.0])]  # the biases are excluded
    want = sum(0.1 * np.abs(w).sum() + 0.01 * (w**2).sum() for w in kept)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    everything = sum(0.1 * np.abs(w).sum() + 0.01 * (w**2).sum() for w in jax.tree.leaves(params))
    np.testing.assert_allclose(penalty(params, 0.1, 0.01, ""), everything, rtol=1e-6)


def test_regularization_exclude_is_a_full_match_of_the_path_as_every_pattern():
    params = {"bias": jnp.array([2.0]), "head": {"bias": jnp.array([3.0])}}
    # "bias" fully matches the top-level leaf only; "head/bias" is penalised.
    np.testing.assert_allclose(penalty(params, 0.0, 1.0, "bias"), 9.0)
    np.testing.assert_allclose(penalty(params, 0.0, 1.0, ".*bias"), 0.0)


def _optimizer(**changes):
    cfg = default_config().optimizer
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("staircase", [False, True], ids=["exponential", "step"])
def test_exponential_and_step_schedules_give_their_documented_values(staircase):
    name = "step" if staircase else "exponential"
    cfg = _optimizer(schedule=name, learning_rate=0.2, decay_rate=0.5, decay_steps=10)
    lr = schedule(cfg, 100)
    for t in (0, 5, 10, 15, 37):
        power = t // 10 if staircase else t / 10
        np.testing.assert_allclose(lr(t), 0.2 * 0.5**power, rtol=1e-6)
    warm = schedule(_optimizer(schedule=name, learning_rate=0.2, warmup_steps=4), 100)
    np.testing.assert_allclose([warm(0), warm(2)], [0.0, 0.1], rtol=1e-6)


def test_warmup_cosine_schedule_rises_then_decays_to_its_final_fraction():
    cfg = _optimizer(learning_rate=1.0, warmup_steps=10, final_lr_fraction=0.1)
    cfg.schedule = "warmup_cosine"
    lr = schedule(cfg, 110)
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], rtol=1e-6)
    half = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    np.testing.assert_allclose([lr(60), lr(110)], [half, 0.1], rtol=1e-6)


@pytest.mark.parametrize("name", ["constant", "warmup_cosine", "exponential", "step"])
def test_a_trials_peak_times_the_unit_schedule_equals_its_own_schedule(name):
    """How a vectorised trial gets its own learning rate: peak x schedule(peak=1)."""
    cfg = _optimizer(schedule=name, learning_rate=3e-3, warmup_steps=5, decay_steps=7)
    own, unit = schedule(cfg, 50), schedule(cfg, 50, peak=1.0)
    steps = jnp.arange(50)
    np.testing.assert_allclose(3e-3 * unit(steps), own(steps), rtol=1e-6, atol=0)


def test_every_dataset_task_kind_has_a_task_class():
    assert set(data.TASKS) == set(tasks.REGISTRY)
    with pytest.raises(ValueError, match=r"unknown task 'ranking'; valid choices: \["):
        tasks.get("ranking")


@pytest.mark.parametrize(
    ("dataset", "cell"),
    [("digits", "lstm"), ("digits", "jordan"), ("text", "lru"), ("sunspots", "gru")],
)
def test_init_params_from_one_step_of_one_row_equals_init_from_the_whole_batch(dataset, cell):
    """init_params runs the model on [1, 1, ...] to find the shapes: the same values as
    Flax's init (jitted too: XLA may round an op differently from op-by-op) on a full batch
    (two bidirectional layers: every submodule's path and key)."""
    ds = data.load(dataset)
    model_config = ml_collections.ConfigDict(default_config().model)
    model_config.update(cell=cell, hidden_size=8, num_layers=2, bidirectional=True)
    model = build_model(model_config, ds)
    batch = to_device_batch(next(data.batches(ds.train, 4, seed=0, epoch=0)))
    full = jax.jit(model.init)(jax.random.key(3), batch["inputs"], batch["lengths"])["params"]
    _assert_trees_equal(init_params(model, jax.random.key(3), batch), full)


@pytest.mark.parametrize("cell", sorted(cells.REGISTRY))
def test_initial_parameters_compiled_at_llvm_o1_equal_the_default_compilation_bit_for_bit(
    digits, cell
):
    """init_params compiles at LLVM O1 (half the compile time): the same bits as XLA's
    default options, for every cell (threefry, erf_inv and QR in each)."""
    dataset, _, _, sample, _ = digits
    model_config = ml_collections.ConfigDict(default_config().model)
    model_config.update(cell=cell, hidden_size=40)
    model = build_model(model_config, dataset)
    default = jax.jit(model.init)(jax.random.key(5), sample["inputs"], sample["lengths"])
    compiled = steps._init._cache_size()
    _assert_trees_equal(init_params(model, jax.random.key(5), sample), default["params"])
    assert steps._init._cache_size() == compiled + 1  # the program with the O1 options


def test_init_params_gives_the_same_values_inside_jit_eval_shape_and_vmap(digits):
    """The O1 options apply to a top-level program only: inside another jit (a key closed
    over), under eval_shape and under vmap over keys the values and shapes are the same."""
    _, model, _, sample, params = digits
    key = jax.random.key(0)
    _assert_trees_equal(jax.jit(lambda: init_params(model, key, sample))(), params)
    shapes = jax.eval_shape(lambda k: init_params(model, k, sample), key)
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(jnp.shape, params)
    keys = jax.random.split(key, 3)
    stacked = jax.vmap(lambda k: init_params(model, k, sample))(keys)
    _assert_trees_equal(jax.tree.map(lambda x: x[2], stacked), init_params(model, keys[2], sample))


class _ClockedStepper(steppers.Stepper):
    """A stepper whose calls take the given times (no device): for the "auto" choice."""

    def __init__(self, times):
        super().__init__("auto")
        self.times, self.size = iter(times), 1

    def _dispatch(self, indices, count):
        pass

    def _clocked(self, indices, count):
        return next(self.times)


@pytest.mark.parametrize(
    ("step_ms", "expected", "said"),
    [
        (9.5, 3, "a step 9500.0 us"),
        (0.01, steppers.AUTO_CAPACITY, "a step 10.0 us"),
        (1000.0, 1, "a step 1000000.0 us"),
        (-0.1, steppers.AUTO_CAPACITY, "a step below the call's jitter"),
    ],
    ids=["overhead_a_tenth_of_a_step", "tiny_step", "huge_step", "step_lost_in_jitter"],
)
def test_auto_dispatch_size_keeps_the_call_overhead_near_five_percent(
    step_ms, expected, said, caplog
):
    """A 1 ms call overhead (the fastest of three calls without steps, after the compiling
    one); after four single-step calls (the first slow) the size is ceil(overhead / (5% of
    a step)), within 1..capacity, and the log line gives both costs."""
    compile_call, overhead = 5.0, 1e-3
    calls = [compile_call, 1.5e-3, overhead, 1.2e-3, 10.0, *[overhead + step_ms / 1e3] * 3]
    stepper = _ClockedStepper(calls)
    rows = np.zeros((1, 4), np.int32)
    with caplog.at_level("INFO", logger="fnn_jax"):
        for _ in range(steppers.AUTO_PROBES):
            assert stepper.dispatch_size == 1
            stepper.run([rows], 1)
    assert stepper.dispatch_size == expected
    assert f"{expected} (a call alone costs 1000.0 us, {said})" in caplog.text


def test_train_indices_are_the_rows_of_data_batches_across_epochs(digits):
    """The runner's [count, batch] rows from any step are data.batches' order: a pure
    function of (seed, epoch), continued across the epoch boundary."""
    from configs import test as test_config
    from fnn_jax.train.trial import setup

    plan = setup(test_config.get_config())
    per_epoch = plan.steps_per_epoch
    want = [
        b["index"]
        for epoch in (0, 1)
        for b in data.batches(plan.dataset.train, plan.batch_size, seed=5, epoch=epoch)
    ]
    start = per_epoch - 2  # two steps of epoch 0, then epoch 1
    got = plan.train_indices(5, start, 5)
    np.testing.assert_array_equal(got, np.stack(want[start : start + 5]))
