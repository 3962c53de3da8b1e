"""A search space: its entries (choices, ranges, ``Conditional``), their order and checks,
and a trial's suggestions through Optuna.

A space maps dotted config keys to a list of choices, a ``("uniform"|"log_uniform", lo, hi)``
range, or a ``Conditional`` of either (suggested only where other keys took given values).
``order`` puts each key after the keys its condition names, checking the conditions;
``suggest`` draws a trial's overrides in that order (Optuna's define-by-run).
"""

from __future__ import annotations

import dataclasses
import graphlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from fnn_jax.sweep.spec import _field, _is_distribution, parse_axes


@dataclasses.dataclass(frozen=True)
class Conditional:
    """A search-space entry suggested only in trials where other keys of the space took
    given values (Optuna's define-by-run): ``Conditional(("uniform", 0.5, 0.99),
    when={"optimizer.name": ["sgd"]})`` draws the momentum only when the trial drew sgd.

    ``space``: a list of choices or a ``("uniform"|"log_uniform", lo, hi)`` range; ``when``:
    key -> the values that enable this key (every key must hold; a key the trial did not
    suggest fails). Where the condition fails the key keeps the config's value and is not
    in the trial's parameters, overrides or name.
    """

    space: Any
    when: Mapping[str, Sequence[Any]]


def parse_space(
    specs: Sequence[str], config: ml_collections.ConfigDict | None = None
) -> dict[str, Any]:
    """A search space from the command line: ``parse_axes``, where ``key=...|other=v1,v2``
    gives a ``Conditional`` suggested when ``other`` took v1 or v2 (several ``|other=...``
    must all hold; their values read as ``other``'s type)."""
    space: dict[str, Any] = {}
    for spec in specs:
        axis, *conditions = spec.split("|")  # no swept config value holds a '|'
        ((key, values),) = parse_axes([axis], config).items()
        if key in space:
            raise ValueError(f"sweep key {key!r} is given twice")
        if not conditions:
            space[key] = values
            continue
        when = parse_axes(conditions, config)
        for other, allowed in when.items():
            if _is_distribution(allowed):
                raise ValueError(
                    f"search key {key!r}: its condition on {other!r} takes values, "
                    f"not a {allowed[0]} range"
                )
        space[key] = Conditional(values, when)
    return space


# ---------------------------------------------------------------------------- entries


def is_range(entry: Any) -> bool:
    """Whether ``entry`` is a ``("uniform"|"log_uniform", lo, hi)`` range (a list too, as
    JSON gives it back), not a list of choices."""
    return (
        isinstance(entry, tuple | list) and bool(entry) and entry[0] in ("uniform", "log_uniform")
    )


def _conditions(key: str, entry: Any, space: Mapping[str, Any]) -> list[str]:
    """The keys ``entry``'s condition names, each checked: in ``space``, a list of choices
    there, the condition's values among them (ValueError naming ``key``)."""
    if isinstance(entry, Mapping):
        raise ValueError(
            f"search key {key!r}: write a condition as sweep.Conditional(space, when=...); "
            f"got a dict {entry!r}"
        )
    if not isinstance(entry, Conditional):
        return []
    if not isinstance(entry.when, Mapping) or not entry.when:
        raise ValueError(f"search key {key!r}: when= takes {{key: [values]}}; got {entry.when!r}")
    for other, allowed in entry.when.items():
        if other not in space:
            raise ValueError(f"search key {key!r}: its condition names {other!r}, not in the space")
        choices = space[other].space if isinstance(space[other], Conditional) else space[other]
        if is_range(choices):
            raise ValueError(
                f"search key {key!r}: its condition on {other!r} needs a list of choices "
                f"there, not a {choices[0]} range"
            )
        if isinstance(allowed, str | bytes) or not isinstance(allowed, list | tuple) or not allowed:
            raise ValueError(f"search key {key!r}: when[{other!r}] takes a list; got {allowed!r}")
        for value in allowed:
            if value not in list(choices):
                raise ValueError(
                    f"search key {key!r}: its condition {other}={value!r} is not among the "
                    f"choices of {other!r}: {list(choices)}"
                )
    return list(entry.when)


def order(space: Mapping[str, Any]) -> list[str]:
    """The keys in dependency order: each after the keys its condition names, otherwise in
    the space's order. ValueError naming a key for a bad or circular condition."""
    sorter = graphlib.TopologicalSorter({k: _conditions(k, e, space) for k, e in space.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1]
        raise ValueError(
            f"search key {cycle[0]!r}: circular conditions {' -> '.join(cycle)}"
        ) from None
    position = {key: i for i, key in enumerate(space)}
    ready: list[str] = []
    keys = []
    while sorter.is_active():
        ready += sorter.get_ready()
        key = min(ready, key=position.__getitem__)  # the earliest one whose conditions are set
        ready.remove(key)
        keys.append(key)
        sorter.done(key)
    return keys


def enabling(key: str, space: Mapping[str, Any]) -> dict[str, Any]:
    """Values of the keys ``key``'s condition names (each's first, recursively): a trial
    in which ``key`` is suggested, to check its values in."""
    entry = space[key]
    if not isinstance(entry, Conditional):
        return {}
    out: dict[str, Any] = {}
    for other, allowed in entry.when.items():
        out |= {**enabling(other, space), other: list(allowed)[0]}
    return out


# ---------------------------------------------------------------------------- suggestions


def _suggest_value(trial: Any, key: str, entry: Any, current: Any) -> Any:
    """The trial's value of ``key``: from a list of choices, or a (log-)uniform float or,
    for an int key, int."""
    if is_range(entry):
        kind, lo, hi = entry
        log_scale = kind == "log_uniform"
        if isinstance(current, int) and not isinstance(current, bool):
            return trial.suggest_int(key, math.ceil(lo), math.floor(hi), log=log_scale)
        return trial.suggest_float(key, float(lo), float(hi), log=log_scale)
    return trial.suggest_categorical(key, list(entry))


def suggest(trial: Any, config: ml_collections.ConfigDict, space: Mapping[str, Any]) -> dict:
    """The Optuna ``trial``'s overrides: each key in dependency order, a ``Conditional`` one
    only where every key its condition names was suggested with one of the given values
    (elsewhere it is not suggested, so Optuna's params omit it and the config's value stays)."""
    overrides: dict[str, Any] = {}
    for key in order(space):
        entry = space[key]
        if isinstance(entry, Conditional):
            if not all(overrides.get(k, _ABSENT) in v for k, v in entry.when.items()):
                continue
            entry = entry.space
        overrides[key] = _suggest_value(trial, key, entry, _field(config, key)[1])
    return overrides


_ABSENT = object()  # a key the trial did not suggest: in no condition's values
