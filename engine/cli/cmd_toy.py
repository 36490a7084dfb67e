"""``toy``: a toy2d protocol (every start point, several methods) trained as one batched
computation (engine/runs/toy_batch.py), written to the same run folders as ``run``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.argtypes import folder_arg, int_at_least
from engine.errors import UserError

seed_arg = int_at_least(0, "seed")
start_arg = int_at_least(0, "start")


def add_parser(sub, parents) -> None:
    from engine.runs.toy_batch import SUPPORTED

    p = sub.add_parser(
        "toy", parents=parents, help="train a toy2d protocol, every start and method at once",
        description="Train METHODS on the 2-D toy (toy2d) from every start point of a published "
                    "protocol as one batched computation: each run (method × start × seed) "
                    "is a row of one tensor, trained by the same operations as `run -b toy2d "
                    "--set data.start=I` trains it alone, so its trajectory, curve and metrics "
                    "are the same (cagrad: to float tolerance; bit-identical with "
                    "--exact-cagrad). Each run is written to the folder `run` would use "
                    "(OUT/toy2d/<method>/seed<k>-<hash>/, without a checkpoint); complete runs "
                    "are skipped unless --force. `report` draws the trajectory figures from "
                    f"them. Methods: {', '.join(SUPPORTED)}.",
        epilog="Examples:\n"
               "  python run_bench.py toy --protocol cagrad -m ew mgda pcgrad cagrad\n"
               "  python run_bench.py toy --protocol famo -m ew mgda pcgrad cagrad famo\n"
               "  python run_bench.py toy --protocol quick --starts 0 2 --set method.cagrad.c=0.2\n"
               "  python run_bench.py report results -b toy2d   (the trajectory figures)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--methods", nargs="+", default=list(SUPPORTED), metavar="METHOD",
                   help=f"methods (default: all it supports: {' '.join(SUPPORTED)})")
    p.add_argument("--protocol", "--profile", dest="profile", default="cagrad", metavar="P",
                   help="toy2d profile: cagrad (default; 3 starts, 100k steps), nashmtl "
                        "(5 starts, 35k), famo (5 starts, 50k) or quick (3 starts, 3k)")
    p.add_argument("--starts", nargs="+", type=start_arg, default=None, metavar="I",
                   help="indices of the protocol's start points (default: every start)")
    p.add_argument("-s", "--seeds", nargs="+", type=seed_arg, default=[0], metavar="SEED",
                   help="seeds (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, repeatable, as for `run` (train.epochs=2, "
                        "data.steps_per_epoch=100, method.cagrad.c=0.2)")
    p.add_argument("--out", type=folder_arg, default=Path("results"), metavar="DIR",
                   help="results root (default results/)")
    p.add_argument("--force", action="store_true", help="retrain runs that are already complete")
    p.add_argument("--exact-cagrad", action="store_true",
                   help="solve cagrad's dual with the method's own solver for every run and "
                        "step (bit-identical to `run`, about 300 µs per run and step) instead "
                        "of the exact two-task closed form")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from datasets.toy import STARTS
    from engine.runs.runner import build_requests
    from engine.runs.toy_batch import check_request, run_batches

    for key in ("data.start", "data.start_point"):
        if any(o.partition("=")[0].strip() == key for o in args.overrides):
            raise UserError(f"--set {key}: the toy command trains the protocol's starts; "
                            f"choose them with --starts")
    first = build_requests("toy2d", args.methods[:1], args.seeds[:1], args.profile,
                           args.overrides, "cpu", None, check_data=False)[0]
    protocol = first.config.data.protocol
    count = len(STARTS[protocol])
    starts = args.starts if args.starts is not None else list(range(count))
    bad = [i for i in starts if i >= count]
    if bad:
        raise UserError(f"--starts {bad[0]}: protocol {protocol} has {count} start points "
                        f"(indices 0 to {count - 1})")
    starts = list(dict.fromkeys(starts))
    requests = []
    for i in starts:
        requests += build_requests("toy2d", args.methods, args.seeds, args.profile,
                                   [*args.overrides, f"data.start={i}"], "cpu", None,
                                   out=args.out)
    for request in requests:
        check_request(request)  # refuse before anything trains
    outcomes = run_batches(requests, args.out, force=args.force,
                           progress=not args.no_progress, exact_cagrad=args.exact_cagrad)
    rank = {name: i for i, name in enumerate(dict.fromkeys(r.method_name for r in requests))}
    outcomes = sorted(outcomes, key=lambda o: (rank[o.request.method_name],
                                               o.request.config.data.start,
                                               o.request.config.seed))
    print(_table(outcomes))
    print(f"\nresults in {args.out / 'toy2d'}")
    failed = [o for o in outcomes if o.state != "complete"]
    for o in failed:
        print(f"{o.status}: {o.run_dir}: {o.reason}", file=sys.stderr)
    return 1 if failed else 0


def _table(outcomes) -> str:
    """One line per run: method, start, seed, status and the final point's raw losses."""
    import json

    lines = [f"{'method':<8} {'start':>14} {'seed':>4}  {'status':<8} {'end point':>18} "
             f"{'L1':>9} {'L2':>9} {'Pareto dist':>11}"]
    for o in outcomes:
        cfg = o.request.config
        point, l1, l2, dist = "", "", "", ""
        path = o.run_dir / "metrics.jsonl"
        if o.state == "complete" and path.exists():
            records = [json.loads(line) for line in path.read_text().splitlines() if line]
            tests = [r for r in records if r.get("split") == "test"]
            traj = o.run_dir / "trajectory.jsonl"
            if traj.exists():
                last = json.loads(traj.read_text().splitlines()[-1])["point"]
                point = f"({last[0]:.3f}, {last[1]:.3f})"
            if tests:
                m = tests[-1]["metrics"]
                l1 = f"{m['L1']['value']:.3f}"
                l2 = f"{m['L2']['value']:.3f}"
                dist = f"{m['L1']['pareto_dist']:.4f}"
        start = "({:g}, {:g})".format(*cfg.data.point())
        lines.append(f"{o.request.method_name:<8} {start:>14} {cfg.seed:>4}  {o.state:<8} "
                     f"{point:>18} {l1:>9} {l2:>9} {dist:>11}")
    return "\n".join(lines)
