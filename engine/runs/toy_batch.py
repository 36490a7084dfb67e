"""The toy2d protocols as one computation: every run of a request (method × start × seed)
is a row of one [R, 2] tensor of points, trained by the same steps as ``Trainer`` would
train each run alone, and written to the same run folder with the same files.

Why: a toy2d run through the trainer costs a few milliseconds per step, almost all of it
per-operation overhead on tensors of two numbers; a published protocol (CAGrad: 3 starts ×
100k steps; FAMO: 5 × 50k) for several methods then takes hours. Here one step evaluates
the losses, the per-task gradients, every method's update and the optimizer step for all
runs at once, so the overhead is paid once per step instead of once per run, and it is
kept small: no autograd graph, no optimizer bookkeeping, no Python work per row except
where a method solves a small problem per run (below).

Identical results: each row goes through the operations that its own run would, on the same
values, in the same order. ``ToyGradient`` evaluates the task losses and writes each task's
gradient with the elementwise operations that autograd runs backwards through the engine's
task loss (``toy_task_loss``), both tasks of a run side by side; its test compares them bit
for bit with autograd. Aggregator rows backpropagate from 1 (the engine's Jacobian loop, one
pass per task), weighting rows from w_t (the engine's backward of Σ_t w_t L_t, whose two
task contributions meet at x: added here). The optimizer is the run's own (built by the
trainer's ``build_optimizer``) over the [R, 2] tensor; when it is Adam or AdamW (every
published protocol's), ``AdamStep`` takes its steps: the optimizer's CPU operations in their
order, without its per-call bookkeeping. Elementwise operations do not mix rows, so a row's
numbers are those of its run alone: float32 trajectories, curves and metrics equal the
per-run engine's bit for bit (tests/test_toy_batch.py; cagrad, whose two-task dual is solved
in closed form here, to float tolerance in general).

Methods (two tasks; the methods' own mathematics, batched over rows):

- ``ew``: weights 1.
- ``famo``: ``famo_weights`` and ``famo_logit_grad`` on [R, T] logits, the logits trained by
  their own Adam as in the method. The method updates them after the step from the losses
  at the new point; those are the next step's losses, so the update is made when the next
  step has evaluated them (the same numbers, one forward pass fewer).
- ``pcgrad``: with two tasks each gradient is projected onto the other's normal plane when
  they conflict; the random order of the other tasks has one element, so nothing random
  remains. The arithmetic of ``pcgrad_weights`` on the 2×2 Gramian.
- ``mgda``: the method's ``min_norm_two`` per run (its two-task solve); with a
  ``normalization``, the method's ``mgda_weights`` per run.
- ``cagrad``: the dual over the segment w = (a, 1 − a) is a one-dimensional convex
  problem whose stationarity condition is a quadratic in a: solved exactly (float64, per
  run), clipped to [0, 1]. The method's own solvers stop at a 1e-10 optimality gap, so
  weights agree to about that and trajectories to float tolerance, not bit for bit.
  ``exact_cagrad=True`` calls the method's ``cagrad_weights`` per row instead (bit-identical
  to the engine, and about 300 µs per row and step).

Anything else (other methods, compositions with regularizers, fp16/bf16, conflict or
saliency statistics) is refused when the batch is planned, with the reason.

Records: metrics.jsonl, curve.jsonl and trajectory.jsonl as the trainer writes them;
summary.json says ``runner: toy_batch``, the runs batched together and their shared wall
time (each run's ``wall_time_s`` is its share). No checkpoint is written: a batch trains
from step 0 to the end in one call.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmarks.toy2d import Toy2d
from datasets.toy import EPS
from engine.core import results as R
from engine.core.run_folder import RunFolder
from engine.core.traces import CURVE, TRAJECTORY
from engine.core.trainer import build_optimizer, build_scheduler
from engine.errors import UserError
from engine.runs.locks import RunLock, RunLocked
from engine.runs.runner import RunOutcome, RunRequest, _skip, make_benchmark, task_record

RUNNER = "toy_batch"
SUPPORTED = ("ew", "famo", "pcgrad", "mgda", "cagrad")
WHY_NOT = ("the batched toy runner implements ew, famo, pcgrad, mgda and cagrad (two tasks, "
           "their update batched over runs); train it per start with `run -b toy2d`")


# --------------------------------------------------------------------------- the toy

def _f32(value) -> Tensor:
    return torch.tensor(value, dtype=torch.float32)


class ToyGradient:
    """toy2d's task losses at R points and every run's per-task gradients, without autograd.

    The engine's task t evaluates ``toy_losses`` (datasets/toy.py) at its batch of one and
    takes L_t = s_t·(c1·g_t + c2·h_t) − L*_t (``toy_task_loss``), with
    g1 = log(max(|a1|, ε)) + 6, a1 = 0.5(−x1 − 7) − tanh(−x2),
    g2 = log(max(|a2|, ε)) + 6, a2 = 0.5(−x1 + 3) + tanh(−x2) + 2,
    h1, h2 = ((−x1 ± 7)² + 0.1(−x2 − 8)²)/10 − 20, c1, c2 = clamp_min(tanh(±x2/2), 0).
    Column t of the [R, 2] tensors here holds task t's term, and every operation is the
    engine's on the same float32 numbers or an exact rewriting of it: −x1 − 7 as −7 − x1,
    x2/2 as 0 + x2·0.5, a − b as a + b·(−1) (products by ±1, ½ and 2 round nothing), and
    −a2 = (x1 − 3)·0.5 − tanh(−x2) − 2 in place of a2 (|−a2| = |a2|, and its sign is the
    one that a2's path to tanh(−x2) needs below).

    The gradient is autograd's: derivatives.yaml's formula for each operation, in its
    order. tanh: ``tanh_backward(grad, y)`` = grad·(1 − y²), whose kernel fuses 1 − y·y,
    so the factor is taken from it (as tanh_backward of 1, or of clamp_min's mask); log:
    grad/m; maximum: grad halved at a tie, 0 below ε; abs: grad·sgn; pow 2: grad·2u;
    clamp_min: grad where its input is > 0. A coordinate gathers several paths (x2:
    through g, h, c1 and c2) of which at most two are nonzero (c1 or c2 is 0), so the
    order of their sum changes nothing and the sign of a zero never reaches a nonzero
    number. The engine's mean over its batch of one (forward) and sum over it (backward)
    turn −0 into +0: here a +0 term in each sum does.

    Numbers (0.5, 10, ...) are float32 tensors: an operation with a Python number costs
    about three times more, for the same float32 arithmetic. ``x`` is read in place (the
    optimizer updates it); buffers and their views are made once."""

    def __init__(self, x: Tensor, loss_scale, l_star):
        rows = x.shape[0]
        self.x1, self.x2 = x[:, :1], x[:, 1:]
        # s_t and − L*_t, left out where they change nothing (·1; + 0 after the +0 term)
        self.scale = None if tuple(loss_scale) == (1.0, 1.0) else _f32(list(loss_scale))
        self.minus_l_star = _f32([0.0 - v for v in l_star]) if any(l_star) else None
        # u = (−7 − x1, x1 − 3 | 7 − x1, −7 − x1, −8 − x2 | −x2, x2/2, −x2/2): the arguments
        # of a1 and −a2, of the squares, and of tanh
        self.x1_shift, self.x1_factor = _f32([-7.0, -3.0, 7.0, -7.0]), _f32([-1.0, 1.0, -1.0, -1.0])
        self.x2_shift, self.x2_factor = _f32([-8.0, 0.0, 0.0, 0.0]), _f32([-1.0, -1.0, 0.5, -0.5])
        self.u = torch.empty(rows, 8)
        self.u_x1, self.u_x2 = self.u[:, :4], self.u[:, 4:]
        self.u_a, self.u_sq, self.u_tanh = self.u[:, :2], self.u[:, 2:5], self.u[:, 5:]
        self.a_add = _f32([0.0, -2.0])             # a1 + 0 (exact), −a2 − 2
        self.a_abs = torch.empty(rows, 2)
        self.th = torch.empty(rows, 3)             # t = tanh(−x2), y1, y2 = tanh(±x2/2)
        self.t, self.y = self.th[:, :1], self.th[:, 1:]
        self.y_both_tasks = self.y.unsqueeze(2).expand(rows, 2, 2)
        # tanh_backward(mask, th) = mask·(1 − th²): 1 for t, clamp_min's (y > 0) for y1, y2
        self.mask = torch.ones(rows, 3)
        self.mask_y = self.mask[:, 1:]
        self.dth = torch.empty(rows, 3)
        self.dt, self.dy = self.dth[:, :1], self.dth[:, 1:].unsqueeze(2)
        # q = (c1, c2, g, h) by task: the factors of L_t = c1·g_t + c2·h_t
        self.q = torch.empty(rows, 4, 2)
        self.c_by_task, self.gh = self.q[:, :2], self.q[:, 2:]
        self.g, self.h = self.q[:, 2], self.q[:, 3]
        self.terms = torch.zeros(rows, 3, 2)       # c1·g, c2·h and +0, by task
        self.c_gh = self.terms[:, :2]
        self.squares = torch.empty(rows, 3)        # (7 − x1)², (−7 − x1)², (−8 − x2)²
        self.d_squares, self.e_square = self.squares[:, :2], self.squares[:, 2:]
        self.twice = torch.empty(rows, 3)          # −2·(7 − x1), ...: pow's backward, negated
        self.twice_x1, self.twice_x2 = self.twice[:, :2], self.twice[:, 2:]
        self.eps, self.half, self.zero = _f32(EPS), _f32(0.5), _f32(0.0)
        self.six, self.ten, self.twenty, self.tenth = _f32(6.0), _f32(10.0), _f32(20.0), _f32(0.1)
        self.minus_two = _f32(-2.0)
        self.x1_of_g = _f32([-0.5, 0.5])           # −(·0.5) of 0.5·(−x1 ...), a2's sign undone
        self.x2_of_c = _f32([[0.5], [-0.5]])       # through x2/2 and −x2/2
        # gradients: backpropagated from seeds [R, T]; upstream·(c1, c2, g, h) by task; the
        # terms of each coordinate, [R, path, T, (x1, x2)]: x1's paths through g and h, x2's
        # through g, h, c1 and c2, and +0
        self.seeds = torch.ones(rows, 2)
        self.seeds_by_task = self.seeds.unsqueeze(1)
        self.upstream = torch.empty(rows, 1, 2)
        self.grads = torch.empty(rows, 4, 2)
        self.grad_g, self.grad_h = self.grads[:, 0], self.grads[:, 1]
        self.grad_c = self.grads[:, 2:]
        self.paths = torch.zeros(rows, 5, 2, 2)
        self.x1_g, self.x2_g = self.paths[:, 0, :, 0], self.paths[:, 0, :, 1]
        self.x1_h, self.x2_h = self.paths[:, 1, :, 0], self.paths[:, 1, :, 1]
        self.x2_c = self.paths[:, 2:4, :, 1]
        self.per_task = torch.empty(rows, 2, 2)    # [R, T, (x1, x2)]

    def losses(self) -> Tensor:
        """[R, T] task losses at the current points (a new tensor), keeping what
        ``gradients`` needs."""
        torch.addcmul(self.x1_shift, self.x1, self.x1_factor, out=self.u_x1)
        torch.addcmul(self.x2_shift, self.x2, self.x2_factor, out=self.u_x2)
        torch.tanh(self.u_tanh, out=self.th)
        torch.clamp_min(self.y_both_tasks, self.zero, out=self.c_by_task)
        a = (self.u_a * self.half - self.t) + self.a_add    # (a1, −a2)
        a_abs = torch.abs(a, out=self.a_abs)
        self.m = torch.maximum(a_abs, self.eps)
        torch.add(torch.log(self.m), self.six, out=self.g)
        torch.mul(self.u_sq, self.u_sq, out=self.squares)
        h = (self.d_squares + self.tenth * self.e_square) / self.ten
        torch.sub(h, self.twenty, out=self.h)
        torch.mul(self.c_by_task, self.gh, out=self.c_gh)
        losses = self.terms.sum(1)
        if self.scale is not None:
            losses = losses * self.scale
        if self.minus_l_star is not None:
            losses = losses + self.minus_l_star
        # for the gradient: maximum's and abs's factor M·sgn(a) (M = 1 above ε, ½ at ε, 0
        # below), tanh's 1 − y² where the gradient passes, and −2u of the squares
        self.dg = torch.copysign(torch.heaviside(a_abs - self.eps, self.half), a)
        torch.gt(self.y, self.zero, out=self.mask_y)
        torch.ops.aten.tanh_backward.grad_input(self.mask, self.th, grad_input=self.dth)
        torch.mul(self.u_sq, self.minus_two, out=self.twice)
        return losses

    def gradients(self) -> Tensor:
        """[R, T, 2]: the gradient of task t's loss of run r at the point of the last
        ``losses()``, backpropagated from ``seeds[r, t]`` (a buffer, overwritten by the
        next call)."""
        upstream = self.seeds_by_task
        if self.scale is not None:
            upstream = torch.mul(upstream, self.scale, out=self.upstream)
        torch.mul(upstream, self.q, out=self.grads)
        q = (self.grad_g / self.m).mul_(self.dg)              # log, maximum, abs
        torch.mul(q, self.x1_of_g, out=self.x1_g)
        torch.mul(q, self.dt, out=self.x2_g)
        k = self.grad_h / self.ten
        torch.mul(k, self.twice_x1, out=self.x1_h)
        torch.mul(k * self.tenth, self.twice_x2, out=self.x2_h)
        torch.mul(self.grad_c * self.dy, self.x2_of_c, out=self.x2_c)
        return torch.sum(self.paths, 1, out=self.per_task)


class AdamStep:
    """``torch.optim.Adam``'s (and ``AdamW``'s) step on one tensor, as it runs on the CPU
    (its single-tensor path: the same operations in the same order, so the same numbers)
    without the optimizer's per-call bookkeeping. Hyperparameters are read from the
    optimizer's param group at each step (a scheduler may change the learning rate)."""

    def __init__(self, param: Tensor, group: dict):
        self.param, self.group = param, group
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.steps = 0

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, param: Tensor) -> "AdamStep | None":
        """The step of ``optimizer`` (one group, one tensor ``param``) when it is a plain
        Adam or AdamW; None otherwise (the optimizer itself then steps)."""
        if not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        plain = not any(group.get(key) for key in ("amsgrad", "maximize", "capturable",
                                                    "differentiable", "fused", "foreach"))
        numbers = all(isinstance(v, float) for v in (group["lr"], *group["betas"]))
        return cls(param, group) if plain and numbers else None

    def __call__(self, grad: Tensor) -> None:
        group, param = self.group, self.param
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        self.steps += 1
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.steps)
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(self.exp_avg, denom, value=-step_size)


