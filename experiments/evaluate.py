"""Evaluate a finished run on its dataset, optionally with other dataset options.

    python experiments/evaluate.py --workdir runs/charlm_gru --option seq_len=1024

prints the run's metrics (the task's own, as in report.md) on --split (default test) of the
dataset its config names, loaded with the run's options updated by each --option NAME=VALUE
(a Python literal), e.g. a language model read on rows of another length. The model and
its parameters ("best" checkpoint, or --step) are the run's; nothing is written.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fnn_jax  # noqa: E402
from fnn_jax import data, tasks  # noqa: E402
from fnn_jax.train.steps import evaluate, make_eval_step  # noqa: E402

flags.DEFINE_string("workdir", None, "A finished run's directory.")
flags.DEFINE_string("split", "test", "train, validation or test.")
flags.DEFINE_multi_string("option", [], "A dataset option NAME=VALUE (a Python literal).")
flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
flags.DEFINE_integer("batch_size", 64, "Rows per evaluation batch.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def parse_options(pairs: list[str]) -> dict:
    """{NAME: value} from NAME=VALUE strings; a bare word that is no literal stays a string."""
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise app.UsageError(f"--option wants NAME=VALUE; got {pair!r}")
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
    return options


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    step = int(FLAGS.step) if FLAGS.step.isdigit() else FLAGS.step
    run = fnn_jax.load(FLAGS.workdir, step=step)
    options = {**run.config.data.options.to_dict(), **parse_options(FLAGS.option)}
    dataset = data.load(run.config.data.name, **options)
    task = tasks.for_dataset(dataset)
    metrics = evaluate(
        make_eval_step(run.model, task),
        run.params,
        dataset.split(FLAGS.split),
        FLAGS.batch_size,
        task,
    )
    print(
        json.dumps(
            {
                "workdir": FLAGS.workdir,
                "step": run.step,
                "options": options,
                "split": FLAGS.split,
                **{k: float(v) for k, v in metrics.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    app.run(main)
