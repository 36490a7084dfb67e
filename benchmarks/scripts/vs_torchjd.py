#!/usr/bin/env python
"""Step time of the harness (``MethodStep``, its public per-step API) against TorchJD
(``mtl_backward`` + ``jac_to_grad``) for every aggregator both have, in one process,
in interleaved and shuffled rounds: medians and interquartile ranges of the time of a full
training step (forward, the method's backward, Adam), peak tensor memory per step, and
whether the two compute the same update.

    python benchmarks/scripts/vs_torchjd.py [--models resnet18,convnet] [--rounds 20]
        [--steps 3] [--warmup 2] [--threads 2] [--methods upgrad,mgda,...] [--json OUT]
        [--device cpu|cuda] [--harness-only]

TorchJD is an optional, benchmark-only dependency: ``pip install -e ".[compare]"``
(torchjd with the solvers its aggregators import: quadprog, cvxpy, ecos). Without it the
script exits 2 with one line; ``--harness-only`` times the harness's side and the floors
without it (benchmarks/scripts/gpu_checks.sh does on a GPU where TorchJD is missing).

Models: ``resnet18`` (torchvision's, no weights, fc removed: 512 features; random
3×32×32 inputs, batch 32; three Linear(512, 10) heads, cross-entropy) and ``convnet``
(four 3×3 convolutions of 32, 64, 128, 128 channels, stride 2 on the second and third,
ReLU; 3×64×64 inputs, batch 16; 1×1 convolution heads at 16×16: 13-class segmentation,
depth (L1), normals (1 − cosine)). ``tiny`` (a two-layer MLP) is for the tests.

Rows: each method on both sides; EW (the harness's one backward of the summed losses;
TorchJD's ``Mean`` through ``mtl_backward``, the Jacobian path); the floors, measured in the
same rounds: ``sum(losses).backward()`` and T separate backward passes through the whole
network (what any method that needs the per-task gradients of the shared parameters pays).
Agreement: before timing, one backward of each side from the same initial weights on the
same batch; the cosine of the shared parameters' gradients (the aggregated update; a
method's scale convention leaves the cosine alone) must be ≥ 0.999; the heads' cosine is
shown where it is lower (the harness's Nash-MTL gives head t α_t ∇L_t, as the authors'
code; TorchJD gives every head its plain gradient). Random methods (PCGrad's and GradVac's task
order, GradDrop's masks) are not checked.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.core.user_loop import MethodStep  # noqa: E402
from engine.core.step_memory import cpu_peak_bytes  # noqa: E402

AGREEMENT = 0.999
"""Cosine at or above which a deterministic method's two updates count as the same."""


# ----------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Pair:
    """One method on both sides: the harness's spec and settings, TorchJD's aggregator."""

    label: str
    harness: str | None
    torchjd: Callable[[int], object] | None
    random: bool = False
    note: str = ""
    settings: dict = field(default_factory=dict)


def _tj(name: str, **kwargs) -> Callable[[int], object]:
    def make(num_tasks: int):
        from torchjd import aggregation
        cls = getattr(aggregation, name)
        return cls(n_tasks=num_tasks, **kwargs) if name == "NashMTL" else cls(**kwargs)
    make.__name__ = name
    return make


