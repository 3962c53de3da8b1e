"""Load an experiments/ script as a module in a test process."""

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from absl import flags

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """experiments/<name>.py as a module (its folder importable, as when it runs). absl's
    flags are global: a flag another script already defined under the same name (two
    scripts' --workdir) is dropped first, so either may load second."""
    path = ROOT / "experiments" / f"{name}.py"
    for flag in re.findall(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"", path.read_text()):
        if flag in flags.FLAGS:
            delattr(flags.FLAGS, flag)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