# --------------------------------------------------------------------------- method rows

class _Rows:
    """The rows [begin, end) of one method: ``kind`` weighting (weights from the losses,
    Σ w L backpropagated) or aggregator (weights from the per-task gradients' Gramians).
    The methods' functions are imported when a kernel is built, not at each step."""

    kind = "weighting"
    known: frozenset[str] = frozenset()
    """Config fields this implementation honours; any other set away from its default is
    refused (a field the method gained later must not be silently ignored)."""
    solves = False
    reweights = False
    """Weighting rows whose weights change (else they stay 1)."""

    def __init__(self, name: str, config, begin: int, end: int):
        self.name, self.config, self.begin, self.end = name, config, begin, end
        self.rows = end - begin

    def weights(self, losses: Tensor) -> Tensor:
        """Weighting rows that reweight: [rows, T] weights from all rows' losses [R, T] at
        the current points."""
        raise NotImplementedError

    def bind(self, gram: Tensor) -> None:
        """Aggregator rows: their rows [rows, T, T] of the Gramian buffer, which holds the
        current Gramians whenever ``aggregate`` is called."""
        self.gram = gram

    def aggregate(self, losses: Tensor) -> Tensor:
        """Aggregator rows: [rows, T] float32 weights from their Gramians and all rows'
        losses [R, T]."""
        raise NotImplementedError


