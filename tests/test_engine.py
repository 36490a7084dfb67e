"""The gradient engine and the trainer: update paths, determinism, identical batches across
methods, divergence handling."""
import json

import pytest
import torch

from benchmarks.digits_tasks import DigitsTasks, DigitsTasksConfig
from engine.core.gradients.context import TrainStepContext
from engine.core.gradients.passes import GradientEngine
from engine.core.gradients.stats import EpochStats
from engine.core.gradients.update import apply_update
from engine.core.models import MultiTaskModel
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, Weighted, Weighting
from methods.ew import EqualWeighting
from methods.registry import METHODS, register_method
from tests.helpers import TINY_DIGITS, read_records, read_summary, tiny_run

TASKS = ("first", "second", "sum")


class MeanAggregator(Aggregator):
    description = "mean of the task gradients (test)"

    def aggregate(self, grads, ctx):
        return Aggregated(grads.mean(0), torch.full((grads.shape[0],), 1 / grads.shape[0]))


class MeanRepAggregator(MeanAggregator):
    needs = Needs(rep_grads=True, shared_representation=True)  # so its space is "rep"


class JacobianWeighting(Weighting):
    description = "fixed weights that asks for the Jacobian (test)"
    needs = Needs(jacobian=True)

    def weigh(self, ctx):
        ctx.jacobian()
        return Weighted(torch.tensor([0.5, 2.0, 0.1]))


class LastLayerWeighting(Weighting):
    """Fixed weights that asks for the last shared layer's task gradients, as GradNorm."""
    description = "fixed weights that asks for last-layer task gradients (test)"
    needs = Needs(task_grads=True)
    seen = None

    def weigh(self, ctx):
        LastLayerWeighting.seen = (ctx.task_grads(ctx.last_shared_params()),
                                   ctx.last_shared_params(), ctx.heads_received)
        return Weighted(torch.tensor([0.5, 2.0, 0.1]))


class FixedWeighting(Weighting):
    description = "fixed weights (test)"

    def weigh(self, ctx):
        return Weighted(torch.tensor([0.5, 2.0, 0.1]))


@pytest.fixture(scope="module")
def bench():
    config = DigitsTasksConfig(train_size=32, val_size=16, test_size=16)
    return DigitsTasks(config, None, torch.device("cpu"))


def step_grads(bench, method, separate=False, jacobian="loop"):
    torch.manual_seed(0)
    model = MultiTaskModel(bench, separate_encoders=separate).double()
    batch = next(bench.batches("train", 8, torch.Generator().manual_seed(0)))
    batch.inputs = batch.inputs.double()
    batch.targets["sum"] = batch.targets["sum"].double()
    engine = GradientEngine(model, TASKS, jacobian, 0, torch.device("cpu"))
    reps, preds = model(batch)
    losses = torch.stack([t.loss(preds[t.name], batch.targets[t.name]) for t in bench.tasks])
    ctx = TrainStepContext(engine=engine, batch=batch, representations=reps,
                           raw_losses=losses, losses=losses, step=0, epoch=0,
                           generator=torch.Generator().manual_seed(0), stats=EpochStats(),
                           loss_fn=None)
    apply_update(method, [], ctx, [])
    return model, losses, {n: p.grad.clone() for n, p in model.named_parameters()}


def per_task_grads(bench, task_index):
    torch.manual_seed(0)
    model = MultiTaskModel(bench).double()
    batch = next(bench.batches("train", 8, torch.Generator().manual_seed(0)))
    _, preds = model(batch.__class__(batch.inputs.double(), batch.targets))
    task = bench.tasks[task_index]
    target = batch.targets[task.name]
    loss = task.loss(preds[task.name], target.double() if target.is_floating_point() else target)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p))
            for n, g, p in zip(names, grads, model.parameters())}


