"""``run``: train methods on one benchmark over seeds, then print the comparison table."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.core import results as R
from engine.cli.argtypes import (add_tracker_flags, check_trackers, folder_arg, folder_text,
                             int_at_least)
from engine.errors import UserError
from methods.registry import METHODS

DEFAULT_BENCHMARK = "digits_tasks"
# The default comparison: the baselines, the flagship and a few of the field's best-known
# methods (a loss weighting, a gradient projection, a multi-objective solver), over three
# seeds so that every difference from EW comes with a test (docs/benchmarks.md measures it).
DEFAULT_METHODS = ("stl", "ew", "uw", "pcgrad", "mgda", "repmtl")
DEFAULT_SEEDS = ("0", "1", "2")
seed_arg = int_at_least(0, "seed")


def default_methods() -> list[str]:
    return [m for m in DEFAULT_METHODS if m in METHODS]


def default_argv() -> list[str]:
    # Two runs at a time, one thread each (engine.cpu_threads): the documented numbers, at
    # the speed of two threads on a 2-core machine.
    jobs = "2" if (os.cpu_count() or 1) >= 2 else "1"
    return ["run", "-b", DEFAULT_BENCHMARK, "-m", *default_methods(), "-s", *DEFAULT_SEEDS,
            "--jobs", jobs]


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "run", parents=parents, help="train methods on a benchmark and compare them",
        description="Train every METHOD on BENCH for every SEED through the same pipeline, "
                    "write each run under OUT/<benchmark>/<method>/seed<k>-<hash>/, and print "
                    "the comparison table, with each method's Δp_task tested against ew's "
                    "(Welch, Holm-corrected) when ew is among the methods. An interrupted run "
                    "resumes from its last checkpoint; complete runs are skipped unless --force, failed or diverged ones unless "
                    "--retry-failed.",
        epilog="Examples:\n"
               "  python run_bench.py run -b digits_tasks -m ew stl -s 0 1 2\n"
               "  python run_bench.py run -b digits_tasks -m pcgrad+repmtl -s 0 "
               "--set train.epochs=3 --set method.repmtl.lambda_tsr=0.9\n"
               "  python run_bench.py run -b digits_tasks -m ew pcgrad -s 0 --set model.arch=mmoe\n"
               "  python run_bench.py run -b nyuv2 -m repmtl -s 0 --profile paper "
               "--data-root /data/nyuv2 --device cuda\n"
               "  torchrun --nproc_per_node=4 run_bench.py run -b nyuv2 -m pcgrad -s 0 "
               "--profile paper --data-root /data/nyuv2   (data parallel: docs/distributed.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--benchmark", default=DEFAULT_BENCHMARK, metavar="BENCH",
                   help=f"benchmark name (default {DEFAULT_BENCHMARK}; `list benchmarks` shows all)")
    p.add_argument("-m", "--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods or compositions such as pcgrad+repmtl (default: "
                        f"{' '.join(default_methods())})")
    p.add_argument("-s", "--seeds", nargs="+", type=seed_arg, default=[0], metavar="SEED",
                   help="non-negative integer seeds (default 0), e.g. -s 0 1 2")
    p.add_argument("--profile", default="quick", metavar="P",
                   help="hyperparameter profile of the benchmark: quick (default) or paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, repeatable: train.lr=1e-3, train.epochs=2, "
                        "data.train_size=500, engine.jacobian=batched, method.cagrad.c=0.4, "
                        "model.arch=mmoe (docs/architectures.md)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--out", type=folder_arg, default=Path("results"), metavar="DIR",
                   help="results root (default results/)")
    p.add_argument("--data-root", type=folder_text, default=None, metavar="DIR",
                   help="data folder of benchmarks read from disk (nyuv2, office31, ...)")
    p.add_argument("--retry-failed", action="store_true",
                   help="retrain runs that failed or diverged before, from their last checkpoint "
                        "(without it they are skipped and reported)")
    p.add_argument("--strict", action="store_true",
                   help="paper benchmarks: data that differ from the official counts or sizes are "
                        "an error instead of a warning (data.strict=true)")
    p.add_argument("--force", action="store_true",
                   help="retrain runs that are already complete (and ignore checkpoints)")
    p.add_argument("--jobs", type=int_at_least(1, "--jobs"), default=1, metavar="N",
                   help="train N runs at a time, each in its own process (default 1; on the "
                        "CPU each run uses engine.cpu_threads threads, 1 by default)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_tracker_flags(p)
    p.set_defaults(func=main)


def _in_processes(requests, args, overrides: list[str]) -> list:
    """The requests trained ``args.jobs`` at a time by the sweep's process executor."""
    from engine.runs import executors as X
    from engine.runs.runner import refuse_mismatches
    from engine.runs.sweep import RunSpec

    R.check_writable(args.out)
    if not args.force:
        refuse_mismatches(requests, args.out)
    specs = [RunSpec(r.config.benchmark, r.method_name, r.config.seed, r.config.profile,
                     tuple(overrides), r.config.device, r.config.data_root,
                     r.config.hash(), str(r.dir(args.out)), tuple(args.plugin))
             for r in requests]
    options = X.Options(str(args.out), args.force, args.retry_failed, args.tensorboard,
                        args.wandb)
    todo, done = X.plan(specs, options)
    done += X.run_processes(todo, options, args.jobs, not args.no_progress) if todo else []
    by_dir = {r.run_dir: r for r in done}
    return [by_dir[spec.run_dir] for spec in specs if spec.run_dir in by_dir]


