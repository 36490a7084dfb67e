"""What the bilevel methods (Auto-λ, MOML, FORUM) share: gradients of one loss w.r.t. every
model parameter as one flat vector, the vector split back into the parameters' shapes, the
softmax Jacobian of their task-weight logits, and the logits' own Adam."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def flat_grad(loss: Tensor, params: list[Tensor], retain_graph: bool = True) -> Tensor:
    """∂loss/∂params as one flat vector (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)])


def task_grads(losses: Tensor, params: list[Tensor]) -> Tensor:
    """[T, N]: the flat gradient of every task's loss w.r.t. every parameter."""
    return torch.stack([flat_grad(loss, params) for loss in losses.unbind()])


def unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """``flat`` cut into tensors shaped like ``like``."""
    return [part.view_as(p) for part, p in zip(flat.split([p.numel() for p in like]), like)]


def softmax_jacobian(weights: Tensor) -> Tensor:
    """∂softmax(α)/∂α at softmax(α) = ``weights``: diag(a) − a aᵀ (symmetric)."""
    return torch.diag(weights) - torch.outer(weights, weights)


class LogitWeights(nn.Module):
    """Task weights softmax(α) with α trained by an Adam of their own (LibMTL's bilevel
    weights: α starts at 1/T, so the weights start equal). Not a parameter of the run's
    optimizer; the Adam state is saved with the method."""

    def __init__(self, num_tasks: int, lr: float):
        super().__init__()
        self.logits = nn.Parameter(torch.full((num_tasks,), 1.0 / num_tasks))
        self.optimizer = torch.optim.Adam([self.logits], lr=lr)

    def weights(self) -> Tensor:
        return torch.softmax(self.logits.detach(), dim=-1)

    def step(self, grad: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad.detach().to(self.logits.dtype)
        self.optimizer.step()

    def get_extra_state(self) -> Any:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
