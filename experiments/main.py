"""Train or fine-tune a feedback network from a config.

    python experiments/main.py --config configs/digits_lstm.py --workdir runs/digits_lstm
    python experiments/main.py --config configs/digits_lstm.py --workdir runs/x \
        --config.optimizer.learning_rate=3e-4

Running the same command again resumes from the workdir's last checkpoint. On SIGTERM or
Ctrl-C the run saves at the next step boundary and exits with code 75 (EX_TEMPFAIL: run it
again); a second Ctrl-C aborts at once. Dataset options the config file does not set can be
given as --config.data.options.NAME=VALUE.
"""

from __future__ import annotations

import logging as pylogging
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ import fnn_jax

from fnn_jax import cli, reporting  # noqa: E402
from fnn_jax.train import EXIT_PREEMPTED, REFUSALS, Preempted, train_and_evaluate  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, plots and the report.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
DATASET_OPTIONS: dict = {}  # --config.data.options.X=V, set by cli.preflight


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("fnn_jax").setLevel(pylogging.INFO)  # resumes, stages, warnings
    try:
        report = train_and_evaluate(cli.with_options(FLAGS.config, DATASET_OPTIONS), FLAGS.workdir)
    except Preempted as stop:
        print(stop, file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        sys.exit("interrupted: the last checkpoint is intact; run the same command to resume")
    except REFUSALS as refused:  # the message names the key, path or step: no traceback
        sys.exit(f"error: {refused}")
    print()
    print(f"{report['name']}: best validation {report['metric']} at step {report['best_step']}")
    if "best_checkpoint_problem" in report:
        lost = report["best_checkpoint_problem"]
        print(
            f"WARNING: that checkpoint was unusable ({lost['reason']}); the results below "
            f"are of step {lost['used_step']}, the best intact one"
        )
    print(reporting.markdown_table(report["results"]))
    if report["baselines"]:
        baselines = ", ".join(f"{k} {v:.4f}" for k, v in report["baselines"].items())
        print(f"baselines: {baselines}")
    for what, path in report["paths"].items():
        print(f"{what:>12}: {path}")


if __name__ == "__main__":
    sys.argv, DATASET_OPTIONS = cli.preflight(sys.argv)
    app.run(main)