def main(args: argparse.Namespace) -> int:
    from analysis.significance import against_reference, summary_lines
    from engine.runs.runner import build_requests, run_all
    from engine.runs.tables import requested_comparison

    from engine.core.distributed import init_from_env, shutdown

    # Under torchrun (WORLD_SIZE > 1) every process trains its share of each run.
    world, device = init_from_env(args.device)
    methods = args.methods or default_methods()
    overrides = list(args.overrides)
    if args.strict:
        from benchmarks.registry import BENCHMARKS
        from engine.core.config import field_types

        if "strict" not in field_types(BENCHMARKS.get(args.benchmark).Config):
            raise UserError(f"--strict: benchmark {args.benchmark} has no official counts to "
                            f"check (only the paper benchmarks do)")
        if "data.strict=true" not in overrides:
            overrides.append("data.strict=true")
    check_trackers(args)
    requests = build_requests(args.benchmark, methods, args.seeds, args.profile, overrides,
                              device, args.data_root, out=args.out)
    if args.jobs > 1 and world is None:
        outcomes = _in_processes(requests, args, overrides)
    else:
        outcomes = run_all(requests, args.out, force=args.force,
                           progress=not args.no_progress, retry_failed=args.retry_failed,
                           world=world, tensorboard=args.tensorboard, wandb=args.wandb)
    shutdown(world)
    if world is not None and not world.is_main:
        return 0
    failed = [o for o in outcomes if o.state in (R.STATUS_FAILED, R.STATUS_DIVERGED)]
    names = list(dict.fromkeys(r.method_name for r in requests))
    comparison = requested_comparison(requests, args.out)
    print(comparison.text())
    if "ew" in names:
        for table in comparison.tables:
            lines = summary_lines(against_reference(table, "ew"), "ew")
            if lines:
                print("\n" + "\n".join(lines))
    print(f"\nresults in {args.out / args.benchmark}")
    for o in outcomes:
        if o.status == "skipped" and o.state == R.STATUS_COMPLETE:
            print(f"skipped {o.run_dir}: {o.reason}", file=sys.stderr)
    for o in failed:
        print(f"{o.state}: {o.run_dir}: {o.reason}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(outcomes)} runs did not complete", file=sys.stderr)
    pending = [o for o in outcomes if o.state == "pending"]
    for o in pending:
        print(f"pending: {o.reason}", file=sys.stderr)
    if pending:
        # Held by another process: its results are not in the table above yet.
        print(f"{len(pending)} run(s) still pending, not trained by this command; run it "
              f"again once the other process is done", file=sys.stderr)
    # A run refused or failed for its data, config or folder is the user's mistake.
    if any(o.user_error for o in failed):
        return 2
    return 1 if failed or pending else 0