class _EW(_Rows):
    pass


class _FAMO(_Rows):
    known = frozenset({"lr", "weight_decay", "min_losses"})
    reweights = True

    def __init__(self, name, config, begin, end):
        super().__init__(name, config, begin, end)
        from methods._weighting_utils import per_task_vector
        from methods.famo import famo_logit_grad, famo_weights

        self.famo_weights, self.famo_logit_grad = famo_weights, famo_logit_grad
        bounds = per_task_vector("method.famo.min_losses", config.min_losses, 2, 0.0)
        self.min_losses = bounds.float()
        self.logits = torch.zeros(self.rows, 2)
        # the method's optimizer, stepped by AdamStep with its settings
        optimizer = torch.optim.Adam([torch.nn.Parameter(self.logits)], lr=config.lr,
                                     weight_decay=config.weight_decay)
        self.adam = AdamStep(self.logits, optimizer.param_groups[0])
        self.prev: Tensor | None = None

    def weights(self, losses: Tensor) -> Tensor:
        now = losses[self.begin:self.end]
        if self.prev is not None:  # the method's update after the previous step
            self.adam(self.famo_logit_grad(self.logits, self.prev, now, self.min_losses))
        self.prev = now
        return self.famo_weights(now, self.logits, self.min_losses)


class _PCGrad(_Rows):
    kind = "aggregator"

    def bind(self, gram: Tensor) -> None:
        self.dot, self.norms = gram[:, 0, 1:], gram.diagonal(dim1=1, dim2=2)
        self.zero, self.one = torch.zeros(()), torch.ones(())

    def aggregate(self, losses: Tensor) -> Tensor:
        # pcgrad_weights on two tasks: g_i is projected off g_j (j ≠ i) when g_i·g_j < 0,
        # and w_i = 1 + (0 − G_ij / G_ii) = 1 − G_ij / G_ii, else 1
        return torch.where(self.dot < self.zero, self.one - self.dot / self.norms, self.one)


