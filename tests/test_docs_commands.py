"""Every command in README.md and docs/*.md points at scripts, configs, config arguments,
config keys, flags and make targets that exist, and every relative link resolves.

Commands are read from fenced blocks tagged bash, sh, console or nothing (continuation
lines joined, ``#`` comments dropped); inline code spans are checked for config files,
scripts and ``--config.`` keys too. Placeholders are fine: an argument in capitals
(``configs/digits_finetune.py:RECIPE``) is not checked, and neither are workdirs or values.
A failure names the doc, the line and what is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import re
import shlex
from pathlib import Path

import ml_collections
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TAGS = ("bash", "sh", "console", "")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
CONFIG_FILE = re.compile(r"\bconfigs/(\w+)\.py(?::([\w,.-]+))?")
SCRIPT = re.compile(r"\bexperiments/(\w+)\.py\b")
OVERRIDE = re.compile(r"--config\.([\w.]+)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Flags absl defines for every script.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "flagfile", "logtostderr", "verbosity"}


@dataclasses.dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    words: list[str]

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _commands(doc: Path) -> list[Command]:
    """The shell commands of ``doc``'s fenced blocks, with the line each starts on."""
    text = doc.read_text()
    commands = []
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_TAGS:
            continue
        first = _line_of(text, block.start(2))
        lines = block.group(2).split("\n")
        index = 0
        while index < len(lines):
            start, joined = index, lines[index]
            while joined.endswith("\\") and index + 1 < len(lines):
                index += 1
                joined = joined[:-1] + " " + lines[index]
            index += 1
            for part in re.split(r";|&&|\|\||(?<![>&])&(?!>)", joined):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:  # a tree drawing or prose in an untagged block
                    continue
                if words:
                    commands.append(Command(doc, first + start, words))
    return commands


def _script_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(script name, its arguments) for ``[.venv/bin/]python[3] experiments/X.py ...``."""
    for i, word in enumerate(words[:-1]):
        if re.fullmatch(r"(\S*/)?python(3(\.\d+)?)?", word):
            rest = [w for w in words[i + 1 :] if not re.fullmatch(r"-X|importtime", w)]
            if rest and (match := SCRIPT.fullmatch(rest[0])):
                return match.group(1), rest[1:]
    return None


@functools.cache
def _flags(script: str) -> frozenset[str]:
    """The flag names ``experiments/<script>.py`` defines (absl or argparse)."""
    source = (ROOT / "experiments" / f"{script}.py").read_text()
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    names |= set(re.findall(r"add_argument\(\s*\"--(\w+)\"", source))
    booleans = set(re.findall(r"DEFINE_bool(?:ean)?\(\s*\"(\w+)\"", source))
    return frozenset(names | {f"no{b}" for b in booleans} | ABSL_FLAGS)


@functools.cache
def _bench_sections() -> frozenset[str]:
    source = (ROOT / "experiments" / "bench.py").read_text()
    block = re.search(r"^SECTIONS\b.*?^}", source, re.M | re.S).group(0)
    return frozenset(re.findall(r"^    \"(\w+)\":", block, re.M))


@functools.cache
def _make_targets() -> frozenset[str]:
    return frozenset(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


@functools.cache
def _config(name: str, arg: str | None) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.{name}").get_config(arg)


def _placeholder(arg: str | None) -> bool:
    return arg is not None and arg.upper() == arg and any(c.isalpha() for c in arg)


def _check_config_file(name: str, arg: str | None) -> str | None:
    """None, or what is wrong with ``configs/<name>.py[:arg]``."""
    if not (ROOT / "configs" / f"{name}.py").is_file():
        return f"configs/{name}.py does not exist"
    if arg is None or _placeholder(arg):
        return None
    try:
        config = _config(name, arg)
    except Exception as error:  # the config's own refusal of an argument
        return f"configs/{name}.py:{arg}: get_config refuses it: {type(error).__name__}: {error}"
    source = (ROOT / "configs" / f"{name}.py").read_text()
    if config.to_dict() == _config(name, None).to_dict() and f'"{arg}"' not in source:
        return f"configs/{name}.py:{arg}: the config ignores its argument (nothing changes)"
    return None


def _dataset_options(dataset: str) -> set[str] | None:
    """The options the loader of ``dataset`` takes; None when any are accepted."""
    from fnn_jax import data

    parameters = inspect.signature(data.resolve(dataset)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


def _check_key(config: ml_collections.ConfigDict | None, key: str) -> str | None:
    """None, or why ``--config.<key>`` is not a key of ``config`` (of the schema when no
    config file is known). A dataset option the config does not set must be one the
    config's dataset loader takes."""
    from fnn_jax import config as config_lib

    if config is None:
        try:
            config_lib.check_key(key)
        except ValueError as error:
            return str(error)
        return None
    node, walked = config, []
    for part in key.split("."):
        if walked == ["data", "options"] and part not in node:
            options = _dataset_options(config.data.name)
            if options is None or part in options:
                return None
            return f"{part!r} is not an option of dataset {config.data.name!r}: {sorted(options)}"
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            keys = list(node) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"unknown config key {key!r} (no {part!r} in config.{'.'.join(walked)}{hint})"
        node, walked = node[part], [*walked, part]
    if isinstance(node, ml_collections.ConfigDict):
        return f"config key {key!r} is a section, not a value"
    return None


