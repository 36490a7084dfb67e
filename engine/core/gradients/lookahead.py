"""``Lookahead``: the model evaluated at parameter values other than its own, for the
bilevel methods (Auto-λ, MOML, FORUM) that look one or more steps ahead
(``Needs.lookahead``).

The values are substituted for the parameters during one forward pass
(``torch.func.functional_call``): the parameters themselves are never modified in place, so
the step's own graph (built before the method runs) stays valid, and nothing needs restoring.
Batch-norm running statistics are taken from copies: a lookahead pass leaves the model's
buffers exactly as they were (the reference implementations run their lookahead on a copy of
the model, whose statistics are thrown away too, or on the model itself, where a perturbed
pass moves them; the harness keeps them clean in both cases).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn


class Lookahead:
    """The model's trainable parameters in a fixed order, their losses at given values, and
    the values one step of the run's optimizer would give."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 losses_of: Callable[[nn.Module, Any], list[Tensor]]):
        self.model = model
        self.optimizer = optimizer
        self.losses_of = losses_of
        """``losses_of(module, batch)``: the T losses (as methods see them) of ``module``'s
        forward pass on ``batch``, each with its graph."""
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.names = _attribute_names(model, "_parameters")
        self.buffer_names = _attribute_names(model, "_buffers")
        self.buffers = list({id(b): b for b in model.buffers()}.values())

    def losses_at(self, values: list[Tensor] | None, batch: Any) -> Tensor:
        """[T] losses of ``batch`` with the parameters replaced by ``values`` (aligned with
        ``parameters``; None: their current values), differentiable w.r.t. ``values``."""
        if values is None:
            values = self.parameters
        if len(values) != len(self.parameters):
            raise ValueError(f"lookahead: {len(values)} values for {len(self.parameters)} "
                             f"parameters")
        # A parameter passed as its own value stays in place: substituting a tensor for
        # itself would detach its `.grad` (the engine's flat buffer views).
        state = {name: v for v, p in zip(values, self.parameters) if v is not p
                 for name in self.names[id(p)]}
        # Copies of the buffers take the batch-norm statistics' in-place updates.
        for buffer in self.buffers:
            copy = buffer.clone()
            state.update({name: copy for name in self.buffer_names[id(buffer)]})
        substituted = _Substituted(self.model, state)
        return torch.stack(self.losses_of(substituted, batch))

    def virtual_step(self, grads: list[Tensor | None], lr: float | None = None) -> list[Tensor]:
        """θ − α (m + g + λθ) for every parameter: the step the run's optimizer would take
        with gradient g at plain-SGD form, as Auto-λ's authors unroll it (α the current
        learning rate, or ``lr``; λ the weight decay; m the SGD momentum buffer times the
        momentum, zero for other optimizers or before the first step). A parameter with no
        gradient keeps its value."""
        values = []
        groups = self._groups()
        for p, g in zip(self.parameters, grads):
            group = groups[id(p)]
            alpha = group["lr"] if lr is None else lr
            step = torch.zeros_like(p) if g is None else g.detach().clone()
            if group.get("weight_decay", 0):
                step.add_(p.detach(), alpha=group["weight_decay"])
            if "momentum" in group and group["momentum"]:
                buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    step.add_(buf, alpha=group["momentum"])
            values.append(p.detach() - alpha * step)
        return values

    def learning_rate(self) -> float:
        """The current learning rate of the model's parameters (their first group)."""
        return self._groups()[id(self.parameters[0])]["lr"]

    def _groups(self) -> dict[int, dict]:
        """Each parameter's optimizer group (looked up afresh: loading a checkpoint replaces
        the group dictionaries)."""
        return {id(p): group for group in self.optimizer.param_groups for p in group["params"]}


class _Substituted:
    """Calls the model with substituted parameters and buffers (the module interface that
    ``losses_of`` uses: calling it on a batch)."""

    def __init__(self, model: nn.Module, state: dict[str, Tensor]):
        self.model, self.state = model, state

    def __call__(self, batch):
        return torch.func.functional_call(self.model, self.state, (batch,), tie_weights=False)


def _attribute_names(model: nn.Module, kind: str) -> dict[int, list[str]]:
    """For each parameter (or buffer, ``kind="_buffers"``), by identity: one name per module
    attribute that holds it. A module reachable by two paths (the model's ``last_shared``)
    is named once, since substituting its attribute under both names would restore the
    wrong tensor; a tensor held by two modules (tied weights) gets both."""
    names: dict[int, list[str]] = {}
    for prefix, module in model.named_modules():
        for attribute, tensor in getattr(module, kind).items():
            if tensor is not None:
                names.setdefault(id(tensor), []).append(f"{prefix}.{attribute}" if prefix
                                                        else attribute)
    return names