def test_jacobian_loop_and_batched_agree(bench):
    torch.manual_seed(0)
    model = MultiTaskModel(bench).double()
    batch = next(bench.batches("train", 8, None))
    _, preds = model(batch.__class__(batch.inputs.double(), batch.targets))
    losses = torch.stack([t.loss(preds[t.name], batch.targets[t.name].double()
                                 if batch.targets[t.name].is_floating_point()
                                 else batch.targets[t.name]) for t in bench.tasks])
    loop = GradientEngine(model, TASKS, "loop", 0, torch.device("cpu")).jacobian(losses)
    batched_engine = GradientEngine(model, TASKS, "batched", 2, torch.device("cpu"))
    batched = batched_engine.jacobian(losses)
    assert batched_engine.fallback_reason is None
    assert loop.shape == (3, sum(p.numel() for p in model.shared_parameters()))
    torch.testing.assert_close(loop, batched, rtol=1e-10, atol=1e-12)


def test_aggregator_gives_shared_the_direction_and_heads_their_own_gradient(bench):
    method = MeanAggregator(MethodConfig(), TASKS)
    model, _, grads = step_grads(bench, method)
    singles = [per_task_grads(bench, i) for i in range(3)]
    for name in grads:
        if name.startswith("encoders."):
            expected = sum(s[name] for s in singles) / 3
        else:
            task = name.split(".")[1]
            expected = singles[TASKS.index(task)][name]
        torch.testing.assert_close(grads[name], expected, rtol=1e-9, atol=1e-12)


def test_rep_aggregator_backpropagates_through_the_encoder(bench):
    # The mean is linear, so averaging in Z and averaging in parameter space agree.
    _, _, rep = step_grads(bench, MeanRepAggregator(MethodConfig(), TASKS))
    _, _, param = step_grads(bench, MeanAggregator(MethodConfig(), TASKS))
    for name in rep:
        torch.testing.assert_close(rep[name], param[name], rtol=1e-9, atol=1e-12)


def test_weighting_via_jacobian_equals_plain_backward(bench):
    _, _, via_jacobian = step_grads(bench, JacobianWeighting(MethodConfig(), TASKS))
    _, _, plain = step_grads(bench, FixedWeighting(MethodConfig(), TASKS))
    for name in plain:
        torch.testing.assert_close(via_jacobian[name], plain[name], rtol=1e-9, atol=1e-12)


def test_weighting_via_task_gradients_equals_plain_backward(bench):
    # The per-task passes to the last shared layer also give Z's gradients and the heads'
    # own; the update is formed from them (no further pass through the heads) and must be
    # exactly that of the plain backward of Σ w_t L_t.
    model, _, via_passes = step_grads(bench, LastLayerWeighting(MethodConfig(), TASKS))
    _, _, plain = step_grads(bench, FixedWeighting(MethodConfig(), TASKS))
    for name in plain:
        torch.testing.assert_close(via_passes[name], plain[name], rtol=1e-9, atol=1e-12)
    task_grads, params, heads_received = LastLayerWeighting.seen
    assert heads_received  # the path under test, not the plain backward
    names = {id(p): n for n, p in model.named_parameters()}
    for t in range(3):
        single = per_task_grads(bench, t)
        expected = torch.cat([single[names[id(p)]].reshape(-1) for p in params])
        torch.testing.assert_close(task_grads[t], expected, rtol=1e-9, atol=1e-12)


def test_single_task_learning_trains_independent_encoders(bench):
    from methods.stl import SingleTask

    model, _, grads = step_grads(bench, SingleTask(MethodConfig(), TASKS), separate=True)
    assert len(model.encoders) == 3 and model.shared_parameters() == []
    # Encoder 2 sees only the loss of task "sum": its gradient is that task's alone.
    torch.manual_seed(0)
    fresh = MultiTaskModel(bench, separate_encoders=True).double()
    batch = next(bench.batches("train", 8, torch.Generator().manual_seed(0)))
    z = fresh.encoders[2](batch.inputs.double())
    loss = bench.tasks[2].loss(fresh.heads["sum"](z), batch.targets["sum"].double())
    expected = torch.autograd.grad(loss, list(fresh.encoders[2].parameters()))
    for g, (name, p) in zip(expected, fresh.encoders[2].named_parameters()):
        torch.testing.assert_close(grads[f"encoders.2.{name}"], g)