PAIRS: dict[str, Pair] = {p.label: p for p in (
    Pair("ew", "ew", _tj("Mean"),
         note="harness: one backward of Σ L_t; TorchJD: Mean through mtl_backward"),
    Pair("upgrad", "upgrad", _tj("UPGrad")),
    Pair("mgda", "mgda", _tj("MGDA"),
         note="Frank-Wolfe stops: harness tol 1e-5, ≤ 250 iterations; TorchJD ε 1e-3, ≤ 100"),
    Pair("pcgrad", "pcgrad", _tj("PCGrad"), random=True),
    Pair("cagrad", "cagrad", _tj("CAGrad", c=0.4),
         note="c = 0.4 on both; TorchJD solves the dual with cvxpy (Clarabel)"),
    Pair("nashmtl", "nashmtl", _tj("NashMTL"),
         note="both: cvxpy (ECOS), ≤ 20 iterations, every step; the harness scales head t "
              "by α_t (the authors' code), TorchJD does not"),
    Pair("imtl_g", "imtl_g", _tj("IMTLG")),
    Pair("aligned_mtl", "aligned_mtl", _tj("AlignedMTL")),
    Pair("graddrop", "graddrop", _tj("GradDrop"), random=True,
         note="harness: on ∂L_t/∂Z (the paper's placement); TorchJD: on the shared "
              "parameters' Jacobian"),
    Pair("gradvac", "gradvac", _tj("GradVac", beta=0.01), random=True,
         note="β = 0.01 on both"),
    Pair("fairgrad", "fairgrad", _tj("FairGrad", alpha=2.0),
         note="α = 2 on both; the harness scales by T and clips to norm 1 (the authors')"),
    Pair("dualproj", "dualproj", _tj("DualProj")),
    Pair("config", "config", _tj("ConFIG")),
    Pair("krum", "krum", _tj("Krum", n_byzantine=0), settings={"krum.distance": "euclidean"},
         note="f = 0 on both; the harness with distance=euclidean (TorchJD's; the paper's "
              "default, squared distances, can choose another gradient)"),
    Pair("trimmed_mean", "trimmed_mean", _tj("TrimmedMean", trim_number=1),
         note="k = 1 on both"),
    Pair("mean", "mean", _tj("Mean"),
         note="harness: one backward of (1/T) Σ L_t (heads get ∇L_t / T); TorchJD: Mean "
              "through mtl_backward"),
    Pair("pcd", "pcd", _tj("PCD"),
         note="τ 0.02, β 0.999, ε 1e-8 on both (TorchJD's defaults); the first task is the "
              "primary one; stateful: the agreement is that of the first step"),
)}
DEFAULT_METHODS = tuple(PAIRS)
FLOOR_SUM = "floor: sum(losses).backward()"
FLOOR_PASSES = "floor: T backward passes"


# ----------------------------------------------------------------------------- models
@dataclass
class Model:
    name: str
    encoder: nn.Module
    heads: nn.ModuleDict
    loss: Callable[[str, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    describe: str
    build: Callable[[], tuple[nn.Module, nn.ModuleDict]]
    batch: Callable[[torch.Generator], tuple[Tensor, dict[str, Tensor]]]
    loss: Callable[[str, Tensor, Tensor], Tensor]


def _resnet18() -> tuple[nn.Module, nn.ModuleDict]:
    from torchvision.models import resnet18
    encoder = resnet18(weights=None)
    encoder.fc = nn.Identity()
    return encoder, nn.ModuleDict({t: nn.Linear(512, 10) for t in ("a", "b", "c")})


def _classes_batch(size: int, shape: tuple[int, ...]):
    def batch(gen: torch.Generator):
        x = torch.randn(size, *shape, generator=gen)
        return x, {t: torch.randint(0, 10, (size,), generator=gen) for t in ("a", "b", "c")}
    return batch


def _cross_entropy(_task: str, prediction: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(prediction, target)


def _convnet() -> tuple[nn.Module, nn.ModuleDict]:
    encoder = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU())
    heads = nn.ModuleDict({"segmentation": nn.Conv2d(128, 13, 1), "depth": nn.Conv2d(128, 1, 1),
                           "normals": nn.Conv2d(128, 3, 1)})
    return encoder, heads


def _dense_batch(gen: torch.Generator):
    x = torch.randn(16, 3, 64, 64, generator=gen)
    normals = nn.functional.normalize(torch.randn(16, 3, 16, 16, generator=gen), dim=1)
    return x, {"segmentation": torch.randint(0, 13, (16, 16, 16), generator=gen),
               "depth": torch.rand(16, 1, 16, 16, generator=gen),
               "normals": normals}


def _dense_loss(task: str, prediction: Tensor, target: Tensor) -> Tensor:
    if task == "segmentation":
        return nn.functional.cross_entropy(prediction, target)
    if task == "depth":
        return nn.functional.l1_loss(prediction, target)
    return (1 - nn.functional.cosine_similarity(prediction, target, dim=1)).mean()


def _tiny() -> tuple[nn.Module, nn.ModuleDict]:
    encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    return encoder, nn.ModuleDict({t: nn.Linear(16, 10) for t in ("a", "b", "c")})


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("resnet18", "torchvision ResNet-18 (no weights, fc removed), 3×32×32, batch 32, "
              "three Linear(512, 10) heads, cross-entropy", _resnet18,
              _classes_batch(32, (3, 32, 32)), _cross_entropy),
    ModelSpec("convnet", "4-layer conv net (32-64-128-128, stride 2 on layers 2-3), 3×64×64, "
              "batch 16, 1×1 conv heads at 16×16: segmentation (13 classes), depth (L1), "
              "normals (1 − cos)", _convnet, _dense_batch, _dense_loss),
    ModelSpec("tiny", "MLP 8→16→16, three Linear(16, 10) heads, batch 8 (tests)", _tiny,
              _classes_batch(8, (8,)), _cross_entropy),
)}


