"""What a sweep runs: trial lists, their validation, and their names.

A trial is a dict of dotted config keys to values (``{"optimizer.learning_rate": 1e-3}``); a
sweep is a list of trials. The helpers below build such lists; plain Python (list
concatenation, comprehensions) combines them. ``validate_sweep`` checks the whole list against
the base config before anything trains, so a typo fails in a second, not after hours.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from fnn_jax import config as config_lib

Overrides = dict[str, Any]
DISTRIBUTIONS = ("uniform", "log_uniform")
MAX_NAME = 80  # characters of a trial's sub-workdir name


@dataclasses.dataclass(frozen=True)
class Trial:
    """One validated trial: its sub-workdir name, its overrides and the config they give."""

    name: str
    overrides: Overrides
    config: ml_collections.ConfigDict


# ---------------------------------------------------------------------------- spec helpers


def _values(key: str, values: Any) -> list[Any]:
    """An axis's values as a list; a bare string or scalar is a mistake, not one value."""
    if hasattr(values, "tolist") and getattr(values, "ndim", 0) == 1:
        values = values.tolist()  # a NumPy array (np.logspace...): Python ints and floats
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(
            f"sweep key {key!r}: expected a list of values, got {values!r}; "
            f"write [{values!r}] for a single value"
        )
    if not values:
        raise ValueError(f"sweep key {key!r} has an empty list of values")
    return list(values)


def product(axes: Mapping[str, Sequence[Any]] | None = None, /, **more: Sequence[Any]) -> list:
    """The grid: every combination of the axes' values, first axis slowest.

    Dotted keys are not Python identifiers, so pass them as a mapping or unpacked:
    ``product({"optimizer.learning_rate": [1e-3, 3e-3], "model.hidden_size": [64, 128]})``.
    """
    axes = {**(axes or {}), **more}
    lists = {key: _values(key, values) for key, values in axes.items()}
    return [dict(zip(lists, combo, strict=True)) for combo in itertools.product(*lists.values())]


