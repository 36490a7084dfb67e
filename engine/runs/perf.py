"""Measuring the cost of methods: step time and peak memory, as ratios measured in one run.

Timing: every method (and equal weighting, always included as the reference) is built
through the same Trainer as a real run and stepped on the same pre-drawn batches; the
methods take turns step by step (interleaved, the order rotated every round) so that a
noisy machine slows them all alike. The reported time is the median over the measured
steps after a warm-up, with the interquartile range as the spread.

Floors, measured the same way in the same rounds:
- ``floor:jacobian``  one forward and T backward passes through the whole network (what
  any method that needs the [T, P] Jacobian of the shared parameters must pay), plus the
  optimizer step;
- ``floor:rep``  one forward, T backward passes through the heads only (to Z) and one
  through the encoder, plus the optimizer step (the floor of representation-level methods);
- ``data``  drawing one training batch (the data path).

Peak memory: the peak of the tensor memory allocated during a method's steps above what
was allocated before them, methods measured one after another in this process: on CUDA the
caching allocator's statistics; on the CPU the allocation and release events that the
torch profiler records (every CPU tensor, from the forward, the backward passes and the
method's own computations), summed in time order. Process-level figures (peak RSS) are not
used: on the CPU they mostly count one-time costs (the optimizer state, the allocator's and
oneDNN's caches), which swamp the difference between methods on a small model.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from engine.core.gradients.stats import EpochStats
from engine.runs.runner import RunRequest, build_requests, make_benchmark, resolve_device
from engine.core.second_order import second_order_convolutions
from engine.core.step_memory import cpu_peak_bytes
from engine.core.trainer import Trainer

REFERENCE = "ew"
FLOORS = ("floor:jacobian", "floor:rep", "floor:second_order")
GREYS = {REFERENCE: "black", "floor:jacobian": "dimgrey", "floor:rep": "darkgrey",
         "floor:second_order": "grey"}
"""Plot colours of the reference and the floors."""


@dataclass
class Timing:
    name: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def iqr(self) -> float:
        """Interquartile range (inclusive quartiles: defined from two steps on)."""
        if len(self.times) < 2:
            return 0.0
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[2] - q[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FloorStepper:
    """The reference computations a method cannot go below, on the trainer's own model."""

    def __init__(self, trainer: Trainer, kind: str):
        self.trainer = trainer
        self.kind = kind
        self._directions: dict[tuple[int, ...], Tensor] = {}
        """floor:second_order: the fixed c_t of each saliency shape."""

    def step(self, batch) -> None:
        tr = self.trainer
        engine = tr.engine
        engine.zero_grad([])
        reps, losses = tr.compute_task_losses(batch)  # separate graphs, as the engine uses
        if self.kind == "floor:jacobian":
            for t, task in enumerate(tr.task_names):
                torch.autograd.backward(losses[t], inputs=engine.shared + engine.heads[task],
                                        retain_graph=t + 1 < len(tr.task_names))
        elif self.kind == "floor:rep":
            z = reps[tr.task_names[0]]
            total = None
            for t, task in enumerate(tr.task_names):
                head = engine.heads[task]
                grads = torch.autograd.grad(losses[t], [z, *head], retain_graph=True)
                total = grads[0] if total is None else total + grads[0]
                for p, g in zip(head, grads[1:]):
                    p.grad.add_(g)
            torch.autograd.backward(z, total, inputs=engine.shared)
        else:
            self._second_order(reps, losses)
        tr.optimizer.step()

    def __call__(self, batch) -> None:
        if self.kind == "floor:second_order" and self.trainer.config.engine.head_convs == "second_order":
            # With the heads' convolutions that methods with second-order needs train with.
            with second_order_convolutions(self.trainer.model.heads):
                self.step(batch)
        else:
            self.step(batch)

    def _second_order(self, reps: dict, losses: list) -> None:
        """Differentiable saliencies S_t = ∂L_t/∂Z (T passes through the heads) and one
        backward pass of Σ_t L_t + Σ_t ⟨c_t, S_t⟩ for fixed c_t: the second-order cost of
        any penalty on the saliencies, whatever the penalty computes."""
        total = sum(losses)
        for t, task in enumerate(self.trainer.task_names):
            (saliency,) = torch.autograd.grad(losses[t], reps[task], retain_graph=True,
                                              create_graph=True)
            total = total + (saliency * self._direction(saliency)).sum()
        total.backward()

    def _direction(self, like: Tensor) -> Tensor:
        key = tuple(like.shape)
        if key not in self._directions:
            generator = torch.Generator().manual_seed(0)
            self._directions[key] = torch.randn(key, generator=generator).to(like)
        return self._directions[key]


