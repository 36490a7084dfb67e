"""Flat gradient buffers: one tensor whose slices are the ``.grad`` of a list of parameters."""
from __future__ import annotations

import torch
from torch import Tensor


class FlatGrads:
    """A flat buffer whose slices are the ``.grad`` of a list of parameters.

    Backward passes accumulate into the slices in place, so flattening the gradients of
    all parameters is reading the buffer and writing a direction back is one copy: no
    per-parameter work in the training step. Each slice has its parameter's memory layout
    (channels_last parameters get channels_last gradients, as autograd's layout contract
    wants), so a parameter's block of the buffer is in its memory order."""

    def __init__(self, params: list[Tensor]):
        self.params = params
        self.sizes = [p.numel() for p in params]
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1:
            raise ValueError(f"parameters of one group must share a dtype, got {sorted(map(str, dtypes))}")
        self.buffer = (torch.zeros(sum(self.sizes), dtype=params[0].dtype, device=params[0].device)
                       if params else None)
        self.contiguous = all(p.is_contiguous() for p in params)
        self._views = ([grad_view(piece, p) for piece, p in zip(self.buffer.split(self.sizes), params)]
                       if params else [])
        self.bind()

    def bind(self) -> None:
        for p, view in zip(self.params, self._views):
            p.grad = view

    def zero(self) -> None:
        if self.buffer is None:
            return
        if self.params[0].grad is None or self.params[0].grad.data_ptr() != self.buffer.data_ptr():
            self.bind()  # something replaced the gradients (e.g. loading a state)
        self.buffer.zero_()


def grad_view(piece: Tensor, p: Tensor) -> Tensor:
    """``piece`` (a 1-D slice) viewed with the shape and memory layout of ``p``."""
    if p.is_contiguous():
        return piece.view_as(p)
    if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last):
        return piece.as_strided(p.shape, p.stride())
    raise ValueError(f"a parameter of shape {tuple(p.shape)} has strides {p.stride()}: only "
                     f"contiguous and channels_last parameters are supported")
