"""Sequence augmentation: each transform does what it says, only training batches see it,
and a resumed augmented run is the uninterrupted one bit for bit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn_jax.checkpoint import Checkpoints
from fnn_jax.config import ConfigError
from fnn_jax.data import augment
from fnn_jax.train import train_and_evaluate
from tests.test_reliability import _config

BATCH, TIME, FEATURES = 6, 10, 3
LENGTHS = jnp.array([10, 7, 10, 4, 9, 10], jnp.int32)


def _inputs(key):
    """Positive values on valid steps (a zero then means 'set to zero'), zeros past them."""
    x = 1.0 + jax.random.uniform(key, (BATCH, TIME, FEATURES))
    return jnp.where((jnp.arange(TIME)[None, :] < LENGTHS[:, None])[..., None], x, 0.0)


def _apply(key, **strengths):
    x = _inputs(key)
    return np.asarray(x), np.asarray(augment.apply(augment.Augment(**strengths), x, LENGTHS, key))


def _padding_is_zero(x):
    return all(not np.any(x[b, n:]) for b, n in enumerate(LENGTHS.tolist()))


def test_jitter_adds_noise_of_its_strength_on_valid_steps_only(key):
    x, y = _apply(key, jitter=0.5)
    valid = np.arange(TIME)[None, :] < np.asarray(LENGTHS)[:, None]
    noise = (y - x)[valid]
    assert 0.35 < noise.std() < 0.65 and abs(noise.mean()) < 0.2
    assert _padding_is_zero(y)


def test_scaling_multiplies_each_sequence_and_feature_by_one_factor(key):
    x, y = _apply(key, scale=0.3)
    ratio = y[:, 0] / x[:, 0]  # [batch, features]
    for b, n in enumerate(LENGTHS.tolist()):
        np.testing.assert_allclose(y[b, :n], x[b, :n] * ratio[b][None], rtol=1e-6)
    assert np.std(ratio) > 0.05
    assert _padding_is_zero(y)


def test_time_shift_moves_each_sequence_later_with_zeros_in_front(key):
    x, y = _apply(key, max_shift=3)
    shifts = set()
    for b, n in enumerate(LENGTHS.tolist()):
        s = int(np.argmax(np.any(y[b] != 0, axis=-1)))  # first non-zero step
        assert 0 <= s <= 3 and not np.any(y[b, :s])
        np.testing.assert_array_equal(y[b, s:n], x[b, : n - s])
        shifts.add(s)
    assert len(shifts) > 1
    assert _padding_is_zero(y)


def test_time_masking_zeroes_one_window_no_wider_than_its_strength(key):
    x, y = _apply(key, mask_width=4)
    for b in range(BATCH):
        zeroed = np.flatnonzero(np.all(y[b] == 0, axis=-1) & np.any(x[b] != 0, axis=-1))
        if zeroed.size:
            assert zeroed.size <= 4 and np.all(np.diff(zeroed) == 1), zeroed  # one window
        kept = np.any(y[b] != 0, axis=-1)
        np.testing.assert_array_equal(y[b, kept], x[b, kept])


def test_augmentation_changes_training_batches_only(tmp_path):
    """Learning rate 0: the parameters never move, so the validation metrics of an augmented
    run equal those of a plain one exactly, while its training loss does not."""
    records = {}
    for name, jitter in (("plain", 0.0), ("augmented", 1.0)):
        config = _config(**{"optimizer.learning_rate": 0.0})
        with config.unlocked():
            config.data.augment.jitter = jitter
        train_and_evaluate(config, tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        records[name] = [json.loads(line) for line in lines]

    def values(name, split):
        return [
            {k: v for k, v in r.items() if k not in ("time", "learning_rate")}
            for r in records[name]
            if r["split"] == split
        ]

    assert values("plain", "validation") == values("augmented", "validation")
    assert values("plain", "test") == values("augmented", "test")
    train_plain, train_aug = values("plain", "train"), values("augmented", "train")
    assert all(p["loss"] != a["loss"] for p, a in zip(train_plain, train_aug, strict=True))


def _final_params(workdir):
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, _ = checkpoints.restore_saved(checkpoints.latest_step())
    checkpoints.close()
    return jax.tree.leaves(state["params"])


def test_a_resumed_augmented_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    strengths = {"jitter": 0.3, "scale": 0.2, "max_shift": 2, "mask_width": 3}

    def config(steps):
        c = _config(**{"train.num_steps": steps})
        with c.unlocked():
            c.data.augment.update(strengths)
        return c

    train_and_evaluate(config(12), tmp_path / "whole")
    train_and_evaluate(config(6), tmp_path / "parts")
    train_and_evaluate(config(12), tmp_path / "parts")
    whole, parts = _final_params(tmp_path / "whole"), _final_params(tmp_path / "parts")
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_array_equal(a, b)
    plain = _config(**{"train.num_steps": 12})
    train_and_evaluate(plain, tmp_path / "plain")
    plain_params = _final_params(tmp_path / "plain")
    assert any(not np.array_equal(a, b) for a, b in zip(whole, plain_params, strict=True))


@pytest.mark.parametrize(
    ("dataset", "strengths", "message"),
    [
        (
            "digits",
            {"max_shift": 8},
            r"augment\.max_shift=8 must be less than the sequence length 8",
        ),
        ("digits", {"mask_width": 9}, r"augment\.mask_width=9 must be less than .* length 8"),
        ("copy_memory", {"jitter": 0.1}, r"augment applies to real-valued inputs; .* int32 tokens"),
    ],
)
def test_a_bad_augmentation_is_refused_naming_the_key_and_numbers(
    dataset, strengths, message, tmp_path
):
    config = _config()
    with config.unlocked():
        config.data.name = dataset
        if dataset == "copy_memory":
            config.data.options.update({"delay": 5, "num_train": 64})
        config.data.augment.update(strengths)
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_head_only_stage_does_not_cache_features_of_augmented_inputs(key):
    """Features computed once would freeze one augmentation for the whole stage."""
    from fnn_jax import finetune, models, tasks

    model = models.SequenceClassifier(cell="lstm", hidden_size=4, num_classes=3)
    params = model.init(key, jnp.ones((2, 5, 3)))["params"]
    frozen = finetune.frozen_tree(params, [("head/.*", "train"), (".*", "frozen")])
    task = tasks.get("classification", 3)
    config = _config()
    assert finetune.caches_features(config, model, task, frozen)
    with config.unlocked():
        config.data.augment.jitter = 0.1
    assert not finetune.caches_features(config, model, task, frozen)
