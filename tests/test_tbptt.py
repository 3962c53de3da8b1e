"""Truncated BPTT with carried state, and reset flags inside a row.

References: one pass over the whole row (windows run in turn must equal it), each document
run alone from zeros (a reset must equal it), full BPTT (k = the row's length must equal
it), and a hand-written loop of windows with plain SGD (the engine's steps must equal it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn_jax import data, models
from fnn_jax.checkpoint import Checkpoints
from fnn_jax.config import ConfigError, default_config
from fnn_jax.layers import Recurrent
from fnn_jax.sweep.spec import apply_overrides
from fnn_jax.train import train_and_evaluate
from fnn_jax.train.trial import setup

VOCAB, TIME = 11, 20


def _lm(cell="lstm", num_layers=2):
    return models.CharLM(
        cell=cell, hidden_size=6, num_layers=num_layers, vocab_size=VOCAB, embed_dim=4
    )


def _tokens(rng, batch=3):
    return jnp.asarray(rng.integers(0, VOCAB, (batch, TIME)), jnp.int32)


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman", "lru"])
def test_windows_run_in_turn_equal_one_pass_over_the_rows(cell, rng):
    model = _lm(cell)
    tokens, lengths = _tokens(rng), jnp.asarray([TIME, 13, 7], jnp.int32)
    params = model.init(jax.random.key(0), tokens, lengths)["params"]
    carries_full, logits_full = model.apply(
        {"params": params}, tokens, lengths, None, method="window"
    )
    carries, parts, k = None, [], 6  # windows 0-5, 6-11, 12-17, 18-19 (the last is short)
    for start in range(0, TIME, k):
        window_lengths = jnp.clip(lengths - start, 0, k)
        carries, logits = model.apply(
            {"params": params},
            tokens[:, start : start + k],
            window_lengths,
            carries,
            method="window",
        )
        parts.append(logits)
    valid = (np.arange(TIME)[None] < np.asarray(lengths)[:, None])[..., None]
    got = np.where(valid, np.concatenate(parts, axis=1), 0)
    np.testing.assert_allclose(got, np.where(valid, logits_full, 0), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(carries), jax.tree.leaves(carries_full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("cell", "scan_impl"),
    [
        ("lstm", "sequential"),
        ("gru", "sequential"),
        ("jordan", "sequential"),
        ("lru", "sequential"),
        ("lru", "associative"),
        ("mingru", "associative"),
    ],
)
def test_a_reset_flag_gives_the_outputs_of_that_document_run_alone(cell, scan_impl, rng):
    layer = Recurrent(cell=cell, hidden_size=5, scan_impl=scan_impl)
    xs = jnp.asarray(rng.normal(size=(2, TIME, 3)), jnp.float32)
    params = layer.init(jax.random.key(1), xs)
    starts = (7, 15)  # row 0 holds three documents, row 1 one
    resets = np.zeros((2, TIME), bool)
    resets[0, list(starts)] = True
    _, ys = layer.apply(params, xs, None, None, jnp.asarray(resets))
    bounds = (0, *starts, TIME)
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        _, alone = layer.apply(params, xs[:1, lo:hi])
        np.testing.assert_allclose(ys[0, lo:hi], alone[0], rtol=1e-5, atol=1e-6)
    _, whole = layer.apply(params, xs[1:])
    np.testing.assert_allclose(ys[1], whole[0], rtol=1e-5, atol=1e-6)


def test_a_reset_at_step_zero_ignores_the_carry_passed_in(rng):
    layer = Recurrent(cell="gru", hidden_size=5)
    xs = jnp.asarray(rng.normal(size=(2, TIME, 3)), jnp.float32)
    params = layer.init(jax.random.key(1), xs)
    carry = jax.tree.map(lambda c: c + 3.0, layer.apply(params, xs)[0])
    resets = jnp.zeros((2, TIME), bool).at[:, 0].set(True)
    _, got = layer.apply(params, xs, None, carry, resets)
    np.testing.assert_array_equal(got, layer.apply(params, xs)[1])


def test_resets_must_be_bool_batch_by_time_and_refuse_bidirectional(rng):
    layer = Recurrent(cell="gru", hidden_size=5)
    xs = jnp.asarray(rng.normal(size=(2, TIME, 3)), jnp.float32)
    params = layer.init(jax.random.key(1), xs)
    with pytest.raises(ValueError, match=r"resets must be bool \[batch, time\] = \[2, 20\]"):
        layer.apply(params, xs, None, None, jnp.zeros((2, TIME - 1), bool))
    model = models.CharLM(cell="gru", hidden_size=4, vocab_size=VOCAB, bidirectional=True)
    tokens = _tokens(rng)
    variables = model.init(jax.random.key(0), tokens)
    with pytest.raises(ValueError, match="not bidirectional"):
        model.apply(variables, tokens, None, jnp.zeros(tokens.shape, bool))
    with pytest.raises(ValueError, match=r"resets must be bool \[n, time\]=\(2, 3\)"):
        data.Split(np.zeros((2, 3), np.int32), np.zeros((2, 3), np.int32), resets=np.ones((2, 3)))


# ---------------------------------------------------------------------------- the engine


def _config(tbptt_length, steps=10, **changes):
    config = default_config()
    config.data.name = "text"
    config.data.options = {"seq_len": 24, "max_chars": 4000}
    config.data.batch_size = 4
    config.model.cell = "gru"
    config.model.hidden_size = 8
    config.model.embed_dim = 4
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.5
    config.optimizer.momentum = 0.0
    config.optimizer.clip_norm = 0.0
    config.optimizer.schedule = "constant"
    config.train.num_steps = steps
    config.train.tbptt_length = tbptt_length
    config.train.log_every_steps = 5
    config.train.eval_every_steps = 5
    config.train.compilation_cache = ""
    return apply_overrides(config, changes)


def _final(workdir):
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        return checkpoints.restore_saved(checkpoints.latest_step())[0]
    finally:
        checkpoints.close()


def test_tbptt_over_the_whole_row_equals_full_bptt_bit_for_bit(tmp_path):
    assert_whole_row_windows_equal_full_bptt(_config(0), _config(24), tmp_path)


def assert_whole_row_windows_equal_full_bptt(full_config, tbptt_config, tmp_path):
    """The two configs differ only in tbptt_length (0 against the rows' length): their
    final parameters are bit for bit the same."""
    train_and_evaluate(full_config, tmp_path / "full")
    train_and_evaluate(tbptt_config, tmp_path / "tbptt")
    full, tbptt = _final(tmp_path / "full"), _final(tmp_path / "tbptt")
    for a, b in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(tbptt["params"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_tbptt_steps_equal_a_hand_written_loop_of_windows(tmp_path):
    """k = 7 on rows of 24: windows 0-6, 7-13, 14-20, 21-23 (padded), 4 steps per batch;
    10 steps cross into the third batch, mid-row."""
    k, steps, batch_size = 7, 10, 4
    config = _config(k, steps)
    train_and_evaluate(config, tmp_path)
    plan = setup(config)
    assert plan.windows == 4 and plan.steps_per_epoch == 4 * (len(plan.dataset.train) // 4)
    model, train = plan.model, plan.dataset.train
    init_key = jax.random.split(jax.random.key(config.seed), 3)[0]
    from fnn_jax.train.steps import init_params

    params = init_params(model, init_key, plan.sample)
    order = data.epoch_order(len(train), seed=config.seed, epoch=0)

    def window_loss(params, tokens, targets, lengths, carries):
        carries, logits = model.apply({"params": params}, tokens, lengths, carries, method="window")
        valid = targets >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(targets, 0))
        return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1), carries

    window_grads = jax.jit(jax.grad(window_loss, has_aux=True))
    carries = None
    for step in range(steps):
        b, j = divmod(step, 4)
        rows = order[b * batch_size : (b + 1) * batch_size]
        tokens = np.asarray(train.inputs[rows])[:, j * k : (j + 1) * k]
        targets = np.asarray(train.targets[rows])[:, j * k : (j + 1) * k]
        width = tokens.shape[1]
        tokens = np.pad(tokens, ((0, 0), (0, k - width)))
        targets = np.pad(targets, ((0, 0), (0, k - width)), constant_values=-1)
        lengths = np.full(batch_size, width, np.int32)
        if j == 0:
            carries = None  # a new batch of rows starts from zeros
        grads, carries = window_grads(params, tokens, targets, lengths, carries)
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    assert_run_ended_at(tmp_path, steps, params, carries, rtol=2e-5)


def assert_run_ended_at(workdir, steps, params, carries, *, rtol):
    """The run's last checkpoint is at ``steps`` with these parameters and carry (to
    float tolerance: the hand-written loop and the engine's fused steps round apart)."""
    saved = _final(workdir)
    assert int(saved["step"]) == steps
    for name, want in (("params", params), ("carry", carries)):
        for a, b in zip(jax.tree.leaves(saved[name]), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)


def test_a_tbptt_run_resumed_mid_row_equals_an_uninterrupted_one(tmp_path):
    config = _config(7, 12, **{"optimizer.name": "adam", "optimizer.learning_rate": 1e-2})
    assert_resumed_mid_row_equals_uninterrupted(config, tmp_path)


def assert_resumed_mid_row_equals_uninterrupted(config, tmp_path):
    """``config`` (rows in four windows, 12 steps) stopped after 6 steps, mid-row, and
    resumed, ends bit for bit where an uninterrupted run ends: parameters, optimizer state
    and carried state."""
    train_and_evaluate(config, tmp_path / "whole")
    assert train_and_evaluate(config, tmp_path / "split", stop_after_steps=6) == {
        "interrupted_at": 6  # the third of a row's four windows: its carry is saved
    }
    train_and_evaluate(config, tmp_path / "split")
    whole, split = _final(tmp_path / "whole"), _final(tmp_path / "split")
    for part in ("params", "opt_state", "carry"):
        a_leaves, b_leaves = jax.tree.leaves(whole[part]), jax.tree.leaves(split[part])
        assert a_leaves
        for a, b in zip(a_leaves, b_leaves, strict=True):
            np.testing.assert_array_equal(a, b)


def test_vectorized_tbptt_trials_equal_each_trial_alone(tmp_path):
    from fnn_jax.train.engine import Engine

    configs = [_config(7, 8, seed=s) for s in (0, 1)]
    Engine(configs, [tmp_path / "g0", tmp_path / "g1"]).run()
    for s in (0, 1):
        train_and_evaluate(configs[s], tmp_path / f"alone{s}")
        grouped, alone = _final(tmp_path / f"g{s}"), _final(tmp_path / f"alone{s}")
        for part in ("params", "carry"):
            for a, b in zip(
                jax.tree.leaves(grouped[part]), jax.tree.leaves(alone[part]), strict=True
            ):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"train.tbptt_length": 25},
            r"tbptt_length=25 is longer than the sequences of 'text' \(24",
        ),
        (
            {"data.name": "digits", "data.options": {}},
            r"tbptt_length=7: truncated BPTT needs .* 'digits' is 'classification'",
        ),
        ({"model.bidirectional": True}, "tbptt_length=7: a bidirectional encoder"),
    ],
)
def test_tbptt_that_cannot_apply_is_refused_naming_the_key_and_numbers(changes, message):
    with pytest.raises(ConfigError, match=message):
        setup(_config(7, **changes))