class _MGDA(_Rows):
    kind = "aggregator"
    known = frozenset({"normalization", "max_iter", "tol"})
    solves = True

    def __init__(self, name, config, begin, end):
        super().__init__(name, config, begin, end)
        from methods._min_norm import min_norm_two
        from methods.mgda import mgda_weights

        self.min_norm_two, self.mgda_weights = min_norm_two, mgda_weights

    def aggregate(self, losses: Tensor) -> Tensor:
        cfg = self.config
        if cfg.normalization != "none":
            rows = losses[self.begin:self.end]
            return torch.stack([self.mgda_weights(g, l, cfg.normalization, cfg.max_iter,
                                                  cfg.tol).weights
                                for g, l in zip(self.gram, rows)]).float()
        # mgda_weights' two-task solve, on the same float64 numbers
        gammas = [self.min_norm_two(g[0][0], g[0][1], g[1][1]) for g in self.gram.tolist()]
        return torch.tensor([(gamma, 1.0 - gamma) for gamma in gammas], dtype=torch.float32)


class _CAGrad(_Rows):
    kind = "aggregator"
    known = frozenset({"c", "rescale", "tol", "solver", "scale"})
    exact = False

    def __init__(self, name, config, begin, end):
        super().__init__(name, config, begin, end)
        from methods.cagrad import cagrad_weights

        self.cagrad_weights = cagrad_weights

    @property
    def solves(self) -> bool:
        return self.config.c > 0

    def aggregate(self, losses: Tensor) -> Tensor:
        cfg = self.config
        if self.exact:
            w = torch.stack([self.cagrad_weights(g, cfg.c, cfg.rescale, cfg.tol,
                                                 cfg.solver).weights for g in self.gram]).float()
        else:
            w = torch.tensor([cagrad_two_task_weights(g[0][0], g[0][1], g[1][1], cfg.c,
                                                      cfg.rescale) for g in self.gram.tolist()],
                             dtype=torch.float32)
        if getattr(cfg, "scale", "mean") == "sum":
            w = w * 2
        return w


