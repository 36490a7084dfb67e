"""The method contract checked at each step: what ``weigh``, ``aggregate`` and ``penalty``
return (methods/base.py). A wrong type or shape is refused in one line naming the method and
what was expected, instead of failing later inside autograd. Shapes only: nothing here
reads a value, so the checks cost no host synchronisation."""
from __future__ import annotations

from torch import Tensor

from engine.errors import ContractError
from methods.base import Aggregated, Method, Weighted


def _shape(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"{type(value).__name__}"


def _refuse(method: Method, hook: str, expected: str, got: object) -> ContractError:
    return ContractError(f"method {method.name or type(method).__name__}: {hook}() must return "
                         f"{expected}; got {_shape(got)} (see docs/plugins.md)")


def _vector(value: object, length: int) -> bool:
    return isinstance(value, Tensor) and tuple(value.shape) == (length,)


def check_weighted(method: Method, out: object) -> Weighted:
    T = method.num_tasks
    if not isinstance(out, Weighted):
        raise _refuse(method, "weigh", "Weighted(weights=[T], objective=None)", out)
    if not _vector(out.weights, T):
        raise _refuse(method, "weigh", f"Weighted whose weights are a tensor of shape [{T}]",
                      out.weights)
    if out.objective is not None and not (isinstance(out.objective, Tensor)
                                          and out.objective.dim() == 0):
        raise _refuse(method, "weigh", "Weighted whose objective is None or a scalar tensor",
                      out.objective)
    return out


def check_aggregated(method: Method, out: object, width: int) -> Aggregated:
    T = method.num_tasks
    if not isinstance(out, Aggregated):
        raise _refuse(method, "aggregate", f"Aggregated(direction=[{width}], weights=[{T}] or "
                                           f"None)", out)
    if not _vector(out.direction, width):
        raise _refuse(method, "aggregate", f"Aggregated whose direction is a tensor of shape "
                                           f"[{width}] (the gradients' width)", out.direction)
    for field in ("weights", "head_scales"):
        value = getattr(out, field)
        if value is not None and not _vector(value, T):
            raise _refuse(method, "aggregate", f"Aggregated whose {field} are None or a tensor "
                                               f"of shape [{T}]", value)
    return out


def check_penalty(method: Method, value: object) -> Tensor | None:
    if value is not None and not (isinstance(value, Tensor) and value.dim() == 0):
        raise _refuse(method, "penalty", "a scalar tensor (0-dim) or None", value)
    return value