# ----------------------------------------------------------------------------- loops
class Loop:
    """One training loop on its own copy of the model (the same initial weights for every
    loop of a model): ``side`` is harness, torchjd, floor:sum or floor:passes."""

    def __init__(self, spec: ModelSpec, side: str, pair: Pair | None, seed: int = 0,
                 lr: float = 1e-4, device: torch.device = torch.device("cpu")):
        torch.manual_seed(seed)
        self.encoder, self.heads = spec.build()
        self.encoder.to(device)
        self.heads.to(device)
        self.loss = spec.loss
        self.side = side
        self.tasks = tuple(self.heads)
        self.shared = [p for p in self.encoder.parameters() if p.requires_grad]
        self.head_params = {t: list(h.parameters()) for t, h in self.heads.items()}
        extra: list[Tensor] = []
        if side == "harness":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.method = MethodStep(pair.harness, self.shared, self.head_params,
                                         settings=pair.settings, seed=seed)
            extra = self.method.parameters()
        elif side == "torchjd":
            self.aggregator = pair.torchjd(len(self.tasks))
        self.optimizer = torch.optim.Adam([*self.shared, *self.heads.parameters(), *extra],
                                          lr=lr)
        self.encoder.train()
        self.heads.train()

    def backward(self, batch) -> None:
        """Forward and the side's backward: the update is left in ``.grad``."""
        x, targets = batch
        z = self.encoder(x)
        losses = [self.loss(t, self.heads[t](z), targets[t]) for t in self.tasks]
        if self.side == "harness":
            self.method.backward(losses, features=z)
            return
        self.optimizer.zero_grad()
        if self.side == "torchjd":
            from torchjd.autojac import jac_to_grad, mtl_backward
            mtl_backward(losses, features=z, shared_params=self.shared,
                         tasks_params=[self.head_params[t] for t in self.tasks])
            jac_to_grad(self.shared, self.aggregator)
        elif self.side == "floor:sum":
            sum(losses).backward()
        else:  # floor:passes
            for t, loss in enumerate(losses):
                loss.backward(retain_graph=t + 1 < len(losses))

    def step(self, batch) -> None:
        self.backward(batch)
        self.optimizer.step()

    def held_bytes(self) -> int:
        """Memory the harness keeps from step to step for the method, outside the per-step
        peak: the engine's persistent [T, P] Jacobian buffer, once allocated."""
        if self.side != "harness":
            return 0
        jacobian = getattr(self.method.engine, "_jacobian", None)
        return jacobian.numel() * jacobian.element_size() if jacobian is not None else 0

    def grads(self) -> tuple[Tensor, Tensor]:
        """The shared parameters' and the heads' gradients, each flattened."""
        def flat(params):
            return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in params])
        return flat(self.shared), flat([p for t in self.tasks for p in self.head_params[t]])


def _cosine(a: Tensor, b: Tensor) -> float:
    return nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


