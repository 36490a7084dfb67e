"""Multi-task architectures beyond hard parameter sharing, built from a benchmark's own
encoder and heads (``model.arch``; docs/architectures.md gives the choices and what every
kind of method sees under each).

Mixture of experts (mmoe, cgc, ple, dselect_k). Every expert is a copy of the benchmark's
encoder (as LibMTL builds its experts from the encoder class); their outputs, stacked on a
last axis, are the shared representation Z (shape [B, *encoder output, K]), the same for
every task. Task t's part is its gate (a linear map of the flattened batch input to K
logits; DSelect-k's selectors), any experts of its own (CGC) and its tower (the benchmark's
head): its head module is called with (Z, the batch input). The gates read the input, not
Z, so every path from the shared parameters to a task's loss passes through Z, and every
method, representation-level ones included, applies unchanged.

- MMoE (Ma et al., KDD 2018): K shared experts, one softmax gate per task.
- CGC (Tang et al., RecSys 2020): K shared experts in Z, and each task's own experts inside
  its part (only its loss reaches them); task t's gate mixes the shared and its own.
- PLE (the same paper): CGC levels stacked on the blocks of the encoder. Below the last
  level, task t's gate reads task t's route into the level and mixes the shared experts
  and task t's own into its route out; a shared gate reads the shared route and mixes
  every expert of the level (each task's own included) into the shared route out, which
  the next level's shared experts read. So every expert below the last level is reached
  by every task. Z stacks every expert of the last level (shared first, then each task's
  in task order); task t's last gate mixes the shared ones and its own, so the last
  level's experts of task t are shared parameters that only task t's loss reaches. The
  last gates read the batch input instead of the task's route (which depends on shared
  parameters), which keeps Z a cut of the graph.
- DSelect-k (Hazimeh et al., NeurIPS 2021): K experts, each task's gate a per-sample
  differentiable selector: k selectors of ⌈log2 K⌉ smooth-step bits each, mixed by a
  softmax (the paper's per-example gate, without its optional entropy penalty).

Cross-stitch (Misra et al., CVPR 2016): one copy of the encoder per task (a column), split
into the same blocks, with a learnable T×T stitch matrix after every block; all columns and
stitches are shared parameters. Z_t, the output of column t after the last stitch, differs
per task.

MTAN (Liu et al., CVPR 2019): the shared backbone split into blocks; task t has one
attention module per block (a 1×1-conv mask, with BatchNorm, computed from the block's
features and the task's previous attended features, multiplied onto the block's
features); the task's last attended features are its Z_t and feed its tower. The attention
modules read the backbone at every block, so the shared parameters reach a task's loss
outside Z_t.

LTB, learning to branch (Guo et al., ICML 2020; as LibMTL builds it): one copy of the
encoder per task, split into the same blocks; task t's copy of block b > 0 reads
Σ_j α[b - 1, t, j] · (copy j's output of block b - 1), α one parent per child drawn by a hard
Gumbel-softmax over learned logits (all ones during a warm-up). All copies and the logits
are shared parameters; Z_t, the output of task t's copy of the last block, differs per task.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.base import Batch, Benchmark
from engine.core.config import ModelConfig
from engine.core.models import MultiTaskModel
from engine.errors import UserError

MIXTURES = ("mmoe", "cgc", "ple", "dselect_k")
NEEDS_BLOCKS = ("ple", "cross_stitch", "mtan", "ltb")
WHY_NO_COMMON_Z = {
    "cross_stitch": "gives every task its own representation (each column's output after the "
                    "last stitch)",
    "ltb": "gives every task its own representation (the output of its own copy of the last "
           "block)",
    "mtan": "has no representation that carries a task's whole gradient (each task's attention "
            "modules read the shared backbone at every block)",
}
"""The architectures without one representation common to all tasks, and why."""


# --------------------------------------------------------------------------- refusals

def architectures_of(bench_cls: type[Benchmark], data_config=None) -> tuple[str, ...]:
    """The values of ``model.arch`` a benchmark offers (with its default data options when
    ``data_config`` is None)."""
    from engine.core.config import ARCHS

    if data_config is None and bench_cls.Config is not None:
        data_config = bench_cls.Config()
    return tuple(a for a in ARCHS if benchmark_refusal(a, bench_cls, data_config) is None)


def benchmark_refusal(arch: str, bench_cls: type[Benchmark], data_config) -> str | None:
    """Why ``arch`` cannot be built on this benchmark, or None."""
    if arch == "hps":
        return None
    name = bench_cls.name
    if bench_cls.multi_input:
        return (f"model.arch={arch} needs one input shared by all tasks, but {name} is "
                f"multi-input (each task has its own batch); use model.arch=hps")
    if bench_cls.trajectory_point is not Benchmark.trajectory_point:
        return (f"model.arch={arch}: {name}'s model is a point it draws (trajectory_point), "
                f"not a network to build experts or columns of; use model.arch=hps")
    if arch in NEEDS_BLOCKS and not bench_cls.has_encoder_blocks(data_config):
        options = (" with these data options"
                   if bench_cls.encoder_blocks is not Benchmark.encoder_blocks else "")
        return (f"model.arch={arch} needs the encoder split into blocks, and {name}'s "
                f"encoder{options} has none (Benchmark.encoder_blocks); mmoe, cgc and "
                f"dselect_k need no blocks")
    return None


def check_architecture(model: ModelConfig, needs, spec: str, bench_cls: type[Benchmark],
                       data_config, engine_config) -> None:
    """Refuse, with a one-line reason, an architecture that cannot serve this benchmark,
    method or engine setting."""
    arch = model.arch
    if arch == "hps":
        return
    reason = benchmark_refusal(arch, bench_cls, data_config)
    if reason is not None:
        raise UserError(reason)
    if needs.separate_encoders:
        raise UserError(f"{spec} trains one encoder per task; model.arch={arch} is an "
                        f"architecture of shared models (use model.arch=hps)")
    if arch in WHY_NO_COMMON_Z:
        why = WHY_NO_COMMON_Z[arch]
        if needs.rep_grads or needs.second_order or needs.shared_representation:
            raise UserError(f"{spec} works on one representation Z common to all tasks, but "
                            f"model.arch={arch} {why}; Jacobian and loss-weighting methods apply")
        if engine_config.conflict_space == "rep":
            raise UserError(f"engine.conflict_space=rep needs one representation common to all "
                            f"tasks, but model.arch={arch} {why}; use param")
        if engine_config.saliency_every:
            raise UserError(f"engine.saliency_every compares task saliencies on one "
                            f"representation, but model.arch={arch} {why}; set it to 0")


# --------------------------------------------------------------------------- building blocks

def example_input(benchmark: Benchmark) -> Tensor:
    """Two samples of the training split, on the CPU (shapes for building gates and
    attention modules; drawn in order, so no random stream is used)."""
    batch = next(iter(benchmark.batches("train", 2, None)))
    return batch.inputs[:2].detach().cpu()


@torch.no_grad()
def _probe(module: nn.Module, x: Tensor):
    """``module(x)`` in eval mode (BatchNorm statistics and dropout untouched)."""
    was = module.training
    module.eval()
    try:
        return module(x)
    finally:
        module.train(was)


def mix(z: Tensor, weights: Tensor) -> Tensor:
    """Σ_k weights[b, k] z[b, ..., k]: the experts stacked on the last axis of z, mixed
    per sample."""
    return torch.einsum("b...k,bk->b...", z, weights.to(z.dtype))


class SoftmaxGate(nn.Module):
    """A linear map of the flattened input to one logit per expert, then a softmax
    (MMoE's and CGC's gate)."""

    def __init__(self, in_features: int, experts: int):
        super().__init__()
        self.linear = nn.Linear(in_features, experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x.flatten(1)), dim=-1)


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """DSelect-k's smooth-step: 0 below -γ/2, 1 above γ/2, the cubic
    -2t³/γ³ + 3t/(2γ) + 1/2 between (continuously differentiable)."""
    cubic = -2.0 / gamma ** 3 * t ** 3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t),
                       torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectGate(nn.Module):
    """DSelect-k's per-sample gate (Hazimeh et al., NeurIPS 2021, Sec. 3): k selectors,
    each ⌈log2 K⌉ smooth-step bits of a linear map of the input; selector i puts weight
    r_i(j) = Π_l (s_il if bit l of j is set else 1 - s_il) on expert j; a softmax over k
    further logits mixes the selectors. The bit logits' weights start in [-γ/100, γ/100],
    where every expert is about equally likely, and the mixing logits' in [-0.05, 0.05] (the
    initialisation of LibMTL's port of the authors' code). With K not a power of two the
    codes past K - 1 are unused and the weights may sum to less than 1; LibMTL then adds a
    penalty on their sum, which is not applied here (docs/architectures.md)."""

    def __init__(self, in_features: int, experts: int, k: int, gamma: float):
        super().__init__()
        self.k, self.gamma = k, gamma
        self.bits = max(1, math.ceil(math.log2(experts)))
        self.z = nn.Linear(in_features, k * self.bits)
        nn.init.uniform_(self.z.weight, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.z.bias, -gamma / 100, gamma / 100)
        self.w = nn.Linear(in_features, k)
        nn.init.uniform_(self.w.weight, -0.05, 0.05)
        nn.init.uniform_(self.w.bias, -0.05, 0.05)
        codes = torch.tensor([[(j >> b) & 1 for b in range(self.bits)] for j in range(experts)],
                             dtype=torch.float32)
        self.register_buffer("codes", codes, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        s = smooth_step(self.z(x).view(x.shape[0], self.k, 1, self.bits), self.gamma)
        codes = self.codes.to(s.dtype)
        r = (codes * s + (1 - codes) * (1 - s)).prod(dim=-1)  # [B, k, K]
        alpha = torch.softmax(self.w(x), dim=-1)  # [B, k]
        return (alpha.unsqueeze(-1) * r).sum(dim=1)


class Experts(nn.Module):
    """Experts applied to one input, their outputs stacked on a new last axis."""

    def __init__(self, experts: list[nn.Module]):
        super().__init__()
        self.experts = nn.ModuleList(experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([e(x) for e in self.experts], dim=-1)


class MixtureHead(nn.Module):
    """Task t's part of a mixture of experts: its gate, its own experts (CGC) and its
    tower. Called with (Z, the batch input); ``select`` (PLE) names the slices of Z's
    expert axis that this task's gate mixes (all of Z when None)."""

    def __init__(self, gate: nn.Module, tower: nn.Module, experts: list[nn.Module] = (),
                 select: tuple[tuple[int, int], ...] | None = None):
        super().__init__()
        self.gate = gate
        self.experts = nn.ModuleList(experts)
        self.tower = tower
        self.select = select

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        if self.select is not None:
            z = torch.cat([z[..., a:b] for a, b in self.select], dim=-1)
        if len(self.experts):
            z = torch.cat([z, torch.stack([e(x) for e in self.experts], dim=-1)], dim=-1)
        return self.tower(mix(z, self.gate(x)))