# ---------------------------------------------------------------- whole runs

def strip_timing(records):
    return [{k: v for k, v in r.items() if k != "step_time_s"} for r in records]


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    first = tiny_run("digits_tasks", "ew", tmp_path / "a", TINY_DIGITS + ["train.epochs=2"])[0]
    second = tiny_run("digits_tasks", "ew", tmp_path / "b", TINY_DIGITS + ["train.epochs=2"])[0]
    assert first.status == second.status == "complete"
    a, b = read_records(first.run_dir), read_records(second.run_dir)
    assert json.dumps(strip_timing(a)) == json.dumps(strip_timing(b))
    other_seed = tiny_run("digits_tasks", "ew", tmp_path / "c", TINY_DIGITS + ["train.epochs=2"],
                          seeds=(1,))[0]
    assert strip_timing(read_records(other_seed.run_dir)) != strip_timing(a)


@register_method("test_batch_fingerprint")
class BatchFingerprint(Weighting):
    description = "records an order-sensitive fingerprint of its batches (test)"

    def weigh(self, ctx):
        ctx.log("fingerprint", ctx.batch.inputs.double().sum() * (ctx.step + 1))
        return Weighted(torch.ones(3))


@register_method("test_batch_fingerprint_random")
class RandomBatchFingerprint(BatchFingerprint):
    description = "the same fingerprint, but draws random weights (test)"

    def weigh(self, ctx):
        ctx.log("fingerprint", ctx.batch.inputs.double().sum() * (ctx.step + 1))
        return Weighted(torch.rand(3, generator=ctx.generator) * 3)


def test_every_method_sees_the_same_batches_for_a_seed(tmp_path):
    overrides = TINY_DIGITS + ["train.epochs=2", "train.max_steps_per_epoch=3"]
    a = tiny_run("digits_tasks", "test_batch_fingerprint", tmp_path, overrides)[0]
    b = tiny_run("digits_tasks", "test_batch_fingerprint_random", tmp_path, overrides)[0]
    fa = [r["method"]["fingerprint"] for r in read_records(a.run_dir) if r["split"] == "train"]
    fb = [r["method"]["fingerprint"] for r in read_records(b.run_dir) if r["split"] == "train"]
    assert fa == fb and len(fa) == 2 and fa[0] != fa[1]


@register_method("test_explode")
class Explode(Weighting):
    description = "makes the parameters non-finite at its third step (test)"

    def weigh(self, ctx):
        scale = torch.tensor(float("inf") if ctx.step == 2 else 1.0)
        return Weighted(torch.ones(3) * scale)


def test_divergence_is_recorded_and_the_other_runs_go_on(tmp_path):
    from engine.runs.runner import build_requests, run_all

    overrides = TINY_DIGITS + ["train.max_steps_per_epoch=6"]
    requests = build_requests("digits_tasks", ["test_explode", "ew"], [0], "quick", overrides,
                              "cpu", None)
    outcomes = run_all(requests, tmp_path, progress=False)
    assert [o.status for o in outcomes] == ["diverged", "complete"]
    summary = read_summary(outcomes[0].run_dir)
    assert summary["status"] == "diverged"
    # Infinite weights at step 2 make the parameters NaN, so the losses of step 3 are.
    assert summary["diverged_step"] == 3
    assert "first" in summary["diverged_what"] and "non-finite" in summary["reason"]


def test_rep_aggregator_is_refused_on_multi_input(tmp_path):
    from benchmarks.base import MultiInputTensorBenchmark
    from engine.errors import UserError
    from engine.runs.runner import check_compatible
    from methods.registry import Composition

    register_method("test_mean_rep")(MeanRepAggregator) if "test_mean_rep" not in METHODS else None

    class Multi(MultiInputTensorBenchmark):
        name = "multi"

    with pytest.raises(UserError, match="multi-input"):
        check_compatible(Composition("test_mean_rep", ()), "test_mean_rep", Multi)