def cagrad_two_task_weights(g00: float, g01: float, g11: float, c: float,
                            rescale: int) -> tuple[float, float]:
    """CAGrad's w' (methods/cagrad.py, ``cagrad_weights``) for the two-task Gramian
    [[g00, g01], [g01, g11]], the dual solved exactly (float64).

    On w = (a, 1 − a) of the Gramian normalised by its largest diagonal entry, the dual is
    f(a) = a·p + (1 − a)·q + r·sqrt(D a² + 2E a + C + δ) with p, q = (G b)_0, (G b)_1,
    D = G00 − 2 G01 + G11, E = G01 − G11, C = G11, r = c·sqrt(Σ G b / 2 + δ). f is convex; its
    derivative vanishes where r (D a + E) = (q − p)·sqrt(Q(a)), i.e. at
    a = (k·sqrt(M / (D − k²)) − E) / D with k = (q − p)/r and M = D (C + δ) − E² (≥ 0); a
    stationary point exists only if k² < D, else f is monotone on [0, 1]. Clipping to [0, 1]
    gives the minimiser in every case."""
    from methods.cagrad import DELTA

    divisor = (1.0, 1.0 + c * c, 1.0 + c)[rescale]
    scale = max(g00, g11)
    if c == 0.0 or scale <= 0.0:  # the ball is a point, or both gradients are zero
        return 0.5 / divisor, 0.5 / divisor
    A, B, C = g00 / scale, g01 / scale, g11 / scale
    p, q = (A + B) / 2, (B + C) / 2
    g0_sq = max((p + q) / 2, 0.0)  # |mean gradient|², normalised
    radius = c * math.sqrt(g0_sq + DELTA)
    D, E = A - 2 * B + C, B - C
    k = (q - p) / radius
    room = D - k * k
    if D > 0 and room > 0:
        a = (k * math.sqrt(max(D * (C + DELTA) - E * E, 0.0) / room) - E) / D
    elif D > 0:  # f is monotone: the end where f' has the sign that lowers f
        slope_at_half = (p - q) + radius * (D * 0.5 + E) / math.sqrt(D * 0.25 + E + C + DELTA)
        a = 0.0 if slope_at_half > 0 else 1.0
    else:  # equal gradients: every a gives the same point
        a = 0.5
    a = min(max(a, 0.0), 1.0)
    b = 1.0 - a
    gw_sq = max(a * (A * a + B * b) + b * (B * a + C * b), 0.0)
    lam = c * math.sqrt(g0_sq) / math.sqrt(gw_sq) if gw_sq > 0 else 0.0
    return (0.5 + lam * a) / divisor, (0.5 + lam * b) / divisor


KERNELS: dict[str, type[_Rows]] = {"ew": _EW, "famo": _FAMO, "pcgrad": _PCGrad,
                                   "mgda": _MGDA, "cagrad": _CAGrad}


# --------------------------------------------------------------------------- planning

def _shared_settings(request: RunRequest) -> str:
    """What every run of one batch must share: benchmark, profile, train, engine and data
    settings (the start aside)."""
    cfg = request.config
    data = dataclasses.asdict(cfg.data)
    data.pop("start", None)
    return json.dumps({"benchmark": cfg.benchmark, "train": dataclasses.asdict(cfg.train),
                       "engine": dataclasses.asdict(cfg.engine), "data": data,
                       "device": cfg.device}, sort_keys=True, default=str)


