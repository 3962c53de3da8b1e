"""The pieces of the one training engine, each against an independent reference: evaluation
against one pass over the whole split, the skipped non-finite step against the state before
it, both steppers against each other, penalties and schedules against their formulas."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fnn_jax import data, tasks
from fnn_jax.config import default_config
from fnn_jax.finetune import Stage
from fnn_jax.optim import make_optimizer, penalty, schedule
from fnn_jax.train import steppers
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


def _nan_batch(sample):
    inputs = np.array(sample["inputs"])
    inputs[0, 0, 0] = np.nan
    return {**sample, "inputs": inputs}


def _stepper(digits, num_trials, learning_rates=(1e-2, 3e-2)):
    _, model, task, sample, params = digits
    cfg = default_config()
    stage = Stage("train", 10, cfg.optimizer)
    tx = make_optimizer(cfg.optimizer, 10)
    sums = zero_sums(model, task, params, sample)
    state = steppers.host_copy(TrainState(jnp.int32(0), params, tx.init(params), sums))
    settings = []
    for lr in learning_rates[:num_trials]:
        cfg.optimizer.learning_rate = lr
        settings.append(steppers.trial_settings(cfg.optimizer, cfg.regularization, ()))
    stepper = steppers.make_stepper(
        StepSpec(model, task),
        stage,
        [state] * num_trials,
        settings=settings,
        dropout_keys=[jax.random.key(k) for k in range(num_trials)],
        eval_step=make_eval_step(model, task),
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
    stepper, before = _stepper(digits, num_trials)
    finite = stepper.step([_nan_batch(sample), sample][:num_trials])
    assert finite.tolist() == [False, True][:num_trials]
    after = stepper.host_states()
    assert int(after[0].step) == 1  # the step is counted, nothing else changes
    _assert_trees_equal(after[0].params, before.params)
    _assert_trees_equal(after[0].opt_state, before.opt_state)
    _assert_trees_equal(after[0].sums, before.sums)
    if num_trials == 2:
        changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), after[1].params, before.params)
        assert all(jax.tree.leaves(changed))


def test_vectorized_stepper_equals_single_steppers_of_each_trial(digits):
    sample = digits[3]
    together, _ = _stepper(digits, 2)
    for _ in range(3):
        together.step([sample, sample])
    for k, lr in enumerate((1e-2, 3e-2)):
        alone, _ = _stepper(digits, 1, learning_rates=(lr,))
        alone.dropout_key = jax.random.key(k)
        for _ in range(3):
            alone.step([sample])
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
    settings = []
    for lr in learning_rates:
        cfg.optimizer.learning_rate = lr
        settings.append(steppers.trial_settings(cfg.optimizer, cfg.regularization, ()))
    keys = [jax.random.key(k) for k in range(num_trials)]
    eval_step = make_eval_step(model, task)
    stepper = steppers.make_stepper(
        StepSpec(model, task),
        stage,
        [state] * num_trials,
        settings=settings,
        dropout_keys=keys,
        eval_step=eval_step,
    )
    stepper.step([sample] * num_trials)

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
    finite = stepper.step([None, sample])
    assert finite.tolist() == [True, True]
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
