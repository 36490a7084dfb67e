"""The heads' convolutions with a fast second-order backward (engine/core/second_order.py) give
the built-in convolution's first and second derivatives."""
import copy

import pytest
import torch
from torch import nn

from engine.core.second_order import SecondOrderConv2d, convert_convolutions

CASES = {
    "3x3": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "dilated": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "strided, odd size": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "grouped 1x1 without bias": dict(in_channels=4, out_channels=6, kernel_size=1, groups=2,
                                     bias=False),
    "rectangular": dict(in_channels=4, out_channels=3, kernel_size=(3, 1), padding=(1, 0),
                        stride=(1, 2)),
}


def derivatives(conv: nn.Module, x: torch.Tensor, head_out: torch.Tensor, r: torch.Tensor):
    """First derivatives of a loss through ``conv`` and second derivatives of a penalty
    on its input gradient (what Rep-MTL differentiates), w.r.t. x and every parameter."""
    x = x.clone().requires_grad_()
    loss = (torch.tanh(conv(x)) * head_out).sum()
    params = [x, *conv.parameters()]
    first = torch.autograd.grad(loss, params, retain_graph=True)
    (saliency,) = torch.autograd.grad(loss, x, create_graph=True)
    second = torch.autograd.grad((saliency * r).sum() + loss, params)
    return first, second


@pytest.mark.parametrize("case", list(CASES))
def test_first_and_second_derivatives_match_the_built_in_convolution(case):
    torch.manual_seed(0)
    reference = nn.Conv2d(**CASES[case]).double()
    fast = copy.deepcopy(reference)
    assert convert_convolutions(fast) == 1 and isinstance(fast, SecondOrderConv2d)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    out = reference(x)
    head_out, r = torch.randn_like(out), torch.randn_like(x)
    for got, want in zip(derivatives(fast, x, head_out, r), derivatives(reference, x, head_out, r)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_saliency_pass_does_not_compute_weight_gradients(monkeypatch):
    # Inside autograd.grad(loss, x) only the input gradient is wanted; the engine is asked.
    calls = []
    original = torch.ops.aten.convolution_backward

    class Spy:
        def __call__(self, *args, **kwargs):
            calls.append(args[-1])
            return original(*args, **kwargs)

    monkeypatch.setattr(torch.ops.aten, "convolution_backward", Spy())
    conv = SecondOrderConv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    torch.autograd.grad(conv(x).square().sum(), x, create_graph=True)
    assert calls == []
    conv(x).square().sum().backward()
    assert len(calls) == 1 and conv.weight.grad is not None and x.grad is not None


def test_only_plain_zero_padded_convolutions_are_converted():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding="same"),
                          nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_convolutions(model) == 1
    assert [type(m).__name__ for m in model] == ["SecondOrderConv2d", "Conv2d", "Conv2d", "ReLU"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("method, overrides, converted", [
    ("repmtl", [], True), ("pcgrad+repmtl_csa", [], True), ("ew", [], False),
    ("repmtl", ["engine.head_convs=builtin"], False)])
def test_trainer_converts_the_heads_only_for_second_order_methods(method, overrides, converted):
    from engine.runs.runner import build_requests, make_benchmark
    from engine.core.trainer import Trainer

    (request,) = build_requests("scenes", [method], [0], "quick",
                                ["data.train_size=8", "data.val_size=4", "data.test_size=4", "train.batch_size=4",
                                 *overrides], "cpu", None)
    device = torch.device("cpu")
    trainer = Trainer(request.config, make_benchmark(request.config, device), request.composition,
                      device, None, progress=False)
    head_convs = [m for m in trainer.model.heads.modules() if isinstance(m, nn.Conv2d)]
    encoder_convs = [m for m in trainer.model.encoders.modules() if isinstance(m, nn.Conv2d)]
    assert head_convs and all(isinstance(m, SecondOrderConv2d) == converted for m in head_convs)
    assert not any(isinstance(m, SecondOrderConv2d) for m in encoder_convs)


def test_cpu_memory_reuse_applies_on_glibc():
    import platform

    from engine.core.cpu_malloc import reuse_freed_memory

    applied = reuse_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert reuse_freed_memory() == applied  # once per process


def test_second_order_convolutions_are_switched_back_after_the_block():
    from engine.core.second_order import second_order_convolutions

    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with second_order_convolutions(model):
        assert [type(m) for m in model] == [SecondOrderConv2d, nn.ReLU, SecondOrderConv2d]
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Conv2d]


@pytest.mark.parametrize("choice, applied", [("reuse", True), ("system", False)])
def test_cpu_malloc_option_decides_whether_memory_is_kept(monkeypatch, choice, applied):
    import engine.core.trainer
    from engine.runs.runner import build_requests, make_benchmark
    from engine.core.trainer import Trainer

    calls = []
    monkeypatch.setattr(engine.core.trainer, "reuse_freed_memory", lambda: calls.append(1))
    (request,) = build_requests("digits_tasks", ["ew"], [0], "quick",
                                ["data.train_size=16", "data.val_size=8", "data.test_size=8",
                                 "train.batch_size=8", f"engine.cpu_malloc={choice}"], "cpu", None)
    device = torch.device("cpu")
    Trainer(request.config, make_benchmark(request.config, device), request.composition,
            device, None, progress=False)
    assert bool(calls) == applied
