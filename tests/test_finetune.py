"""Fine-tuning: loading, head replacement, staged freezing, LoRA, exact resume across stages."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import test as test_config
from fnn_jax import layers, lora
from fnn_jax.checkpoint import Checkpoints, load_exported
from fnn_jax.config import ConfigError, default_config
from fnn_jax.finetune import classic_stages, gradual_unfreezing, merge_pretrained, pretrained_params
from fnn_jax.optim import make_optimizer
from fnn_jax.reporting import MetricsLog
from fnn_jax.train import train_and_evaluate
from tests import numpy_reference as ref

HEAD_STEPS, ALL_STEPS = 6, 6


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _saved(workdir, step):
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, progress = checkpoints.restore_saved(step)
    checkpoints.close()
    return state, progress


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny classifier of digits 0 and 1."""
    workdir = tmp_path_factory.mktemp("pretrain")
    config = test_config.get_config()
    with config.unlocked():
        config.data.options = ml_collections.ConfigDict({"classes": (0, 1)})
    train_and_evaluate(config, workdir)
    return workdir


def _finetune_config(pretrained, **changes):
    """Digits 2, 3, 4 (three classes) from the two-class checkpoint: head, then all."""
    config = test_config.get_config()
    with config.unlocked():
        config.data.options = ml_collections.ConfigDict({"classes": (2, 3, 4)})
        config.init_from = str(pretrained)
        config.init_step = "latest"
        config.train.eval_every_steps = 4
        config.finetune.stages = classic_stages(head_epochs=1, all_epochs=1)
        for stage, steps in zip(config.finetune.stages, (HEAD_STEPS, ALL_STEPS), strict=True):
            del stage["num_epochs"]
            stage["num_steps"] = steps
        for key, value in changes.items():
            section, name = key.split(".")
            config[section][name] = value
    return config


def test_new_head_has_new_size_and_all_else_equals_the_checkpoint(pretrained, tmp_path):
    config = _finetune_config(pretrained)
    train_and_evaluate(config, tmp_path, stop_after_steps=1)
    loaded, _, _ = pretrained_params(str(pretrained), "latest")
    state, _ = _saved(tmp_path, 1)
    params, before = _flat(state["params"]), _flat(loaded)
    assert params["head/kernel"].shape == (16, 3) and before["head/kernel"].shape == (16, 2)
    # One step of the head stage later, everything below the head is still the checkpoint's.
    for path, value in before.items():
        if not path.startswith("head/"):
            np.testing.assert_array_equal(params[path], value, err_msg=path)


def test_frozen_parameters_are_bit_identical_and_have_no_optimizer_state(pretrained, tmp_path):
    train_and_evaluate(_finetune_config(pretrained), tmp_path, stop_after_steps=HEAD_STEPS)
    loaded, _, _ = pretrained_params(str(pretrained), "latest")
    state, progress = _saved(tmp_path, HEAD_STEPS)
    assert progress["stage"] == 0
    params = _flat(state["params"])
    after_one, _ = _saved(tmp_path, 4)  # an earlier head-stage checkpoint (eval at step 4)
    for path, value in _flat(loaded).items():
        if not path.startswith("head/"):
            np.testing.assert_array_equal(params[path], value, err_msg=path)
    assert not np.array_equal(params["head/kernel"], _flat(after_one["params"])["head/kernel"])
    # Adam's moments exist only for the two head leaves.
    moments = [x for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) > 0]
    head_size = params["head/kernel"].size + params["head/bias"].size
    assert sum(np.size(x) for x in moments) == 2 * head_size