def _level_groups(blocks: int, levels: int) -> list[tuple[int, int]]:
    """``blocks`` consecutive blocks grouped into ``levels`` levels (0: one per block), the
    first levels one block longer where they do not divide evenly."""
    levels = levels or blocks
    base, extra = divmod(blocks, levels)
    groups, start = [], 0
    for i in range(levels):
        end = start + base + (1 if i < extra else 0)
        groups.append((start, end))
        start = end
    return groups


class PLEExtraction(nn.Module):
    """PLE's stacked extraction levels up to the last level's experts (the shared part);
    returns every expert of the last level stacked: the shared ones, then each task's.
    Each gate below the last level reads the route it serves (the batch input at the
    first level)."""

    def __init__(self, shared: list[list[nn.Module]], own: list[list[list[nn.Module]]],
                 task_gates: list[list[nn.Module]], shared_gates: list[nn.Module]):
        super().__init__()
        # shared[l][i], own[l][t][i], task_gates[l][t] and shared_gates[l] (l < last level)
        self.shared = nn.ModuleList(nn.ModuleList(level) for level in shared)
        self.own = nn.ModuleList(nn.ModuleList(nn.ModuleList(task) for task in level)
                                 for level in own)
        self.task_gates = nn.ModuleList(nn.ModuleList(level) for level in task_gates)
        self.shared_gates = nn.ModuleList(shared_gates)

    def forward(self, x: Tensor) -> Tensor:
        levels = len(self.shared)
        shared_in, task_in = x, [x] * len(self.own[0])
        for level in range(levels):
            shared_out = [e(shared_in) for e in self.shared[level]]
            own_out = [[e(h) for e in experts] for experts, h in zip(self.own[level], task_in)]
            every = shared_out + [y for ys in own_out for y in ys]
            if level == levels - 1:
                return torch.stack(every, dim=-1)
            task_in = [mix(torch.stack(shared_out + ys, dim=-1), gate(h))
                       for ys, gate, h in zip(own_out, self.task_gates[level], task_in)]
            shared_in = mix(torch.stack(every, dim=-1), self.shared_gates[level](shared_in))
        raise AssertionError("PLE has at least one level")


