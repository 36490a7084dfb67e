#!/usr/bin/env python
"""Step time of the harness (``MethodStep``, its public per-step API) against TorchJD
(``mtl_backward`` + ``jac_to_grad``) for every aggregator both have, and against LibMTL's
PyPI release (its weighting's ``backward``) where it has the method, in one process, in
interleaved and shuffled rounds: medians and interquartile ranges of the time of a full
training step (forward, the method's backward, Adam), peak tensor memory per step, and
whether they compute the same update.

    python benchmarks/scripts/vs_torchjd.py [--models resnet18,convnet] [--rounds 20]
        [--steps 3] [--warmup 2] [--threads 2] [--methods upgrad,mgda,...] [--json OUT]
        [--device cpu|cuda] [--harness-only] [--no-libmtl]

TorchJD and LibMTL are optional, benchmark-only dependencies: ``pip install -e
".[compare]"`` (torchjd with the solvers its aggregators import: quadprog, cvxpy, ecos, and
LibMTL 1.1.5; LibMTL alone: ``pip install --no-deps LibMTL==1.1.5``, its dependencies
being torch, torchvision, numpy and, for its CAGrad, scipy). Without TorchJD the script exits
2 with one line; ``--harness-only`` times the harness's side and the floors without it
(benchmarks/scripts/gpu_checks.sh does on a GPU where TorchJD is missing). Without LibMTL
(or with ``--no-libmtl``) it says in one line that the LibMTL columns are absent, and
measures the rest.

LibMTL 1.1.5 (its PyPI release) is built as its ``Trainer`` builds its model: the
``HPS`` architecture (the encoder shared, one decoder per task) with the weighting mixed in,
``rep_grad=False`` (the weighting works on the shared parameters' gradients, T backward
passes of the whole network), except GradDrop, which LibMTL only offers with
``rep_grad=True`` (on the representation, as the harness); the step is its ``Trainer``'s:
forward, ``optimizer.zero_grad()``, ``model.backward(losses, **weight_args)``, Adam. Two
adaptations to today's torch/torchvision, neither of which changes what it computes: its
model zoo imports ``torchvision.models.utils.load_state_dict_from_url``, which torchvision no
longer has (the script serves ``torch.hub``'s while importing it); and its
``zero_grad_share_params`` calls ``encoder.zero_grad()``, which since torch 2.0 sets the
gradients to None, where its ``_reset_grad`` then fails writing ``param.grad.data``: the
model zeroes in place (``set_to_none=False``), torch 1.x's default and LibMTL's own later
code. Its settings are set to the harness's where its defaults (those of its command-line
parser, ``LibMTL.config``: a weighting's ``backward`` reads them from ``weight_args`` and has
none) differ: CAGrad c 0.4 (LibMTL 0.5; both divide by 1 + c²), GradVac β 0.01 (LibMTL
0.5); the same on both: MGDA without gradient normalisation (``mgda_gn`` none), GradDrop's
leak 0, no weight decay (LibMTL's parser: 1e-5).

Models: ``resnet18`` (torchvision's, no weights, fc removed: 512 features; random
3×32×32 inputs, batch 32; three Linear(512, 10) heads, cross-entropy) and ``convnet``
(four 3×3 convolutions of 32, 64, 128, 128 channels, stride 2 on the second and third,
ReLU; 3×64×64 inputs, batch 16; 1×1 convolution heads at 16×16: 13-class segmentation,
depth (L1), normals (1 − cosine)). ``tiny`` (a two-layer MLP) is for the tests.

Rows: each method on every side that has it; EW (the harness's and LibMTL's one backward
of the summed losses; TorchJD's ``Mean`` through ``mtl_backward``, the Jacobian path); IMTL
(LibMTL's ``IMTL`` is IMTL-L and IMTL-G together, the harness's ``imtl``; TorchJD's
``IMTLG`` is the harness's ``imtl_g``) has its own row; the floors, measured in the same
rounds: ``sum(losses).backward()`` and T separate backward passes through the whole network
(what any method that needs the per-task gradients of the shared parameters pays).
Agreement: before timing, one backward of each side from the same initial weights on the
same batch, the harness's compared with each other side's; the cosine of the shared
parameters' gradients (the aggregated update; a method's scale convention leaves the cosine
alone) must be ≥ 0.999; the heads' cosine is shown where it is lower (the harness's Nash-MTL
gives head t α_t ∇L_t, as the authors' code; TorchJD gives every head its plain gradient).
Random methods (PCGrad's and GradVac's task order, GradDrop's masks) are not checked.
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
import types
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

LIBMTL_VERSION = "1.1.5"
"""The LibMTL release the LibMTL side is written for (its PyPI release)."""
LIBMTL_INSTALL = f"pip install --no-deps LibMTL=={LIBMTL_VERSION}"
OTHERS = ("torchjd", "libmtl")
"""The implementations the harness is compared with."""
SIDE_NAMES = {"harness": "the harness", "torchjd": "TorchJD", "libmtl": "LibMTL"}


# ----------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class LibMTLSpec:
    """A LibMTL weighting: its class in ``LibMTL.weighting``, the ``weight_args`` its
    ``backward`` reads, and ``rep_grad`` (False: on the shared parameters' gradients)."""

    weighting: str
    kwargs: dict = field(default_factory=dict)
    rep_grad: bool = False


def _lm(name: str, rep_grad: bool = False, **kwargs) -> LibMTLSpec:
    return LibMTLSpec(name, kwargs, rep_grad)


@dataclass(frozen=True)
class Pair:
    """One method on every side: the harness's spec and settings, TorchJD's aggregator,
    LibMTL's weighting (None where that side does not have the method)."""

    label: str
    harness: str | None
    torchjd: Callable[[int], object] | None
    random: bool = False
    note: str = ""
    settings: dict = field(default_factory=dict)
    libmtl: LibMTLSpec | None = None


def _tj(name: str, **kwargs) -> Callable[[int], object]:
    def make(num_tasks: int):
        from torchjd import aggregation
        cls = getattr(aggregation, name)
        return cls(n_tasks=num_tasks, **kwargs) if name == "NashMTL" else cls(**kwargs)
    make.__name__ = name
    return make


PAIRS: dict[str, Pair] = {p.label: p for p in (
    Pair("ew", "ew", _tj("Mean"), libmtl=_lm("EW"),
         note="harness: one backward of Σ L_t; TorchJD: Mean through mtl_backward; LibMTL: "
              "one backward of Σ L_t"),
    Pair("upgrad", "upgrad", _tj("UPGrad")),
    Pair("mgda", "mgda", _tj("MGDA"), libmtl=_lm("MGDA", mgda_gn="none"),
         note="Frank-Wolfe stops: harness tol 1e-5, ≤ 250 iterations; TorchJD ε 1e-3, ≤ 100; "
              "LibMTL when the step changes α by < 1e-5 (L1), no iteration cap; no gradient "
              "normalisation on the harness and LibMTL (mgda_gn none)"),
    Pair("pcgrad", "pcgrad", _tj("PCGrad"), random=True, libmtl=_lm("PCGrad")),
    Pair("cagrad", "cagrad", _tj("CAGrad", c=0.4), libmtl=_lm("CAGrad", calpha=0.4, rescale=1),
         note="c = 0.4 on all three (LibMTL's default 0.5), divided by 1 + c² on the harness "
              "and LibMTL; TorchJD solves the dual with cvxpy (Clarabel), LibMTL with SciPy's "
              "SLSQP (default tolerance), the harness with an active-set method"),
    Pair("nashmtl", "nashmtl", _tj("NashMTL"),
         note="both: cvxpy (ECOS), ≤ 20 iterations, every step; the harness scales head t "
              "by α_t (the authors' code), TorchJD does not"),
    Pair("imtl_g", "imtl_g", _tj("IMTLG")),
    Pair("imtl", "imtl", None, libmtl=_lm("IMTL"),
         note="IMTL-L + IMTL-G (learnable loss scales s_t, IMTL-G on the scaled gradients) on "
              "the harness and LibMTL; TorchJD has IMTL-G only (the imtl_g row)"),
    Pair("aligned_mtl", "aligned_mtl", _tj("AlignedMTL")),
    Pair("graddrop", "graddrop", _tj("GradDrop"), random=True,
         libmtl=_lm("GradDrop", rep_grad=True, leak=0.0),
         note="harness and LibMTL: on ∂L_t/∂Z (the paper's placement; LibMTL backpropagates "
              "each task's masked part from Z separately, T encoder passes); TorchJD: on the "
              "shared parameters' Jacobian; leak 0"),
    Pair("gradvac", "gradvac", _tj("GradVac", beta=0.01), random=True,
         libmtl=_lm("GradVac", beta=0.01),
         note="β = 0.01 on all three (LibMTL's default 0.5); LibMTL 1.1.5 updates φ̂_ij only "
              "when it corrects g_i (the harness and TorchJD at every visit)"),
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


# ----------------------------------------------------------------------------- LibMTL
def import_libmtl():
    """The ``LibMTL`` package. Its ``__init__`` imports its model zoo, which reads
    ``load_state_dict_from_url`` from ``torchvision.models.utils``, a module torchvision no
    longer has: while LibMTL is imported, that name is served from ``torch.hub`` (where it
    lives now; the benchmark never downloads weights)."""
    name = "torchvision.models.utils"
    added = False
    try:
        __import__(name)
    except ImportError:
        alias = types.ModuleType(name)
        alias.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules[name] = alias
        added = True
    try:
        import LibMTL
    finally:
        if added:
            sys.modules.pop(name, None)
    return LibMTL


def libmtl_status() -> tuple[str | None, str | None]:
    """(LibMTL's installed version, None), or (None, why it cannot be measured)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        installed = version("LibMTL")
    except PackageNotFoundError:
        return None, f"LibMTL is not installed ({LIBMTL_INSTALL})"
    try:
        import_libmtl()
    except Exception as exc:  # an import that fails for another reason: same answer
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return None, f"LibMTL {installed} does not import: {first}"
    return installed, None


def libmtl_model(spec: LibMTLSpec, encoder: nn.Module, heads: nn.ModuleDict,
                 device: torch.device) -> nn.Module:
    """The model LibMTL's ``Trainer`` builds (``_prepare_model``): the ``HPS`` architecture
    with the weighting mixed in, ``init_param()`` called; here on ``encoder`` and ``heads``
    as built (the same initial weights as the other sides) and on ``device``."""
    LibMTL = import_libmtl()
    from LibMTL.architecture import HPS
    weighting = getattr(LibMTL.weighting, spec.weighting)

    class MTLModel(HPS, weighting):
        def __init__(self):
            super().__init__(list(heads), lambda: encoder, heads, spec.rep_grad, False, device)
            self.init_param()

        def zero_grad_share_params(self):
            # In place, as torch 1.x's zero_grad() did: LibMTL 1.1.5's _reset_grad writes
            # into param.grad.data, which torch 2's default (set to None) leaves it without.
            self.encoder.zero_grad(set_to_none=False)

    return MTLModel().to(device)


# ----------------------------------------------------------------------------- loops
class Loop:
    """One training loop on its own copy of the model (the same initial weights for every
    loop of a model): ``side`` is harness, torchjd, libmtl, floor:sum or floor:passes."""

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
        elif side == "libmtl":
            self.model = libmtl_model(pair.libmtl, self.encoder, self.heads, device)
            self.weight_args = dict(pair.libmtl.kwargs)
            known = {id(p) for p in [*self.shared, *self.heads.parameters()]}
            extra = [p for p in self.model.parameters() if id(p) not in known]  # IMTL's s
        self.optimizer = torch.optim.Adam([*self.shared, *self.heads.parameters(), *extra],
                                          lr=lr)
        self.encoder.train()
        self.heads.train()

    def backward(self, batch) -> None:
        """Forward and the side's backward: the update is left in ``.grad``."""
        x, targets = batch
        if self.side == "libmtl":  # LibMTL's Trainer: forward, zero_grad, the weighting
            predictions = self.model(x)
            losses = torch.stack([self.loss(t, predictions[t], targets[t]) for t in self.tasks])
            self.optimizer.zero_grad()
            self.model.backward(losses, **self.weight_args)
            return
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
                  budget_s: float | None = None, clock: str = "wall",
                  libmtl: str | None = None, order_rng: random.Random | None = None) -> dict:
    """All loops of one model, timed in the same interleaved, shuffled rounds; with
    ``budget_s``, no round starts that the last round's duration says would end past it
    (at least one round is always taken). ``libmtl``: why LibMTL is not measured (None:
    it is); ``order_rng``: shuffles the rounds (LibMTL's PCGrad and GradVac draw from the
    ``random`` module's generator)."""
    order_rng = order_rng if order_rng is not None else random.Random(0)
    gen = torch.Generator().manual_seed(0)
    data = [_to(spec.batch(gen), device) for _ in range(batches)]
    loops: dict[tuple[str, str], Loop] = {}
    unavailable: dict[tuple[str, str], str] = {}
    for label in methods:
        pair = PAIRS[label]
        for side, present in (("harness", pair.harness), ("torchjd", pair.torchjd),
                              ("libmtl", pair.libmtl)):
            if present is None:
                unavailable[(label, side)] = f"not in {SIDE_NAMES[side]}"
                continue
            if side != "harness" and harness_only:
                unavailable[(label, side)] = "not measured (--harness-only)"
                continue
            if side == "libmtl" and libmtl is not None:
                unavailable[(label, side)] = f"not measured: {libmtl}"
                continue
            try:
                loops[(label, side)] = Loop(spec, side, pair, device=device)
            except ImportError as exc:
                unavailable[(label, side)] = f"not measurable: {str(exc).splitlines()[0]}"
    loops[(FLOOR_SUM, "floor:sum")] = Loop(spec, "floor:sum", None, device=device)
    loops[(FLOOR_PASSES, "floor:passes")] = Loop(spec, "floor:passes", None, device=device)

    # One backward of the harness, compared with one of each other side (a stateful method
    # is compared at its first step on every side).
    agreement: dict[str, dict[str, dict]] = {side: {} for side in OTHERS}
    for label in methods:
        pair = PAIRS[label]
        others = [side for side in OTHERS if (label, side) in loops]
        if (label, "harness") not in loops or not others:
            continue
        if pair.random:
            for side in others:
                agreement[side][label] = {"checked": False, "why": "random"}
            continue
        h = loops[(label, "harness")]
        h.backward(data[0])
        hs, hh = h.grads()
        for side in others:
            o = loops[(label, side)]
            o.backward(data[0])
            os_, oh = o.grads()
            shared, heads = _cosine(hs, os_), _cosine(hh, oh)
            agreement[side][label] = {
                "checked": True, "cos_shared": shared, "cos_heads": heads,
                "norm_ratio_shared": (hs.norm() / os_.norm().clamp_min(1e-30)).item(),
                "agrees": shared >= AGREEMENT}
            o.optimizer.zero_grad()
        h.optimizer.zero_grad()
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
        order_rng.shuffle(order)
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
               "agreement": agreement["torchjd"].get(label),
               "agreement_libmtl": agreement["libmtl"].get(label)}
        for side in ("harness", *OTHERS):
            key = (label, side)
            row[side] = side_of(key) if key in loops else {"unavailable": unavailable[key]}
        for side, name in (("torchjd", "ratio"), ("libmtl", "ratio_libmtl")):
            if "median_ms" in row["harness"] and "median_ms" in row[side]:
                row[name] = row["harness"]["median_ms"] / row[side]["median_ms"]
        rows.append(row)
    floors = [{"method": label, "harness": side_of((label, side))}
              for label, side in ((FLOOR_SUM, "floor:sum"), (FLOOR_PASSES, "floor:passes"))]
    return {"model": spec.name, "describe": spec.describe, "rows": rows, "floors": floors,
            "rounds": done, "rounds_asked": rounds, "round_started_unix": round_clock, "steps_per_round": steps, "warmup": warmup,
            "budget_s": budget_s}


def measure(models: list[str], methods: list[str], rounds: int, steps: int, warmup: int,
            memory: bool = True, log=print, device: str = "cpu",
            harness_only: bool = False, budget_s: float | None = None,
            on_model=None, clock: str = "wall", libmtl: bool = True, seed: int = 0) -> dict:
    """Every model in turn; ``on_model(result so far)`` after each (the script prints and
    saves each model's table as soon as it is measured). ``libmtl``: measure LibMTL where
    it has the method and is installed (``result["libmtl_absent"]`` says why it is not);
    ``seed``: the order of the rounds."""
    dev = torch.device(device)
    result = _header(dev, harness_only)
    result["clock"] = clock
    if harness_only or not libmtl:
        why = "--harness-only" if harness_only else "--no-libmtl"
    else:
        result["libmtl"], why = libmtl_status()
    result["libmtl_absent"] = why
    if why is not None and not harness_only:
        log(f"vs_torchjd: no LibMTL columns: {why}")
    order_rng = random.Random(seed)
    for m in models:
        result["models"].append(measure_model(MODELS[m], methods, rounds, steps, warmup,
                                              memory, log=log, device=dev,
                                              harness_only=harness_only, budget_s=budget_s,
                                              clock=clock, libmtl=why, order_rng=order_rng))
        if on_model is not None:
            on_model(result)
    return result


def _header(dev: torch.device, harness_only: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    try:
        torchjd_version = None if harness_only else version("torchjd")
    except PackageNotFoundError:
        torchjd_version = None
    return {"torchjd": torchjd_version, "libmtl": None, "torch": torch.__version__,
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


def _agreement(row: dict, side: str = "torchjd") -> str:
    a = row.get("agreement" if side == "torchjd" else f"agreement_{side}")
    if a is None:
        missing = [s for s in ("harness", side) if "unavailable" in row.get(s, {})]
        return row[missing[0]]["unavailable"] if missing else "—"
    if not a["checked"]:
        return "random: not checked"
    text = f"{'same' if a['agrees'] else 'DIFFERENT'} (cos {a['cos_shared']:.4f}"
    if a["cos_heads"] < AGREEMENT:
        text += f"; heads {a['cos_heads']:.4f}"
    return text + ")"


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "—"


def format_tables(result: dict) -> str:
    """Markdown: one table per model, with the LibMTL columns where LibMTL was measured."""
    out = []
    lib = result.get("libmtl") is not None
    for model in result["models"]:
        cut = (f" (of {model['rounds_asked']} asked: the time budget of "
               f"{model['budget_s']:.0f} s)" if model["rounds"] < model["rounds_asked"] else "")
        out.append(f"**{model['model']}**: {model['describe']}; {model['rounds']} rounds{cut} of "
                   f"{model['steps_per_round']} steps per loop after {model['warmup']} warm-up "
                   f"steps.\n")
        if lib:
            out.append("| method | harness ms | IQR | TorchJD ms | IQR | harness / TorchJD | "
                       "LibMTL ms | IQR | harness / LibMTL | harness MiB | TorchJD MiB | "
                       "LibMTL MiB | same update as TorchJD? (cos) | same update as LibMTL? "
                       "(cos) |")
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        else:
            out.append("| method | harness ms | IQR | TorchJD ms | IQR | harness / TorchJD | "
                       "harness MiB | TorchJD MiB | same update? (cos) |")
            out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for row in model["rows"]:
            h, j, m = row["harness"], row["torchjd"], row.get("libmtl", {})
            if lib:
                out.append(f"| {row['method']} | {_ms(h)} | {_iqr(h)} | {_ms(j)} | {_iqr(j)} | "
                           f"{_ratio(row, 'ratio')} | {_ms(m)} | {_iqr(m)} | "
                           f"{_ratio(row, 'ratio_libmtl')} | {_mib(h)} | {_mib(j)} | {_mib(m)} | "
                           f"{_agreement(row)} | {_agreement(row, 'libmtl')} |")
            else:
                out.append(f"| {row['method']} | {_ms(h)} | {_iqr(h)} | {_ms(j)} | {_iqr(j)} | "
                           f"{_ratio(row, 'ratio')} | {_mib(h)} | {_mib(j)} | "
                           f"{_agreement(row)} |")
        for floor in model["floors"]:
            f = floor["harness"]
            # Empty cells: the other sides' times before the harness's MiB, theirs after.
            before, after = (" |" * 6, " |" * 4) if lib else (" |" * 3, " |" * 2)
            out.append(f"| {floor['method']} | {_ms(f)} | {_iqr(f)} |{before} {_mib(f)} |{after}")
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
    if lib:
        out.append(f"\nLibMTL {result['libmtl']}: its HPS model with the weighting mixed in, as "
                   f"its Trainer builds it, rep_grad=False (GradDrop: rep_grad=True, the only "
                   f"setting LibMTL offers for it), and the weighting's backward: EW one "
                   f"backward of Σ L_t; the others T backward passes of the whole network into a "
                   f"[T, P] gradient matrix allocated in every step (GradDrop: T passes through "
                   f"the heads, then one through the encoder per task).")
    elif result.get("libmtl_absent"):
        out.append(f"\nLibMTL: not measured ({result['libmtl_absent']}).")
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
    p.add_argument("--no-libmtl", action="store_true",
                   help=f"leave LibMTL out (measured by default where installed: "
                        f"{LIBMTL_INSTALL})")
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
            clock=args.clock, libmtl=not args.no_libmtl, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