def check_request(request: RunRequest) -> None:
    """Refuse, with the reason, a run that the batched runner cannot train identically."""
    cfg = request.config
    name = request.method_name
    if cfg.benchmark != "toy2d":
        raise UserError(f"the batched toy runner trains toy2d only, not {cfg.benchmark}")
    composition = request.composition
    if composition.regularizers or composition.primary not in KERNELS:
        raise UserError(f"{name}: {WHY_NOT}")
    kernel = KERNELS[composition.primary]
    method_cfg = cfg.methods[composition.primary]
    default = type(method_cfg)()
    for f in dataclasses.fields(method_cfg):
        if f.name not in kernel.known and getattr(method_cfg, f.name) != getattr(default, f.name):
            raise UserError(f"{name}: method.{composition.primary}.{f.name} is not implemented "
                            f"by the batched toy runner; train it with `run -b toy2d`")
    if cfg.data.start_point:
        raise UserError("data.start_point: the batched runner trains the protocol's starts "
                        "(choose them with --starts); train an explicit point with `run`")
    e = cfg.engine
    for key, value, neutral in (("engine.amp", e.amp, "none"),
                                ("engine.conflict_every", e.conflict_every, 0),
                                ("engine.saliency_every", e.saliency_every, 0),
                                ("engine.compile", e.compile, False)):
        if value != neutral:
            raise UserError(f"{key}={value}: not available in the batched toy runner "
                            f"(train with `run -b toy2d`)")
    if cfg.device not in ("auto", "cpu"):
        raise UserError(f"--device {cfg.device}: the batched toy runner runs on the CPU (its "
                        f"tensors hold a few numbers per run)")


@dataclass
class RunRows:
    """One run of a batch: its request, folder and records."""

    request: RunRequest
    run_dir: Path
    records: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)
    diverged: str = ""


def plan(requests: list[RunRequest]) -> list[list[RunRequest]]:
    """The requests grouped into batches of runs that share their settings, every run of
    one method contiguous."""
    for request in requests:
        check_request(request)
    groups: dict[str, list[RunRequest]] = {}
    for request in requests:
        groups.setdefault(_shared_settings(request), []).append(request)
    order = {name: i for i, name in enumerate(SUPPORTED)}
    return [sorted(g, key=lambda r: order[r.composition.primary]) for g in groups.values()]


# --------------------------------------------------------------------------- training

