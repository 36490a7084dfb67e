"""``list``: every registered method and benchmark with a one-line description."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub, parents) -> None:
    p = sub.add_parser("list", parents=parents, help="list methods and benchmarks",
                       description="List every registered method (with its kind and what it "
                                   "needs) and benchmark, including those of --plugin files.",
                       epilog="Examples:\n  python run_bench.py list\n"
                              "  python run_bench.py list methods\n"
                              "  python run_bench.py list benchmarks --plugin my_bench.py\n"
                              "  python run_bench.py list methods --sweep my_sweep.toml",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=("methods", "benchmarks"), default=None,
                   help="what to list (default: both)")
    p.add_argument("--sweep", type=Path, default=None, metavar="SWEEP.toml",
                   help="also load the plugins that this sweep file names")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import benchmarks  # noqa: F401
    import methods  # noqa: F401
    from benchmarks.registry import BENCHMARKS
    from methods.registry import METHODS

    if args.sweep is not None:
        from engine.runs.sweep import import_plugins, read_plugins

        import_plugins(args.sweep, read_plugins(args.sweep))

    if args.what in (None, "methods"):
        print("methods (compose as PRIMARY+REGULARIZER, e.g. pcgrad+repmtl):")
        rows = [(n, METHODS.get(n)) for n in METHODS.names()]
        width = max(len(n) for n, _ in rows)
        for name, cls in rows:
            kind = cls.kind + (f" ({cls.space})" if cls.kind == "aggregator" else "")
            print(f"  {name:<{width}}  {kind:<18}  needs: {cls.needs.describe():<28}  "
                  f"{cls.description}")
    if args.what in (None, "benchmarks"):
        print("benchmarks:")
        width = max(len(n) for n in BENCHMARKS.names())
        for name in BENCHMARKS.names():
            cls = BENCHMARKS.get(name)
            where = "reads --data-root" if cls.needs_data_root else "no download"
            kind = f"{cls.setting}, {'multi' if cls.multi_input else 'single'}-input"
            print(f"  {name:<{width}}  {kind:<28}  {where:<18}  {cls.description}")
            print(f"  {'':<{width}}  model.arch: {_archs(cls)}")
    return 0


def _archs(cls) -> str:
    """The architectures a benchmark offers under its default data options."""
    from engine.core.architectures import architectures_of
    from engine.core.config import ARCHS

    offered = architectures_of(cls)
    if offered == ARCHS:
        return "every architecture (" + ", ".join(ARCHS) + ")"
    if offered == ("hps",):
        return "hps only"
    return ", ".join(offered) + " (not " + ", ".join(a for a in ARCHS if a not in offered) + ")"
