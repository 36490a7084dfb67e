"""The documentation against the code: the methods table of docs/methods.md lists every
built-in method with its kind and its hyperparameters' defaults as the code has them; the
README links every page under docs/ and only pages that exist; and every
`python run_bench.py ...` command in the README names an existing command, registered
methods and benchmarks, and options the command line accepts."""
from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest

import benchmarks  # noqa: F401  (registers the built-in benchmarks)
import methods  # noqa: F401  (registers the built-in methods)
from benchmarks.registry import BENCHMARKS
from engine.cli import build_parser
from engine.core.config import coerce, parse_value
from engine.runs.runner import build_requests
from methods.registry import METHODS, parse_method

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
METHODS_DOC = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- methods table

def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text,
                      re.MULTILINE | re.DOTALL)
    assert match, f"docs/methods.md has no '## {heading}' section"
    return match.group(1)


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the methods table keyed by the registry name in their first cell."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert match.group(1) not in rows, f"{match.group(1)} has two rows"
            rows[match.group(1)] = cells
    return rows


ROWS = table_rows(section(METHODS_DOC, "Every method"))
BUILT_IN = sorted(n for n in METHODS.names() if METHODS.get(n).__module__.startswith("methods."))


def test_table_lists_every_built_in_method_and_nothing_else():
    assert len(BUILT_IN) >= 25  # the registry was really loaded
    assert sorted(ROWS) == BUILT_IN


def test_table_rows_have_six_cells():
    bad = {name: len(cells) for name, cells in ROWS.items() if len(cells) != 6}
    assert not bad, ("rows without the 6 columns (name, kind, paper, rule, hyperparameters, "
                     f"weights): {bad}")


@pytest.mark.parametrize("name", BUILT_IN)
def test_kind_and_space_as_in_the_code(name):
    cls = METHODS.get(name)
    kind = ROWS[name][1]
    assert kind.startswith(cls.kind), f"{name}: documented as {kind!r}, is a {cls.kind}"
    if cls.kind == "aggregator":
        assert f"/ {cls.space}" in kind, f"{name}: documented as {kind!r}, space is {cls.space}"


@pytest.mark.parametrize("name", BUILT_IN)
def test_hyperparameters_and_defaults_as_in_the_code(name):
    config_cls = METHODS.get(name).Config
    hints = typing.get_type_hints(config_cls)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(config_cls)}
    cell = ROWS[name][4]
    documented = dict(re.findall(r"`(\w+)=([^`]*)`", cell))
    if not defaults:
        assert cell == "—", f"{name} has no hyperparameters, the table says {cell!r}"
    assert sorted(documented) == sorted(defaults), \
        f"{name}: documented keys differ from the config's"
    for key, text in documented.items():
        value = coerce(f"method.{name}.{key}", parse_value(text), hints[key])
        assert value == defaults[key], f"{name}.{key}: documented {text}, default {defaults[key]!r}"


# --------------------------------------------------------------------------- README links

def test_readme_links_to_docs_exist_and_cover_every_page():
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", README))
    missing = sorted(p for p in linked if not (ROOT / p).is_file())
    assert not missing, f"README links to pages that do not exist: {missing}"
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"README does not link {sorted(pages - linked)}"


# --------------------------------------------------------------------------- README commands

def doc_commands(text: str) -> list[str]:
    """Every `python run_bench.py ...` line of a page's bash blocks, continuation lines
    joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("python run_bench.py"):
                commands.append(line)
    return commands


COMMANDS = doc_commands(README) + doc_commands(METHODS_DOC)
SUBCOMMANDS = set(next(a for a in build_parser()._actions
                       if isinstance(a, argparse._SubParsersAction)).choices)


def is_placeholder(token: str) -> bool:
    """A synopsis token: [OPTIONAL], <command>, a|b, REPEATED ... (not a --set KEY=[list])."""
    return "=" not in token and (token.startswith(("[", "<")) or token.endswith("]")
                                 or "|" in token or "..." in token)


def test_pages_have_commands():
    assert len(doc_commands(README)) >= 4 and len(doc_commands(METHODS_DOC)) >= 4


@pytest.mark.parametrize("line", COMMANDS)
def test_documented_command_is_valid(line, tmp_path):
    argv = shlex.split(line, comments=True)[2:]
    if not argv:
        return  # the default comparison
    if any(is_placeholder(token) for token in argv):
        # A synopsis (`run -b BENCH ... [--profile quick|paper]`): only the command is real.
        if not is_placeholder(argv[0]):
            assert argv[0] in SUBCOMMANDS, f"{line}: no command {argv[0]!r}"
        return
    assert argv[0] in SUBCOMMANDS, f"{line}: no command {argv[0]!r}"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{line}: the command line refuses it (exit {exc.code})")
    if argv[0] == "run":
        assert args.benchmark in BENCHMARKS, f"{line}: unknown benchmark {args.benchmark}"
        for spec in args.methods or []:
            parse_method(spec)  # raises on an unknown method or a bad composition
        # Resolving the configs checks every --set key, type and range, and each method's
        # fit to the benchmark, without training or reading data. The documented data
        # folder and device are the user's: nothing of them is checked, the CPU stands in.
        data_root = None if args.data_root is None else str(tmp_path)
        build_requests(args.benchmark, args.methods or ["ew"], args.seeds, args.profile,
                       args.overrides, "cpu", data_root, check_data=False)
    if argv[0] == "sweep":
        assert (ROOT / args.sweep_file).is_file(), f"{line}: no sweep file {args.sweep_file}"
