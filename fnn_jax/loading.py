"""``fnn_jax.load``: a run's config, model and parameters, ready to call, from its workdir.

    run = fnn_jax.load("runs/demo")              # the best step; or step="latest" / 600
    logits = run(inputs, lengths)                # inputs [batch, time, features]
    run.config, run.model, run.params, run.step, run.dataset

Only the exported parameters (``<workdir>/export``, no config): ``fnn_jax.checkpoint.
load_exported(path)`` gives the params tree of the same model.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import linen as nn

from fnn_jax import config as config_lib
from fnn_jax import data as data_lib
from fnn_jax import finetune
from fnn_jax.data import fingerprint
from fnn_jax.train.steps import build_model


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A trained model with the config and data it was built for."""

    config: ml_collections.ConfigDict
    model: nn.Module
    params: Any  # the model's parameters (LoRA adapters merged in)
    step: int  # the checkpoint they come from
    dataset: data_lib.Dataset

    def __call__(self, inputs: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """The model's outputs (evaluation mode: no dropout) for ``inputs``
        [batch, time, features] (token ids [batch, time] for language models), with
        optional ``lengths`` [batch]."""
        return self.model.apply({"params": self.params}, inputs, lengths)


def load(workdir: str | Path, step: str | int = "best") -> LoadedRun:
    """The run in ``workdir`` at ``step``: "best" (by the validation metric), "latest" or a
    step number. Reads its checkpoints without writing anything."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} holds no run: {path} is missing")
    # A run saved by an earlier version: its config in today's schema (new keys defaulted).
    config = ml_collections.ConfigDict(config_lib.in_current_schema(json.loads(path.read_text())))
    saved = fingerprint.read(workdir)
    fingerprint.make_importable(saved)  # a "module:function" loader beside its config
    dataset = data_lib.load(config.data.name, **config.data.options.to_dict())
    if saved is not None:
        changed = fingerprint.changes(saved["fingerprint"], fingerprint.fingerprint(dataset))
        if changed:
            warnings.warn(
                f"{workdir}: the data rebuilt from its config differs from what the run was "
                "trained on:\n  " + "\n  ".join(changed),
                stacklevel=2,
            )
    what = f"fnn_jax.load({str(workdir)!r}, step={step!r})"
    params, used, _ = finetune.pretrained_params(str(workdir), str(step), what=what)
    return LoadedRun(config, build_model(config.model, dataset), params, used, dataset)