class ToyBatch:
    """R runs of toy2d trained together (see the module docstring)."""

    def __init__(self, requests: list[RunRequest], out: Path | None = None,
                 exact_cagrad: bool = False):
        # every run of one method contiguous: one kernel call per method and step
        order = {name: i for i, name in enumerate(SUPPORTED)}
        requests = sorted(requests, key=lambda r: order[r.composition.primary])
        self.requests = requests
        first = requests[0].config
        self.config = first
        self.device = torch.device("cpu")
        self.bench: Toy2d = make_benchmark(first, self.device)
        self.tasks = self.bench.task_names
        self.runs = [RunRows(r, r.dir(out) if out is not None else Path()) for r in requests]
        self.R = len(requests)
        starts = [r.config.data.point() for r in requests]
        self.x = torch.nn.Parameter(torch.tensor(starts, dtype=torch.float32))
        self.grad = torch.zeros_like(self.x)
        self.x.grad = self.grad
        self.T = len(self.tasks)
        x = self.x.detach()  # the optimizer's tensor, read and updated in place
        self.toy = ToyGradient(x, first.data.loss_scale, first.data.l_star)
        self.optimizer = build_optimizer([self.x], first.train)
        self.scheduler = build_scheduler(self.optimizer, first.train)
        self.adam = AdamStep.of(self.optimizer, x)
        self.kernels: list[_Rows] = []
        begin = 0
        while begin < self.R:
            name = requests[begin].composition.primary
            end = begin
            while end < self.R and requests[end].composition.primary == name:
                end += 1
            # one kernel per method and config (method overrides may differ between runs)
            sub = begin
            while sub < end:
                cfg = requests[sub].config.methods[name]
                stop = sub
                while stop < end and requests[stop].config.methods[name] == cfg:
                    stop += 1
                kernel = KERNELS[name](name, cfg, sub, stop)
                if isinstance(kernel, _CAGrad):
                    kernel.exact = exact_cagrad
                self.kernels.append(kernel)
                sub = stop
            begin = end
        # Weighting rows come first (SUPPORTED's order), aggregator rows after them; the
        # views of each part are made once.
        self.weightings = [k for k in self.kernels if k.kind == "weighting"]
        self.aggregators = [k for k in self.kernels if k.kind == "aggregator"]
        nw = sum(k.rows for k in self.weightings)
        self.weighting_seeds = self.toy.seeds[:nw]  # aggregator rows backpropagate from 1
        self.reweighting = [(k, self.toy.seeds[k.begin:k.end]) for k in self.weightings
                            if k.reweights]
        per_task = self.toy.per_task
        self.weighting_tasks = per_task[:nw, 0], per_task[:nw, 1]
        self.weighting_grad = self.grad[:nw]
        self.jac = per_task[nw:]
        self.jac_t = self.jac.transpose(1, 2)
        self.gram = torch.empty(self.R - nw, self.T, self.T)
        self.agg_weights = torch.empty(self.R - nw, self.T)
        self.agg_weights_row = self.agg_weights.unsqueeze(1)
        self.direction = self.grad[nw:].unsqueeze(1)
        for k in self.aggregators:
            k.bind(self.gram[k.begin - nw:k.end - nw])
        self.solve = [(k, self.agg_weights[k.begin - nw:k.end - nw]) for k in self.aggregators]
        self.step = 0
        self.step_time_s = 0.0

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One step of every run; returns the raw losses [R, T] and the applied weights
        (new tensors)."""
        losses = self.toy.losses()
        for k, seeds in self.reweighting:
            seeds.copy_(k.weights(losses))
        self.toy.gradients()
        if self.weightings:  # Σ_t w_t L_t backpropagated: the tasks' parts meet at x
            torch.add(*self.weighting_tasks, out=self.weighting_grad)
        if self.aggregators:  # d = wᵀJ from the weights of the Gramian J Jᵀ
            torch.bmm(self.jac, self.jac_t, out=self.gram)
            for k, out in self.solve:
                out.copy_(k.aggregate(losses))
            torch.bmm(self.agg_weights_row, self.jac, out=self.direction)
        if self.adam is not None:
            self.adam(self.grad)
        else:
            self.optimizer.step()
        return losses, torch.cat([self.weighting_seeds, self.agg_weights])

    def evaluate(self, epoch: int) -> list[list[dict]]:
        """Per run, its val and test records (the trainer's ``evaluate`` on each run's point)."""
        out = []
        dummy = torch.zeros(1)
        for r in range(self.R):
            pred = self.x.detach()[r].unsqueeze(0).expand(1, 2).float()
            losses, metrics = {}, {}
            for task in self.bench.tasks:
                meter = task.meter()
                losses[task.name] = float(task.loss(pred, dummy) * 1) / 1
                meter.update(pred, dummy)
                metrics[task.name] = meter.compute()
            out.append([{"epoch": epoch, "split": split, "losses": dict(losses),
                         "metrics": {k: dict(v) for k, v in metrics.items()}}
                        for split in ("val", "test")])
        return out

    def fit(self, progress: bool = False) -> None:
        cfg = self.config
        epochs = cfg.train.epochs
        steps_per_epoch = self.bench.batches_per_epoch("train", cfg.train.batch_size)
        if cfg.train.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
        curve_every = cfg.engine.curve_every
        every = self.bench.trajectory_every
        solving = [k for k in self.aggregators if k.solves]
        pending_traj: list[tuple[int, Tensor, Tensor]] = []
        if every:
            first = self.toy.losses()
            pending_traj.append((0, self.x.detach().clone(), first))
        bar = tqdm(total=epochs * steps_per_epoch, leave=False, unit="step",
                   desc=f"toy2d batch of {self.R} runs", disable=None if progress else True)
        try:
            for epoch in range(epochs):
                loss_sum = weight_sum = curve_sum = None
                curve_count = 0
                pending_curve: list[tuple[int, Tensor]] = []
                start = time.perf_counter()
                for _ in range(steps_per_epoch):
                    values, weights = self.train_step()
                    loss_sum = values if loss_sum is None else loss_sum + values
                    weight_sum = weights if weight_sum is None else weight_sum + weights
                    if curve_every:
                        curve_sum = values if curve_sum is None else curve_sum + values
                        curve_count += 1
                        if (self.step + 1) % curve_every == 0:
                            pending_curve.append((self.step + 1, curve_sum / curve_count))
                            curve_sum, curve_count = None, 0
                    self.step += 1
                    if every and self.step % every == 0:
                        now = self.toy.losses()
                        pending_traj.append((self.step, self.x.detach().clone(), now))
                    if bar is not None and self.step % 100 == 0:
                        bar.update(100)
                elapsed = time.perf_counter() - start
                self.step_time_s += elapsed
                if curve_count:
                    pending_curve.append((self.step, curve_sum / curve_count))
                evaluated = self.evaluate(epoch)
                lr = self.optimizer.param_groups[0]["lr"]
                finite = torch.isfinite(loss_sum).tolist()
                for r, run in enumerate(self.runs):
                    if run.diverged:
                        continue
                    if not all(finite[r]):
                        bad = ", ".join(t for t, ok in zip(self.tasks, finite[r]) if not ok)
                        run.diverged = f"non-finite loss of {bad} in epoch {epoch}"
                        continue
                    record = {"epoch": epoch, "split": "train", "steps": steps_per_epoch,
                              "losses": dict(zip(self.tasks, (loss_sum[r] / steps_per_epoch).tolist())),
                              "lr": lr,
                              "weights": dict(zip(self.tasks, (weight_sum[r] / steps_per_epoch).tolist()))}
                    if any(k.begin <= r < k.end for k in solving):
                        record["method"] = {"solver_failures": 0.0}
                    record["step_time_s"] = elapsed / steps_per_epoch / self.R
                    run.records.append(record)
                    run.records.extend(evaluated[r])
                    for step, mean in pending_curve:
                        run.curve.append({"step": step, "epoch": epoch,
                                          "losses": dict(zip(self.tasks, mean[r].tolist()))})
                for step, point, losses in pending_traj:
                    for r, run in enumerate(self.runs):
                        run.trajectory.append({"step": step, "point": point[r].tolist(),
                                               "losses": losses[r].tolist()})
                pending_traj = []
                if self.scheduler is not None:
                    with warnings.catch_warnings():
                        # AdamStep takes the optimizer's steps, unseen by the scheduler
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
                        self.scheduler.step()
        finally:
            bar.close()


# --------------------------------------------------------------------------- the command

def _summary(run: RunRows, batch: ToyBatch, wall: float, started: str) -> dict:
    request = run.request
    cfg = request.config
    identity = request.identity.record()
    bench = batch.bench
    summary = {"status": R.STATUS_DIVERGED if run.diverged else R.STATUS_COMPLETE,
               "reason": run.diverged, "benchmark": cfg.benchmark,
               "method": request.method_name, **identity, "started": started,
               "world_size": 1, "tasks": task_record(bench),
               "setting": bench.setting, "epochs": cfg.train.epochs, "steps": batch.step,
               "resumed_from_epoch": 0, "wall_time_s": wall / batch.R,
               "session_wall_time_s": wall / batch.R,
               "peak_memory_bytes": R.peak_memory_bytes(batch.device), "device": "cpu",
               "jacobian_path": "loop", "jacobian_fallback": None,
               "multi_input_forward": None, "notes": [],
               "runner": RUNNER,
               "batch": {"runs": batch.R, "wall_time_s": wall,
                         "methods": sorted({k.name for k in batch.kernels})}}
    kernel = next(k for k in batch.kernels if k.begin <= batch.runs.index(run) < k.end)
    # What the methods' run_report() gives (methods/_solver.py): every solve certified.
    summary["methods"] = ({kernel.name: {"solves": batch.step if kernel.solves else 0,
                                         "solver_failures": 0}}
                          if isinstance(kernel, (_MGDA, _CAGrad)) else {})
    if isinstance(kernel, _CAGrad) and not kernel.exact:
        summary["notes"].append("cagrad: the two-task dual solved in closed form by the "
                                "batched toy runner")
    return summary


def write_run(run: RunRows, batch: ToyBatch, wall: float, started: str,
              env: dict | None = None) -> None:
    """The run's folder as the trainer leaves it (without a checkpoint)."""
    folder = RunFolder(run.run_dir)
    folder.open(force=True)  # another trainer's state is not this run's
    cfg = run.request.config
    env = env if env is not None else R.environment(batch.device)
    folder.write_setup({**cfg.to_dict(), **run.request.identity.record()},
                       {**env, "world_size": 1})
    extra = batch.bench.extra_record()
    if extra:
        folder.write_benchmark_record({**extra, "start_point": list(cfg.data.point())})
    folder.write_lines(R.METRICS, run.records)
    if run.curve:
        folder.write_lines(CURVE, run.curve)
    if run.trajectory:
        folder.write_lines(TRAJECTORY, run.trajectory)
    folder.write_summary(_summary(run, batch, wall, started))


