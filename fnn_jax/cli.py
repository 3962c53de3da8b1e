"""What the command-line tools check before absl parses their flags, so that a mistake is
one line naming the file or the key (ml_collections would print a long traceback), and
dataset options the config file did not set can still be given as ``--config.data.options.X``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import ml_collections

from fnn_jax import config as config_lib

OPTIONS = "--config.data.options."


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def importable_beside(path: str) -> None:
    """Lets a config file import modules that sit beside it (a dataset loader named
    "module:function"): its folder goes on sys.path, and on PYTHONPATH for the processes
    this one starts (sweep workers, Ray workers)."""
    folder = str(Path(path).expanduser().resolve().parent)
    if folder not in sys.path:
        sys.path.insert(1, folder)  # after the script's own folder
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, folder])


def _load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of ``path[:arg]``; SystemExit naming the file on any error."""
    path, _, arg = spec.partition(":")
    importable_beside(path)
    try:
        module_spec = importlib.util.spec_from_file_location("_checked_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as error:
        sys.exit(f"error: config file {path}: {type(error).__name__}: {error}")


def preflight(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``argv`` without its ``--config.data.options.X=V`` flags, and those options as
    ``{"data.options.X": value}``. Exits (one line, code 1) on a config file that fails to
    load or an override key the schema does not have, with the closest key."""
    path = _config_path(argv)
    if path is None:
        return argv, {}
    config = _load_config_file(path)
    kept, options = [], {}
    for arg in argv:
        if not arg.startswith("--config."):
            kept.append(arg)
            continue
        key, sep, value = arg[len("--config.") :].partition("=")
        try:
            config_lib.check_key(key)
            if arg.startswith(OPTIONS):
                if not sep:
                    raise ValueError(f"--config.{key} needs a value: --config.{key}=VALUE")
                from fnn_jax import sweep  # reads the value as a sweep value of that key

                options[key] = sweep.parse_axes([f"{key}={value}"], config)[key][0]
                continue
        except ValueError as error:
            sys.exit(f"error: --config.{key}: {error}")
        kept.append(arg)
    return kept, options


def with_options(
    config: ml_collections.ConfigDict, options: dict[str, Any]
) -> ml_collections.ConfigDict:
    """``config`` with the dataset options taken out of the command line by ``preflight``."""
    if not options:
        return config
    from fnn_jax import sweep

    return sweep.apply_overrides(config, options)
