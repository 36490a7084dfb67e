"""docs/example_report/: the committed example report links only PNG figures that exist
(and every PNG there is shown), stays small, and the commands that made it are valid."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from engine.cli import build_parser

FOLDER = Path(__file__).resolve().parent.parent / "docs" / "example_report"


def test_report_links_only_pngs_that_exist():
    md = (FOLDER / "report.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", md)
    assert len(targets) >= 5
    assert all(t.endswith(".png") for t in targets), [t for t in targets if not t.endswith(".png")]
    missing = [t for t in targets if not (FOLDER / t).is_file()]
    assert not missing, f"report.md links figures that are not committed: {missing}"
    shown = {(FOLDER / t).resolve() for t in targets}
    unused = [p.name for p in (FOLDER / "figures").glob("*") if p.resolve() not in shown]
    assert not unused, f"figures/ holds files report.md does not show: {unused}"


def test_example_is_small():
    total = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert total < 1.5 * 2 ** 20, f"{total / 2 ** 20:.2f} MiB"


def test_the_commands_that_made_it_are_valid():
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)
                for line in block.splitlines() if line.strip().startswith("python run_bench.py")]
    assert [shlex.split(c)[2] for c in commands] == ["run", "report"]
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[2:])  # exits (fails the test) on a bad option