def test_unused_ew_is_default_primary():
    from methods.registry import parse_method

    assert parse_method("ew").primary == "ew"
    assert METHODS.get("ew") is EqualWeighting


def test_flat_gradients_round_trip_exactly_and_keep_device_and_dtype(bench):
    from engine.core.gradients.buffers import FlatGrads

    torch.manual_seed(0)
    model = MultiTaskModel(bench).double()
    params = model.shared_parameters()
    flat = FlatGrads(params)
    direction = torch.randn(flat.buffer.numel(), dtype=torch.float64)
    flat.buffer.copy_(direction)
    for p, piece in zip(params, direction.split(flat.sizes)):
        assert p.grad.dtype == p.dtype and p.grad.device == p.device and p.grad.shape == p.shape
        assert torch.equal(p.grad.reshape(-1), piece)
    # Backward accumulates into the same storage: reading the buffer is flattening.
    flat.zero()
    batch = next(bench.batches("train", 8, None))
    _, preds = model(batch.__class__(batch.inputs.double(), batch.targets))
    loss = bench.tasks[0].loss(preds["first"], batch.targets["first"])
    loss.backward()
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        bench.tasks[0].loss(model(batch.__class__(batch.inputs.double(), batch.targets))[1]["first"],
                            batch.targets["first"]), params)])
    assert torch.equal(flat.buffer, expected)
    assert all(p.grad.data_ptr() >= flat.buffer.data_ptr() for p in params)


def test_updates_leave_gradients_in_the_flat_buffers(bench):
    for method in (JacobianWeighting(MethodConfig(), TASKS), MeanAggregator(MethodConfig(), TASKS),
                   FixedWeighting(MethodConfig(), TASKS)):
        model, _, _ = step_grads(bench, method)
        buffer = model.shared_parameters()[0].grad
        start = buffer.untyped_storage().data_ptr()
        assert all(p.grad.untyped_storage().data_ptr() == start for p in model.shared_parameters())


def test_conflict_statistics_are_recorded_or_their_absence_is_said(tmp_path):
    overrides = TINY_DIGITS + ["engine.conflict_every=1"]
    (ew,) = tiny_run("digits_tasks", "ew", tmp_path, overrides)
    lines = (ew.run_dir / "conflict.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"first|second"' in lines[0]
    (stl,) = tiny_run("digits_tasks", "stl", tmp_path, overrides)
    assert stl.status == "complete"
    assert "no shared parameters" in read_summary(stl.run_dir)["notes"][0]
    assert not (stl.run_dir / "conflict.jsonl").exists()


def test_representation_conflicts_are_refused_on_multi_input():
    from engine.errors import UserError
    from engine.runs.runner import build_requests

    with pytest.raises(UserError, match="multi-input"):
        build_requests("digits_domains", ["ew"], [0], "quick", ["engine.conflict_space=rep"],
                       "cpu", None)


def test_a_contrastive_method_is_refused_on_a_batch_of_one_when_the_run_is_built(tmp_path):
    from engine.errors import UserError
    from engine.runs.runner import build_requests

    # toy2d trains on one dummy sample whatever the batch size: refused up front, no folder.
    with pytest.raises(UserError, match="repmtl needs training batches of at least 2 samples, "
                                        "but toy2d trains on batches of 1"):
        build_requests("toy2d", ["repmtl"], [0], "quick", ["train.batch_size=8"], "cpu", None)
    with pytest.raises(UserError, match=r"pcgrad\+repmtl_csa .* but train.batch_size=1"):
        build_requests("digits_tasks", ["pcgrad+repmtl_csa"], [0], "quick",
                       ["train.batch_size=1"], "cpu", None)
    # TSR alone and methods without a batch-wise term run on toy2d.
    assert len(build_requests("toy2d", ["repmtl_tsr", "pcgrad"], [0], "quick", [], "cpu",
                              None)) == 2