def floor_for(trainer: Trainer) -> str | None:
    """The floor a method is measured against: the Jacobian floor for methods that need
    per-task gradients of the shared parameters, the second-order floor for penalties on
    differentiable gradients w.r.t. Z (Rep-MTL), the representation floor for methods that
    need per-task gradients w.r.t. Z, none for loss weightings."""
    needs = trainer.primary.needs
    for reg in trainer.regularizers:
        needs = needs | reg.needs
    space = getattr(trainer.primary, "space", None) if trainer.primary.kind == "aggregator" else None
    if needs.jacobian or space == "param":
        return "floor:jacobian"
    if needs.second_order:
        return "floor:second_order"
    if needs.rep_grads or needs.task_grads or space == "rep":
        return "floor:rep"
    return None


def build_trainers(requests: list[RunRequest], device: torch.device, benchmark):
    return {r.method_name: Trainer(r.config, benchmark, r.composition, device, None,
                                   progress=False) for r in requests}


def make_steppers(trainers: dict, floors: bool) -> dict:
    """name → a function of a batch that takes one training step: every method's
    Trainer.train_step, and the floors (on the reference's model) that some method here
    is measured against."""
    reference = trainers[REFERENCE]
    steppers = {}
    for name, trainer in trainers.items():
        stats = EpochStats()
        steppers[name] = (lambda b, tr=trainer, st=stats: tr.train_step(b, 0, st))
        trainer.model.train()
    if floors and reference.engine.shared:
        wanted = {floor_for(trainer) for trainer in trainers.values()}
        for kind in FLOORS:
            if kind == "floor:rep" and (reference.benchmark.multi_input
                                        or not reference.model.common_rep):
                continue  # no single representation to take the task gradients of
                # (multi-input; model.arch=cross_stitch, mtan or ltb: one Z per task)
            if kind == "floor:second_order" and kind not in wanted:
                continue  # costly, and only a reference for penalties on saliencies
            steppers[kind] = FloorStepper(reference, kind)
    return steppers


