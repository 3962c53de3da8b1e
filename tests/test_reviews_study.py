"""experiments/reviews_study.py: each seed's baseline is fitted on that seed's own draw, and
recipes are compared seed by seed with fnn_jax.stats.paired_seeds."""

import json
from pathlib import Path

import numpy as np
import pytest

from fnn_jax import data, stats
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    module = load_script("reviews_study")
    module.FLAGS(["reviews_study", "--workdir", "unused"])
    return module


def test_all_labels_rows_resample_the_train_split_by_seed(study):
    configs = [study.study_config(r, "all", s) for r, s in (("scratch", 0), ("tfidf", 1))]
    assert [c.data.options.resample for c in configs] == [True, True]
    assert [c.data.options.seed for c in configs] == [0, 1] and configs[0].seed == 0
    budget = study.study_config("finetune", "50", 3)
    assert budget.data.options.num_labels == 50 and budget.data.options.seed == 3


def test_the_tfidf_recipe_is_the_baseline_on_that_seeds_draw_and_is_read_back(study, tmp_path):
    baselines = study.baselines
    results = [study.run_one("tfidf", "50", seed, tmp_path / f"t{seed}") for seed in (0, 1)]
    for seed, result in zip((0, 1), results, strict=True):
        ds = data.load("reviews", max_len=512, num_labels=50, seed=seed)
        assert result == baselines.strongest_text_baseline(ds)
    assert results[0] != results[1]  # another draw of 50 reviews
    saved = json.loads((tmp_path / "t0/report.json").read_text())["results"]["test"]
    assert study.run_one("tfidf", "50", 0, tmp_path / "t0") == saved == results[0]


def test_comparisons_pair_each_recipe_with_scratch_and_tfidf_seed_by_seed(study):
    acc = {
        "scratch": [0.60, 0.62, 0.61],
        "tfidf": [0.66, 0.65, 0.70],
        "finetune": [0.64, 0.66, 0.66],
    }
    results = {
        (recipe, "50"): [{"accuracy": a, "f1": a - 0.1} for a in values]
        for recipe, values in acc.items()
    }
    text = study.comparisons(results)
    d = stats.paired_seeds(acc["finetune"], acc["tfidf"])
    expected = f"{d['mean_difference']:+.3f} ({d['low']:+.3f}, {d['high']:+.3f})"
    line = next(li for li in text.splitlines() if "finetune - tfidf" in li)
    assert line.split(" | ")[3] == expected
    assert np.isclose(d["mean_difference"], (-0.02 + 0.01 - 0.04) / 3)
    assert "tfidf - scratch" in text and "finetune - scratch" in text
    assert "scratch - scratch" not in text and "tfidf - tfidf" not in text
