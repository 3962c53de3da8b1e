"""Population-based training inside one vectorised program (fnn_jax.train.pbt).

Four trials of a 4-unit Elman net, validated every 2 of 6 steps, PBT every 2 steps with
quantile 0.25: at steps 2 and 4 the worst trial copies the best one's parameters and
optimizer state (exploit) and takes its learning rate and weight decay, each times 0.8 or
1.25 (explore). Everything is read back exactly: from the checkpoints saved at the PBT
point, and from the stepper right after its gather.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import test as test_config
from fnn_jax import sweep
from fnn_jax.checkpoint import Checkpoints, load_exported
from fnn_jax.reporting import MetricsLog
from fnn_jax.train import mesh, steppers
from fnn_jax.train import pbt as pbt_lib
from fnn_jax.train.vectorized import VECTORIZABLE, train_together

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "model.cell": "elman",
    "model.hidden_size": 4,
    "train.num_steps": 6,
    "train.eval_every_steps": 2,
    "train.log_every_steps": 2,
    "train.patience": 0,
    "optimizer.name": "adamw",
    "optimizer.warmup_steps": 0,
}
# Rates far apart, so the ranking at each point is clear; trial 3 has an L2 penalty that
# PBT does not perturb (it keeps its own).
TRIALS = [
    {"seed": 0, "optimizer.learning_rate": 1e-4, "optimizer.weight_decay": 1e-4},
    {"seed": 1, "optimizer.learning_rate": 3e-2, "optimizer.weight_decay": 1e-3},
    {"seed": 2, "optimizer.learning_rate": 1e-2, "optimizer.weight_decay": 1e-2},
    {
        "seed": 3,
        "optimizer.learning_rate": 3e-3,
        "optimizer.weight_decay": 1e-1,
        "regularization.l2": 1e-3,
    },
]
SPEC = pbt_lib.PBTSpec(interval=2, quantile=0.25, perturb=(0.8, 1.25), seed=0)
POINTS = (2, 4)  # 6 is the end: no PBT there


def _configs(**overrides):
    base = test_config.get_config()
    return [sweep.apply_overrides(base, {**SMALL, **t, **overrides}) for t in TRIALS]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _saved(workdir, step):
    """(state as saved, progress record) of ``workdir``'s checkpoint at ``step``."""
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        return checkpoints.restore_saved(step)
    finally:
        checkpoints.close()


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """The four trials with PBT, uninterrupted; the steppers made, and what each exploit
    left on the devices (every row's parameters, optimizer state and settings)."""
    root = tmp_path_factory.mktemp("pbt")
    dirs = [root / f"t{k}" for k in range(len(TRIALS))]
    made, after_exploit = [], []
    make, exploit = steppers.make_stepper, steppers.VectorizedStepper.exploit

    def recorded_make(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    def recorded_exploit(self, sources, settings):
        traces = self._run._cache_size()
        exploit(self, sources, settings)
        state = mesh.host(self.state)
        after_exploit.append(
            {
                "sources": list(sources),
                "rows": [
                    jax.tree.map(lambda x, k=k: np.array(x[k]), (state.params, state.opt_state))
                    for k in range(self.size)
                ],
                "settings": mesh.host(self.trials["settings"]),
                "dispatch_cache_before": traces,
            }
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steppers, "make_stepper", recorded_make)
        patch.setattr(steppers.VectorizedStepper, "exploit", recorded_exploit)
        outcomes = train_together(_configs(), dirs, pbt=SPEC)
    return dirs, outcomes, made, after_exploit


def _validation(workdir, step, metric="accuracy"):
    (record,) = [
        r for r in MetricsLog.read(workdir) if r["step"] == step and r["split"] == "validation"
    ]
    return record[metric]


def test_exploit_copies_the_best_trials_parameters_and_optimizer_state_bit_for_bit(group):
    dirs, outcomes, _, after_exploit = group
    assert all(o["steps"] == 6 for o in outcomes)
    lineage = pbt_lib.read(dirs[0])
    assert [r["step"] for r in lineage] == list(POINTS)
    assert len(after_exploit) == len(POINTS)
    for record, device in zip(lineage, after_exploit, strict=True):
        step = record["step"]
        # Ranked by validation accuracy (max), ties to the earlier row: 1 of 4 copies.
        ranked = sorted(range(4), key=lambda k: (-_validation(dirs[k], step), k))
        best, worst = ranked[0], ranked[-1]
        copies = [t for t in record["trials"] if t["source_row"] != t["row"]]
        assert [(t["row"], t["source_row"]) for t in copies] == [(worst, best)]
        assert [t["rank"] for t in sorted(record["trials"], key=lambda t: t["row"])] == [
            ranked.index(k) for k in range(4)
        ]
        assert device["sources"] == [best if k == worst else k for k in range(4)]
        source, _ = _saved(dirs[best], step)
        target, progress = _saved(dirs[worst], step)
        for part in ("params", "opt_state"):
            for a, b in zip(_leaves(target[part]), _leaves(source[part]), strict=True):
                np.testing.assert_array_equal(a, b)
        # On the devices too, right after the gather: the target's row is the source's.
        for a, b in zip(
            _leaves(device["rows"][worst]),
            _leaves((source["params"], source["opt_state"])),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
        # Every other row is left as it was (as each saved it at this step).
        for k in set(range(4)) - {worst}:
            own, _ = _saved(dirs[k], step)
            for a, b in zip(
                _leaves(device["rows"][k]), _leaves((own["params"], own["opt_state"])), strict=True
            ):
                np.testing.assert_array_equal(a, b)
        # The copy takes neither its step nor its train sums: those stay the target's own.
        assert int(target["step"]) == step


def test_explore_multiplies_only_the_named_settings_and_leaves_the_top_trials_alone(group):
    dirs, _, _, after_exploit = group
    configs = _configs()
    first = pbt_lib.read(dirs[0])[0]
    for entry, config in zip(first["trials"], configs, strict=True):
        # Before the first point every trial holds its config's float32 settings.
        assert entry["settings_before"] == {
            "learning_rate": float(np.float32(config.optimizer.learning_rate)),
            "weight_decay": float(np.float32(config.optimizer.weight_decay)),
            "l2": float(np.float32(config.regularization.l2)),
        }
    for record, device in zip(pbt_lib.read(dirs[0]), after_exploit, strict=True):
        by_row = {t["row"]: t for t in record["trials"]}
        for row, entry in by_row.items():
            _, progress = _saved(dirs[row], record["step"])
            assert progress["settings"] == entry["settings_after"]  # saved with the step
            for key, values in device["settings"].items():
                assert values[row] == np.float32(entry["settings_after"][key])
            if entry["source_row"] == row:  # not copied: nothing changes
                assert entry["settings_after"] == entry["settings_before"]
                assert entry["factors"] == {}
                continue
            source = by_row[entry["source_row"]]["settings_before"]
            assert set(entry["factors"]) == {"learning_rate", "weight_decay"}
            for key, factor in entry["factors"].items():
                assert factor in SPEC.perturb
                expected = np.float32(source[key]) * np.float32(factor)
                assert entry["settings_after"][key] == float(expected)
            assert entry["settings_after"]["l2"] == entry["settings_before"]["l2"]  # its own
        # The lineage is in each trial's metrics log too.
        for row, entry in by_row.items():
            (logged,) = [
                r
                for r in MetricsLog.read(dirs[row])
                if r["split"] == "pbt" and r["step"] == record["step"]
            ]
            assert logged["source"] == entry["source_row"]
            assert logged["learning_rate"] == entry["settings_after"]["learning_rate"]
            assert logged["learning_rate_before"] == entry["settings_before"]["learning_rate"]
    assert (dirs[0] / "pbt.png").stat().st_size > 0


def test_pbt_points_recompile_nothing(group):
    _, _, made, after_exploit = group
    (stepper,) = made  # one stage, one program
    assert all(d["dispatch_cache_before"] == 1 for d in after_exploit)
    assert stepper._run._cache_size() == 1  # the dispatch compiled once, PBT or not
    assert stepper._gather._cache_size() == 1  # the copy compiled at the first point only


def test_a_pbt_group_interrupted_after_a_pbt_point_resumes_bit_for_bit(group, tmp_path):
    """Stopped right after the PBT point at step 2 (resumed from its checkpoint: the
    copies as saved), then after step 3 (the settings PBT gave, restored from a checkpoint
    that is no PBT point), the group ends as the uninterrupted one, bit for bit."""
    dirs, outcomes, _, _ = group
    again = [tmp_path / f"t{k}" for k in range(len(TRIALS))]
    for steps, stop in ((2, 2), (1, 3)):
        stopped = train_together(_configs(), again, pbt=SPEC, stop_after_steps=steps)
        assert stopped == [{"interrupted_at": stop}] * len(TRIALS)
        assert [r["step"] for r in pbt_lib.read(again[0])] == [2]
    (copied,) = [t for t in pbt_lib.read(again[0])[0]["trials"] if t["source_row"] != t["row"]]
    _, progress = _saved(again[copied["row"]], 3)
    assert progress["settings"] == copied["settings_after"]
    resumed = train_together(_configs(), again, pbt=SPEC)
    for k in range(len(TRIALS)):
        assert resumed[k]["steps"] == outcomes[k]["steps"]
        assert resumed[k]["results"] == outcomes[k]["results"]
        exported = jax.tree.leaves(load_exported(again[k] / "export"))
        reference = jax.tree.leaves(load_exported(dirs[k] / "export"))
        for a, b in zip(exported, reference, strict=True):
            np.testing.assert_array_equal(a, b)
        final, _ = _saved(again[k], 6)
        expected, _ = _saved(dirs[k], 6)
        for a, b in zip(_leaves(final), _leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
        curve = MetricsLog.read(again[k], times=False)
        assert curve == MetricsLog.read(dirs[k], times=False)
    assert pbt_lib.read(again[0]) == pbt_lib.read(dirs[0])


def test_the_perturbable_settings_are_the_vectorisable_ones_but_the_seed():
    assert set(pbt_lib.PERTURBABLE) == set(VECTORIZABLE) - {"seed"}
    short = pbt_lib.PBTSpec(interval=2, keys=("learning_rate", "regularization.l2"))
    assert short.keys == ("optimizer.learning_rate", "regularization.l2")
    assert short.settings == ("learning_rate", "l2")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keys": ("model.hidden_size",)}, r"cannot perturb 'model\.hidden_size'"),
        ({"keys": ("seed",)}, r"cannot perturb 'seed' \(a trial keeps its seed"),
        ({"quantile": 0.0}, r"quantile must be in \(0, 0\.5\]; got 0\.0"),
        ({"quantile": 0.75}, r"quantile must be in \(0, 0\.5\]; got 0\.75"),
        ({"perturb": ()}, r"perturb factors"),
        ({"perturb": (0.8, -1.0)}, r"perturb factors"),
        ({"interval": 0}, r"interval must be >= 1"),
    ],
)
def test_a_bad_pbt_spec_is_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pbt_lib.PBTSpec(**{"interval": 2, **kwargs})


@pytest.mark.parametrize(
    "case, message",
    [
        ("misaligned", r"pbt interval=3 is not a multiple of the validation interval"),
        ("one trial", r"pbt needs a vectorised group of at least 2 trials"),
        ("halving", r"pbt with halving=2: use one or the other"),
        ("stages", r"pbt with 2 fine-tuning stages"),
        ("epochs", r"pbt interval=100 is not a multiple of the validation interval \(72 steps"),
    ],
)
def test_pbt_a_group_cannot_use_is_refused_before_anything_is_written(case, message, tmp_path):
    configs, spec, halving = _configs(), SPEC, 0
    if case == "misaligned":
        spec = pbt_lib.PBTSpec(interval=3)
    elif case == "one trial":
        configs = configs[:1]
    elif case == "halving":
        halving = 2
    elif case == "stages":
        stage = {"rules": [(".*", "train")], "num_steps": 3}
        configs = _configs(**{"finetune.stages": [stage, {**stage, "name": "two"}]})
    elif case == "epochs":  # validation every epoch (72 steps): known once the data is
        configs, spec = _configs(**{"train.eval_every_steps": 0}), pbt_lib.PBTSpec(interval=100)
    dirs = [tmp_path / f"t{k}" for k in range(len(configs))]
    with pytest.raises(ValueError, match=message):
        train_together(configs, dirs, pbt=spec, halving=halving)
    assert not any(tmp_path.iterdir())


def test_a_sweep_refuses_pbt_without_vectorize_or_in_a_group_of_one(tmp_path):
    base = sweep.apply_overrides(test_config.get_config(), SMALL)
    trials = [{"seed": 0}, {"seed": 1}, {"seed": 2, "model.hidden_size": 8}]
    with pytest.raises(ValueError, match="use vectorize"):
        sweep.run(base, trials, tmp_path / "s", pbt=SPEC)
    with pytest.raises(ValueError, match=r"trials \[seed=2.*\]: pbt needs .* at least 2 trials"):
        sweep.run(base, trials, tmp_path / "s", vectorize=True, pbt=SPEC)
    assert not (tmp_path / "s").exists()


def test_lineage_lines_after_the_resumed_step_are_dropped(tmp_path):
    lines = [{"step": s, "trials": []} for s in (2, 4, 6)]
    (tmp_path / pbt_lib.FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    lineage = pbt_lib.Lineage(tmp_path, 4)
    assert [r["step"] for r in pbt_lib.read(tmp_path)] == [2, 4]
    lineage.append({"step": 6, "trials": []})
    assert [r["step"] for r in pbt_lib.read(tmp_path)] == [2, 4, 6]


@pytest.mark.slow
def test_a_pbt_sweep_from_the_command_line_writes_its_lineage_and_refuses_bad_flags(tmp_path):
    """--vectorize --pbt 2: one group of four, the lineage in the first trial's workdir
    (named in the summary); --pbt without --vectorize, or a key PBT cannot perturb, is
    one error line before any trial runs."""
    command = [sys.executable, str(ROOT / "experiments/sweep.py")]
    command += ["--config", str(ROOT / "configs/test.py")]
    command += [f"--config.{key}={value}" for key, value in SMALL.items()]
    command += ["--sweep=optimizer.learning_rate=1e-4,3e-2,1e-2,3e-3"]
    done = subprocess.run(
        [*command, "--vectorize", "--pbt=2", "--workdir", str(tmp_path / "v")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pbt: " in done.stdout and "pbt.png" in done.stdout
    trials = sorted((tmp_path / "v/trials").iterdir())
    (first,) = [t for t in trials if (t / pbt_lib.FILE).exists()]
    assert [r["step"] for r in pbt_lib.read(first)] == list(POINTS)
    assert (first / pbt_lib.PLOT).exists()
    for flags, message in [
        (["--pbt=2"], "error: pbt exploits and explores inside a vectorised group"),
        (["--vectorize", "--pbt=2", "--pbt_keys=model.hidden_size"], "cannot perturb"),
    ]:
        refused = subprocess.run(
            [*command, *flags, "--workdir", str(tmp_path / "r")], capture_output=True, text=True
        )
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr[-2000:]
        assert not (tmp_path / "r").exists()
