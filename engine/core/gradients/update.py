"""``apply_update``: the method's answer turned into the gradients the optimizer applies,
one short path per kind of method. Penalties of regularizers are added to whatever the
primary method's path backpropagates."""
from __future__ import annotations

import torch
from torch import Tensor

from engine.core.gradients.context import TrainStepContext
from methods.base import Aggregated, Aggregator, Method, Regularizer, Weighting
from methods.contract import check_aggregated, check_penalty, check_weighted


def apply_update(primary: Method, regularizers: list[Regularizer], ctx: TrainStepContext,
                 method_params: list[Tensor], inspect_penalty=None
                 ) -> tuple[Tensor | None, Tensor | None]:
    """Compute the method's update and leave it in the parameters' ``.grad``.

    ``inspect_penalty(ctx, penalty)``, when given, sees the step's total penalty (with its
    graph) before anything is backpropagated (engine.core.saliency_log's diagnostics).
    Returns the weights that were applied (for the record) and the total penalty."""
    penalty = _penalty(regularizers, ctx)
    if inspect_penalty is not None and penalty is not None:
        inspect_penalty(ctx, penalty)
    if isinstance(primary, Weighting):
        weights = _weighting(primary, ctx, penalty, method_params)
    elif isinstance(primary, Aggregator):
        aggregate = _param_aggregator if primary.space == "param" else _rep_aggregator
        agg = aggregate(primary, ctx)
        _own_task_heads(ctx, agg, penalty)
        weights = agg.weights
    else:
        raise TypeError(f"{type(primary).__name__} is neither a weighting nor an aggregator")
    return (weights.detach() if weights is not None else None), \
        (penalty.detach() if penalty is not None else None)


def _penalty(regularizers: list[Regularizer], ctx: TrainStepContext) -> Tensor | None:
    """The sum of the regularizers' penalties (None when none applies this step)."""
    penalty = None
    for reg in regularizers:
        with ctx.asked_by(reg):
            term = check_penalty(reg, reg.penalty(ctx))
        if term is None:  # e.g. a regularizer still in its warm-up
            continue
        penalty = term if penalty is None else penalty + term
    if penalty is None:
        return None
    # Each rank's penalty covers its own samples; the global penalty is their mean.
    return ctx.engine.parallel.global_mean(penalty)


def _backward_penalty(ctx: TrainStepContext, penalty: Tensor | None) -> None:
    if penalty is not None:
        ctx.engine.precision.scaled(penalty).backward()


def _weighting(primary: Weighting, ctx: TrainStepContext, penalty: Tensor | None,
               method_params: list[Tensor]) -> Tensor:
    """Backpropagate the weighted objective: once through the network, or, where per-task
    passes already exist, as Σ_t w_t ∇L_t formed from them (w = ∂objective/∂L)."""
    engine = ctx.engine
    with ctx.asked_by(primary):
        out = check_weighted(primary, primary.weigh(ctx))
    weights = out.weights
    objective = out.objective if out.objective is not None else (weights * ctx.losses).sum()
    if not (ctx.jacobian_computed or ctx.heads_received):
        engine.precision.scaled(objective if penalty is None else objective + penalty).backward()
        return weights
    if ctx.jacobian_computed:
        engine.set_shared_combination(weights.detach(), ctx.jacobian())
    else:
        ctx.backward_rep_combination(weights.detach(), retain_graph=True)
    if ctx.heads_received:
        engine.scale_head_grads(weights.detach())
    heads = [] if ctx.heads_received else engine.all_head_params
    inputs = heads + [p for p in method_params if p.requires_grad]
    if inputs:  # heads may have no parameters (toy2d)
        torch.autograd.backward(engine.precision.scaled(objective), inputs=inputs,
                                retain_graph=penalty is not None)
    _backward_penalty(ctx, penalty)
    return weights


def _param_aggregator(primary: Aggregator, ctx: TrainStepContext) -> Aggregated:
    """The aggregated Jacobian is the shared parameters' gradient."""
    jacobian = ctx.jacobian_with_heads()
    with ctx.asked_by(primary):
        agg = check_aggregated(primary, primary.aggregate(jacobian, ctx), jacobian.shape[1])
    ctx.engine.set_shared_grads(agg.direction)
    return agg


def _rep_aggregator(primary: Aggregator, ctx: TrainStepContext) -> Aggregated:
    """The aggregated gradients w.r.t. Z, backpropagated from Z into the shared parameters."""
    engine = ctx.engine
    reps = ctx.reps()
    grads = torch.stack([g.reshape(-1) for g in ctx.rep_grads_with_heads()])
    with ctx.asked_by(primary):
        agg, local = engine.parallel.aggregate_reps(primary, grads, reps, ctx)
    torch.autograd.backward(reps[0], engine.precision.scaled(local).view_as(reps[0]),
                            inputs=engine.shared, retain_graph=True)
    return agg


def _own_task_heads(ctx: TrainStepContext, agg: Aggregated, penalty: Tensor | None) -> None:
    """After an aggregator: every head gets its own task's gradient (scaled where the
    aggregator says so), then the penalty's gradient is added."""
    engine = ctx.engine
    if engine.all_head_params and not ctx.heads_received:  # heads may have no parameters
        torch.autograd.backward(engine.precision.scaled(ctx.losses.sum()),
                                inputs=engine.all_head_params, retain_graph=penalty is not None)
    if agg.head_scales is not None:
        engine.scale_head_grads(agg.head_scales.detach())
    _backward_penalty(ctx, penalty)
