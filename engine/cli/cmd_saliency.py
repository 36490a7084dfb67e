"""``saliency``: task-saliency maps and statistics of trained runs, side by side."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.argtypes import (
    folder_arg,
    folder_text,
    non_negative_int,
    positive_float,
    positive_int,
)

SPLITS = ("val", "test", "train")


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in (0, 1]")
    return value


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "saliency", parents=parents, help="task-saliency maps of trained runs, side by side",
        description="Load each run's checkpoint and, on the first N samples of a split (the "
                    "same for every run), compute per task the representation-level saliency "
                    "|Ŝ_t| of Rep-MTL (Eq. 4), the task distribution P_t and its entropy (what "
                    "TSR penalises), Grad-CAM at the shared representation and the input "
                    "gradient |∂L_t/∂x|; draw them with one row per run, write a summary table "
                    "(entropy, top-k overlap of the tasks' salient positions, CSA's "
                    "similarities) and plot the saliency statistics logged over training. A "
                    "run that cannot be used is named with the reason and the others go on. "
                    "See docs/saliency.md.",
        epilog="Examples:\n"
               "  python run_bench.py saliency results/scenes/ew/seed0-* "
               "results/scenes/repmtl/seed0-*\n"
               "  python run_bench.py saliency results/digits_tasks/*/seed0-* --samples 16 "
               "--out figs\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=folder_arg, nargs="+", metavar="RUN_DIR",
                   help="run folders (results/<benchmark>/<method>/seed<k>-<hash>) of one "
                        "benchmark")
    p.add_argument("--out", type=folder_arg, default=None, metavar="DIR",
                   help="where to write (default <results>/report/saliency of the first run, "
                        "which `report <results>` then shows)")
    p.add_argument("--samples", type=positive_int, default=8, metavar="N",
                   help="the first N samples of the split (default 8)")
    p.add_argument("--split", choices=SPLITS, default="val", help="split (default val)")
    p.add_argument("--figures", type=non_negative_int, default=3, metavar="K",
                   help="draw the maps of the first K samples (default 3; the table uses all N)")
    p.add_argument("--topk", type=fraction, default=0.1, metavar="F",
                   help="fraction of Z's positions in each task's top-k (default 0.1)")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu (default), auto, cuda, cuda:N or mps")
    p.add_argument("--data-root", type=folder_text, default=None, metavar="DIR",
                   help="data folder of benchmarks read from disk (default: the runs' own)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from engine.core.results import check_writable
    from engine.runs.saliency import default_out, saliency
    from analysis.saliency import printable

    out: Path = args.out or default_out(args.runs)
    check_writable(out, "saliency folder")
    outcome = saliency(args.runs, out, args.samples, args.split, args.figures, args.topk,
                       args.device, args.data_root)
    for note in outcome.notes:
        print(note)
    print(printable(outcome.table))
    used = len(outcome.maps)
    print(f"\n{used} of {len(args.runs)} run(s) used; written to {out} "
          f"({len(outcome.written)} files)")
    return 0