@pytest.fixture(scope="module")
def uninterrupted_finetune(pretrained, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finetune_full")
    return workdir, train_and_evaluate(_finetune_config(pretrained), workdir)


@pytest.mark.parametrize("stop_at", [4, HEAD_STEPS, HEAD_STEPS + 1])
def test_resume_across_the_stage_boundary_is_exact(
    pretrained, uninterrupted_finetune, stop_at, tmp_path
):
    full_dir, full = uninterrupted_finetune
    config = _finetune_config(pretrained)
    train_and_evaluate(config, tmp_path, stop_after_steps=stop_at)
    resumed = train_and_evaluate(config, tmp_path)
    total = HEAD_STEPS + ALL_STEPS
    a, progress_a = _saved(full_dir, total)
    b, progress_b = _saved(tmp_path, total)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert progress_a == progress_b and progress_a["stage"] == 1
    assert resumed["results"] == full["results"]
    assert MetricsLog.read(tmp_path, times=False) == MetricsLog.read(full_dir, times=False)


def test_head_stage_on_cached_features_equals_running_the_frozen_encoder(pretrained, tmp_path):
    config = _finetune_config(pretrained)
    uncached = _finetune_config(pretrained, **{"finetune.cache_features": False})
    train_and_evaluate(config, tmp_path / "cached", stop_after_steps=HEAD_STEPS)
    train_and_evaluate(uncached, tmp_path / "uncached", stop_after_steps=HEAD_STEPS)
    cached_state, _ = _saved(tmp_path / "cached", HEAD_STEPS)
    plain_state, _ = _saved(tmp_path / "uncached", HEAD_STEPS)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
        cached_state["params"],
        plain_state["params"],
    )


def test_mismatched_hidden_size_names_the_path_and_both_shapes(pretrained, tmp_path):
    config = _finetune_config(pretrained, **{"model.hidden_size": 12})
    with pytest.raises(
        ConfigError, match=r"'encoder/layer_0/w_hh': checkpoint \(16, 64\), model \(12, 48\)"
    ):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the workdir is created