class CrossStitch(nn.Module):
    """One column of blocks per task and a T×T stitch after every block: the input of
    column t's next block is Σ_s α[t, s] · (column s's block output). Returns the T
    columns' outputs after the last stitch."""

    def __init__(self, columns: list[list[nn.Module]], stitch_self: float):
        super().__init__()
        tasks = len(columns)
        self.columns = nn.ModuleList(nn.ModuleList(blocks) for blocks in columns)
        other = (1.0 - stitch_self) / (tasks - 1) if tasks > 1 else 0.0
        init = torch.full((tasks, tasks), other)
        init.fill_diagonal_(stitch_self if tasks > 1 else 1.0)
        self.stitches = nn.ParameterList(nn.Parameter(init.clone())
                                         for _ in range(len(columns[0])))

    def forward(self, x: Tensor) -> list[Tensor]:
        hs = [x] * len(self.columns)
        for b, alpha in enumerate(self.stitches):
            ys = torch.stack([column[b](h) for column, h in zip(self.columns, hs)])
            hs = list(torch.tensordot(alpha.to(ys.dtype), ys, dims=1).unbind(0))
        return hs


class Branching(nn.Module):
    """LTB's tree: one column of blocks per task and the logits of the branching. Column t's
    first block reads the input; its block b > 0 reads Σ_j α[b - 1, t, j] · (column j's
    output of block b - 1), α given by the caller (``BranchingModel.branching``), so that
    the sampling stays outside a compiled forward. Returns the T columns' outputs."""

    def __init__(self, columns: list[list[nn.Module]]):
        super().__init__()
        self.columns = nn.ModuleList(nn.ModuleList(column) for column in columns)
        # Equal logits: at the start every parent is equally likely.
        self.logits = nn.Parameter(torch.zeros(len(columns[0]) - 1, len(columns), len(columns)))

    def forward(self, x: Tensor, alpha: Tensor) -> list[Tensor]:
        hs = [column[0](x) for column in self.columns]
        for b in range(1, len(self.columns[0])):
            parents = torch.stack(hs)
            inputs = torch.tensordot(alpha[b - 1].to(parents.dtype), parents, dims=1)
            hs = [column[b](h) for column, h in zip(self.columns, inputs.unbind(0))]
        return hs