def _values(flag: str, args: list[str]) -> list[str]:
    """Every value of ``--flag`` in ``args`` (``--flag=v`` or ``--flag v``)."""
    found = []
    for i, arg in enumerate(args):
        if arg.startswith(f"--{flag}="):
            found.append(arg.split("=", 1)[1])
        elif arg == f"--{flag}" and i + 1 < len(args):
            found.append(args[i + 1])
    return found


def _config_of(args: list[str]) -> tuple[ml_collections.ConfigDict | None, list[str]]:
    """The config that ``--config configs/X.py[:ARG]`` names (None for a placeholder or a
    bad one), and what is wrong with it."""
    problems, config = [], None
    for spec in _values("config", args):
        name, _, arg = spec.partition(":")
        match = re.fullmatch(r"configs/(\w+)\.py", name)
        if not match:
            problems.append(f"--config {spec}: not a configs/NAME.py[:ARG] file")
            continue
        problem = _check_config_file(match.group(1), arg or None)
        if problem:
            problems.append(problem)
        elif not _placeholder(arg or None):
            config = _config(match.group(1), arg or None)
    return config, problems


def _check_flags(script: str, args: list[str], config) -> list[str]:
    problems = []
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name.startswith("config."):
            problem = _check_key(config, name[len("config.") :])
            if problem:
                problems.append(f"--{name}: {problem}")
        elif name not in _flags(script):
            problems.append(f"--{name} is not a flag of experiments/{script}.py")
    return problems


def _check_sweep_axis(axis: str, config) -> str | None:
    problem = _check_key(config, axis.split("=", 1)[0])
    return problem and f"--sweep {axis}: {problem}"


def _check_evaluate_option(option: str, config) -> str | None:
    from fnn_jax import data

    name = option.split("=", 1)[0]
    if any(name in (_dataset_options(d) or {name}) for d in data.available()):
        return None
    return f"--option {option}: no dataset takes an option {name!r}"


def _check_bench_section(section: str, config) -> str | None:
    unknown = set(section.split(",")) - _bench_sections()
    return unknown and f"--section {section}: not a section of bench.py: {sorted(unknown)}"


# Flags whose values name something checkable: (script, flag) -> check(value, config).
VALUE_CHECKS = {
    ("sweep", "sweep"): _check_sweep_axis,
    ("evaluate", "option"): _check_evaluate_option,
    ("bench", "section"): _check_bench_section,
}


def _check_script_call(script: str, args: list[str]) -> list[str]:
    if not (ROOT / "experiments" / f"{script}.py").is_file():
        return [f"experiments/{script}.py does not exist"]
    config, problems = _config_of(args)
    problems += _check_flags(script, args, config)
    for (name, flag), check in VALUE_CHECKS.items():
        if name == script:
            problems += [p for value in _values(flag, args) if (p := check(value, config))]
    return problems


def _check_command(command: Command) -> list[str]:
    words = command.words
    if words[0] == "make":
        return [
            f"make {target}: no such target in the Makefile"
            for target in words[1:]
            if not target.startswith("-") and "=" not in target
            if target not in _make_targets()
        ]
    call = _script_call(words)
    if call is None:
        return []
    return _check_script_call(*call)