def test_changing_tbptt_length_on_resume_is_refused(tmp_path):
    train_and_evaluate(_config(7, 4), tmp_path, stop_after_steps=2)
    with pytest.raises(ConfigError, match=r"train\.tbptt_length: 7 -> 6"):
        train_and_evaluate(_config(6, 4), tmp_path)


def test_a_skipped_nonfinite_window_leaves_the_carry_as_it_was(rng):
    """A NaN head makes the loss non-finite while the encoder's carry stays finite: the
    step must keep the carry it started from, as it keeps everything else."""
    from fnn_jax import tasks
    from fnn_jax.train.diagnostics import NORMS, zero_norms
    from fnn_jax.train.steps import StepSpec, TrainState, initial_carry, train_step_body

    model = _lm("gru", 1)
    tokens = _tokens(rng, batch=2)
    batch = {
        "inputs": tokens,
        "targets": tokens,
        "lengths": jnp.full((2,), TIME, jnp.int32),
        "weights": jnp.ones((2,), jnp.float32),
    }
    params = model.init(jax.random.key(0), tokens)["params"]
    params["head"]["bias"] = params["head"]["bias"].at[0].set(jnp.nan)
    task = tasks.get("tagging", VOCAB)
    spec = StepSpec(model=model, task=task, window=5, windows=4)
    tx = optax.sgd(0.1)
    carry = jax.tree.map(lambda c: c + 0.5, initial_carry(model, params, batch, 5))
    sums = {"loss": 0.0, "correct": 0.0, "count": 0.0, NORMS: zero_norms()}
    state = TrainState(jnp.int32(1), params, tx.init(params), sums, carry)  # window 1
    new, finite = train_step_body(spec)(state, batch, jax.random.key(0), tx, l1=0.0, l2=0.0)
    assert not bool(finite)
    for a, b in zip(jax.tree.leaves(new.carry), jax.tree.leaves(carry), strict=True):
        np.testing.assert_array_equal(a, b)