def run_batches(requests: list[RunRequest], out: Path, force: bool = False,
                progress: bool = True, exact_cagrad: bool = False) -> list[RunOutcome]:
    """Train the requests in batches and write their run folders. Complete runs are
    skipped unless ``force``, as by ``run``; a run whose folder is locked is left alone."""
    R.check_writable(out)
    outcomes: list[RunOutcome] = []
    todo = []
    for request in requests:
        skipped = _skip(request, request.dir(out), force, False, out)
        if skipped is not None:
            outcomes.append(skipped)
        else:
            todo.append(request)
    for group in plan(todo):
        with contextlib.ExitStack() as locks:
            held = []
            for request in group:
                try:
                    locks.enter_context(RunLock(request.dir(out)))
                    held.append(request)
                except RunLocked as exc:
                    outcomes.append(RunOutcome(request, request.dir(out), "locked", str(exc)))
            if not held:
                continue
            started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            before = torch.get_num_threads()
            torch.set_num_threads(max(1, group[0].config.engine.cpu_threads or before))
            try:
                torch.use_deterministic_algorithms(group[0].config.engine.deterministic,
                                                   warn_only=True)
                clock = time.perf_counter()
                batch = ToyBatch(held, out, exact_cagrad=exact_cagrad)
                batch.fit(progress)
                wall = time.perf_counter() - clock
            finally:
                torch.set_num_threads(before)
            env = R.environment(batch.device)  # one git call for the batch
            for run in batch.runs:
                write_run(run, batch, wall, started, env)
                status = R.STATUS_DIVERGED if run.diverged else R.STATUS_COMPLETE
                outcomes.append(RunOutcome(run.request, run.run_dir, status, run.diverged,
                                           wall / batch.R))
    order = {id(r): i for i, r in enumerate(requests)}
    return sorted(outcomes, key=lambda o: order.get(id(o.request), 0))