def _check_inline(doc: Path) -> list[str]:
    """Config files, scripts and ``--config.`` keys named in inline code spans."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())
    problems = []
    for span in INLINE.finditer(text):
        where = f"{doc.relative_to(ROOT)}:{_line_of(text, span.start())}"
        code = span.group(1)
        for match in CONFIG_FILE.finditer(code):
            if match.group(1).isupper():
                continue
            problem = _check_config_file(match.group(1), match.group(2))
            if problem:
                problems.append(f"{where}: `{code}`: {problem}")
        for match in SCRIPT.finditer(code):
            if not (ROOT / "experiments" / f"{match.group(1)}.py").is_file():
                problems.append(
                    f"{where}: `{code}`: experiments/{match.group(1)}.py does not exist"
                )
        if "configs/" in code:
            continue  # a whole command: its keys are checked against its config below
        for match in OVERRIDE.finditer(code):
            problem = _check_key(None, match.group(1))
            if problem:
                problems.append(f"{where}: `{code}`: {problem}")
    return problems


def _check_tables(doc: Path) -> list[str]:
    """In a table whose header names ``configs/NAME.py``, each row's first cell names a
    config (``copy_long:mingru`` runs as ``--config configs/copy_long.py:mingru``)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())
    lines = text.split("\n")
    problems, header = [], None
    for number, line in enumerate(lines, 1):
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = line
            continue
        first = line.split("|")[1].strip()
        match = re.fullmatch(r"`(\w+)(?::([\w,]+))?`", first)
        if "configs/NAME.py" in header and match:
            problem = _check_config_file(match.group(1), match.group(2))
            if problem:
                problems.append(f"{doc.relative_to(ROOT)}:{number}: {first}: {problem}")
    return problems


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _check_links(doc: Path) -> list[str]:
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())
    problems = []
    for link in LINK.finditer(text):
        target = link.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        where = f"{doc.relative_to(ROOT)}:{_line_of(text, link.start())}"
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"{where}: link {target!r}: {path} does not exist")
            continue
        if anchor and file.suffix == ".md" and anchor not in _anchors(file):
            problems.append(f"{where}: link {target!r}: no heading #{anchor} in {path or doc.name}")
    return problems


def _report(problems: list[str]) -> str:
    return "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_names_scripts_configs_keys_and_flags_that_exist(doc):
    problems = [
        f"{command.where()}: {problem}"
        for command in _commands(doc)
        for problem in _check_command(command)
    ]
    assert not problems, "\n" + _report(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_inline_code_names_configs_scripts_and_keys_that_exist(doc):
    problems = _check_inline(doc) + _check_tables(doc)
    assert not problems, "\n" + _report(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    problems = _check_links(doc)
    assert not problems, "\n" + _report(problems)


def test_the_docs_have_commands_to_check():
    """The parser finds the commands it should: a guard against a regex that finds none."""
    scripts = {call[0] for doc in DOCS for c in _commands(doc) if (call := _script_call(c.words))}
    assert {"main", "sweep", "bench", "evaluate", "sample"} <= scripts
    makes = {w for doc in DOCS for c in _commands(doc) if c.words[0] == "make" for w in c.words}
    assert {"demo", "test"} <= makes


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("python experiments/main.py --config configs/nope.py --workdir x", ["nope.py"]),
        ("python experiments/main.py --config configs/digits_deq.py:nope --workdir x", ["nope"]),
        ("python experiments/main.py --config configs/digits_lstm.py:x --workdir y", ["ignores"]),
        (
            "python experiments/main.py --config configs/digits_lstm.py --config.model.hiden=2",
            ["model.hiden", "no 'hiden' in config.model"],
        ),
        (
            "python experiments/main.py --config configs/digits_lstm.py "
            "--config.data.options.lenght=3",
            ["lenght", "digits"],
        ),
        ("python experiments/sweep.py --config configs/test.py --seed 3", ["--seed"]),
        ("python experiments/sweep.py --config configs/test.py --sweep model.cel=gru", ["cel"]),
        ("python experiments/bench.py --section cels", ["cels"]),
        ("python experiments/evaluate.py --workdir r --option seqlen=3", ["seqlen"]),
        ("python experiments/nope.py", ["nope.py"]),
        ("make nope", ["nope"]),
    ],
)
def test_a_bad_command_is_named_with_what_is_wrong(command, words):
    problems = _check_command(Command(ROOT / "README.md", 1, shlex.split(command)))
    assert problems and all(w in " ".join(problems) for w in words), problems


def test_good_commands_pass():
    for command in (
        "python experiments/main.py --config configs/digits_deq.py:iterate --workdir runs/X "
        "--config.model.equilibrium.tol=1e-6 --config.data.options.classes='(0,1)'",
        "python experiments/sweep.py --config configs/digits_finetune.py:RECIPE --workdir w "
        "--sweep seed=0,1,2 --vectorize --novectorize",
        "make test-fast",
    ):
        assert _check_command(Command(ROOT / "README.md", 1, shlex.split(command))) == []