def zipped(axes: Mapping[str, Sequence[Any]] | None = None, /, **more: Sequence[Any]) -> list:
    """Axes that move together: trial i takes the i-th value of every axis."""
    axes = {**(axes or {}), **more}
    lists = {key: _values(key, values) for key, values in axes.items()}
    lengths = {key: len(values) for key, values in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zipped sweep axes have different lengths: {lengths}")
    return [dict(zip(lists, combo, strict=True)) for combo in zip(*lists.values(), strict=True)]


def _is_distribution(spec: Any) -> bool:
    return isinstance(spec, tuple) and len(spec) == 3 and spec[0] in DISTRIBUTIONS


def _check_distribution(key: str, spec: tuple) -> None:
    kind, lo, hi = spec
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
        raise ValueError(f"sweep key {key!r}: {kind} bounds must be numbers; got {spec!r}")
    if not lo < hi:
        raise ValueError(f"sweep key {key!r}: {kind} needs low < high; got {spec!r}")
    if kind == "log_uniform" and lo <= 0:
        raise ValueError(f"sweep key {key!r}: log_uniform needs positive bounds; got {spec!r}")


def random_search(
    space: Mapping[str, Sequence[Any] | tuple[str, float, float]], num_trials: int, seed: int = 0
) -> list[Overrides]:
    """``num_trials`` distinct trials drawn from ``space``, the same ones for the same seed.

    Each key maps to a list of choices (drawn uniformly) or to ``("uniform", lo, hi)`` /
    ``("log_uniform", lo, hi)`` (a float; log-uniform is uniform in log space, the usual
    choice for learning rates and weight decay).
    """
    if num_trials < 1:
        raise ValueError(f"random_search needs num_trials >= 1; got {num_trials}")
    axes: dict[str, Any] = {}
    for key, spec in space.items():
        if _is_distribution(spec):
            _check_distribution(key, spec)
            axes[key] = spec
        else:
            axes[key] = _values(key, spec)
    rng = np.random.default_rng(seed)

    def draw(spec: Any) -> Any:
        if _is_distribution(spec):
            kind, lo, hi = spec
            if kind == "uniform":
                return float(rng.uniform(lo, hi))
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return spec[int(rng.integers(len(spec)))]

    trials, seen = [], set()
    for _ in range(100 * num_trials):  # redraw duplicates (likely when all axes are lists)
        trial = {key: draw(spec) for key, spec in axes.items()}
        if _canonical(trial) not in seen:
            seen.add(_canonical(trial))
            trials.append(trial)
            if len(trials) == num_trials:
                return trials
    raise ValueError(
        f"random_search: the space holds only {len(trials)} distinct trials; asked for {num_trials}"
    )


def seeds(trials: Sequence[Overrides], n: int) -> list[Overrides]:
    """Each trial repeated with ``seed`` = 0..n-1 (the tables also average over seeds)."""
    if n < 1:
        raise ValueError(f"seeds needs n >= 1; got {n}")
    for trial in trials:
        if "seed" in trial:
            raise ValueError(f"trial {trial} already sets 'seed'; seeds() would overwrite it")
    return [{**trial, "seed": s} for trial in trials for s in range(n)]


# ---------------------------------------------------------------------------- command line


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets and quotes: 'a,(1,2),"x,y"' -> 3 items."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return items


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _parse_str(text: str) -> str:
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    return text[1:-1] if quoted else text


def _parse_sequence(text: str, kind: type) -> tuple | list:
    value = ast.literal_eval(text)
    if not isinstance(value, tuple | list):
        raise ValueError(text)
    return kind(value)


# How a command-line value is read, by the type of the config field it replaces.
_PARSERS: dict[type, Callable[[str], Any]] = {
    bool: _parse_bool,
    int: int,
    float: float,
    str: _parse_str,
    tuple: functools.partial(_parse_sequence, kind=tuple),
    list: functools.partial(_parse_sequence, kind=list),
}


def _parse_value(key: str, text: str, expected: type | None, current: Any) -> Any:
    """One command-line value, read as the type of the config field it replaces."""
    if text == "None" and (current is None or expected is None):
        return None
    if expected in _PARSERS:
        try:
            return _PARSERS[expected](text)
        except (ValueError, SyntaxError):
            raise ValueError(
                f"sweep key {key!r}: cannot read {text!r} as {expected.__name__}"
            ) from None
    try:  # a key without a typed default (data.options.*): a Python literal, else a string
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_axes(
    specs: Sequence[str], config: ml_collections.ConfigDict | None = None
) -> dict[str, Any]:
    """``["optimizer.learning_rate=1e-3,3e-3", "model.cell=lstm,gru"]`` -> axes.

    Values are read as the type of the config's field (bool accepts true/false/1/0; tuples are
    Python literals). ``key=log_uniform(1e-4,1e-2)`` / ``uniform(lo,hi)`` give a distribution
    for ``random_search``.
    """
    axes: dict[str, Any] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ValueError(f"sweep spec {spec!r}: expected key=value1,value2,...")
        if key in axes:
            raise ValueError(f"sweep key {key!r} is given twice")
        expected, current = _field(config, key) if config is not None else (None, None)
        match = re.fullmatch(r"(\w+)\((.*),(.*)\)", text)
        if match and match.group(1) in DISTRIBUTIONS:
            try:
                lo, hi = float(match.group(2)), float(match.group(3))
            except ValueError:
                raise ValueError(f"sweep key {key!r}: bad bounds in {text!r}") from None
            axes[key] = (match.group(1), lo, hi)
            _check_distribution(key, axes[key])
            continue
        items = _split_top_level(text)
        if not text or any(not item for item in items):
            raise ValueError(f"sweep key {key!r} has an empty value in {spec!r}")
        axes[key] = [_parse_value(key, item, expected, current) for item in items]
    return axes


def parse_cli(specs: Sequence[str], config: ml_collections.ConfigDict | None = None) -> list:
    """The grid (``product``) of command-line axes; see ``parse_axes``."""
    axes = parse_axes(specs, config)
    for key, spec in axes.items():
        if _is_distribution(spec):
            raise ValueError(f"sweep key {key!r}: a {spec[0]} range needs random search")
    return product(axes)


# ---------------------------------------------------------------------------- validation


def _field(config: ml_collections.ConfigDict, key: str) -> tuple[type | None, Any]:
    """(schema type, current value) of a dotted key; ValueError naming it if unknown.

    A new ``data.options.<name>`` is allowed (the dataset loader's keyword arguments); its
    name is checked by ``config.validate`` and its type is unknown (None).
    """
    expected = config_lib.check_key(key)
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return expected, None
        node = node[part]
    return expected, node


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the dotted overrides set (lists become tuples where the
    field holds a tuple). The copy keeps the original's lock."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        expected, _ = _field(out, key)
        if expected is tuple and isinstance(value, list):
            value = tuple(value)
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        with node.unlocked():  # only data.options ever gains a key; _field checked the rest
            node[leaf] = value
    return out


def validate_sweep(config: ml_collections.ConfigDict, trials: Sequence[Overrides]) -> list[Trial]:
    """Checks every trial against ``config`` and returns them named, with their configs.

    Fails (ValueError naming the key or trial) on: no trials, unknown keys, values of the
    wrong type, duplicate trials, and anything ``fnn_jax.config.validate`` refuses in a
    trial's config (unknown cell, optimizer, dataset option...).
    """
    if isinstance(trials, Mapping):
        raise ValueError("expected a list of trials; got a dict (did you mean product(...)?)")
    trials = list(trials)
    if not trials:
        raise ValueError("the sweep has no trials")
    for trial in trials:
        _check_trial_values(trial)
    seen: dict[str, int] = {}
    for i, trial in enumerate(trials):
        j = seen.setdefault(_canonical(trial), i)
        if j != i:
            raise ValueError(f"trials {j} and {i} are the same: {dict(trial)}")
    names = [trial_name(t) for t in trials]
    clashes = {n for n in names if names.count(n) > 1}
    names = [trial_name(t, hashed=n in clashes) for n, t in zip(names, trials, strict=True)]
    out = []
    for name, trial in zip(names, trials, strict=True):
        trial_config = apply_overrides(config, trial)
        try:
            config_lib.validate(trial_config)
        except ValueError as e:
            raise ValueError(f"trial {name}: {e}") from e
        out.append(Trial(name, dict(trial), trial_config))
    return out


def _check_trial_values(trial: Any) -> None:
    """Keys in the config schema, values of their types (the same check as the runner's)."""
    if not isinstance(trial, Mapping):
        raise ValueError(f"a trial must be a dict of dotted keys to values; got {trial!r}")
    for key, value in trial.items():
        expected = config_lib.check_key(key)
        if isinstance(value, list) and expected not in (None, tuple, list):
            raise ValueError(
                f"sweep key {key!r} has a list value {value!r}; a list of values to "
                "sweep belongs in product()/zipped()"
            )
        config_lib.check_value(key, value)


# ---------------------------------------------------------------------------- names


def _canonical(overrides: Mapping[str, Any]) -> str:
    """Key-order-free exact text of a trial (tuples and lists alike)."""
    return json.dumps(overrides, sort_keys=True, default=list)


def _format(value: Any) -> tuple[str, bool]:
    """(short text, whether the text alone gives the value back exactly)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text, float(text) == value
    if isinstance(value, tuple | list):
        parts = [_format(v) for v in value]
        return "+".join(p for p, _ in parts) or "empty", all(ok for _, ok in parts)
    return str(value), True


def trial_name(overrides: Mapping[str, Any], *, hashed: bool = False) -> str:
    """A readable, filesystem-safe, deterministic name: ``learning_rate=0.001,hidden_size=64``.

    Keys are shortened to their last part unless two share it. When the text loses
    information (rounded floats, replaced characters) or is long, a hash of the exact
    overrides is appended, so different trials never share a name.
    """
    if not overrides:
        return "base"
    leaves = [key.rsplit(".", 1)[-1] for key in overrides]
    parts, exact = [], True
    for key, leaf, value in zip(overrides, leaves, overrides.values(), strict=True):
        text, ok = _format(value)
        part = f"{leaf if leaves.count(leaf) == 1 else key}={text}"
        safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", part)
        parts.append(safe)
        exact = exact and ok and safe == part
    name = ",".join(parts)
    if hashed or not exact or len(name) > MAX_NAME:
        digest = hashlib.sha256(_canonical(overrides).encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    return name
