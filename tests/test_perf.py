"""Performance machinery: the perf command end to end, mixed precision (bf16 autocast, fp16
loss scaling), channels_last, compile, and the slice-wise head scaling. No timing
assertions."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.digits_tasks import DigitsTasks, DigitsTasksConfig
from engine.core.amp import LossScaler
from engine.cli import main as cli_main
from engine.errors import ConfigError
from engine.core.gradients.context import TrainStepContext
from engine.core.gradients.passes import GradientEngine
from engine.core.gradients.stats import EpochStats
from engine.core.gradients.update import apply_update
from engine.core.models import MultiTaskModel
from engine.runs.perf import build_trainers, parse_scale
from engine.runs.runner import build_requests, make_benchmark
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, Weighted, Weighting
from methods.repmtl import RepMTL
from tests.helpers import TINY_DIGITS, read_records, tiny_run

TASKS = ("first", "second", "sum")
CPU = torch.device("cpu")
SCALE = 2.0 ** 10  # a power of two: scaling and unscaling are exact in floating point


@pytest.fixture(scope="module")
def bench():
    return DigitsTasks(DigitsTasksConfig(train_size=32, val_size=16, test_size=16), None, CPU)


class Capture(Aggregator):
    """The mean of the task gradients; keeps the Jacobian it was given."""

    description = "capture (test)"
    needs = Needs(jacobian=True)

    def aggregate(self, grads, ctx):
        self.seen = grads.clone()
        return Aggregated(grads.mean(0), head_scales=torch.tensor([0.5, 2.0, 1.0]))


class CaptureWeighting(Weighting):
    description = "fixed weights through the Jacobian (test)"
    needs = Needs(jacobian=True)

    def weigh(self, ctx):
        self.seen = ctx.jacobian().clone()
        return Weighted(torch.tensor([0.5, 2.0, 0.1]))


def one_step(bench, method, regularizers=(), scale=None, jacobian="loop"):
    """One engine step in float32; with ``scale``, fp16-style loss scaling at that fixed
    scale, the gradients unscaled afterwards as the trainer does."""
    torch.manual_seed(0)
    model = MultiTaskModel(bench)
    scaler = None
    if scale is not None:
        scaler = LossScaler(CPU, init_scale=scale)
    engine = GradientEngine(model, TASKS, jacobian, 0, CPU, scaler=scaler)
    batch = next(bench.batches("train", 8, torch.Generator().manual_seed(0)))
    reps, preds = model(batch)
    losses = torch.stack([t.loss(preds[t.name], batch.targets[t.name]) for t in bench.tasks])
    ctx = TrainStepContext(engine=engine, batch=batch, representations=reps,
                           raw_losses=losses, losses=losses, step=0, epoch=0,
                           generator=torch.Generator().manual_seed(0), stats=EpochStats(),
                           loss_fn=None)
    extra = {"rep_grads": torch.stack([g.detach() for g in ctx.rep_grads()]),
             "task_grads": ctx.task_grads(ctx.last_shared_params())}
    engine.zero_grad([])
    apply_update(method, list(regularizers), ctx, [])
    engine.unscale_grads([])
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, extra, scaler


@pytest.mark.parametrize("make", [lambda: Capture(MethodConfig(), TASKS),
                                  lambda: CaptureWeighting(MethodConfig(), TASKS)])
def test_loss_scaling_leaves_what_methods_see_and_the_update_unchanged(bench, make):
    plain_method, scaled_method = make(), make()
    # Rep-MTL: a penalty with second-order derivatives through the heads.
    plain, plain_extra, _ = one_step(bench, plain_method, [RepMTL(RepMTL.Config(), TASKS)])
    scaled, scaled_extra, scaler = one_step(bench, scaled_method, [RepMTL(RepMTL.Config(), TASKS)],
                                            scale=SCALE)
    # What the method saw is the unscaled Jacobian, not SCALE times it.
    torch.testing.assert_close(scaled_method.seen, plain_method.seen, rtol=1e-6, atol=0)
    for key in plain_extra:
        torch.testing.assert_close(scaled_extra[key], plain_extra[key], rtol=1e-6, atol=0)
    # And after unscaling, every gradient (shared, heads, penalty) is the unscaled one.
    for name in plain:
        torch.testing.assert_close(scaled[name], plain[name], rtol=1e-5, atol=1e-9)
    assert float(scaler.found_inf) == 0.0


def test_loss_scaling_really_scales_the_backward_passes(bench):
    # Without the final unscale the gradients are SCALE times the plain ones: the backward
    # passes ran on scaled losses (so fp16 gradients do not underflow).
    method = Capture(MethodConfig(), TASKS)
    plain, _, _ = one_step(bench, Capture(MethodConfig(), TASKS))
    torch.manual_seed(0)
    model = MultiTaskModel(bench)
    engine = GradientEngine(model, TASKS, "loop", 0, CPU, scaler=LossScaler(CPU, SCALE))
    batch = next(bench.batches("train", 8, torch.Generator().manual_seed(0)))
    reps, preds = model(batch)
    losses = torch.stack([t.loss(preds[t.name], batch.targets[t.name]) for t in bench.tasks])
    ctx = TrainStepContext(engine=engine, batch=batch, representations=reps,
                           raw_losses=losses, losses=losses, step=0, epoch=0,
                           generator=torch.Generator().manual_seed(0), stats=EpochStats(),
                           loss_fn=None)
    engine.zero_grad([])
    apply_update(method, [], ctx, [])
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad / SCALE, plain[name], rtol=1e-5, atol=1e-9)


def test_batched_jacobian_with_loss_scaling_is_unscaled(bench):
    plain_method, scaled_method = Capture(MethodConfig(), TASKS), Capture(MethodConfig(), TASKS)
    one_step(bench, plain_method, jacobian="loop")
    one_step(bench, scaled_method, scale=SCALE, jacobian="batched")
    torch.testing.assert_close(scaled_method.seen, plain_method.seen, rtol=1e-5, atol=1e-9)


def test_loss_scaler_backs_off_on_overflow_and_grows_after_clean_steps():
    scaler = LossScaler(CPU, init_scale=8.0, growth_interval=2)
    grads = [torch.tensor([1.0, float("inf")])]
    scaler.unscale_(grads)
    assert scaler.overflowed()
    scaler.update()
    assert float(scaler.scale) == 4.0 and not scaler.overflowed()
    for _ in range(2):
        scaler.unscale_([torch.ones(2)])
        scaler.update()
    assert float(scaler.scale) == 8.0
    torch.testing.assert_close(scaler.unscaled(torch.tensor([8.0], dtype=torch.float16)),
                               torch.tensor([1.0]))


def make_trainer(benchmark, method, overrides):
    (request,) = build_requests(benchmark, [method], [0], "quick", overrides, "cpu", None)
    bench = make_benchmark(request.config, CPU)
    trainer = build_trainers([request], CPU, bench)[method]
    batch = next(bench.batches("train", trainer.train_batch, torch.Generator().manual_seed(0)))
    return trainer, batch


@pytest.mark.parametrize("method", ["ew", "repmtl", "dbmtl"])
def test_fp16_overflow_skips_the_step_without_calling_it_divergence(method):
    # ew: found in the final gradients; Rep-MTL: in the representation gradients; DB-MTL:
    # in the Jacobian, before the method sees it (its EMA state stays untouched).
    trainer, batch = make_trainer("digits_tasks", method, [*TINY_DIGITS, "engine.amp=fp16"])
    trainer.scaler.scale.fill_(3e38)  # every scaled gradient overflows
    before = [p.detach().clone() for p in trainer.model.parameters()]
    _, weights, penalty, finite = trainer.train_step(batch, 0, EpochStats())
    assert bool(finite.all())  # the losses are fine; only the scaled gradients overflowed
    assert weights is None and penalty is None
    assert trainer.scaler.skipped_steps == 1
    assert float(trainer.scaler.scale) == pytest.approx(1.5e38, rel=1e-6)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    if method == "dbmtl":
        assert trainer.primary.ema is None and trainer.primary.steps_seen == 0
    # With a sane scale the next step trains.
    trainer.scaler.scale.fill_(2.0 ** 8)
    trainer.train_step(batch, 0, EpochStats())
    assert trainer.scaler.skipped_steps == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_end_to_end(tmp_path, amp):
    if amp == "fp16":
        with torch.autocast("cpu", dtype=torch.float16):  # fp16 autocast on this CPU
            assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float16
    for method in ("ew", "pcgrad", "repmtl"):
        (outcome,) = tiny_run("digits_tasks", method, tmp_path / method,
                              [*TINY_DIGITS, f"engine.amp={amp}"])
        assert outcome.status == "complete", outcome
        train = [r for r in read_records(outcome.run_dir) if r["split"] == "train"]
        assert all(math.isfinite(v) for v in train[0]["losses"].values())


def test_autocast_reaches_the_forward():
    trainer, batch = make_trainer("digits_tasks", "ew", [*TINY_DIGITS, "engine.amp=bf16"])
    reps, losses = trainer.compute_losses(batch)
    assert reps["first"].dtype == torch.bfloat16 and losses.dtype == torch.float32


def test_channels_last_model_and_inputs_train_like_the_default():
    tiny = ["train.batch_size=4", "data.train_size=8", "data.val_size=4", "data.test_size=4"]
    steps, losses, weights = {}, {}, {}
    for flag in ("false", "true"):
        trainer, batch = make_trainer("scenes", "pcgrad", [*tiny, f"engine.channels_last={flag}"])
        losses[flag] = trainer.compute_losses(batch)[1].detach()
        weights[flag] = trainer.train_step(batch, 0, EpochStats())[1]
        steps[flag] = trainer
    convs = [p for p in steps["true"].model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    # The gradients obey autograd's layout contract (1x1 kernels: both layouts coincide).
    assert all(p.grad.stride() == p.stride() for p in convs if p.shape[2:] != (1, 1))
    # Same function, same PCGrad decisions (its weights), same step up to rounding. The
    # convolutions sum in another order in channels_last, so a ReLU whose pre-activation lies
    # within rounding of zero may switch (one of 73,728 in this encoder with one thread):
    # that element's contribution then enters one gradient and not the other, a
    # discontinuity of the network, not of the layout. Elementwise equality of the gradients
    # is therefore not promised; each parameter's gradient agrees to well under 1% in norm
    # (a layout mistake, e.g. a kernel read in the wrong memory order, is off by ~100%).
    torch.testing.assert_close(losses["true"], losses["false"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights["true"], weights["false"], rtol=1e-5, atol=1e-6)
    for a, b in zip(steps["false"].model.parameters(), steps["true"].model.parameters()):
        assert float((a.grad - b.grad).norm()) <= 2e-2 * float(a.grad.norm()) + 1e-7
    # Both Jacobian paths read each parameter's block in its memory order.
    trainer = steps["true"]
    _, losses = trainer.compute_losses(batch)
    loop = GradientEngine(trainer.model, trainer.task_names, "loop", 0, CPU).jacobian(losses).clone()
    batched = GradientEngine(trainer.model, trainer.task_names, "batched", 0, CPU)
    torch.testing.assert_close(batched.jacobian(losses), loop, rtol=1e-4, atol=1e-7)
    assert batched.fallback_reason is None


def test_compile_trains_and_refuses_the_batched_jacobian_under_inductor():
    overrides = [*TINY_DIGITS, "engine.compile=true", "engine.compile_backend=aot_eager"]
    trainer, batch = make_trainer("digits_tasks", "pcgrad", overrides)
    eager, _ = make_trainer("digits_tasks", "pcgrad", TINY_DIGITS)
    for tr in (trainer, eager):
        for _ in range(2):
            tr.train_step(batch, 0, EpochStats())
    assert trainer.engine.jacobian_path == "loop"
    for a, b in zip(trainer.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert list(trainer.model.state_dict()) == list(eager.model.state_dict())
    with pytest.raises(ConfigError, match="engine.compile.*batched"):
        build_requests("digits_tasks", ["pcgrad"], [0], "quick",
                       ["engine.compile=true", "engine.jacobian=batched"], "cpu", None)


def test_head_scales_multiply_each_head_slice(bench):
    torch.manual_seed(0)
    model = MultiTaskModel(bench)
    engine = GradientEngine(model, TASKS, "loop", 0, CPU)
    assert engine.head_slices is not None
    engine.specific_grads.buffer.copy_(torch.randn(engine.specific_grads.buffer.numel()))
    before = {t: [p.grad.clone() for p in engine.heads[t]] for t in TASKS}
    engine.scale_head_grads(torch.tensor([0.5, 3.0, -1.0]))
    for scale, t in zip((0.5, 3.0, -1.0), TASKS):
        for old, p in zip(before[t], engine.heads[t]):
            torch.testing.assert_close(p.grad, old * scale)


def test_perf_command_writes_ratios_and_floors(tmp_path, capsys):
    out = tmp_path / "perf"
    args = ["perf", "-b", "digits_tasks", "-m", "uw", "pcgrad", "mgda_ub", "--steps", "2",
            "--warmup", "1", "--out", str(out)]
    args += [arg for override in TINY_DIGITS for arg in ("--set", override)]
    assert cli_main([*args, "--no-memory"]) == 0
    (json_path,) = out.glob("*.json")
    result = json.loads(json_path.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"ew", "uw", "pcgrad", "mgda_ub", "floor:jacobian", "floor:rep", "data"}
    assert rows["ew"]["ratio_to_ew"] == 1.0
    assert rows["pcgrad"]["floor"] == "floor:jacobian" and rows["pcgrad"]["ratio_to_floor"] > 0
    assert rows["mgda_ub"]["floor"] == "floor:rep" and "floor" not in rows["uw"]
    assert all(r["median_s"] > 0 and r["steps"] == 2 for r in rows.values())
    assert 0 <= result["data_fraction_of_ew_step"]
    md = next(out.glob("*.md")).read_text()
    assert "floor:jacobian" in md and "× ew" in md
    # The docs' table with each method's target (benchmarks/scripts/perf_doc_table.py).
    spec = importlib.util.spec_from_file_location(
        "perf_doc_table", Path(__file__).parents[1] / "benchmarks/scripts/perf_doc_table.py")
    doc_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc_table)
    lines = {line.split(" | ")[0].strip("| "): line for line in doc_table.table(result).splitlines()}
    assert "≤ 1.10 × ew" in lines["uw"] and "≤ 1.15 × floor" in lines["pcgrad"]
    assert "≤ 2.00 × ew" in lines["mgda_ub"] and lines["ew"].count("|") == 11


def test_perf_memory_and_scaling(tmp_path):
    out = tmp_path / "perf"
    base = ["perf", "-b", "synthetic", "--steps", "2", "--warmup", "1", "--out", str(out),
            "--set", "data.train_size=64", "--set", "data.sigmas=[]", "--set", "train.batch_size=16"]
    assert cli_main([*base, "-m", "ew", "--set", "data.num_tasks=2"]) == 0
    result = json.loads(next(out.glob("synthetic-quick-*.json")).read_text())
    ew = next(r for r in result["rows"] if r["name"] == "ew")
    assert ew["peak_memory_bytes"] is not None and ew["memory_ratio_to_ew"] == 1.0
    png = tmp_path / "scale.png"
    assert cli_main([*base, "-m", "ew", "pcgrad", "--scale", "data.num_tasks=2,3",
                     "--plot", str(png)]) == 0
    scaled = json.loads(next(out.glob("synthetic-scale-*.json")).read_text())
    assert [p["tasks"] for p in scaled["points"]] == [2, 3]
    assert scaled["points"][0]["rows"]["pcgrad"]["reference"] == "floor:jacobian"
    assert set(scaled["slopes"]) >= {"ew", "pcgrad", "floor:jacobian"}
    assert png.stat().st_size > 1000


def test_cpu_peak_counts_the_tensors_alive_together():
    from engine.core.step_memory import cpu_peak_bytes

    def step():
        a = torch.empty(1_000_000)          # 4 MB
        b = torch.empty(500_000)            # + 2 MB: the peak
        del a, b
        c = torch.empty(1_200_000)          # 4.8 MB alone
        del c

    peak = cpu_peak_bytes(step, 2)
    assert 6_000_000 <= peak < 6_100_000


def test_second_order_floor_is_measured_for_rep_mtl(tmp_path):
    out = tmp_path / "perf"
    assert cli_main(["perf", "-b", "synthetic", "-m", "repmtl", "uw", "--steps", "2", "--warmup", "1",
                     "--out", str(out), "--set", "data.train_size=64",
                     "--set", "train.batch_size=16"]) == 0
    rows = {r["name"]: r for r in json.loads(next(out.glob("*.json")).read_text())["rows"]}
    assert rows["repmtl"]["floor"] == "floor:second_order"
    assert rows["repmtl"]["ratio_to_floor"] > 0 and rows["repmtl"]["memory_ratio_to_floor"] > 0
    assert rows["floor:second_order"]["peak_memory_bytes"] > 0


def test_scale_option_is_checked():
    from engine.errors import UserError

    assert parse_scale("data.num_tasks=2, 4,8") == ("data.num_tasks", ["2", "4", "8"])
    for bad in ("data.num_tasks", "data.num_tasks=4", "=1,2"):
        with pytest.raises(UserError, match="KEY=V1,V2"):
            parse_scale(bad)


def test_flat_buffer_round_trip_keeps_channels_last_layout_dtype_and_device():
    from engine.core.gradients.buffers import FlatGrads

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)),
              torch.nn.Parameter(torch.randn(5, dtype=torch.float32))]
    flat = FlatGrads(params)
    direction = torch.randn(flat.buffer.numel())
    flat.buffer.copy_(direction)
    for p, piece in zip(params, direction.split(flat.sizes)):
        assert p.grad.stride() == p.stride() and p.grad.dtype == p.dtype
        assert p.grad.device == p.device and p.grad.untyped_storage().data_ptr() == \
            flat.buffer.untyped_storage().data_ptr()
        # The block holds the gradient in the parameter's memory order.
        memory_order = p.grad.permute(0, 2, 3, 1).reshape(-1) if p.dim() == 4 else p.grad
        assert torch.equal(memory_order, piece)
    # Accumulation lands in the buffer (what backward does to an existing .grad).
    flat.zero()
    (params[0] * 2).sum().backward()
    assert torch.equal(flat.buffer[:108], torch.full((108,), 2.0))


def test_per_task_passes_run_only_their_own_head():
    trainer, batch = make_trainer("digits_tasks", "mgda_ub", TINY_DIGITS)
    calls = {t: 0 for t in trainer.task_names}
    hooks = [trainer.model.heads[t].register_full_backward_hook(
        lambda *_, t=t: calls.__setitem__(t, calls[t] + 1)) for t in trainer.task_names]
    reps, parts = trainer.compute_task_losses(batch)
    losses = torch.stack(parts)
    ctx = TrainStepContext(engine=trainer.engine, batch=batch, representations=reps,
                           raw_losses=losses, losses=losses, step=0, epoch=0,
                           generator=torch.Generator().manual_seed(0), stats=EpochStats(),
                           loss_fn=None, raw_parts=parts, parts=parts)
    separate = ctx.rep_grads()
    assert calls == {t: 1 for t in trainer.task_names}
    jac = ctx.jacobian().clone()
    assert calls == {t: 2 for t in trainer.task_names}
    # The same gradients as from the elements of the stacked vector (which run every head).
    stacked = TrainStepContext(engine=trainer.engine, batch=batch, representations=reps,
                               raw_losses=losses, losses=losses, step=0, epoch=0,
                               generator=torch.Generator().manual_seed(0), stats=EpochStats(),
                               loss_fn=None)
    for a, b in zip(separate, stacked.rep_grads()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(stacked.jacobian(), jac)
    assert calls == {t: 2 + 2 * len(calls) for t in trainer.task_names}
    for hook in hooks:
        hook.remove()


def test_each_kind_of_method_is_measured_against_its_floor():
    from types import SimpleNamespace

    from engine.runs.perf import floor_for
    from methods.registry import METHODS

    def make(name, **config):
        cls = METHODS.get(name)
        return cls(cls.Config(**config), ("a", "b"))

    def floor(primary, *regularizers):
        return floor_for(SimpleNamespace(primary=primary, regularizers=list(regularizers)))

    assert floor(make("gradnorm")) == "floor:rep"  # Needs.task_grads: the last shared layer
    assert floor(make("gradnorm", layer="all")) == "floor:jacobian"
    assert floor(make("mgda_ub")) == "floor:rep"
    assert floor(make("pcgrad")) == "floor:jacobian"
    assert floor(make("ew"), make("repmtl")) == "floor:second_order"
    assert floor(make("pcgrad"), make("repmtl")) == "floor:jacobian"
    assert floor(make("uw")) is None


def test_iqr_uses_inclusive_quartiles_from_two_steps_on():
    from engine.runs.perf import Timing

    assert Timing("one", [1.0]).iqr == 0.0
    assert Timing("two", [1.0, 3.0]).iqr == 1.0
    assert Timing("three", [1.0, 2.0, 3.0]).iqr == 1.0
