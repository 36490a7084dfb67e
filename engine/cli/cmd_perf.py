"""``perf``: step time and peak memory of methods, as ratios to equal weighting."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.argtypes import folder_arg, folder_text, positive_int


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "perf", parents=parents, help="measure step time and peak memory of methods",
        description="Measure, in one process and interleaved across methods, the median "
                    "training-step time (after warm-up), its spread and the peak memory of each "
                    "method, as ratios to equal weighting measured in the same run, beside the "
                    "floors (forward + T backward passes; forward + T head passes + one encoder "
                    "pass; for Rep-MTL, T differentiable head passes and their double backward) "
                    "and the data path. Peak memory is the tensor memory allocated during the "
                    "steps (CUDA allocator; on the CPU the profiler's allocation events). "
                    "Prints a table and saves JSON + Markdown.",
        epilog="Examples:\n"
               "  python run_bench.py perf -b digits_tasks -m uw pcgrad mgda repmtl\n"
               "  python run_bench.py perf -b scenes -m cagrad nashmtl --steps 30 --batch-size 16\n"
               "  python run_bench.py perf -b synthetic -m pcgrad --set data.num_tasks=16\n"
               "  python run_bench.py perf -b synthetic -m ew pcgrad mgda --scale "
               "data.num_tasks=2,4,8,16 \\\n      --plot docs/scaling.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--benchmark", default="digits_tasks", metavar="BENCH",
                   help="benchmark (default digits_tasks)")
    p.add_argument("-m", "--methods", nargs="+", required=True, metavar="METHOD",
                   help="methods or compositions to measure; ew is always measured as the reference")
    p.add_argument("--profile", default="quick", metavar="P", help="profile (default quick)")
    p.add_argument("--steps", type=positive_int, default=20, metavar="N",
                   help="measured steps per method (default 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="warm-up steps per method, not measured (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="B",
                   help="training batch size (default: the profile's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. data.num_tasks=8")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--data-root", type=folder_text, default=None, metavar="DIR",
                   help="data of paper benchmarks")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the memory measurement (two more profiled steps per method)")
    p.add_argument("--scale", default=None, metavar="KEY=V1,V2,...",
                   help="measure at every value of one config key (e.g. data.num_tasks=2,4,8): "
                        "step time per method and its excess over the floor against the "
                        "number of tasks, with the log-log slope (memory not measured)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG",
                   help="with --scale: also draw the log-log plot to this file")
    p.add_argument("--out", type=folder_arg, default=Path("results/perf"), metavar="DIR",
                   help="where the JSON and Markdown results go (default results/perf)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.runs.perf import format_table, run_perf, save

    if args.plot is not None and args.scale is None:
        raise UserError("--plot draws the --scale measurement; give --scale KEY=V1,V2,...")
    if args.scale is not None:
        return _scale(args)

    result = run_perf(args.benchmark, args.methods, args.profile, args.overrides, args.device,
                      args.steps, args.warmup, args.batch_size, args.data_root,
                      memory=not args.no_memory)
    print(format_table(result))
    json_path, md_path = save(result, args.out)
    print(f"\nsaved {json_path} and {md_path}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    from engine.runs.perf import format_scaling, parse_scale, plot_scaling, run_scaling, save_scaling

    key, values = parse_scale(args.scale)
    result = run_scaling(args.benchmark, args.methods, args.profile, args.overrides, args.device,
                         args.steps, args.warmup, args.batch_size, args.data_root, key, values)
    print(format_scaling(result))
    json_path, md_path = save_scaling(result, args.out)
    print(f"\nsaved {json_path} and {md_path}")
    if args.plot is not None:
        print(f"plot: {plot_scaling(result, args.plot)}")
    return 0
