"""Population-based training (PBT) inside one vectorised program.

At every ``interval`` steps (a multiple of the validation interval, so a PBT point is a
validation) the trials still training are ranked by the task's selection metric (its
declared direction, NaN last, ties to the earlier row). Each trial of the bottom
``quantile`` copies the parameters and optimizer state of a top-``quantile`` trial
(exploit), then takes that trial's perturbable settings, each multiplied by a factor drawn
from ``perturb`` (explore). Which top trial and which factors are drawn from
``numpy.random.default_rng([seed, step])``, so a resumed group draws what an uninterrupted
one drew. A trial keeps its own seed: its batch order and dropout keys are never copied.

On the devices the copy is one gather over the trial axis of the stacked state and the
settings are inputs of the program, so nothing recompiles
(``steppers.VectorizedStepper.exploit``). A trial's current settings are saved in its
Progress with every checkpoint and restored on resume (``Engine._settings``).

The lineage: each trial's metrics.jsonl gets a ``"pbt"`` record at each point (its rank,
the row it copied from, its settings before and after); the group's ``pbt.jsonl`` (one
line per point, in the first trial's workdir) and ``pbt.png`` (each trial's learning rate
against step, the copies marked) say the same for the whole group.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fnn_jax.files import write_atomic

# The settings PBT may perturb (config key -> its name in a trial's settings): the scalar
# settings that are inputs of the vectorised program (vectorized.VECTORIZABLE but the seed,
# which fixes a trial's batch order and dropout keys).
PERTURBABLE = {
    "optimizer.learning_rate": "learning_rate",
    "optimizer.weight_decay": "weight_decay",
    "optimizer.momentum": "momentum",
    "regularization.l1": "l1",
    "regularization.l2": "l2",
}
FILE = "pbt.jsonl"
PLOT = "pbt.png"


@dataclasses.dataclass(frozen=True)
class PBTSpec:
    """Population-based training of a vectorised group; see the module docstring.

    ``interval``: steps between PBT points (a multiple of config.train.eval_every_steps);
    ``quantile`` in (0, 0.5]: the bottom floor(n * quantile) trials (at least one) exploit
    the top as many; ``perturb``: the factors explore draws from; ``keys``: the settings
    perturbed (config keys, or their last part: "learning_rate"); ``seed``: of the draws.
    """

    interval: int
    quantile: float = 0.25
    perturb: tuple[float, ...] = (0.8, 1.25)
    keys: tuple[str, ...] = ("optimizer.learning_rate", "optimizer.weight_decay")
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.interval, bool) or not isinstance(self.interval, int):
            raise ValueError(f"pbt interval must be a whole number of steps; got {self.interval!r}")
        if self.interval < 1:
            raise ValueError(f"pbt interval must be >= 1 step; got {self.interval}")
        if not 0 < self.quantile <= 0.5:
            raise ValueError(f"pbt quantile must be in (0, 0.5]; got {self.quantile}")
        factors = tuple(float(f) for f in self.perturb)
        if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
            raise ValueError(f"pbt perturb factors must be finite and > 0; got {self.perturb}")
        object.__setattr__(self, "perturb", factors)
        keys = tuple(_config_key(key) for key in self.keys)
        if not keys:
            raise ValueError("pbt keys: name at least one setting to perturb")
        object.__setattr__(self, "keys", tuple(dict.fromkeys(keys)))

    @property
    def settings(self) -> tuple[str, ...]:
        """The perturbed keys as they are named in a trial's settings."""
        return tuple(PERTURBABLE[key] for key in self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "perturb": list(self.perturb), "keys": list(self.keys)}


def _config_key(key: str) -> str:
    """``key`` as a PERTURBABLE config key; a one-line ValueError naming it otherwise."""
    short = {name: full for full, name in PERTURBABLE.items()}
    if key in PERTURBABLE:
        return key
    if key in short:
        return short[key]
    allowed = ", ".join(PERTURBABLE)
    why = " (a trial keeps its seed: its batch order and dropout keys)" if key == "seed" else ""
    raise ValueError(
        f"pbt cannot perturb {key!r}{why}: only the settings that are inputs of the "
        f"vectorised program: {allowed}"
    )


def check(
    spec: PBTSpec, configs: Sequence[Any], *, halving: int = 0, eval_every: int | None = None
) -> None:
    """Raises a one-line ValueError naming what keeps ``spec`` from the group of
    ``configs``: fewer than two trials, an interval that falls between validations
    (``eval_every``, else config.train.eval_every_steps when set), fine-tuning stages, or
    successive halving."""
    if len(configs) < 2:
        raise ValueError(
            f"pbt needs a vectorised group of at least 2 trials to exploit; got {len(configs)}"
        )
    every = eval_every or configs[0].train.eval_every_steps
    if every and spec.interval % every:
        raise ValueError(
            f"pbt interval={spec.interval} is not a multiple of the validation interval "
            f"({every} steps: config.train.eval_every_steps, or an epoch when 0); PBT ranks "
            "the trials at validations"
        )
    config = configs[0]
    stages = len(config.finetune.stages) or (
        2 if config.init_from and not config.finetune.lora_rank else 1
    )
    if stages > 1:
        raise ValueError(
            f"pbt with {stages} fine-tuning stages (config.finetune.stages / init_from) is "
            "not supported: one stage"
        )
    if halving:
        raise ValueError(f"pbt with halving={halving}: use one or the other")