def measure_times(steppers: dict, benchmark, batch_size: int, batches: list, steps: int,
                  warmup: int, device: torch.device) -> dict[str, Timing]:
    names = list(steppers)
    timings = {name: Timing(name) for name in names}
    data_timing = Timing("data")
    data_iter = iter(())
    for round_ in range(warmup + steps):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        batch = batches[round_ % len(batches)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            steppers[name](batch)
            _sync(device)
            if round_ >= warmup:
                timings[name].times.append(time.perf_counter() - start)
        # The data path: drawing one training batch, as training does.
        start = time.perf_counter()
        try:
            next(data_iter)
        except StopIteration:
            data_iter = iter(benchmark.batches("train", batch_size,
                                               torch.Generator().manual_seed(round_)))
            start = time.perf_counter()
            next(data_iter)
        _sync(device)
        if round_ >= warmup:
            data_timing.times.append(time.perf_counter() - start)
    timings["data"] = data_timing
    return timings


def measure_memory(steppers: dict, batches: list, steps: int,
                   device: torch.device) -> dict[str, int]:
    """Each method's (and floor's) peak tensor memory during ``steps`` training steps,
    taken after the timed steps, so the optimizer state and the persistent buffers
    already exist (as during training)."""
    peaks = {name: _peak_of_steps(step, batches[:steps], device) for name, step in steppers.items()}
    return {name: peak for name, peak in peaks.items() if peak is not None}


def _peak_of_steps(step_on, batches: list, device: torch.device) -> int | None:
    queue = iter(batches)

    def step() -> None:
        step_on(next(queue))

    if device.type == "cpu":
        return cpu_peak_bytes(step, len(batches))
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in batches:
        step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _draw_batches(benchmark, batch_size: int, count: int) -> list:
    batches = []
    generator = torch.Generator().manual_seed(0)
    while len(batches) < count:
        for batch in benchmark.batches("train", batch_size, generator):
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def run_perf(benchmark: str, methods: list[str], profile: str, overrides: list[str],
             device_spec: str, steps: int, warmup: int, batch_size: int | None,
             data_root: str | None, memory: bool = True, floors: bool = True) -> dict:
    if batch_size:
        overrides = [*overrides, f"train.batch_size={batch_size}"]
    names = list(dict.fromkeys([REFERENCE, *methods]))
    requests = build_requests(benchmark, names, [0], profile, overrides, device_spec, data_root)
    device = resolve_device(device_spec)
    bench = make_benchmark(requests[0].config, device)
    trainers = build_trainers(requests, device, bench)
    batches = _draw_batches(bench, trainers[REFERENCE].train_batch, min(steps + warmup, 16))
    steppers = make_steppers(trainers, floors)
    timings = measure_times(steppers, bench, trainers[REFERENCE].train_batch, batches, steps,
                            warmup, device)
    peaks = measure_memory(steppers, batches, min(steps, 2), device) if memory else {}
    ref = timings[REFERENCE].median
    ref_peak = peaks.get(REFERENCE)
    rows = []
    for name, timing in timings.items():
        row = {"name": name, "median_s": timing.median, "iqr_s": timing.iqr,
               "ratio_to_ew": timing.median / ref, "steps": len(timing.times)}
        if name in trainers:
            floor = floor_for(trainers[name])
            if floor in timings:
                row["floor"] = floor
                row["ratio_to_floor"] = timing.median / timings[floor].median
                if peaks.get(name) and peaks.get(floor):
                    row["memory_ratio_to_floor"] = peaks[name] / peaks[floor]
        if name in steppers:
            row["peak_memory_bytes"] = peaks.get(name)
            if peaks.get(name) and ref_peak:
                row["memory_ratio_to_ew"] = peaks[name] / ref_peak
        rows.append(row)
    return {"benchmark": benchmark, "profile": profile, "device": str(device),
            "batch_size": trainers[REFERENCE].train_batch, "steps": steps, "warmup": warmup,
            "tasks": len(bench.task_names), "overrides": overrides,
            "torch_threads": torch.get_num_threads(), "rows": rows,
            "data_fraction_of_ew_step": timings["data"].median / ref,
            "memory_note": ("peak tensor memory during the steps above the memory allocated "
                            "before them (" + ("CUDA allocator" if device.type == "cuda"
                                               else "CPU, torch profiler's allocation events")
                            + ")")}


def parse_scale(text: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` (``--scale``) into the key and its values."""
    from engine.errors import UserError

    key, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or len(items) < 2:
        raise UserError(f"--scale {text!r}: expected KEY=V1,V2,... with at least two values, "
                        f"e.g. data.num_tasks=2,4,8")
    return key.strip(), items


def _excess_reference(row: dict) -> str:
    """What a method's step is compared with to isolate its own (solver) cost: its floor,
    or equal weighting for loss weightings."""
    return row.get("floor", REFERENCE)


def run_scaling(benchmark: str, methods: list[str], profile: str, overrides: list[str],
                device_spec: str, steps: int, warmup: int, batch_size: int | None,
                data_root: str | None, key: str, values: list[str]) -> dict:
    """``run_perf`` at every value of one config key (e.g. the number of tasks), without
    the memory measurement. Per method and value: the median step time and its excess over
    the method's floor (ew for loss weightings), which is the method's own computation
    (solver, projections) beyond the backward passes it needs."""
    points = []
    for value in values:
        result = run_perf(benchmark, methods, profile, [*overrides, f"{key}={value}"],
                          device_spec, steps, warmup, batch_size, data_root, memory=False)
        medians = {row["name"]: row["median_s"] for row in result["rows"]}
        rows = {}
        for row in result["rows"]:
            if row["name"] == "data":
                continue
            ref = row["name"] if row["name"].startswith("floor:") else _excess_reference(row)
            rows[row["name"]] = {"median_s": row["median_s"], "iqr_s": row["iqr_s"],
                                 "reference": ref if row["name"] != ref else None,
                                 "excess_s": (row["median_s"] - medians[ref]
                                              if row["name"] != ref and ref in medians else None)}
        points.append({"value": value, "tasks": result["tasks"], "rows": rows})
    names = list(points[0]["rows"])
    slopes = {name: _loglog_slope([p["tasks"] for p in points],
                                  [p["rows"][name]["median_s"] for p in points]) for name in names}
    return {"benchmark": benchmark, "profile": profile, "key": key, "values": values,
            "device": str(resolve_device(device_spec)), "steps": steps,
            "warmup": warmup, "overrides": overrides, "torch_threads": torch.get_num_threads(),
            "points": points, "slopes": slopes}


def _loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (1 = linear, 2 = quadratic)."""
    import numpy as np

    pairs = [(x, y) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len({x for x, _ in pairs}) < 2:
        return None
    lx, ly = np.log([x for x, _ in pairs]), np.log([y for _, y in pairs])
    return float(np.polyfit(lx, ly, 1)[0])


def format_scaling(result: dict) -> str:
    points = result["points"]
    names = list(points[0]["rows"])
    header = f"{'name':<24}" + "".join(f"{'T=' + str(p['tasks']):>10}" for p in points) + \
        f"{'slope':>7}"
    title = (f"{result['benchmark']} ({result['profile']}), {result['device']}, "
             f"{result['key']} in {', '.join(result['values'])}: median step ms (median of "
             f"{result['steps']} steps after {result['warmup']} warm-up, interleaved per T); "
             f"slope = log-log slope of step time against T")
    lines = [title, header]
    for name in names:
        cells = "".join(f"{1e3 * p['rows'][name]['median_s']:>10.2f}" for p in points)
        slope = result["slopes"].get(name)
        lines.append(f"{name:<24}{cells}{(f'{slope:.2f}' if slope is not None else ''):>7}")
    lines.append("")
    lines.append("excess over the floor (ew for loss weightings): the method's own cost, ms")
    lines.append(header[:-7] + f"{'ref':>16}")
    for name in names:
        excess = [p["rows"][name]["excess_s"] for p in points]
        if all(e is None for e in excess):
            continue
        cells = "".join(f"{1e3 * e:>10.2f}" if e is not None else f"{'':>10}" for e in excess)
        lines.append(f"{name:<24}{cells}{points[0]['rows'][name]['reference'] or '':>16}")
    return "\n".join(lines)


def plot_scaling(result: dict, path: Path) -> Path:
    """Log-log plot of step time (and the excess over the floor) against T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    tasks = [p["tasks"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    colours = plt.get_cmap("tab20").colors
    for i, name in enumerate(points[0]["rows"]):
        reference = name.startswith("floor:") or name == REFERENCE
        style = {"color": GREYS.get(name, colours[i % len(colours)]),
                 "ls": "--" if reference else ("-", "-.")[(i // len(colours)) % 2],
                 "marker": "osv^D"[i % 5], "ms": 3, "label": name}
        left.plot(tasks, [1e3 * p["rows"][name]["median_s"] for p in points], **style)
        excess = [p["rows"][name]["excess_s"] for p in points]
        if name.startswith("floor:") or all(e is None for e in excess):
            continue
        # Excess at or below zero (within the noise of the two medians) is left out.
        right.plot(tasks, [1e3 * e if e is not None and e > 0 else float("nan") for e in excess],
                   **style)
    guide = [tasks[0], tasks[-1]]
    for ax, title in ((left, "step time"), (right, "excess over floor (solver etc.)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("number of tasks T")
        ax.set_ylabel("ms per step")
        ax.set_title(f"{result['benchmark']}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        low = ax.get_ylim()[0]
        ax.plot(guide, [low * 2, low * 2 * guide[1] / guide[0]], ":", color="black", lw=1,
                label="slope 1 (linear)")
    left.legend(fontsize=7, ncol=2)
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write(result: dict, out: Path, name: str, table: str) -> tuple[Path, Path]:
    """``result`` as JSON and its table as Markdown, named with a time stamp."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text("```\n" + table + "\n```\n")
    return json_path, md_path


def save_scaling(result: dict, out: Path) -> tuple[Path, Path]:
    name = f"{result['benchmark']}-scale-{result['key'].replace('.', '_')}"
    return _write(result, out, name, format_scaling(result))


def format_table(result: dict) -> str:
    title = (f"{result['benchmark']} ({result['profile']}), {result['device']}, batch "
             f"{result['batch_size']}, T={result['tasks']}, median of {result['steps']} steps "
             f"after {result['warmup']} warm-up, methods interleaved")
    header = (f"{'name':<24} {'step ms':>9} {'IQR ms':>8} {'× ew':>7} {'× floor':>8} "
              f"{'peak MiB':>9} {'mem × ew':>9} {'mem × floor':>12}")
    lines = [title, header]
    for row in result["rows"]:
        floor = f"{row['ratio_to_floor']:.2f}" if "ratio_to_floor" in row else ""
        peak = row.get("peak_memory_bytes")
        peak_s = f"{peak / 2**20:.1f}" if peak else ""
        mem = f"{row['memory_ratio_to_ew']:.2f}" if row.get("memory_ratio_to_ew") else ""
        mem_floor = f"{row['memory_ratio_to_floor']:.2f}" if row.get("memory_ratio_to_floor") else ""
        lines.append(f"{row['name']:<24} {1e3 * row['median_s']:>9.2f} {1e3 * row['iqr_s']:>8.2f} "
                     f"{row['ratio_to_ew']:>7.2f} {floor:>8} {peak_s:>9} {mem:>9} {mem_floor:>12}")
    lines.append(f"data path: {100 * result['data_fraction_of_ew_step']:.1f}% of an ew step")
    lines.append(f"memory: {result['memory_note']}")
    return "\n".join(lines)


def save(result: dict, out: Path) -> tuple[Path, Path]:
    return _write(result, out, f"{result['benchmark']}-{result['profile']}", format_table(result))