# ----------------------------------------------------------------------------- measuring
def _summary(values: list[float]) -> dict:
    if len(values) >= 2:
        q = statistics.quantiles(values, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {"median_ms": statistics.median(values) * 1e3, "iqr_ms": iqr * 1e3}


def _to(batch, device: torch.device):
    x, targets = batch
    return x.to(device), {t: y.to(device) for t, y in targets.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(step, device: torch.device) -> int | None:
    """Peak tensor memory of one step above the level before it: the profiler's CPU
    allocation events (engine/runs/perf.py), or the CUDA allocator's statistics."""
    if device.type == "cpu":
        return cpu_peak_bytes(step, 1)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure_model(spec: ModelSpec, methods: list[str], rounds: int, steps: int, warmup: int,
                  memory: bool = True, batches: int = 4, log=print,
                  device: torch.device = torch.device("cpu"), harness_only: bool = False,
                  budget_s: float | None = None, clock: str = "wall") -> dict:
    """All loops of one model, timed in the same interleaved, shuffled rounds; with
    ``budget_s``, no round starts that the last round's duration says would end past it
    (at least one round is always taken)."""
    gen = torch.Generator().manual_seed(0)
    data = [_to(spec.batch(gen), device) for _ in range(batches)]
    loops: dict[tuple[str, str], Loop] = {}
    unavailable: dict[tuple[str, str], str] = {}
    for label in methods:
        pair = PAIRS[label]
        for side, present in (("harness", pair.harness), ("torchjd", pair.torchjd)):
            if present is None:
                unavailable[(label, side)] = "not in the harness"
                continue
            if side == "torchjd" and harness_only:
                unavailable[(label, side)] = "not measured (--harness-only)"
                continue
            try:
                loops[(label, side)] = Loop(spec, side, pair, device=device)
            except ImportError as exc:
                unavailable[(label, side)] = f"not measurable: {str(exc).splitlines()[0]}"
    loops[(FLOOR_SUM, "floor:sum")] = Loop(spec, "floor:sum", None, device=device)
    loops[(FLOOR_PASSES, "floor:passes")] = Loop(spec, "floor:passes", None, device=device)

    agreement: dict[str, dict] = {}
    for label in methods:
        pair = PAIRS[label]
        if (label, "harness") not in loops or (label, "torchjd") not in loops:
            continue
        if pair.random:
            agreement[label] = {"checked": False, "why": "random"}
            continue
        h, j = loops[(label, "harness")], loops[(label, "torchjd")]
        h.backward(data[0])
        j.backward(data[0])
        (hs, hh), (js, jh) = h.grads(), j.grads()
        shared, heads = _cosine(hs, js), _cosine(hh, jh)
        agreement[label] = {"checked": True, "cos_shared": shared, "cos_heads": heads,
                            "norm_ratio_shared": (hs.norm() / js.norm().clamp_min(1e-30)).item(),
                            "agrees": shared >= AGREEMENT}
        h.optimizer.zero_grad()
        j.optimizer.zero_grad()
    log(f"[{spec.name}] agreement checked; warming up {len(loops)} loops")

    cursor = {key: 0 for key in loops}

    def run(key, count: int) -> float:
        loop = loops[key]
        _sync(device)
        start = CLOCKS[clock]()
        for _ in range(count):
            loop.step(data[cursor[key] % len(data)])
            cursor[key] += 1
        _sync(device)
        return (CLOCKS[clock]() - start) / max(count, 1)

    for key in loops:
        run(key, warmup)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in loops}
    order = list(loops)
    started = time.perf_counter()
    done = 0
    round_clock: list[float] = []  # wall-clock start of each round, to match a machine log
    for r in range(rounds):
        round_clock.append(time.time())
        round_start = time.perf_counter()
        random.shuffle(order)
        for key in order:
            times[key].append(run(key, steps))
        done += 1
        now = time.perf_counter()
        log(f"[{spec.name}] round {r + 1}/{rounds} ({now - started:.0f} s)")
        if budget_s is not None and done < rounds and (now - started) + (now - round_start) > budget_s:
            log(f"[{spec.name}] stopping after {done} rounds: the time budget of {budget_s:.0f} s")
            break

    peaks: dict[tuple[str, str], int | None] = {}
    if memory:
        for key, loop in loops.items():
            def one() -> None:
                loop.step(data[cursor[key] % len(data)])
                cursor[key] += 1
            peaks[key] = _peak_bytes(one, device)

    def side_of(key) -> dict:
        return {**_summary(times[key]), "times_ms": [t * 1e3 for t in times[key]],
                "peak_bytes": peaks.get(key), "held_bytes": loops[key].held_bytes()}

    rows = []
    for label in methods:
        pair = PAIRS[label]
        row = {"method": label, "note": pair.note, "random": pair.random,
               "agreement": agreement.get(label)}
        for side in ("harness", "torchjd"):
            key = (label, side)
            row[side] = side_of(key) if key in loops else {"unavailable": unavailable[key]}
        if "median_ms" in row["harness"] and "median_ms" in row["torchjd"]:
            row["ratio"] = row["harness"]["median_ms"] / row["torchjd"]["median_ms"]
        rows.append(row)
    floors = [{"method": label, "harness": side_of((label, side))}
              for label, side in ((FLOOR_SUM, "floor:sum"), (FLOOR_PASSES, "floor:passes"))]
    return {"model": spec.name, "describe": spec.describe, "rows": rows, "floors": floors,
            "rounds": done, "rounds_asked": rounds, "round_started_unix": round_clock, "steps_per_round": steps, "warmup": warmup,
            "budget_s": budget_s}


def measure(models: list[str], methods: list[str], rounds: int, steps: int, warmup: int,
            memory: bool = True, log=print, device: str = "cpu",
            harness_only: bool = False, budget_s: float | None = None,
            on_model=None, clock: str = "wall") -> dict:
    """Every model in turn; ``on_model(result so far)`` after each (the script prints and
    saves each model's table as soon as it is measured)."""
    dev = torch.device(device)
    result = _header(dev, harness_only)
    result["clock"] = clock
    for m in models:
        result["models"].append(measure_model(MODELS[m], methods, rounds, steps, warmup,
                                              memory, log=log, device=dev,
                                              harness_only=harness_only, budget_s=budget_s,
                                              clock=clock))
        if on_model is not None:
            on_model(result)
    return result


def _header(dev: torch.device, harness_only: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    try:
        torchjd_version = None if harness_only else version("torchjd")
    except PackageNotFoundError:
        torchjd_version = None
    return {"torchjd": torchjd_version, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(dev),
            "machine": machine_state(dev), "models": []}


def machine_state(device: torch.device = torch.device("cpu")) -> dict:
    state = {"cpus": os.cpu_count(), "platform": platform.platform(),
             "python": platform.python_version()}
    if device.type == "cuda":
        state["gpu"] = torch.cuda.get_device_name(device)
    try:
        state["load_average"] = os.getloadavg()
    except OSError:
        pass
    return state


# ----------------------------------------------------------------------------- output
def _ms(side: dict) -> str:
    return f"{side['median_ms']:.1f}" if "median_ms" in side else "—"


def _iqr(side: dict) -> str:
    return f"{side['iqr_ms']:.1f}" if "iqr_ms" in side else "—"


def _mib(side: dict) -> str:
    peak = side.get("peak_bytes")
    if not peak:
        return "—"
    text = f"{peak / 2**20:.0f}" if peak >= 10 * 2**20 else f"{peak / 2**20:.2f}"
    held = side.get("held_bytes")
    if held:
        text += f" (+{held / 2**20:.0f} held)" if held >= 10 * 2**20 else \
            f" (+{held / 2**20:.2f} held)"
    return text


def _agreement(row: dict) -> str:
    a = row.get("agreement")
    if a is None:
        missing = [s for s in ("harness", "torchjd") if "unavailable" in row[s]]
        return row[missing[0]]["unavailable"] if missing else "—"
    if not a["checked"]:
        return "random: not checked"
    text = f"{'same' if a['agrees'] else 'DIFFERENT'} (cos {a['cos_shared']:.4f}"
    if a["cos_heads"] < AGREEMENT:
        text += f"; heads {a['cos_heads']:.4f}"
    return text + ")"


def format_tables(result: dict) -> str:
    out = []
    for model in result["models"]:
        cut = (f" (of {model['rounds_asked']} asked: the time budget of "
               f"{model['budget_s']:.0f} s)" if model["rounds"] < model["rounds_asked"] else "")
        out.append(f"**{model['model']}**: {model['describe']}; {model['rounds']} rounds{cut} of "
                   f"{model['steps_per_round']} steps per loop after {model['warmup']} warm-up "
                   f"steps.\n")
        out.append("| method | harness ms | IQR | TorchJD ms | IQR | harness / TorchJD | "
                   "harness MiB | TorchJD MiB | same update? (cos) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for row in model["rows"]:
            ratio = f"{row['ratio']:.2f}" if "ratio" in row else "—"
            out.append(f"| {row['method']} | {_ms(row['harness'])} | {_iqr(row['harness'])} | "
                       f"{_ms(row['torchjd'])} | {_iqr(row['torchjd'])} | {ratio} | "
                       f"{_mib(row['harness'])} | {_mib(row['torchjd'])} | {_agreement(row)} |")
        for floor in model["floors"]:
            out.append(f"| {floor['method']} | {_ms(floor['harness'])} | "
                       f"{_iqr(floor['harness'])} | | | | {_mib(floor['harness'])} | | |")
        out.append("")
    where = (result["machine"].get("gpu") or "GPU") if result["device"].startswith("cuda") \
        else f"{result['threads']} thread(s), {result['machine']['cpus']} CPUs"
    memory = ("CUDA allocator" if result["device"].startswith("cuda")
              else "torch profiler's allocation events")
    clock = ("CPU time of the process (all threads)" if result.get("clock") == "cpu"
             else "wall-clock time")
    out.append(f"TorchJD {result['torchjd'] or '(not measured)'}, torch {result['torch']}, "
               f"{result['device']}, {where}, {clock}. Step: forward, the method's backward, Adam "
               f"(lr 1e-4). MiB: peak tensor memory of one step above the level before it "
               f"({memory}); \"held\": the harness's [T, P] Jacobian buffer, allocated once "
               f"and kept between steps, so not in its per-step peak (TorchJD allocates its "
               f"Jacobian in every step).")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,convnet",
                   help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, of {', '.join(PAIRS)}")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="steps per loop per round")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per loop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall: elapsed time; cpu: the process's CPU time over all its threads, "
                        "which other processes on a shared machine barely move (CPU only)")
    p.add_argument("--budget-s", type=float,
                   help="per model: start no round that would end past this many seconds of "
                        "timed rounds (the table says how many rounds were taken)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    p.add_argument("--seed", type=int, default=0, help="seeds the order of the rounds")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--harness-only", action="store_true",
                   help="time the harness's side and the floors only (no TorchJD needed)")
    args = p.parse_args(argv)
    if not args.harness_only:
        try:
            import torchjd  # noqa: F401
        except ImportError:
            print("vs_torchjd: torchjd is not installed (pip install -e \".[compare]\")",
                  file=sys.stderr)
            return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"vs_torchjd: --device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    if args.clock == "cpu" and args.device != "cpu":
        print("vs_torchjd: --clock cpu measures the CPU's work; on a GPU use --clock wall",
              file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in models if m not in MODELS] + [m for m in methods if m not in PAIRS]
    if unknown:
        print(f"vs_torchjd: unknown model or method: {', '.join(unknown)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    command = " ".join(["python", "benchmarks/scripts/vs_torchjd.py",
                        *(argv if argv is not None else sys.argv[1:])])

    def publish(result: dict) -> None:
        """The newest model's table on stdout, everything so far in the JSON file."""
        print(format_tables({**result, "models": result["models"][-1:]}), flush=True)
        print(flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**result, "command": command}, indent=1))

    measure(models, methods, args.rounds, args.steps, args.warmup, memory=not args.no_memory,
            log=lambda line: print(line, file=sys.stderr, flush=True), device=args.device,
            harness_only=args.harness_only, budget_s=args.budget_s, on_model=publish,
            clock=args.clock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
