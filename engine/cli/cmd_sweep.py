"""``sweep``: every run of a sweep file, here, in parallel processes or on SLURM.

The whole sweep is checked (names, keys, values, line by line) before the first run
starts. Running the same command again is always safe: complete runs are skipped,
interrupted ones resume from their last checkpoint, failed and diverged ones are retried
only with --retry-failed, and runs that another process or job is training are left to it.
The command ends with a status table and exits 1 when any run failed or diverged, or is
still pending (another process holds its lock), naming those runs; 2 when a run failed
for its data, config or folder (a user mistake).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from engine.core import results as R
from engine.cli.argtypes import (add_tracker_flags, check_trackers, folder_arg, folder_text,
                             non_negative_int, positive_float, positive_int)
from engine.errors import UserError

STATES = ("complete", "failed", "diverged", "pending")


def add_parser(sub, parents) -> None:
    from engine.runs.sweep import EXECUTORS

    p = sub.add_parser(
        "sweep", parents=parents, help="run every run of a sweep file (benchmarks x methods x "
                                       "seeds x grids), resumably",
        description=__doc__.split("\n\n", 1)[1].strip() + "\n\nSee docs/sweeps.md for the file "
                    "format and for running the paper tables on a SLURM cluster.",
        epilog="Examples:\n"
               "  python run_bench.py sweep benchmarks/sweeps/digits_tasks.toml --dry-run\n"
               "  python run_bench.py sweep benchmarks/sweeps/digits_tasks.toml "
               "--executor processes --jobs 2\n"
               "  python run_bench.py sweep benchmarks/sweeps/nyuv2.toml --executor slurm "
               "--data-root /data/nyuv2 --partition gpu",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", type=Path, metavar="SWEEP.toml", help="the sweep file")
    p.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="local (one run after another, default), processes (--jobs at a time "
                        "on this machine) or slurm (a job array through submitit)")
    p.add_argument("-j", "--jobs", type=positive_int, default=None, metavar="N",
                   help="parallel runs of the processes executor (default: the file's `jobs`, "
                        "else 1); torch threads are divided between them")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs and where each stands; train nothing (a missing data "
                        "folder is reported as a warning)")
    p.add_argument("--retry-failed", action="store_true",
                   help="retrain failed and diverged runs, from their last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="retrain every run from scratch, complete ones included")
    p.add_argument("--out", type=folder_arg, default=Path("results"), metavar="DIR",
                   help="results root (default results/)")
    add_tracker_flags(p)
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="replace the file's device (auto, cpu, cuda, cuda:N, mps)")
    p.add_argument("--data-root", type=folder_text, default=None, metavar="DIR",
                   help="replace the file's data_root (for every benchmark of the sweep)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    slurm = p.add_argument_group("slurm executor (override the file's [slurm] table)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--time-min", type=positive_int, default=None, metavar="MIN",
                       help="time limit per job, minutes")
    slurm.add_argument("--gpus", type=non_negative_int, default=None, metavar="N",
                       help="GPUs per job")
    slurm.add_argument("--cpus", type=positive_int, default=None, metavar="N", help="CPUs per job")
    slurm.add_argument("--mem-gb", type=positive_float, default=None, metavar="GB",
                       help="memory per job")
    slurm.add_argument("--array-parallelism", type=positive_int, default=None, metavar="N",
                       help="jobs of the array running at once")
    slurm.add_argument("--no-wait", action="store_true",
                       help="return once the jobs are submitted (rerun with --dry-run to see "
                            "where they stand)")
    slurm.add_argument("--ddp", type=positive_int, default=None, metavar="N",
                       help="train each run data-parallel on N processes of one node (N tasks, "
                            "one GPU each when GPUs are asked for); see docs/distributed.md")
    slurm.add_argument("--submitit-cluster", choices=("slurm", "local"), default="slurm",
                       help="local: run the SLURM path on this machine through submitit's local "
                            "executor (for trying it out)")
    p.set_defaults(func=main)


def slurm_params(sweep_slurm: dict, args: argparse.Namespace) -> dict:
    flags = {"partition": args.partition, "time_min": args.time_min, "gpus_per_node": args.gpus,
             "cpus_per_task": args.cpus, "mem_gb": args.mem_gb,
             "array_parallelism": args.array_parallelism, "ddp": args.ddp}
    return {**sweep_slurm, **{k: v for k, v in flags.items() if v is not None}}


def _plugins(args: argparse.Namespace, sweep) -> tuple[str, ...]:
    # Workers may start elsewhere: plugin files are passed as absolute paths.
    given = tuple(str(Path(p).resolve()) if p.endswith(".py") or Path(p).exists() else p
                  for p in args.plugin)
    return given + tuple(p for p in sweep.plugins if p not in given)


def main(args: argparse.Namespace) -> int:
    from engine.runs import executors as X
    from engine.runs.sweep import expand, load_sweep, missing_data

    sweep = load_sweep(args.sweep_file)
    check_trackers(args)
    runs = expand(sweep, args.out, args.device, args.data_root, _plugins(args, sweep),
                  check_data=not args.dry_run)
    specs = [spec for spec, _ in runs]
    executor = args.executor or sweep.executor
    jobs = args.jobs or sweep.jobs
    options = X.Options(str(args.out), args.force, args.retry_failed, args.tensorboard,
                        args.wandb)
    if args.dry_run:
        print(listing(specs))
        for problem in missing_data(sweep, args.data_root):
            print(f"warning: the sweep itself will refuse to start: {problem}", file=sys.stderr)
        return 0
    R.check_writable(args.out)
    if not args.force:
        from engine.runs.runner import refuse_mismatches

        refuse_mismatches([request for _, request in runs], args.out)
    todo, results = X.plan(specs, options)
    progress = not args.no_progress
    print(f"sweep {sweep.name}: {len(specs)} runs, {len(todo)} to train "
          f"({executor} executor)", file=sys.stderr)
    if todo and executor == "local":
        results += X.run_local(todo, options, progress)
    elif todo and executor == "processes":
        results += X.run_processes(todo, options, jobs, progress)
    elif todo:
        folder = args.out / ".submitit" / sweep.name
        submitted = X.submit_slurm(todo, options, folder, slurm_params(sweep.slurm, args),
                                   args.submitit_cluster)
        print(f"submitted {X.describe_jobs(submitted)}; logs in {folder}", file=sys.stderr)
        if args.no_wait:
            print("rerun with --dry-run to see where the runs stand", file=sys.stderr)
            return 0
        results += X.wait_jobs(todo, submitted, progress)
    print(status_table(specs, results))
    print_comparisons([request for _, request in runs], args.out)
    failed = any(r.state in (R.STATUS_FAILED, R.STATUS_DIVERGED) for r in results)
    done = {r.run_dir for r in results if r.state != "pending"}
    pending = [spec for spec in specs if spec.run_dir not in done]
    if pending:
        # Locked by another sweep or job (or interrupted): this sweep did not finish them.
        print(f"{len(pending)} run(s) still pending, not trained by this sweep: "
              + ", ".join(spec.label for spec in pending[:5])
              + (" ..." if len(pending) > 5 else "")
              + "; run the sweep again once the other process is done", file=sys.stderr)
    if any(r.user_error for r in results if r.state in (R.STATUS_FAILED, R.STATUS_DIVERGED)):
        return 2  # a run failed for its data, config or folder: the user's mistake
    return 1 if failed or pending else 0


def print_comparisons(requests, out: Path) -> None:
    """The comparison table of each benchmark of the sweep, as ``run`` prints it."""
    from engine.runs.tables import requested_comparison

    by_benchmark: dict[str, list] = {}
    for request in requests:
        by_benchmark.setdefault(request.config.benchmark, []).append(request)
    for benchmark, group in by_benchmark.items():
        print(f"\n{benchmark}\n" + requested_comparison(group, out).text())


def _row(spec) -> str:
    return f"{spec.benchmark}  {spec.method}" + (f"  {spec.variant}" if spec.variant else "")


def listing(specs) -> str:
    """The runs of a dry run, each with where it stands on disk."""
    from engine.runs.locks import RunLock, RunLocked

    lines, states = [], Counter()
    for spec in specs:
        run_dir = Path(spec.run_dir)
        status = R.run_state(run_dir).status
        state = status if status in STATES else "pending"
        note = ""
        if status == R.STATUS_RUNNING:
            try:
                with RunLock(run_dir):
                    note = " (interrupted: resumes from its checkpoint)"
            except RunLocked as exc:
                note = f" (training: {exc.holder})"
            except (UserError, OSError) as exc:
                note = f" (cannot be locked: {exc})"
        states[state] += 1
        lines.append(f"{state:<9} {_row(spec)}  seed {spec.seed}  {run_dir}{note}")
    lines.append(f"{len(specs)} runs: " + ", ".join(f"{states[s]} {s}" for s in STATES))
    return "\n".join(lines)


def status_table(specs, results) -> str:
    """Counts per benchmark, method and grid variant, then every run not complete."""
    by_dir = {r.run_dir: r for r in results}
    rows: dict[str, Counter] = {}
    problems = []
    for spec in specs:
        result = by_dir.get(spec.run_dir)
        state = result.state if result else "pending"
        rows.setdefault(_row(spec), Counter())[state] += 1
        if result is not None and state != "complete":
            why = result.reason or result.status
            if state in (R.STATUS_FAILED, R.STATUS_DIVERGED) and result.status == "skipped":
                why += " (skipped; --retry-failed retries it)"
            if (Path(spec.run_dir) / R.TRACEBACK).exists():
                why += f" [traceback: {Path(spec.run_dir) / R.TRACEBACK}]"
            problems.append(f"{state:<9} {spec.label}: {why}")
    width = max([len(r) for r in rows] + [3])
    out = [f"{'run':<{width}}  " + "  ".join(f"{s:>8}" for s in STATES)]
    for name, counts in rows.items():
        out.append(f"{name:<{width}}  " + "  ".join(f"{counts[s]:>8}" for s in STATES))
    total = Counter(r.state for r in results)
    total["pending"] += len(specs) - len(results)
    out.append(f"{'total':<{width}}  " + "  ".join(f"{total[s]:>8}" for s in STATES))
    if problems:
        out += ["", *problems]
    return "\n".join(out)
