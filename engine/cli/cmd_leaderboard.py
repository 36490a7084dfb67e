"""``leaderboard``: rank methods on a benchmark under the leaderboard's protocol.

Every method gets the same tuning budget, selected on validation: the learning rate from
one grid, then two settings of the hyperparameter its paper tunes (or of the weight decay);
the selected configuration and the untuned one are then trained for 5 seeds
(benchmarks/leaderboard/protocol.toml, docs/leaderboard.md). Runs already in the shipped
records (benchmarks/leaderboard/records/) are never rerun: a new method is ranked against
them by training only its own runs. Running the command again resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.argtypes import folder_arg, folder_text, positive_int


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "leaderboard", parents=parents,
        help="rank methods under the leaderboard's protocol (tuned on equal terms), against "
             "the shipped records",
        description=__doc__.split("\n\n", 1)[1].strip(),
        epilog="Examples:\n"
               "  python run_bench.py leaderboard -b multi_mnist --no-run       # the shipped table\n"
               "  python run_bench.py leaderboard -b multi_mnist --plugin my_method.py -m my_method\n"
               "  python run_bench.py leaderboard -b yeast --dry-run            # what would run next\n"
               "  python run_bench.py leaderboard -b yeast --jobs 2 --record    # extend the records",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--benchmark", required=True, metavar="BENCH",
                   help="a benchmark the protocol lists")
    p.add_argument("-m", "--methods", nargs="+", default=None, metavar="METHOD",
                   help="only these methods (default: every method the protocol lists for the "
                        "benchmark); stl and ew are added, as the base and the reference. A "
                        "plugin's method is printed among every finished row")
    p.add_argument("-j", "--jobs", type=positive_int, default=1, metavar="N",
                   help="runs trained at once, in separate processes (default 1)")
    p.add_argument("--out", type=folder_arg, default=Path("results"), metavar="DIR",
                   help="results root for the runs this command trains (default results/)")
    p.add_argument("--device", default="auto", metavar="DEVICE")
    p.add_argument("--data-root", type=folder_text, default=None, metavar="DIR")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs of the next stage; train nothing")
    p.add_argument("--no-run", action="store_true",
                   help="train nothing: print the table of what the records and the results "
                        "folder already hold")
    p.add_argument("--record", action="store_true",
                   help="add this command's finished runs of the project's own methods to the "
                        "shipped records (plugins' runs are never added)")
    p.add_argument("--write-docs", action="store_true",
                   help="regenerate this benchmark's section of the protocol's page "
                        "(docs/leaderboard.md; its `docs` key for another) from the shipped "
                        "records")
    p.add_argument("--protocol", type=Path, default=None, metavar="FILE",
                   help="another protocol file (default benchmarks/leaderboard/protocol.toml); "
                        "its records are read from and written to records/ beside it")
    p.add_argument("--correction", choices=("holm", "bh", "none"), default="holm")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from engine.runs import leaderboard as L
    from engine.runs import leaderboard_report as LR

    protocol = L.load_protocol(args.protocol or L.PROTOCOL)
    methods = None
    if args.methods is not None:
        methods = list(dict.fromkeys(["stl", "ew", *args.methods]))
    where = L.Where(args.out, args.device, args.data_root, tuple(args.plugin), args.jobs,
                    not args.no_progress)
    outcome = L.advance(protocol, args.benchmark, methods, where,
                        dry_run=args.dry_run or args.no_run)
    if args.dry_run:
        print(LR.plan_text(outcome))
        return 0
    if args.record:
        added = L.export_records(protocol, args.benchmark, list(outcome.board.known.values()))
        print(f"added {added} run(s) to {protocol.records_path(args.benchmark)}", file=sys.stderr)
    if args.write_docs:
        path = LR.write_docs(protocol, args.benchmark)
        print(f"rewrote the {args.benchmark} section of {path}", file=sys.stderr)
    if args.no_run and not args.write_docs:
        LR.check_known(outcome, args.methods, protocol.records_path(args.benchmark), args.out)
    plugin_rows = [m for m in (args.methods or []) if not L.is_builtin(m)]
    print(LR.standing_text(outcome, args.correction, every_row=bool(plugin_rows)))
    if plugin_rows and not args.no_run and not outcome.failures:
        print(LR.drift_text(protocol, args.benchmark, where, outcome))
    for failure in outcome.failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if outcome.failures else 0