@dataclasses.dataclass(frozen=True)
class Copy:
    """One exploit and explore: row ``target`` took ``source``'s state and settings, the
    perturbed ones times ``factors``."""

    target: int
    source: int
    factors: dict[str, float]


def rank(rows: Sequence[int], scores: dict[int, float], mode: str) -> list[int]:
    """``rows`` best first by ``scores`` in direction ``mode`` ("min" | "max"): NaN last,
    ties to the earlier row."""
    sign = -1.0 if mode == "max" else 1.0

    def key(row: int) -> tuple:
        value = scores[row]
        nan = math.isnan(value)
        return (nan, 0.0 if nan else sign * value, row)

    return sorted(rows, key=key)


def plan(spec: PBTSpec, ranked: Sequence[int], step: int) -> list[Copy]:
    """The copies at ``step`` for rows ``ranked`` best first: each of the bottom
    floor(n * quantile) (at least one) copies a top one, drawn from (seed, step), with a
    factor per perturbed setting."""
    n = len(ranked)
    if n < 2:
        return []
    count = max(1, math.floor(n * spec.quantile + 1e-9))
    top, bottom = list(ranked[:count]), sorted(ranked[n - count :])
    rng = np.random.default_rng([spec.seed, step])
    copies = []
    for target in bottom:
        source = top[int(rng.integers(count))]
        factors = {k: spec.perturb[int(rng.integers(len(spec.perturb)))] for k in spec.settings}
        copies.append(Copy(target, source, factors))
    return copies


def explored(source: dict[str, np.float32], own: dict[str, np.float32], factors: dict) -> dict:
    """A target's new settings: its own, but each perturbed one is the source's times its
    factor (float32, as the program holds them)."""
    return {
        key: np.float32(source[key]) * np.float32(factors[key]) if key in factors else value
        for key, value in own.items()
    }


class Lineage:
    """The group's ``pbt.jsonl``: one line per PBT point. On resume from ``step``, lines
    after it are dropped first, so an interrupted group's lineage ends as an
    uninterrupted one's."""

    def __init__(self, directory: Path, step: int, *, writes: bool = True):
        self.path = directory / FILE
        self.writes = writes
        self.records = [r for r in read(directory) if r["step"] <= step]
        if writes and self.path.exists():
            self._write()

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.writes:
            self._write()

    def _write(self) -> None:
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


def read(directory: Path) -> list[dict[str, Any]]:
    """The records of ``directory``'s pbt.jsonl (none when it has none)."""
    path = Path(directory) / FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lineage_figure(records: list[dict[str, Any]], last_step: int, key: str = "learning_rate"):
    """pbt.png's figure: each trial's ``key`` setting against step (it holds between PBT
    points), each copy marked by an arrow from its source's value to the target's new one."""
    from matplotlib.figure import Figure  # 0.3 s to import: only when drawing

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    names = [t["trial"] for t in records[0]["trials"]] if records else []
    for n, name in enumerate(names):
        steps, values = [0], []
        for record in records:
            entry = next((t for t in record["trials"] if t["trial"] == name), None)
            if entry is None:
                continue
            if not values:
                values.append(entry["settings_before"][key])
            steps += [record["step"], record["step"]]
            values += [entry["settings_before"][key], entry["settings_after"][key]]
        steps.append(max(last_step, steps[-1]))
        values.append(values[-1])
        ax.plot(steps, values, "-", color=f"C{n % 10}", label=name, lw=1.5)
    copied = False
    for record in records:
        by_name = {t["trial"]: t for t in record["trials"]}
        for target in record["trials"]:
            if target["source"] == target["trial"]:
                continue
            source = by_name[target["source"]]
            before, after = source["settings_before"][key], target["settings_after"][key]
            color = f"C{names.index(source['trial']) % 10}"
            ax.annotate(
                "",
                xy=(record["step"], after),
                xytext=(record["step"], before),
                arrowprops={"arrowstyle": "->", "color": color, "lw": 1.2},
            )
            ax.plot([record["step"]], [after], "o", color=color, ms=6, mfc="none")
            copied = True
    values = [t["settings_after"][key] for r in records for t in r["trials"]]
    if values and min(values) > 0 and max(values) >= 10 * min(values):
        ax.set_yscale("log")
    what = key.replace("_", " ")
    note = " (arrow: a copy, from the source's value to the copier's new one)" if copied else ""
    ax.set(xlabel="step", ylabel=what, title=f"PBT: each trial's {what}{note}")
    ax.title.set_fontsize("small")
    if 0 < len(names) <= 12:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot(directory: Path, last_step: int) -> Path | None:
    """pbt.png beside pbt.jsonl in ``directory``, written whole or not at all; None when
    there is no PBT point to draw."""
    records = read(directory)
    if not records:
        return None
    buffer = io.BytesIO()
    lineage_figure(records, last_step).savefig(buffer, format="png", dpi=100)
    path = Path(directory) / PLOT
    write_atomic(path, buffer.getvalue())
    return path