class Backbone(nn.Module):
    """The shared blocks of MTAN; returns every block's output."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


def _fit(prev: Tensor, like: Tensor) -> Tensor:
    """The previous attended features brought to the resolution of ``like`` (pooled or
    replicated over positions; a feature map before a vector is averaged over positions)."""
    if prev.dim() == 4 and like.dim() == 4:
        if prev.shape[-2:] != like.shape[-2:]:
            prev = F.adaptive_avg_pool2d(prev, like.shape[-2:])
        return prev
    if prev.dim() == 4:
        return prev.mean(dim=(2, 3))
    if like.dim() == 4:
        return prev[:, :, None, None].expand(-1, -1, *like.shape[-2:])
    return prev


class AttentionUnit(nn.Module):
    """MTAN's attention module of one task at one block: a mask from two 1×1 convolutions
    (linear maps for vector features) with BatchNorm, ReLU and a sigmoid, computed from
    the block's features and the task's previous attended features, multiplied onto the
    block's features."""

    def __init__(self, in_channels: int, channels: int, spatial: bool):
        super().__init__()
        if spatial:
            conv = lambda a, b: nn.Conv2d(a, b, 1)  # noqa: E731
            norm = nn.BatchNorm2d
        else:
            conv = nn.Linear
            norm = nn.BatchNorm1d
        self.mask = nn.Sequential(conv(in_channels, channels), norm(channels), nn.ReLU(),
                                  conv(channels, channels), norm(channels), nn.Sigmoid())

    def forward(self, feat: Tensor, prev: Tensor | None) -> Tensor:
        inp = feat if prev is None else torch.cat([feat, _fit(prev, feat)], dim=1)
        return self.mask(inp) * feat


