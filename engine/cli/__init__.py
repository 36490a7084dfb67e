"""The command line. ``run_bench.py`` only calls ``main``; each subcommand lives in its own
module (listed in COMMANDS) with ``add_parser(subparsers, parents)`` that sets ``func``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engine.errors import UserError
from engine.registry import load_entry_point_plugins, load_plugin

COMMANDS = (
    "engine.cli.cmd_run",
    "engine.cli.cmd_list",
    "engine.cli.cmd_perf",
    "engine.cli.cmd_sweep",
    "engine.cli.cmd_leaderboard",
    "engine.cli.cmd_saliency",
    "engine.cli.cmd_toy",
    "analysis.cmd_report",
)


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                        help="import a plugin (a .py file or a module) that registers methods or "
                             "benchmarks; repeatable. Example: --plugin my_method.py")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py",
        description="Benchmark and compare multi-task optimization methods. With no arguments, "
                    "runs a quick comparison on the built-in digits_tasks benchmark.",
        epilog="Examples:\n  python run_bench.py\n  python run_bench.py list methods\n"
               "  python run_bench.py run -b digits_tasks -m ew stl -s 0 1 2\n"
               "  python run_bench.py run --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub, [common])
    return parser


def _preload_plugins(argv: list[str]) -> None:
    """Plugins must be imported before argument defaults (method lists) are computed."""
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            load_plugin(argv[i + 1])
        elif arg.startswith("--plugin="):
            load_plugin(arg.split("=", 1)[1])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if ("-v" in argv or "--verbose" in argv) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        load_entry_point_plugins()
        _preload_plugins(argv)
        parser = build_parser()
        if not argv:
            from engine.cli.cmd_run import default_argv
            argv = default_argv()
            print(f"run_bench.py {' '.join(argv)}  (the default quick comparison; see --help)",
                  file=sys.stderr)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
