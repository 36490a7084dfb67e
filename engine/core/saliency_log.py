"""Task-saliency statistics of the shared representation during training, for any method
(``engine.saliency_every = N``; 0, the default, is off and leaves the config hash alone).

Every N-th training step, before the update, the saliencies S_t = ∂L_t/∂Z of the raw task
losses are taken (T backward passes through the heads, no graph kept) and the step logs,
through the epoch statistics (averaged per epoch under the train record's ``method`` in
``metrics.jsonl``):

- ``saliency.L_tsr``: the mean over samples and positions of the entropy over tasks of
  P_t = |Ŝ_t| / Σ_k |Ŝ_k| (Rep-MTL's TSR term, methods/_saliency.py, ε = 1e-8);
- ``saliency.task_entropy``: L_tsr / log T, as Rep-MTL logs it (0: every position serves
  one task; 1: every task equally salient everywhere);
- ``saliency.L_csa``: Rep-MTL's CSA term with its default options (τ = 0.1, stacked
  anchor, mean of the positives, negatives only), on batches of at least 2 samples;
- ``saliency.norm.<task>``: ‖S_t‖_F over the batch, the norm of the task's gradient with
  respect to Z (of a batch-mean loss, so it shrinks like 1/√B with the batch size);
- ``saliency.mean_abs.<task>``: the mean over samples and positions of |Ŝ_t|, the channel
  mean of S_t that TSR normalises (Rep-MTL's Eq. 4);
- with a regularizer's penalty (Rep-MTL and its compositions),
  ``saliency.penalty_ratio.<group>``: ‖∇penalty‖ / ‖∇Σ_t L_t‖ over the parameters of each
  group, ``encoder`` (the shared parameters) and ``head.<task>``: how hard the penalty
  pulls against the tasks' own gradient, where. It costs one more backward pass of the
  penalty (second order for Rep-MTL) and of the losses on the logged steps.

The gradients come from ``ctx.rep_grads(raw=True)``: ``autograd.grad`` with the graph
retained, nothing accumulated in ``.grad`` and no random numbers drawn, so the update, the
metrics and the checkpoint are those of the same run without logging (tested). On
multi-input benchmarks sample b of every task's batch is paired, as Rep-MTL pairs them
(docs/repmtl.md). In a data-parallel run each process uses its own samples; the first
process's statistics are written.
"""
from __future__ import annotations

import math

import torch

from methods import _saliency as sal

EPS = 1e-8
"""ε of the task distribution, Rep-MTL's default (``method.repmtl.eps``)."""
CSA_TAU = 0.1
"""τ of the logged L_csa, Rep-MTL's default (``method.repmtl.tau``)."""
PREFIX = "saliency."


class SaliencyLog:
    """Logs the statistics every ``every`` steps; see the module docstring."""

    def __init__(self, every: int, task_names: tuple[str, ...]):
        self.every = every
        self.task_names = task_names

    @classmethod
    def for_run(cls, every: int, task_names: tuple[str, ...], shared: bool,
                notes: list[str]) -> SaliencyLog | None:
        """The logger of a run, or None when off or impossible (the reason goes to
        ``notes``, which summary.json records)."""
        if not every:
            return None
        if not shared:
            notes.append("saliency statistics not recorded: the model has no shared "
                         "representation (one encoder per task)")
            return None
        if len(task_names) < 2:
            notes.append("saliency statistics not recorded: they compare tasks, and the "
                         "benchmark has one")
            return None
        return cls(every, task_names)

    def wants(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, ctx) -> None:
        """Log the statistics of this step's batch (``ctx``: the step's TrainStepContext)."""
        grads = ctx.rep_grads(raw=True)
        with torch.no_grad():
            S = sal.flatten_saliencies([g.detach().float() for g in grads])
            l_tsr = sal.tsr_loss(S, EPS)
            ctx.log(f"{PREFIX}L_tsr", l_tsr)
            ctx.log(f"{PREFIX}task_entropy", l_tsr / math.log(len(self.task_names)))
            if S[0].shape[0] >= 2:
                ctx.log(f"{PREFIX}L_csa", sal.csa_loss(S, CSA_TAU))
            for task, s in zip(self.task_names, S):
                ctx.log(f"{PREFIX}norm.{task}", torch.linalg.vector_norm(s))
                ctx.log(f"{PREFIX}mean_abs.{task}", s.mean(dim=1).abs().mean())

    def record_penalty(self, ctx, penalty: torch.Tensor) -> None:
        """Log ‖∇penalty‖ / ‖∇Σ_t L_t‖ per parameter group (``ctx``: the step's
        TrainStepContext; ``penalty`` with its graph). ``autograd.grad`` with the graphs
        retained: nothing is accumulated in ``.grad``, so the update is unchanged."""
        engine = ctx.engine
        groups = {"encoder": engine.shared,
                  **{f"head.{t}": engine.heads[t] for t in self.task_names}}
        params = [p for group in groups.values() for p in group]
        if not params:
            return
        of_penalty = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
        of_losses = torch.autograd.grad(ctx.losses.sum(), params, retain_graph=True,
                                        allow_unused=True)
        start = 0
        with torch.no_grad():
            for name, group in groups.items():
                span = slice(start, start + len(group))
                start += len(group)
                num, den = _norm(of_penalty[span]), _norm(of_losses[span])
                if den > 0:
                    ctx.log(f"{PREFIX}penalty_ratio.{name}", num / den)


def _norm(grads) -> torch.Tensor:
    """The 2-norm of a list of gradients (None: a parameter the loss does not reach)."""
    present = [g.detach().float().reshape(-1) for g in grads if g is not None]
    if not present:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.cat(present))