def test_a_missing_init_from_is_refused_before_the_workdir_is_created(tmp_path):
    config = _finetune_config(tmp_path / "no_such_run")
    with pytest.raises(ConfigError, match=r"config.init_from=.*no checkpoint folder at"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_merge_is_loud_about_unused_and_missing_parameters():
    fresh = {"encoder": {"w": jnp.zeros(2)}, "head": {"kernel": jnp.zeros(3)}}
    saved = {"encoder": {"w": jnp.ones(2), "extra": jnp.ones(1)}, "head": {"kernel": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"does not use: \['encoder/extra'\]"):
        merge_pretrained(fresh, saved, reinit=["head/.*"], dont_load=[], source="ckpt")
    merged = merge_pretrained(
        fresh, saved, reinit=["head/.*"], dont_load=["encoder/extra"], source="ckpt"
    )
    np.testing.assert_array_equal(merged["encoder"]["w"], [1, 1])
    np.testing.assert_array_equal(merged["head"]["kernel"], [0, 0, 0])
    with pytest.raises(ValueError, match=r"'head/kernel' \(shape \(3,\)\) is not in checkpoint"):
        merge_pretrained(
            fresh, {"encoder": {"w": jnp.ones(2)}}, reinit=[], dont_load=[], source="c"
        )


def test_init_from_without_stages_runs_the_classic_recipe(pretrained, tmp_path):
    config = _finetune_config(pretrained)
    with config.unlocked():
        config.finetune.stages = []
        config.train.num_steps = 8
    report = train_and_evaluate(config, tmp_path)
    assert report["trainable_parameters"]["head"] == 16 * 3 + 3
    assert report["trainable_parameters"]["all"] == report["parameters"]
    _, progress = _saved(tmp_path, 8)
    assert progress["stage"] == 1 and progress["stage_start"] == 4


def test_every_parameter_must_match_a_freezing_rule(pretrained, tmp_path):
    config = _finetune_config(pretrained)
    with config.unlocked():
        config.finetune.stages[0]["rules"] = [("head/.*", "train")]
    with pytest.raises(
        ValueError, match=r"parameter 'encoder/layer_0/b_hh' matches no freezing rule"
    ):
        train_and_evaluate(config, tmp_path)


def test_lr_multipliers_scale_each_groups_update():
    cfg = default_config().optimizer
    cfg.name, cfg.learning_rate, cfg.momentum, cfg.clip_norm = "sgd", 0.1, 0.0, 0.0
    params = {"encoder": {"w": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}
    tx = make_optimizer(cfg, 10, params=params, lr_mults=[("encoder/.*", 0.25)])
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["encoder"]["w"], -0.025)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1)


def test_gradual_unfreezing_trains_one_more_block_per_stage():
    stages = gradual_unfreezing(
        ["encoder/layer_1/.*", "encoder/layer_0/.*"], epochs_per_stage=2, learning_rate=1e-3
    )
    trained = [[p for p, label in s["rules"] if label == "train"] for s in stages]
    assert trained == [
        ["head/.*"],
        ["head/.*", "encoder/layer_1/.*"],
        ["head/.*", "encoder/layer_1/.*", "encoder/layer_0/.*"],
    ]


def test_lora_merged_lstm_equals_low_rank_adapted_formula(key):
    layer = layers.Recurrent(cell="lstm", hidden_size=6)
    xs = jax.random.normal(key, (2, 5, 4))
    params = layer.init(key, xs)["params"]
    adapters = lora.init_adapters(jax.random.key(1), params, rank=2)
    adapters = jax.tree.map(lambda a: a + 0.3, adapters)  # non-zero B: a real adaptation
    merged = lora.merge({"base": params, "lora": adapters}, alpha=4.0, rank=2)

    # Reference: the adapters' low-rank products applied inside every step, in float64.
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    ad = jax.tree.map(lambda a: np.asarray(a, np.float64), adapters)
    p["w_ih"] = p["w_ih"] + 2.0 * ad["w_ih"]["a"] @ ad["w_ih"]["b"]
    p["w_hh"] = p["w_hh"] + 2.0 * ad["w_hh"]["a"] @ ad["w_hh"]["b"]
    carry, outputs = (np.zeros((2, 6)), np.zeros((2, 6))), []
    for t in range(5):
        carry, y = ref.lstm(p, carry, np.asarray(xs[:, t], np.float64))
        outputs.append(y)
    _, ys = layer.apply({"params": merged}, xs)
    np.testing.assert_allclose(ys, np.stack(outputs, 1), atol=1e-5)


def test_zero_initialised_adapters_leave_the_model_unchanged(key):
    layer = layers.Recurrent(cell="gru", hidden_size=6)
    xs = jax.random.normal(key, (2, 5, 4))
    params = layer.init(key, xs)["params"]
    tree = {"base": params, "lora": lora.init_adapters(key, params, rank=3)}
    np.testing.assert_array_equal(
        layer.apply({"params": lora.merge(tree, alpha=8.0, rank=3)}, xs)[1],
        layer.apply({"params": params}, xs)[1],
    )


def test_lora_run_trains_only_adapters_and_head_and_exports_merged_weights(pretrained, tmp_path):
    config = _finetune_config(pretrained)
    with config.unlocked():
        config.finetune.lora_rank = 2
        config.finetune.stages = [
            {"name": "lora", "rules": [("head/.*", "train"), (".*", "frozen")], "num_steps": 6}
        ]
    report = train_and_evaluate(config, tmp_path)
    state, _ = _saved(tmp_path, 6)
    loaded, _, _ = pretrained_params(str(pretrained), "latest")
    base = _flat(state["params"]["base"])
    for path, value in _flat(loaded).items():
        if not path.startswith("head/"):
            np.testing.assert_array_equal(base[path], value, err_msg=path)
    adapters = _flat(state["params"]["lora"])
    assert any(np.any(v != 0) for p, v in adapters.items() if p.endswith("/b"))
    exported = load_exported(tmp_path / "export")
    best, _ = _saved(tmp_path, report["best_step"])
    want = lora.merge(jax.tree.map(jnp.asarray, best["params"]), alpha=8.0, rank=2)
    jax.tree.map(np.testing.assert_array_equal, exported, jax.device_get(want))
    lora_count = (
        sum(v.size for v in adapters.values()) + base["head/kernel"].size + base["head/bias"].size
    )
    assert report["trainable_parameters"] == {"lora": lora_count}
    assert report["parameters"] == sum(v.size for v in base.values())


def _stage_with(**changes):
    """The classic head stage of the fine-tuning config, with ``changes`` to its dict."""
    stages = classic_stages(head_epochs=1, all_epochs=1)
    stages[0].update(changes)
    return stages


FREEZING_MISTAKES = [
    (
        {"finetune.stages": _stage_with(rules=[("haed/.*", "train"), (".*", "frozen")])},
        r"stages\[0\] \('head'\)\.rules: 'haed/\.\*' matches no parameter path; nearest: "
        r"\['head/.*'\]",
    ),
    (
        {"finetune.stages": _stage_with(rules=[(".*", "frozen")])},
        r"stages\[0\] \('head'\) trains no parameter",
    ),
    (
        {"finetune.stages": _stage_with(lr_mults=[("encoder/layer_9/.*", 0.1)])},
        r"stages\[0\] \('head'\)\.lr_mults: 'encoder/layer_9/\.\*' matches no parameter",
    ),
    ({"finetune.reinit": ("haed/.*",)}, r"config\.finetune\.reinit: 'haed/\.\*' matches no"),
    ({"finetune.dont_load": ("decoder/.*",)}, r"config\.finetune\.dont_load .*'decoder/\.\*'"),
    (
        {"finetune.lora_rank": 2, "finetune.lora_targets": "(.*/)?w_xx", "finetune.stages": []},
        r"config\.finetune\.lora_targets='\(\.\*/\)\?w_xx' matches no 2-D parameter",
    ),
    (
        {"regularization.l2": 1e-3, "regularization.exclude": "bias"},  # a full match now
        r"config\.regularization\.exclude: 'bias' matches no parameter path; nearest",
    ),
]


@pytest.mark.parametrize(
    ("changes", "message"),
    FREEZING_MISTAKES,
    ids=["rule_typo", "all_frozen", "lr_mult_typo", "reinit", "dont_load", "lora", "exclude"],
)
def test_a_freezing_pattern_that_matches_nothing_is_an_error_before_training(
    pretrained, changes, message, tmp_path
):
    config = _finetune_config(pretrained)
    with config.unlocked():
        for key, value in changes.items():
            section, name = key.split(".")
            config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


def test_the_last_step_of_every_stage_survives_keep_checkpoints_1(pretrained, tmp_path):
    config = _finetune_config(pretrained, **{"train.keep_checkpoints": 1})
    report = train_and_evaluate(config, tmp_path)
    steps = Checkpoints(tmp_path / "checkpoints").steps()
    # The two stage ends, and the best (the latest is the second stage's end); the other
    # evaluation steps (8, and 4 unless it is the best) are gone.
    assert report["best_step"] != HEAD_STEPS  # else this test could not tell
    assert set(steps) == {HEAD_STEPS, HEAD_STEPS + ALL_STEPS, report["best_step"]}


def test_the_report_lists_each_stage_with_its_optimizer_and_best_metric(
    uninterrupted_finetune, pretrained, caplog
):
    workdir, report = uninterrupted_finetune
    latest = Checkpoints(pretrained / "checkpoints").latest_step()
    assert report["init_from"] == {"workdir": str(pretrained), "step": latest, "asked": "latest"}
    head, whole = report["stages"]
    assert (head["name"], head["steps"], whole["name"], whole["steps"]) == (
        "head",
        HEAD_STEPS,
        "all",
        ALL_STEPS,
    )
    assert head["trainable_parameters"] == 16 * 3 + 3
    assert whole["trainable_parameters"] == report["parameters"]
    assert head["rules"] == [["head/.*", "train"], [".*", "frozen"]]
    # The stage's optimizer in full: its own learning rate, and what it inherited.
    assert (
        head["optimizer"]["learning_rate"] == 1e-3 and whole["optimizer"]["learning_rate"] == 1e-4
    )
    assert head["optimizer"]["clip_norm"] == test_config.get_config().optimizer.clip_norm
    logged = [r for r in MetricsLog.read(workdir) if r["split"] == "validation"]
    in_head = [r["accuracy"] for r in logged if r["step"] <= HEAD_STEPS]
    in_all = [r["accuracy"] for r in logged if r["step"] > HEAD_STEPS]
    assert head["best_validation_accuracy"] == max(in_head)
    assert whole["best_validation_accuracy"] == max(in_all)
    table = (workdir / "report.md").read_text()
    assert f"Fine-tuned from {pretrained} (step {latest}, its latest)." in table
    assert f"| head | {HEAD_STEPS} of {HEAD_STEPS} | {16 * 3 + 3} | 0.001 |" in table
