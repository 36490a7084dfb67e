#!/usr/bin/env python
"""What explains a Rep-MTL outcome, per epoch, from runs trained with
``--set engine.saliency_every=N`` (engine/core/saliency_log.py):

    python benchmarks/scripts/saliency_diagnostics.py ew=RUN_DIR repmtl=RUN_DIR [--epochs 0 9 19]

prints one markdown table, a line per run and epoch: the normalised task entropy (L_tsr /
log T), L_csa beside its no-alignment level log(B − 1) (the value when a sample's anchor
is as similar to the other samples' anchors as to its own tasks'), the mean |Ŝ_t| per
task, and, for runs with a penalty, ‖∇penalty‖ / ‖∇Σ L_t‖ over the encoder and over each
head. Every value is the epoch's mean over its logged steps. docs/repmtl.md's diagnostics
come from this script.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis.collect import load_train_records  # noqa: E402

PREFIX = "saliency."


def epoch_stats(run_dir: Path) -> dict[int, dict[str, float]]:
    """{epoch: {stat: value}} of the run's ``saliency.*`` train statistics."""
    out = {}
    for record in load_train_records(run_dir):
        logged = {k[len(PREFIX):]: v for k, v in (record.get("method") or {}).items()
                  if k.startswith(PREFIX) and v is not None}
        if logged:
            out[int(record["epoch"])] = logged
    if not out:
        raise SystemExit(f"{run_dir}: no saliency statistics in metrics.jsonl (train with "
                         f"--set engine.saliency_every=N)")
    return out


def batch_size(run_dir: Path) -> int:
    return int(json.loads((run_dir / "config.json").read_text())["train"]["batch_size"])


def table(runs: dict[str, Path], epochs: list[int] | None) -> str:
    stats = {label: epoch_stats(path) for label, path in runs.items()}
    keys = sorted({k for per in stats.values() for values in per.values() for k in values})
    tasks = [k.split(".", 1)[1] for k in keys if k.startswith("mean_abs.")]
    groups = [k.split(".", 1)[1] for k in keys if k.startswith("penalty_ratio.")]
    head = (["run", "epoch", "task entropy", "L_csa (log(B − 1))"]
            + [f"mean abs Ŝ {t}" for t in tasks] + [f"penalty ratio {g}" for g in groups])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, per in stats.items():
        reference = math.log(batch_size(runs[label]) - 1)
        chosen = sorted(per) if epochs is None else [e for e in epochs if e in per]
        for epoch in chosen:
            values = per[epoch]
            cell = lambda key, fmt: fmt.format(values[key]) if key in values else "–"  # noqa: E731
            lines.append("| " + " | ".join(
                [label, str(epoch), cell("task_entropy", "{:.3f}"),
                 f"{cell('L_csa', '{:.2f}')} ({reference:.2f})"]
                + [cell(f"mean_abs.{t}", "{:.3g}") for t in tasks]
                + [cell(f"penalty_ratio.{g}", "{:.3g}") for g in groups]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    p.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="the epochs to show (default: every logged one)")
    args = p.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.rpartition("=")  # a label may hold "=" (λ=0.9)
        if not sep or not Path(path).is_dir():
            p.error(f"{spec!r}: expected LABEL=RUN_DIR with an existing run folder")
        runs[label] = Path(path)
    print(table(runs, args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
