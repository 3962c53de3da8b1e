"""Name -> loader registry, and helpers the loaders share."""

from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fnn_jax.data.base import Dataset, Split

Loader = Callable[..., Dataset]
REGISTRY: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator: makes ``load(name, **options)`` call the decorated loader."""

    def wrap(loader: Loader) -> Loader:
        if name in REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        REGISTRY[name] = loader
        return loader

    return wrap


def available() -> tuple[str, ...]:
    """Registered dataset names, sorted."""
    return tuple(sorted(REGISTRY))


def resolve(name: str) -> Loader:
    """The loader called ``name``: a registered dataset, or ``"package.module:function"``
    imported by name (every process that rebuilds the data imports it the same way).
    ValueError naming what did not resolve."""
    if ":" not in name:
        if name not in REGISTRY:
            raise ValueError(
                f"unknown dataset {name!r}{_suggest(name, REGISTRY)}; valid names: "
                f"{list(available())}, or a loader 'package.module:function'"
            )
        return REGISTRY[name]
    module_name, _, function = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # an ImportError, or the module's own error while importing
        raise ValueError(
            f"dataset loader {name!r}: module {module_name!r} does not import "
            f"({type(error).__name__}: {error}); is its folder on sys.path or PYTHONPATH?"
        ) from None
    loader = getattr(module, function, None)
    if not callable(loader):
        raise ValueError(
            f"dataset loader {name!r}: module {module_name!r} has no function {function!r}"
        )
    return loader


def import_root(name: str) -> str | None:
    """The folder from which a ``"module:function"`` loader's module was imported (what a
    new process puts on sys.path to import it again); None for a registered dataset."""
    if ":" not in name:
        return None
    module = importlib.import_module(name.partition(":")[0])
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file).resolve()
    depth = name.partition(":")[0].count(".") + (path.name == "__init__.py")
    return str(path.parents[depth])


def load(name: str, **options: Any) -> Dataset:
    """Loads a dataset (registered, or ``"module:function"``); options are the loader's
    keyword arguments.

    Raises ValueError for an unknown name (listing the valid names), an unknown option
    (listing the loader's options), or a loader that returns something else than a Dataset.
    """
    loader = resolve(name)
    check_options(name, options)
    dataset = loader(**options)
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"dataset loader {name!r} returned {type(dataset).__name__}, expected "
            "fnn_jax.data.Dataset (fnn_jax.data.from_arrays builds one from NumPy arrays)"
        )
    return dataset


def check_options(name: str, options: Any, where: str = "option") -> None:
    """Raises ValueError naming ``where.<option>`` for an option that the loader of dataset
    ``name`` does not take (with the closest valid name), or a value that does not fit the
    type its signature annotates (text for a tuple of classes, text for an int)."""
    loader = resolve(name)
    parameters = inspect.signature(loader).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    try:
        hints = typing.get_type_hints(loader)
    except Exception:  # an annotation that does not resolve: names are still checked
        hints = {}
    for option, value in dict(options).items():
        if option not in parameters:
            raise ValueError(
                f"{where}.{option} is not an option of dataset {name!r}"
                f"{_suggest(option, parameters)}; valid: {sorted(parameters)}"
            )
        hint = hints.get(option)
        if hint is not None and not fits(value, hint):
            raise ValueError(
                f"{where}.{option} must be {_describe(hint)}; got {value!r} "
                f"({type(value).__name__})"
            )


def fits(value: Any, hint: Any) -> bool:
    """Whether a config value fits a loader's annotation (int, float, str, bool, None,
    sequences and unions of them; a list stands for a tuple, an int for a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin in (collections.abc.Sequence, tuple, list) or hint in (tuple, list):
        if not isinstance(value, tuple | list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[float, float]
            return len(value) == len(args) and all(map(fits, value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this check does not read


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "None"
    if origin in (collections.abc.Sequence, tuple, list) or hint in (tuple, list):
        return "a tuple or list"
    return {int: "an int", float: "a number", str: "a string", bool: "True or False"}.get(
        hint, str(hint)
    )


def _suggest(name: str, names: Any) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def require(module: str, package: str, dataset: str) -> ModuleType:
    """Imports an optional dependency, or raises ImportError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"dataset {dataset!r} needs the optional package {package!r}: pip install {package}"
        ) from err


def check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    """ValueError naming the loader option ``name`` unless ``value`` is an int >= 1 (or
    None, when ``allow_none``)."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(
            f"{name} must be an int >= 1{' or None' if allow_none else ''}; got {value!r}"
        )


def stream(seed: int, *keys: int) -> np.random.Generator:
    """Independent generator per (dataset tag, seed, split, ...).

    Keys of a different length than batching's [seed, epoch] give unrelated streams, so data
    generation never shares random bits with the batch order.
    """
    return np.random.default_rng([seed, *keys, 0x5EED])


def stratified_indices(
    labels: np.ndarray, *, validation: float, test: float, seed: int
) -> dict[str, np.ndarray]:
    """Sorted row indices per split, stratified by ``labels``; fractions are of all rows."""
    if not (validation > 0 and test > 0 and validation + test < 1):
        raise ValueError(
            f"need 0 < validation, test and validation + test < 1; got {validation}, {test}"
        )
    from sklearn.model_selection import train_test_split  # here: sklearn takes 1.5 s to import

    rows = np.arange(len(labels))
    rest, test_rows = train_test_split(rows, test_size=test, stratify=labels, random_state=seed)
    train_rows, val_rows = train_test_split(
        rest, test_size=validation / (1 - test), stratify=labels[rest], random_state=seed
    )
    return {
        "train": np.sort(train_rows),
        "validation": np.sort(val_rows),
        "test": np.sort(test_rows),
    }


def per_class_subset(
    labels: np.ndarray, rows: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted random subset of ``rows`` with exactly ``k`` rows of each class present in it."""
    keep = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        if len(members) < k:
            raise ValueError(f"class {c} has only {len(members)} training rows; asked for {k}")
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def select_classes(
    labels: Sequence[Any], classes: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray, tuple[Any, ...]]:
    """Keeps rows whose label is in ``classes`` and relabels them 0..k-1 in the given order.

    Returns (rows kept [m], new int32 labels [m], the class values in order). ``classes=None``
    keeps every label, sorted (numerically when the labels are numeric strings).
    """
    labels = np.asarray(labels)
    present = [plain(v) for v in np.unique(labels)]
    if classes is None:
        classes = sorted(present, key=_label_key)
    classes = tuple(plain(c) for c in classes)
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes must be non-empty and distinct; got {classes}")
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(
            f"classes {missing} do not occur; available: {sorted(present, key=_label_key)}"
        )
    mapping = {c: i for i, c in enumerate(classes)}
    rows = np.flatnonzero(np.isin(labels, classes))
    new = np.array([mapping[plain(v)] for v in labels[rows]])
    return rows, new.astype(np.int32), classes


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (messages show 'cat', not np.str_)."""
    return value.item() if isinstance(value, np.generic) else value


def _label_key(v: Any) -> tuple[int, Any]:
    try:
        return (0, float(v))
    except (TypeError, ValueError):
        return (1, str(v))


def lm_windows(tokens: np.ndarray, seq_len: int, where: str, separator: int | None) -> Split:
    """A token stream cut into non-overlapping windows of seq_len + 1 tokens (the partial
    last window dropped): inputs [n, seq_len] int32 are a window's first seq_len tokens,
    targets its last seq_len; resets mark the ``separator`` (a document starts there).
    ValueError naming ``where`` when the stream is shorter than one window."""
    width = seq_len + 1
    count = len(tokens) // width
    if count < 1:
        raise ValueError(
            f"{where} has {len(tokens)} tokens, fewer than seq_len + 1 = {width}; use a "
            "smaller seq_len or more text"
        )
    windows = np.asarray(tokens[: count * width], np.int32).reshape(count, width)
    inputs = np.ascontiguousarray(windows[:, :-1])
    resets = None if separator is None else inputs == separator
    return Split(inputs, np.ascontiguousarray(windows[:, 1:]), resets=resets)