class AttentionHead(nn.Module):
    """Task t's part under MTAN: an attention unit per block, then its tower."""

    def __init__(self, units: list[AttentionUnit], tower: nn.Module):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.tower = tower

    def attend(self, feats: list[Tensor]) -> Tensor:
        z = None
        for unit, feat in zip(self.units, feats):
            z = unit(feat, z)
        return z

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.tower(self.attend(feats))


# --------------------------------------------------------------------------- the models

class ArchitectureModel(MultiTaskModel):
    """A single-input model of one of the architectures above: ``encoders[0]`` holds the
    shared part, ``heads[t]`` task t's part (so the gradient engine's split of shared and
    task-specific parameters holds as under hard parameter sharing)."""

    def __init__(self, benchmark: Benchmark, config: ModelConfig, shared: nn.Module,
                 heads: dict[str, nn.Module], last_shared: list[nn.Module],
                 channels_last: bool = False):
        nn.Module.__init__(self)
        self.arch = config.arch
        self.channels_last = channels_last
        self.task_names = benchmark.task_names
        self.multi_input = False
        self.separate = False
        self.stacked = False
        self.encoders = nn.ModuleList([shared])
        self.heads = nn.ModuleDict(heads)
        self.last_shared = nn.ModuleList(last_shared)


class MixtureModel(ArchitectureModel):
    head_takes_input = True


