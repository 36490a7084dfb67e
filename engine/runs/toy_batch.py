"""The toy2d protocols as one computation: every run of a request (method × start × seed)
is a row of one [R, 2] tensor of points, trained by the same steps as ``Trainer`` would
train each run alone, and written to the same run folder with the same files.

Why: a toy2d run through the trainer costs a few milliseconds per step, almost all of it
per-operation overhead on tensors of two numbers; a published protocol (CAGrad: 3 starts ×
100k steps; FAMO: 5 × 50k) for several methods then takes hours. Here one step evaluates
the losses, the per-task gradients, every method's update and the optimizer step for all
runs at once, so the overhead is paid once per step instead of once per run.

Identical results: each row goes through the operations that its own run would, on the same
values, in the same order. The task losses are ``Toy2d.point_losses`` on an [R, T, 2]
tensor holding each run's point once per task: loss (r, t) is task t's own loss graph of
run r (in the engine, too, each task evaluates the toy on its own), so one backward pass
gives every per-task gradient: aggregator rows start it from 1 (the engine's Jacobian loop,
one pass per task), weighting rows from w_t (the engine's backward of Σ_t w_t L_t, whose two
task contributions meet at x: added here). The optimizer is the run's own (built by the
trainer's ``build_optimizer``) over the [R, 2] tensor. Elementwise operations do not mix
rows, so a row's numbers are those of its run alone: float32 trajectories, curves and
metrics equal the per-run engine's bit for bit (tests/test_toy_batch.py; cagrad, whose
two-task dual is solved in closed form here, to float tolerance in general).

Methods (two tasks; the methods' own mathematics, batched over rows):

- ``ew``: weights 1.
- ``famo``: ``famo_weights`` and ``famo_logit_grad`` on [R, T] logits, the logits trained by
  their own Adam as in the method, after the step on the re-evaluated losses.
- ``pcgrad``: with two tasks each gradient is projected onto the other's normal plane when
  they conflict; the random order of the other tasks has one element, so nothing random
  remains. The arithmetic of ``pcgrad_weights`` on the 2×2 Gramian.
- ``mgda``: the analytic two-task min-norm point of ``methods/_min_norm.py`` (float64) with
  every ``normalization``.
- ``cagrad``: the dual over the segment w = (a, 1 − a) is a one-dimensional convex
  problem whose stationarity condition is a quadratic in a: solved exactly (float64),
  clipped to [0, 1]. The method's own solvers stop at a 1e-10 optimality gap, so weights
  agree to about that and trajectories to float tolerance, not bit for bit.
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
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmarks.toy2d import Toy2d
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


# --------------------------------------------------------------------------- method rows

class _Rows:
    """The rows [begin, end) of one method: ``kind`` weighting (weights from the losses,
    Σ w L backpropagated) or aggregator (weights and direction from the per-task gradients)."""

    kind = "weighting"
    known: frozenset[str] = frozenset()
    """Config fields this implementation honours; any other set away from its default is
    refused (a field the method gained later must not be silently ignored)."""
    solves = False

    def __init__(self, name: str, config, begin: int, end: int, device: torch.device):
        self.name, self.config, self.begin, self.end = name, config, begin, end
        self.rows = end - begin
        self.device = device

    def weights(self, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def aggregate(self, jac: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def after_step(self, prev: Tensor, new: Tensor) -> None:
        """After the optimizer step, with the losses before and after it (detached)."""


class _EW(_Rows):
    def weights(self, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)


class _FAMO(_Rows):
    known = frozenset({"lr", "weight_decay", "min_losses"})
    needs_after_step = True

    def __init__(self, name, config, begin, end, device):
        super().__init__(name, config, begin, end, device)
        from methods._weighting_utils import per_task_vector

        bounds = per_task_vector("method.famo.min_losses", config.min_losses, 2, 0.0)
        self.min_losses = bounds.float().to(device)
        self.logits = torch.nn.Parameter(torch.zeros(self.rows, 2, device=device))
        self.optimizer = torch.optim.Adam([self.logits], lr=config.lr,
                                          weight_decay=config.weight_decay)

    def weights(self, losses: Tensor) -> Tensor:
        from methods.famo import famo_weights

        return famo_weights(losses, self.logits.detach(), self.min_losses)

    def after_step(self, prev: Tensor, new: Tensor) -> None:
        from methods.famo import famo_logit_grad

        self.logits.grad = famo_logit_grad(self.logits.detach(), prev, new, self.min_losses)
        self.optimizer.step()


class _PCGrad(_Rows):
    kind = "aggregator"

    def aggregate(self, jac: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        # pcgrad_weights on two tasks: row i is projected off g_j (j ≠ i) when g_i·g_j < 0,
        # c_ij = −G_ij / G_jj, and w = the column sums of the coefficients.
        gram = jac @ jac.transpose(1, 2)
        dot = gram[:, 0, 1]
        conflict = dot < 0
        zero = torch.zeros_like(dot)
        off0 = torch.where(conflict, dot / gram[:, 0, 0], zero)  # c_10, row 1 onto g_0
        off1 = torch.where(conflict, dot / gram[:, 1, 1], zero)  # c_01, row 0 onto g_1
        w = torch.stack([1.0 + (0.0 - off0), (0.0 - off1) + 1.0], dim=1)
        return w, (w.unsqueeze(1) @ jac).squeeze(1)


class _MGDA(_Rows):
    kind = "aggregator"
    known = frozenset({"normalization", "max_iter", "tol"})
    solves = True

    def aggregate(self, jac: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        from methods.mgda import gradient_normalizers

        G = (jac @ jac.transpose(1, 2)).double()
        norm = self.config.normalization
        if norm != "none":
            n = torch.stack([gradient_normalizers(g, l, norm)
                             for g, l in zip(G, losses.double())])
            n = torch.where(n == 0, torch.ones_like(n), n)
            G = G / (n[:, :, None] * n[:, None, :])
        aa, ab, bb = G[:, 0, 0], G[:, 0, 1], G[:, 1, 1]
        # min_norm_two of methods/_min_norm.py, in its operation order
        denom = (aa + bb) - 2.0 * ab
        gamma = torch.where(denom <= 0.0, torch.ones_like(denom),
                            torch.clamp((bb - ab) / denom, 0.0, 1.0))
        w = torch.stack([gamma, 1.0 - gamma], dim=1).to(jac.dtype)
        return w, (w.unsqueeze(1) @ jac).squeeze(1)


class _CAGrad(_Rows):
    kind = "aggregator"
    known = frozenset({"c", "rescale", "tol", "solver", "scale"})
    exact = False

    @property
    def solves(self) -> bool:
        return self.config.c > 0

    def aggregate(self, jac: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        gram = jac @ jac.transpose(1, 2)
        if self.exact:
            from methods.cagrad import cagrad_weights

            w = torch.stack([cagrad_weights(g, cfg.c, cfg.rescale, cfg.tol, cfg.solver).weights
                             for g in gram]).to(jac.dtype)
        else:
            w = cagrad_two_task_weights(gram.double(), cfg.c, cfg.rescale).to(jac.dtype)
        if getattr(cfg, "scale", "mean") == "sum":
            w = w * jac.shape[1]
        return w, (w.unsqueeze(1) @ jac).squeeze(1)


def cagrad_two_task_weights(gram: Tensor, c: float, rescale: int) -> Tensor:
    """CAGrad's w' (methods/cagrad.py, ``cagrad_weights``) for R two-task Gramians [R, 2, 2]
    at once, the dual solved exactly.

    On w = (a, 1 − a) of the Gramian normalised by its largest diagonal entry, the dual is
    f(a) = a·p + (1 − a)·q + r·sqrt(D a² + 2E a + C + δ) with p, q = (G b)_0, (G b)_1,
    D = G00 − 2 G01 + G11, E = G01 − G11, C = G11, r = c·sqrt(Σ G b / 2 + δ). f is convex; its
    derivative vanishes where r (D a + E) = (q − p)·sqrt(Q(a)), i.e. at
    a = (k·sqrt(M / (D − k²)) − E) / D with k = (q − p)/r and M = D (C + δ) − E² (≥ 0); a
    stationary point exists only if k² < D, else f is monotone on [0, 1]. Clipping to [0, 1]
    gives the minimiser in every case."""
    from methods.cagrad import DELTA

    G = gram
    R_ = G.shape[0]
    mean = torch.full((2,), 0.5, dtype=G.dtype, device=G.device)
    divisor = (1.0, 1.0 + c * c, 1.0 + c)[rescale]
    scale = torch.maximum(G[:, 0, 0], G[:, 1, 1])
    if c == 0.0:
        return (mean / divisor).expand(R_, 2).clone()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    Gn = G / safe[:, None, None]
    A, B, C = Gn[:, 0, 0], Gn[:, 0, 1], Gn[:, 1, 1]
    p, q = (A + B) / 2, (B + C) / 2
    radius = c * torch.sqrt(torch.clamp((p + q) / 2, min=0.0) + DELTA)
    D, E = A - 2 * B + C, B - C
    k = (q - p) / radius
    M = torch.clamp(D * (C + DELTA) - E * E, min=0.0)
    room = D - k * k
    interior = (D > 0) & (room > 0)
    a = (k * torch.sqrt(M / torch.where(interior, room, torch.ones_like(room))) - E) / \
        torch.where(interior, D, torch.ones_like(D))
    # Without a stationary point f is monotone: the end where f' has the sign that lowers f.
    slope_at_half = (p - q) + radius * (D * 0.5 + E) / torch.sqrt(D * 0.25 + E + C + DELTA)
    edge = torch.where(slope_at_half > 0, torch.zeros_like(a), torch.ones_like(a))
    a = torch.where(interior, a, torch.where(D > 0, edge, torch.full_like(a, 0.5)))
    a = torch.clamp(a, 0.0, 1.0)
    w = torch.stack([a, 1.0 - a], dim=1)
    Gw = (Gn @ w.unsqueeze(2)).squeeze(2)
    g0_norm = torch.sqrt(torch.clamp((Gn @ mean).mul(mean).sum(1), min=0.0))
    gw_norm = torch.sqrt(torch.clamp((w * Gw).sum(1), min=0.0))
    lam = torch.where(gw_norm > 0, c * g0_norm / torch.where(gw_norm > 0, gw_norm,
                                                             torch.ones_like(gw_norm)),
                      torch.zeros_like(gw_norm))
    weights = (mean + lam[:, None] * w) / divisor
    return torch.where((scale > 0)[:, None], weights, (mean / divisor).expand(R_, 2))


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
        self.rows = torch.zeros(self.R, self.T, 2, requires_grad=True)
        self.optimizer = build_optimizer([self.x], first.train)
        self.scheduler = build_scheduler(self.optimizer, first.train)
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
                kernel = KERNELS[name](name, cfg, sub, stop, self.device)
                if isinstance(kernel, _CAGrad):
                    kernel.exact = exact_cagrad
                self.kernels.append(kernel)
                sub = stop
            begin = end
        self.weightings = [k for k in self.kernels if k.kind == "weighting"]
        self.aggregators = [k for k in self.kernels if k.kind == "aggregator"]
        self.after = [k for k in self.kernels if getattr(k, "needs_after_step", False)]
        self.step = 0
        self.step_time_s = 0.0

    def losses(self, grad: bool = True) -> Tensor:
        """[R, T] task losses at the current points; with ``grad``, differentiable w.r.t.
        ``self.rows``, which holds each run's point once per task (so one backward pass
        gives every run's per-task gradients)."""
        if not grad:
            with torch.inference_mode():
                return self.bench.point_losses(self.x.detach().unsqueeze(1).expand(
                    self.R, self.T, 2)).float()
        with torch.no_grad():
            self.rows.copy_(self.x.unsqueeze(1).expand(self.R, self.T, 2))
        return self.bench.point_losses(self.rows).float()

    def train_step(self, W: Tensor) -> tuple[Tensor, Tensor]:
        """One step of every run; returns the raw losses [R, T] and the applied weights.

        One backward pass from the [R, T] losses: aggregator rows start from 1 (the
        engine's Jacobian loop: one pass per task), weighting rows from w_t (the engine's
        backward of Σ_t w_t L_t, whose two task contributions meet at x, summed here)."""
        losses = self.losses()
        values = losses.detach()
        for k in self.weightings:
            W[k.begin:k.end] = k.weights(values[k.begin:k.end])
        self.rows.grad = None
        torch.autograd.backward(losses, W, inputs=[self.rows])
        per_task = self.rows.grad
        grad = self.grad
        for k in self.weightings:
            torch.add(per_task[k.begin:k.end, 0], per_task[k.begin:k.end, 1],
                      out=grad[k.begin:k.end])
        for k in self.aggregators:
            w, direction = k.aggregate(per_task[k.begin:k.end], values[k.begin:k.end])
            W[k.begin:k.end] = w
            grad[k.begin:k.end] = direction
        weights = W.clone()
        for k in self.aggregators:
            W[k.begin:k.end] = 1.0  # their rows start the next backward pass from 1
        self.optimizer.step()
        if self.after:
            new = self.losses(grad=False)
            for k in self.after:
                k.after_step(values[k.begin:k.end], new[k.begin:k.end])
        return values, weights

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
        W = torch.ones(self.R, self.T)
        solving = [k for k in self.aggregators if k.solves]
        pending_traj: list[tuple[int, Tensor, Tensor]] = []
        if every:
            first = self.losses(grad=False)
            pending_traj.append((0, self.x.detach().clone(), first.clone()))
        bar = tqdm(total=epochs * steps_per_epoch, leave=False, unit="step",
                   desc=f"toy2d batch of {self.R} runs", disable=None if progress else True)
        try:
            for epoch in range(epochs):
                loss_sum = weight_sum = curve_sum = None
                curve_count = 0
                pending_curve: list[tuple[int, Tensor]] = []
                start = time.perf_counter()
                for _ in range(steps_per_epoch):
                    values, weights = self.train_step(W)
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
                        now = self.losses(grad=False)
                        pending_traj.append((self.step, self.x.detach().clone(), now.clone()))
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

