"""``report``: turn a results folder into tables, figures and a report."""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis.names import CORRECTIONS, FORMATS, RULES, SECTIONS
from engine.cli.argtypes import folder_arg, positive_int
from engine.errors import UserError
from engine.core.results import check_writable


def formats_arg(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in FORMATS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"--format {text!r}: expected a comma-separated list of "
                                         f"{', '.join(FORMATS)}")
    return values


def skip_arg(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in SECTIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"--skip {text!r}: expected a comma-separated list of "
                                         f"{', '.join(SECTIONS)}")
    return values


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "report", parents=parents, help="tables, figures and a report from a results folder",
        description="Read the run folders under RESULTS_DIR (only the files runs write, so "
                    "results copied from a cluster work) and write report.md, report.html "
                    "(self-contained, figures embedded), every table as CSV and LaTeX under "
                    "tables/, and every figure as PNG and PDF under figures/. "
                    "See docs/analysis.md for every table, figure and definition.",
        epilog="Examples:\n"
               "  python run_bench.py report results\n"
               "  python run_bench.py report results --select best_val --out paper_tables\n"
               "  python run_bench.py report results --select last_k --k 5 -b nyuv2 "
               "--format md,tex\n"
               "  python run_bench.py report results -b nyuv2 --select best_test_dp "
               "--correction bh",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=folder_arg, metavar="RESULTS_DIR", help="the results root")
    p.add_argument("--out", type=folder_arg, default=None, metavar="DIR",
                   help="where to write the report (default RESULTS_DIR/report)")
    p.add_argument("--format", dest="formats", type=formats_arg, default=FORMATS,
                   metavar="LIST", help="comma-separated outputs among md, html, tex, csv "
                                        "(default all)")
    p.add_argument("--select", choices=RULES, default="last",
                   help="which epoch represents a run: last (default), best_val (best "
                        "validation epoch), last_k (mean of the last K epochs), best_test_dp "
                        "(LibMTL's protocol: best test Δp_task, TEST-SELECTED) or best_val_dp "
                        "(best validation Δp_task)")
    p.add_argument("--published-select", choices=RULES, default=None, metavar="RULE",
                   help="selection rule of the published-vs-reproduced tables (default: the "
                        "rule of the published numbers, best_test_dp on NYUv2/Cityscapes, "
                        "best_val_dp on Office)")
    p.add_argument("--correction", choices=CORRECTIONS, default="holm",
                   help="multiplicity correction of the negative-transfer tests: holm "
                        "(default, family-wise error), bh (Benjamini-Hochberg, false "
                        "discovery rate) or none")
    p.add_argument("--k", type=positive_int, default=3, metavar="K",
                   help="epochs averaged by --select last_k (default 3)")
    p.add_argument("-b", "--benchmark", default=None, metavar="BENCH",
                   help="only this benchmark (default: every benchmark found)")
    p.add_argument("--skip", type=skip_arg, default=(), metavar="LIST",
                   help=f"comma-separated sections to leave out: {', '.join(SECTIONS)} "
                        "(e.g. spectra, which reads every checkpoint)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if not args.results.is_dir():
        raise UserError(f"results folder {args.results} does not exist or is not a folder")
    from analysis.collect import find_run_dirs

    if not find_run_dirs(args.results):
        raise UserError(f"results folder {args.results} holds no runs (no "
                        f"<benchmark>/<method>/seed<k>-<hash>/summary.json under it); "
                        f"expected the --out folder of `run` or `sweep`")
    out: Path = args.out or args.results / "report"
    # Before anything is written (metrics.jsonl repaired from a checkpoint included).
    check_writable(out, "report folder" if args.out else "the default report folder (--out "
                                                          "DIR writes it elsewhere)")

    from analysis.report import build_report  # the analysis stack, only when reporting

    try:
        written = build_report(args.results, out, args.formats, args.select, args.k,
                               args.benchmark, args.skip, args.published_select,
                               args.correction)
    except OSError as exc:  # a full disk, a file removed meanwhile
        raise UserError(f"report: {exc.strerror or exc}: {exc.filename}") from None
    print(f"report written to {out} ({len(written)} files)")
    for path in written:
        if path.name.startswith("report."):
            print(f"  {path}")
    return 0