class CrossStitchModel(ArchitectureModel):
    common_rep = False

    def forward(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        zs = self.encoders[0](self._format(batch.inputs))
        reps = dict(zip(self.task_names, zs))
        return reps, {t: self.heads[t](reps[t]) for t in self.task_names if t in batch.targets}


class BranchingModel(ArchitectureModel):
    common_rep = False

    def __init__(self, benchmark: Benchmark, config: ModelConfig, shared: Branching,
                 heads: dict[str, nn.Module], last_shared: list[nn.Module],
                 channels_last: bool = False):
        super().__init__(benchmark, config, shared, heads, last_shared, channels_last)
        self.warmup, self.tau = config.branch_warmup, config.branch_tau
        # Until the trainer says otherwise (scripts that call train_step directly): the first
        # epoch of one.
        self.epoch, self.epochs = 0, 1

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = epoch, epochs

    def in_warmup(self) -> bool:
        return self.epoch < self.warmup * self.epochs

    def temperature(self) -> float:
        return self.tau * self.epochs / math.sqrt(self.epoch + 1)

    def branching(self) -> Tensor:
        """α for one forward pass, [blocks - 1, T children, T parents]. In the warm-up all
        ones (every block reads the sum of its parents; the logits get no gradient). Then, in
        training, a hard Gumbel-softmax sample: one parent per child, with the soft sample's
        gradient (straight-through); the noise comes from the run's torch generator (the
        stream seeded for everything else, saved in every checkpoint), so a seed gives the
        same draws and a resumed run draws what an uninterrupted one would. In evaluation,
        every child's most probable parent (no noise, so evaluation is deterministic)."""
        logits = self.encoders[0].logits
        if self.in_warmup():
            return torch.ones_like(logits)
        if not self.training:
            return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
        return F.gumbel_softmax(logits, tau=self.temperature(), hard=True, dim=-1)

    def forward(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        zs = self.encoders[0](self._format(batch.inputs), self.branching())
        reps = dict(zip(self.task_names, zs))
        return reps, {t: self.heads[t](reps[t]) for t in self.task_names if t in batch.targets}


class AttentionModel(ArchitectureModel):
    common_rep = False
    rep_is_cut = False

    def forward(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        feats = self.encoders[0](self._format(batch.inputs))
        reps, preds = {}, {}
        for t in self.task_names:
            if t in batch.targets:
                head = self.heads[t]
                reps[t] = head.attend(feats)
                preds[t] = head.tower(reps[t])
        return reps, preds


def _blocks(benchmark: Benchmark, arch: str) -> list[nn.Module]:
    blocks = benchmark.encoder_blocks(benchmark.make_encoder())
    if not blocks:
        raise UserError(f"model.arch={arch}: {benchmark.name}'s encoder has no blocks")
    return list(blocks)


def _mixture(benchmark: Benchmark, cfg: ModelConfig, channels_last: bool) -> MixtureModel:
    tasks = benchmark.tasks
    x = example_input(benchmark)
    width = x[0].numel()
    k = cfg.num_experts
    if cfg.arch == "ple":
        return _ple(benchmark, cfg, channels_last, width)
    experts = [benchmark.make_encoder() for _ in range(k)]
    heads = {}
    for task in tasks:
        if cfg.arch == "dselect_k":
            gate = DSelectGate(width, k, cfg.num_nonzeros, cfg.gamma)
            heads[task.name] = MixtureHead(gate, benchmark.make_head(task))
        elif cfg.arch == "cgc":
            own = [benchmark.make_encoder() for _ in range(cfg.task_experts)]
            heads[task.name] = MixtureHead(SoftmaxGate(width, k + cfg.task_experts),
                                           benchmark.make_head(task), own)
        else:
            heads[task.name] = MixtureHead(SoftmaxGate(width, k), benchmark.make_head(task))
    last = [benchmark.last_shared_layer(e) for e in experts]
    return MixtureModel(benchmark, cfg, Experts(experts), heads, last, channels_last)


def _ple(benchmark: Benchmark, cfg: ModelConfig, channels_last: bool, width: int) -> MixtureModel:
    names = benchmark.task_names
    ks, kt, count = cfg.num_experts, cfg.task_experts, len(names)
    slots = [_blocks(benchmark, "ple") for _ in range(ks + count * kt)]
    num_blocks = len(slots[0])
    if cfg.levels > num_blocks:
        raise UserError(f"model.levels={cfg.levels}: {benchmark.name}'s encoder has "
                        f"{num_blocks} blocks, so PLE has at most {num_blocks} levels")
    groups = _level_groups(num_blocks, cfg.levels)

    def expert(slot: int, level: int) -> nn.Module:
        a, b = groups[level]
        return nn.Sequential(*slots[slot][a:b])

    shared = [[expert(i, lv) for i in range(ks)] for lv in range(len(groups))]
    own = [[[expert(ks + t * kt + i, lv) for i in range(kt)] for t in range(count)]
           for lv in range(len(groups))]
    # The size of each level's input route (per sample), for the gates that read it.
    widths, h = [width], example_input(benchmark)
    for level in shared[:-1]:
        h = _probe(level[0], h)
        widths.append(h[0].numel())
    task_gates = [[SoftmaxGate(w, ks + kt) for _ in names] for w in widths[:-1]]
    shared_gates = [SoftmaxGate(w, ks + count * kt) for w in widths[:-1]]
    heads = {}
    for t, task in enumerate(benchmark.tasks):
        select = ((0, ks), (ks + t * kt, ks + (t + 1) * kt)) if kt else ((0, ks),)
        heads[task.name] = MixtureHead(SoftmaxGate(width, ks + kt), benchmark.make_head(task),
                                       select=select)
    last = [benchmark.last_shared_layer(e) for e in shared[-1]]
    last += [benchmark.last_shared_layer(e) for experts in own[-1] for e in experts]
    extraction = PLEExtraction(shared, own, task_gates, shared_gates)
    return MixtureModel(benchmark, cfg, extraction, heads, last, channels_last)


def _cross_stitch(benchmark: Benchmark, cfg: ModelConfig, channels_last: bool) -> CrossStitchModel:
    columns = [_blocks(benchmark, "cross_stitch") for _ in benchmark.tasks]
    heads = {task.name: benchmark.make_head(task) for task in benchmark.tasks}
    last = [benchmark.last_shared_layer(nn.Sequential(*column)) for column in columns]
    return CrossStitchModel(benchmark, cfg, CrossStitch(columns, cfg.stitch_self), heads, last,
                            channels_last)


def _ltb(benchmark: Benchmark, cfg: ModelConfig, channels_last: bool) -> BranchingModel:
    columns = [_blocks(benchmark, "ltb") for _ in benchmark.tasks]
    if len(columns[0]) < 2:
        raise UserError(f"model.arch=ltb: {benchmark.name}'s encoder has one block, so there "
                        f"is nothing to branch; use model.arch=hps")
    heads = {task.name: benchmark.make_head(task) for task in benchmark.tasks}
    last = [benchmark.last_shared_layer(nn.Sequential(*column)) for column in columns]
    return BranchingModel(benchmark, cfg, Branching(columns), heads, last, channels_last)


def _mtan(benchmark: Benchmark, cfg: ModelConfig, channels_last: bool) -> AttentionModel:
    backbone = Backbone(_blocks(benchmark, "mtan"))
    feats = _probe(backbone, example_input(benchmark))
    for f in feats:
        if f.dim() not in (2, 4):
            raise UserError(f"model.arch=mtan: {benchmark.name}'s encoder blocks give features "
                            f"of shape {list(f.shape)}; attention masks are built for [B, C] "
                            f"and [B, C, H, W]")
    channels = [f.shape[1] for f in feats]
    heads = {}
    for task in benchmark.tasks:
        units = [AttentionUnit(c + (channels[j - 1] if j else 0), c, feats[j].dim() == 4)
                 for j, c in enumerate(channels)]
        heads[task.name] = AttentionHead(units, benchmark.make_head(task))
    last = [benchmark.last_shared_layer(backbone)]
    return AttentionModel(benchmark, cfg, backbone, heads, last, channels_last)


def build_model(benchmark: Benchmark, config: ModelConfig | None = None,
                separate_encoders: bool = False, stacked_forward: bool = False,
                channels_last: bool = False) -> MultiTaskModel:
    """The run's model: hard parameter sharing (``MultiTaskModel``, unchanged) unless
    ``config.arch`` names another architecture."""
    if config is None or config.arch == "hps":
        return MultiTaskModel(benchmark, separate_encoders=separate_encoders,
                              stacked_forward=stacked_forward, channels_last=channels_last)
    reason = benchmark_refusal(config.arch, type(benchmark), benchmark.config)
    if reason is not None:
        raise UserError(reason)
    if separate_encoders:
        raise UserError(f"model.arch={config.arch} is an architecture of shared models; one "
                        f"encoder per task needs model.arch=hps")
    if config.arch in MIXTURES:
        return _mixture(benchmark, config, channels_last)
    if config.arch == "cross_stitch":
        return _cross_stitch(benchmark, config, channels_last)
    if config.arch == "ltb":
        return _ltb(benchmark, config, channels_last)
    return _mtan(benchmark, config, channels_last)
