"""2-D convolutions whose second-order backward is fast, for the heads of methods that
differentiate through the heads' backward pass (Rep-MTL's saliencies S_t = ∂L_t/∂Z).

Autograd's built-in convolution computes S_t through ``convolution_backward``, and the
backward of *that* node (``_convolution_double_backward``) forms the weight gradient as a
convolution of the transposed activations with the transposed upstream gradient as its
kernel (a kernel the size of the feature map). On the CPU that costs about three times the
ordinary weight gradient for the ASPP heads' dilated 3×3 convolutions (on the paper's NYUv2
model: 181 ms against 66 ms per convolution at batch 2), plus transposing copies.

Here the input gradient is a transposed convolution, an ordinary differentiable operation:
its own backward is an ordinary convolution (w.r.t. the upstream gradient) and an ordinary
weight gradient. The values are those of the built-in operation (a test compares first and
second derivatives).

``convert_convolutions(module)`` switches every eligible ``nn.Conv2d`` of a module to this
implementation in place (parameters, buffers and state_dict keys unchanged).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _will_run(node) -> bool:
    """Whether the backward pass now running uses the gradient sent along ``node`` (an
    input's edge). Built-in operations know which of their outputs a pass needs; a custom
    Function has to ask the engine, or it would compute a weight gradient in every
    saliency pass, where only the input gradient is wanted."""
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # a leaf under autograd.grad, or no such API
        return True


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding,
                dilation, groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        wanted = [ctx.needs_input_grad[i] and _will_run(ctx.next_functions[i][0]) for i in range(3)]
        grad_x = grad_w = grad_b = None
        if wanted[0]:
            w = weight.to(grad.dtype)  # autocast: the forward ran in a lower precision
            grad_x = F.conv_transpose2d(grad, w, None, stride, padding,
                                        _output_padding(x, grad, w, stride, padding, dilation),
                                        groups, dilation).to(x.dtype)
        if wanted[1]:
            # Differentiable under create_graph (built-in double backward; nothing here
            # differentiates the heads' weight gradients, so that path is not the hot one).
            grad_w = torch.ops.aten.convolution_backward(
                grad, x.to(grad.dtype), weight.to(grad.dtype), None, stride, padding, dilation,
                False, [0, 0], groups, [False, True, False])[1].to(weight.dtype)
        if wanted[2] and ctx.has_bias:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def _output_padding(x: Tensor, grad: Tensor, weight: Tensor, stride, padding, dilation) -> list[int]:
    """What the transposed convolution must add so that its output has x's spatial size
    (a strided convolution maps several input sizes to one output size)."""
    out = []
    for d in range(2):
        produced = ((grad.shape[2 + d] - 1) * stride[d] - 2 * padding[d]
                    + dilation[d] * (weight.shape[2 + d] - 1) + 1)
        out.append(x.shape[2 + d] - produced)
    return out


class SecondOrderConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the fast second-order backward of this module."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # The weight enters through a view, so that its edge is a graph node the engine
        # can be asked about inside autograd.grad (see _will_run).
        return _Conv2d.apply(input, weight.view_as(weight), bias, self.stride, self.padding,
                             self.dilation, self.groups)


def convertible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def convert_convolutions(module: nn.Module) -> int:
    """Switch every plain zero-padded ``nn.Conv2d`` inside ``module`` to
    ``SecondOrderConv2d`` in place; returns how many were switched."""
    count = 0
    for child in module.modules():
        if convertible(child):
            child.__class__ = SecondOrderConv2d
            count += 1
    return count


@contextlib.contextmanager
def second_order_convolutions(module: nn.Module):
    """``convert_convolutions`` for the duration of a block, then the built-in ones again
    (for measuring a reference computation on a model that trains with the built-in ones)."""
    converted = [child for child in module.modules() if convertible(child)]
    for child in converted:
        child.__class__ = SecondOrderConv2d
    try:
        yield
    finally:
        for child in converted:
            child.__class__ = nn.Conv2d
