"""experiments/evaluate.py: a finished run's metrics on its dataset, or with other options."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fnn_jax.train import train_and_evaluate
from tests.test_tbptt import _config

pytestmark = pytest.mark.slow  # the command line in a subprocess

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(workdir: Path, *options: str) -> dict:
    args = [sys.executable, "experiments/evaluate.py", f"--workdir={workdir}"]
    args += [f"--option={o}" for o in options]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_evaluate_reproduces_the_report_and_reads_other_options(tmp_path):
    report = train_and_evaluate(_config(0, steps=6), tmp_path)
    same = _evaluate(tmp_path)
    assert same["step"] == report["best_step"] and same["options"]["seq_len"] == 24
    for name, value in report["results"]["test"].items():
        np.testing.assert_allclose(same[name], value, rtol=1e-6)
    longer = _evaluate(tmp_path, "seq_len=48")
    assert longer["options"]["seq_len"] == 48
    assert longer["cross_entropy"] != same["cross_entropy"]  # other rows, another number
