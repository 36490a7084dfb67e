"""model.arch: the architectures beyond hard parameter sharing (engine/core/architectures.py,
docs/architectures.md): config hashes, what trains under which method, shapes, the split of
shared and task-specific parameters, and the refusals."""
from __future__ import annotations

import json

import pytest
import torch

from engine.core.architectures import DSelectGate, smooth_step
from engine.core.config import ARCHS, ModelConfig
from engine.core.trainer import Trainer
from engine.errors import UserError
from engine.runs.runner import build_requests, make_benchmark
from methods._saliency import flatten_saliencies
from tests.helpers import TINY_DIGITS, read_records, tiny_run

CPU = torch.device("cpu")
TINY_SYNTHETIC = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=16",
                  "data.train_size=64", "data.val_size=32", "data.test_size=32"]
SMALL = ["model.num_experts=2"]
TINY = {"digits_tasks": TINY_DIGITS, "synthetic": TINY_SYNTHETIC}
ONE_Z = ("mmoe", "cgc", "ple", "dselect_k")
"""The architectures with one representation common to all tasks."""
PER_TASK_Z = ("cross_stitch", "mtan", "ltb")
"""The architectures with one representation per task."""
BRANCHING = ["model.branch_warmup=0"]
"""ltb with the branches sampled from the first epoch on (tiny runs have one epoch, which
the default warm-up covers)."""


def _hash(benchmark: str, method: str, overrides: list[str]) -> str:
    (request,) = build_requests(benchmark, [method], [0], "quick", overrides, "cpu", None,
                                check_data=False)
    return request.config.hash()


def _trainer(arch: str, method: str = "ew", benchmark: str = "digits_tasks",
             extra: tuple[str, ...] = ()) -> tuple[Trainer, object]:
    overrides = [*TINY[benchmark], f"model.arch={arch}", *SMALL, *extra]
    (request,) = build_requests(benchmark, [method], [0], "quick", overrides, "cpu", None)
    bench = make_benchmark(request.config, CPU)
    trainer = Trainer(request.config, bench, request.composition, CPU, None, progress=False)
    batch = next(bench.batches("train", 16, torch.Generator().manual_seed(0)))
    return trainer, batch


# --------------------------------------------------------------------------- config and hash

def test_default_model_section_leaves_config_hashes_unchanged():
    # The hashes of these configurations before the model section existed.
    before = {("digits_tasks", "ew"): "bfa86f7a", ("digits_tasks", "pcgrad"): "b179e1bd",
              ("digits_tasks", "repmtl"): "051f4f67", ("synthetic", "nashmtl"): "ed3fa506",
              ("scenes", "repmtl"): "4f4fa450", ("digits_domains", "stl"): "6cd9ac8c"}
    for (benchmark, method), value in before.items():
        assert _hash(benchmark, method, []) == value
        assert _hash(benchmark, method, ["model.arch=hps"]) == value


def test_a_non_default_model_section_changes_the_hash():
    base = _hash("digits_tasks", "ew", [])
    mmoe = _hash("digits_tasks", "ew", ["model.arch=mmoe"])
    assert mmoe != base
    assert _hash("digits_tasks", "ew", ["model.arch=mmoe", "model.num_experts=8"]) != mmoe
    assert _hash("digits_tasks", "ew", ["model.arch=cgc"]) not in (base, mmoe)


def test_config_json_records_the_model_section(tmp_path):
    (outcome,) = tiny_run("digits_tasks", "ew", tmp_path, TINY_DIGITS + ["model.arch=dselect_k"])
    recorded = json.loads((outcome.run_dir / "config.json").read_text())["model"]
    assert recorded == {**ModelConfig().__dict__, "arch": "dselect_k"}
    assert recorded["num_experts"] == 4 and recorded["num_nonzeros"] == 2
    (outcome,) = tiny_run("digits_tasks", "ew", tmp_path / "hps", TINY_DIGITS)
    recorded = json.loads((outcome.run_dir / "config.json").read_text())["model"]
    assert recorded == ModelConfig().__dict__


@pytest.mark.parametrize("override, message", [
    ("model.arch=moe", "model.arch"),
    ("model.num_experts=0", "model.num_experts"),
    ("model.stitch_self=1.5", "model.stitch_self"),
    ("model.branch_warmup=1.5", "model.branch_warmup"),
    ("model.branch_tau=0", "model.branch_tau"),
    ("model.experts=3", "unknown key 'model.experts'"),
])
def test_bad_model_values_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        _hash("digits_tasks", "ew", [override])


def test_model_fields_added_later_leave_the_hashes_of_other_architectures_unchanged():
    # The hashes of these configurations before model.branch_* existed.
    before = {("digits_tasks", "ew", "model.arch=mmoe"): "f1656d98",
              ("digits_tasks", "ew", "model.arch=cross_stitch"): "596f21ec",
              ("digits_tasks", "ew", "model.arch=mtan"): "2bde30ac",
              ("digits_tasks", "ew", "model.arch=ple"): "4f1df843"}
    for (benchmark, method, arch), value in before.items():
        assert _hash(benchmark, method, [arch]) == value
    assert _hash("synthetic", "pcgrad", ["model.arch=cross_stitch",
                                         "model.stitch_self=0.8"]) == "817ef8ed"
    ltb = _hash("digits_tasks", "ew", ["model.arch=ltb"])
    assert _hash("digits_tasks", "ew", ["model.arch=ltb", "model.branch_tau=0.1"]) != ltb
    assert _hash("digits_tasks", "ew", ["model.arch=ltb", "model.branch_warmup=0"]) != ltb


def test_dselect_k_cannot_select_more_experts_than_it_has():
    with pytest.raises(UserError, match="num_nonzeros=3 exceeds model.num_experts=2"):
        _hash("digits_tasks", "ew", ["model.arch=dselect_k", "model.num_experts=2",
                                     "model.num_nonzeros=3"])


# --------------------------------------------------------------------------- hps unchanged

def test_hps_runs_give_the_metrics_they_gave_before(tmp_path):
    # Measured with the code before model.arch existed (same overrides, seed 0).
    expected = {
        "digits_tasks": ("ew", TINY_DIGITS, {"first": 2.321418046951294,
                                             "second": 2.295931339263916,
                                             "sum": 1.21465265750885},
                         {"mae": 3.978780746459961, "rmse": 4.581595397668748}),
        "synthetic": ("pcgrad", ["train.epochs=1", "train.max_steps_per_epoch=3"],
                      {"f1": 0.5783941040039062, "f2": 5764.2665},
                      {"mae": 0.69927359375, "rmse": 0.7605222557969622}),
    }
    for benchmark, (method, overrides, losses, first_metrics) in expected.items():
        (outcome,) = tiny_run(benchmark, method, tmp_path / benchmark, overrides)
        test = [r for r in read_records(outcome.run_dir) if r["split"] == "test"][-1]
        assert test["losses"] == pytest.approx(losses, rel=1e-6)
        metric_task = "sum" if benchmark == "digits_tasks" else "f1"
        assert test["metrics"][metric_task] == pytest.approx(first_metrics, rel=1e-6)


# --------------------------------------------------------------------------- training

REFUSED = {"cross_stitch": "own representation", "mtan": "no representation that carries",
           "ltb": "own representation"}
EXTRA = {"ltb": BRANCHING}


@pytest.mark.parametrize("bench_name", ["digits_tasks", "synthetic"])
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "hps"])
@pytest.mark.parametrize("method", ["ew", "pcgrad", "nashmtl", "repmtl"])
def test_every_architecture_trains_or_refuses_with_the_reason(tmp_path, bench_name, arch, method):
    overrides = TINY[bench_name] + [f"model.arch={arch}"] + SMALL + EXTRA.get(arch, [])
    if method == "repmtl" and arch in REFUSED:
        with pytest.raises(UserError, match=f"repmtl works on one representation Z common to "
                                            f"all tasks, but model.arch={arch} .*{REFUSED[arch]}"):
            tiny_run(bench_name, method, tmp_path, overrides)
        return
    (outcome,) = tiny_run(bench_name, method, tmp_path, overrides)
    assert outcome.status == "complete", outcome.reason
    records = read_records(outcome.run_dir)
    assert all(v == v for r in records if r["split"] == "test" for v in r["losses"].values())


@pytest.mark.parametrize("arch", PER_TASK_Z)
@pytest.mark.parametrize("method", ["mgda_ub", "aligned_mtl_ub", "graddrop"])
def test_representation_level_aggregators_are_refused_without_one_z(tmp_path, arch, method):
    with pytest.raises(UserError, match=f"{method} works on one representation Z"):
        tiny_run("digits_tasks", method, tmp_path, TINY_DIGITS + [f"model.arch={arch}"])


@pytest.mark.parametrize("arch", PER_TASK_Z)
def test_engine_settings_on_one_z_are_refused_without_one_z(tmp_path, arch):
    for setting in ("engine.conflict_space=rep", "engine.saliency_every=1"):
        with pytest.raises(UserError, match=f"model.arch={arch}"):
            tiny_run("digits_tasks", "ew", tmp_path, TINY_DIGITS + [f"model.arch={arch}", setting])


@pytest.mark.parametrize("bench_name, arch, overrides, message", [
    ("digits_domains", "mmoe", [], "digits_domains is multi-input"),
    ("toy2d", "cgc", [], "toy2d's model is a point it draws"),
    ("digits_tasks", "mmoe", [], None),
    ("scenes", "ple", ["data.encoder=mobilenet_v2"], "needs the encoder split into blocks"),
    ("scenes", "mtan", ["data.encoder=mobilenet_v2"], "needs the encoder split into blocks"),
    ("scenes", "ltb", ["data.encoder=mobilenet_v2"], "needs the encoder split into blocks"),
    ("digits_domains", "ltb", [], "digits_domains is multi-input"),
    ("office31", "ltb", [], "office31 is multi-input"),
    ("toy2d", "ltb", [], "toy2d's model is a point it draws"),
    ("scenes", "ltb", [], None),
])
def test_benchmarks_refuse_architectures_they_cannot_build(bench_name, arch, overrides, message):
    run = lambda: build_requests(bench_name, ["ew"], [0], "quick",  # noqa: E731
                                 [f"model.arch={arch}", *overrides], "cpu", None, check_data=False)
    if message is None:
        run()
        return
    with pytest.raises(UserError, match=message):
        run()


def test_single_task_learning_keeps_hard_parameter_sharing():
    with pytest.raises(UserError, match="stl trains one encoder per task; model.arch=mmoe"):
        _hash("digits_tasks", "stl", ["model.arch=mmoe"])


def test_ple_refuses_more_levels_than_blocks():
    with pytest.raises(UserError, match="model.levels=4: digits_tasks's encoder has 3 blocks"):
        _trainer("ple", extra=("model.levels=4",))


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("arch, experts", [("mmoe", 2), ("cgc", 2), ("dselect_k", 2),
                                           ("ple", 2 + 3 * 1)])
def test_mixtures_stack_the_experts_on_a_last_axis_common_to_all_tasks(arch, experts):
    trainer, batch = _trainer(arch)
    reps, preds = trainer.model(batch)
    z = reps["first"]
    assert all(reps[t] is z for t in trainer.task_names)
    assert z.shape == (16, 32, 5, 5, experts)
    assert preds["first"].shape == (16, 10) and preds["sum"].shape[0] == 16
    # Rep-MTL's view: the encoder's channels stay channels; positions are (H, W, expert).
    assert flatten_saliencies([z])[0].shape == (16, 32, 25 * experts)


@pytest.mark.parametrize("arch", PER_TASK_Z)
def test_cross_stitch_mtan_and_ltb_give_each_task_its_own_representation(arch):
    trainer, batch = _trainer(arch, extra=tuple(EXTRA.get(arch, ())))
    reps, preds = trainer.model(batch)
    assert len({id(z) for z in reps.values()}) == 3
    assert all(z.shape == (16, 32, 5, 5) for z in reps.values())
    assert preds["second"].shape == (16, 10)


def test_vector_encoders_stack_experts_as_positions():
    trainer, batch = _trainer("mmoe", benchmark="synthetic")
    reps, _ = trainer.model(batch)
    z = next(iter(reps.values()))
    assert z.dim() == 3 and z.shape[-1] == 2


# --------------------------------------------------------------------------- parameter split

def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mmoe_shares_exactly_the_experts():
    trainer, batch = _trainer("mmoe", "pcgrad")
    model, engine = trainer.model, trainer.engine
    encoder_size = _count(trainer.benchmark.make_encoder())
    assert engine.num_shared == _count(model.encoders[0]) == 2 * encoder_size
    gates = {t: list(model.heads[t].gate.parameters()) for t in trainer.task_names}
    assert all(id(p) in {id(q) for q in engine.heads[t]} for t in gates for p in gates[t])
    _, losses = trainer.compute_task_losses(batch)
    jacobian = engine.jacobian(torch.stack(losses))
    assert jacobian.shape == (3, 2 * encoder_size)
    # A gate receives no gradient from another task's loss.
    grads = torch.autograd.grad(losses[0], gates["second"] + gates["first"], retain_graph=True,
                                allow_unused=True)
    assert all(g is None for g in grads[:len(gates["second"])])
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(gates["second"]):])


def test_cgc_task_experts_are_task_specific():
    trainer, batch = _trainer("cgc")
    model, engine = trainer.model, trainer.engine
    assert engine.num_shared == 2 * _count(trainer.benchmark.make_encoder())
    own = {t: list(model.heads[t].experts.parameters()) for t in trainer.task_names}
    first_head = {id(q) for q in engine.heads["first"]}
    assert own["first"] and all(id(p) in first_head for p in own["first"])
    _, losses = trainer.compute_task_losses(batch)
    grads = torch.autograd.grad(losses[0], own["second"], allow_unused=True)
    assert all(g is None for g in grads)


def _jacobian_columns(trainer, batch):
    """A function giving, for a module of the shared parameters, the columns of the task
    losses' Jacobian that belong to its parameters (T × its parameter count)."""
    engine = trainer.engine
    _, losses = trainer.compute_task_losses(batch)
    jacobian = engine.jacobian(torch.stack(losses))
    offsets, start = {}, 0
    for p in engine.shared:
        offsets[id(p)] = (start, start + p.numel())
        start += p.numel()
    return lambda module: torch.cat([jacobian[:, slice(*offsets[id(p)])]
                                     for p in module.parameters()], dim=1)


def test_ple_last_level_task_experts_are_reached_by_their_own_task_only():
    trainer, batch = _trainer("ple", "pcgrad")
    extraction = trainer.model.encoders[0]
    columns = _jacobian_columns(trainer, batch)
    second_own_last = columns(extraction.own[-1][1])
    assert second_own_last[0].abs().sum() == 0 and second_own_last[2].abs().sum() == 0
    assert second_own_last[1].abs().sum() > 0
    # Below the last level every expert is reached by every task (through the shared gate).
    first_own_below = columns(extraction.own[0][0])
    assert all(first_own_below[t].abs().sum() > 0 for t in range(3))


def test_cross_stitch_columns_and_stitches_are_shared_and_start_as_in_the_paper():
    trainer, batch = _trainer("cross_stitch", "pcgrad")
    stitch = trainer.model.encoders[0]
    alpha = stitch.stitches[0].detach()
    assert torch.allclose(alpha.diagonal(), torch.full((3,), 0.9))
    assert torch.allclose(alpha.sum(dim=1), torch.ones(3))
    assert alpha[0, 1] == pytest.approx(0.05)
    assert trainer.engine.num_shared == _count(stitch)
    _, losses = trainer.compute_task_losses(batch)
    jacobian = trainer.engine.jacobian(torch.stack(losses))
    # Every task's loss reaches every column (the first column's first layer).
    first = stitch.columns[0][0][0].weight.numel()
    assert all(jacobian[t, :first].abs().sum() > 0 for t in range(3))


def test_mtan_shares_the_backbone_and_keeps_attention_task_specific():
    trainer, batch = _trainer("mtan", "gradnorm")
    model, engine = trainer.model, trainer.engine
    assert engine.num_shared == _count(trainer.benchmark.make_encoder())
    units = list(model.heads["first"].units.parameters())
    assert all(id(p) in {id(q) for q in engine.heads["first"]} for p in units)
    assert model.rep_is_cut is False
    # GradNorm's task gradients go straight to the parameters (Z_t is not a cut here):
    # the step takes the direct path and the update is finite.
    from engine.core.gradients.stats import EpochStats
    values, weights, _, finite = trainer.train_step(batch, 0, EpochStats())
    assert bool(finite.all()) and weights is not None


def test_ltb_shares_every_copy_and_the_logits_and_follows_the_sampled_tree():
    trainer, batch = _trainer("ltb", "pcgrad", extra=tuple(BRANCHING))
    engine, tree = trainer.engine, trainer.model.encoders[0]
    assert tree.logits.shape == (2, 3, 3)  # digits_tasks: 3 blocks, so 2 branchings; 3 tasks
    encoder_size = _count(trainer.benchmark.make_encoder())
    assert engine.num_shared == 3 * encoder_size + tree.logits.numel() == _count(tree)
    assert any(p is tree.logits for p in engine.shared)
    # Logits far beyond any Gumbel noise: every child's parent is column 0.
    with torch.no_grad():
        tree.logits.zero_()
        tree.logits[..., 0] = 50.0
    columns = _jacobian_columns(trainer, batch)
    first = columns(tree.columns[0][0])
    assert all(first[t].abs().sum() > 0 for t in range(3))
    for column in tree.columns[1:]:  # the other copies of the first two blocks are unused
        assert columns(column[0]).abs().sum() == 0 and columns(column[1]).abs().sum() == 0
    for t, column in enumerate(tree.columns):  # a task's copy of the last block: its loss only
        last = columns(column[2])
        assert last[t].abs().sum() > 0
        assert all(last[u].abs().sum() == 0 for u in range(3) if u != t)


def test_ltb_branches_are_all_ones_in_the_warmup_then_one_hot_samples():
    trainer, batch = _trainer("ltb")
    model = trainer.model
    logits = model.encoders[0].logits
    model.set_epoch(0, 100)
    assert model.in_warmup()
    assert torch.equal(model.branching(), torch.ones(2, 3, 3))
    _, losses = trainer.compute_task_losses(batch)
    assert torch.autograd.grad(sum(losses), logits, allow_unused=True) == (None,)
    model.set_epoch(2, 300)  # the warm-up: epochs below 1/100 of the run
    assert model.in_warmup()
    model.set_epoch(1, 100)
    assert not model.in_warmup()
    assert model.temperature() == pytest.approx(0.05 * 100 / 2 ** 0.5)
    samples = [model.branching() for _ in range(20)]
    for alpha in samples:
        torch.testing.assert_close(alpha.sum(dim=-1), torch.ones(2, 3))
        assert bool(((alpha == 0) | ((alpha - 1).abs() < 1e-6)).all())
    assert len({tuple(a.argmax(dim=-1).flatten().tolist()) for a in samples}) > 1
    # The straight-through gradient reaches the logits.
    _, losses = trainer.compute_task_losses(batch)
    (grad,) = torch.autograd.grad(sum(losses), logits)
    assert grad.abs().sum() > 0
    # The samples come from the run's torch generator.
    torch.manual_seed(5)
    drawn = [model.branching() for _ in range(3)]
    torch.manual_seed(5)
    assert all(torch.equal(a, model.branching()) for a in drawn)
    # Evaluation: every child's most probable parent, without noise.
    with torch.no_grad():
        logits.copy_(torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0)))
    model.eval()
    expected = torch.nn.functional.one_hot(logits.argmax(dim=-1), 3).float()
    assert torch.equal(model.branching(), expected) and torch.equal(model.branching(), expected)


def test_a_resumed_ltb_run_equals_an_uninterrupted_one(tmp_path):
    import os

    from engine.runs.runner import execute
    from tests.helpers import read_summary

    # Epoch 0 is the warm-up; epochs 1 and 2 sample, at the temperature of their epoch.
    (request,) = build_requests("digits_tasks", ["ew"], [0], "quick",
                                [*TINY_DIGITS, "train.epochs=3", "model.arch=ltb",
                                 "model.branch_warmup=0.2"], "cpu", None)
    outcome = execute(request, tmp_path, progress=False)
    assert outcome.status == "complete", outcome.reason
    run_dir = outcome.run_dir
    full = read_records(run_dir)
    # Back to the end of epoch 1, as if killed during epoch 2.
    os.replace(run_dir / "checkpoint.prev.pt", run_dir / "checkpoint.pt")
    summary = read_summary(run_dir)
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    assert execute(request, tmp_path, progress=False).status == "complete"
    assert read_summary(run_dir)["resumed_from_epoch"] == 2

    def comparable(records):
        return [{k: v for k, v in r.items() if k != "step_time_s"} for r in records]

    assert comparable(read_records(run_dir)) == comparable(full)
    # The trainer gave the model its epoch: past the warm-up the logits were trained.
    from engine.core.checkpoint import read_checkpoint

    logits = read_checkpoint(run_dir / "checkpoint.pt")["model"]["encoders.0.logits"]
    assert logits.abs().sum() > 0


@pytest.mark.parametrize("arch", ["mmoe", "ple", "dselect_k", "cross_stitch", "mtan", "ltb"])
def test_batched_jacobian_equals_the_loop(arch):
    trainer, batch = _trainer(arch, "pcgrad",
                              extra=("engine.jacobian=batched", *EXTRA.get(arch, ())))
    _, losses = trainer.compute_task_losses(batch)
    batched = trainer.engine.jacobian(torch.stack(losses)).clone()
    assert trainer.engine.jacobian_path == "batched"
    trainer.engine.jacobian_path = "loop"
    loop = trainer.engine.jacobian(torch.stack(losses), parts=losses)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- DSelect-k's gate

def test_smooth_step_is_0_and_1_outside_the_band_and_cubic_inside():
    t = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0], dtype=torch.float64)
    s = smooth_step(t, gamma=1.0)
    assert s.tolist()[:3] == [0.0, 0.0, 0.5] and s.tolist()[-2:] == [1.0, 1.0]
    assert s[3].item() == pytest.approx(-2 * 0.25 ** 3 + 1.5 * 0.25 + 0.5)


@pytest.mark.parametrize("experts, total", [(4, 1.0), (8, 1.0)])
def test_dselect_gate_weights_are_a_distribution_for_power_of_two_experts(experts, total):
    torch.manual_seed(0)
    gate = DSelectGate(6, experts, k=2, gamma=1.0)
    w = gate(torch.randn(5, 6))
    assert w.shape == (5, experts) and bool((w >= 0).all())
    torch.testing.assert_close(w.sum(dim=1), torch.full((5,), total))
    # At initialisation every bit is near 1/2: every expert is about equally likely.
    torch.testing.assert_close(w, torch.full_like(w, 1 / experts), atol=0.05, rtol=0)


def test_dselect_gate_selects_one_expert_when_its_bits_saturate():
    gate = DSelectGate(3, 4, k=1, gamma=1.0)
    with torch.no_grad():
        gate.z.weight.zero_()
        gate.z.bias.copy_(torch.tensor([5.0, -5.0]))  # bits (1, 0): expert 1
    w = gate(torch.randn(2, 3))
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 2))


@pytest.mark.parametrize("arch, rep_floor", [("mmoe", True), ("cross_stitch", False),
                                             ("mtan", False), ("ltb", False)])
def test_perf_takes_the_representation_floor_only_with_one_z(arch, rep_floor):
    from engine.runs.perf import build_trainers, make_steppers

    requests = build_requests("digits_tasks", ["ew", "gradnorm"], [0], "quick",
                              [*TINY_DIGITS, f"model.arch={arch}", *SMALL], "cpu", None)
    bench = make_benchmark(requests[0].config, CPU)
    steppers = make_steppers(build_trainers(requests, CPU, bench), floors=True)
    assert ("floor:rep" in steppers) == rep_floor
    batch = next(bench.batches("train", 16, torch.Generator().manual_seed(0)))
    for step in steppers.values():
        step(batch)


@pytest.mark.parametrize("arch", ["ple", "mtan", "ltb"])
def test_architecture_runs_are_deterministic(tmp_path, arch):
    overrides = TINY_DIGITS + [f"model.arch={arch}"] + SMALL + EXTRA.get(arch, [])
    tests = []
    for i in range(2):
        (outcome,) = tiny_run("digits_tasks", "pcgrad", tmp_path / str(i), overrides)
        tests.append([r for r in read_records(outcome.run_dir) if r["split"] == "test"])
    assert tests[0] == tests[1]


def test_a_checkpoint_restores_the_architecture_exactly():
    a, batch = _trainer("cgc")
    b, _ = _trainer("cgc", extra=("train.lr=0.5",))  # other config, same seed: same weights
    from engine.core.gradients.stats import EpochStats
    a.train_step(batch, 0, EpochStats())
    b.model.load_state_dict(a.model.state_dict())
    a.model.eval()
    b.model.eval()
    pa, pb = a.model(batch)[1], b.model(batch)[1]
    assert all(torch.equal(pa[t], pb[t]) for t in pa)


def test_sweeps_grid_over_architectures_and_refuse_a_pair_with_its_reason(tmp_path, capsys):
    from engine.cli import main

    text = ('benchmarks = ["digits_tasks"]\nmethods = ["ew", "repmtl"]\nseeds = [0]\n'
            '[grid]\n"model.arch" = ["hps", "mmoe"{extra}]\n')
    path = tmp_path / "s.toml"
    path.write_text(text.format(extra=""))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "4 runs: 0 complete, 0 failed, 0 diverged, 4 pending" in capsys.readouterr().out
    path.write_text(text.format(extra=', "cross_stitch"'))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "model.arch=cross_stitch gives every task its own" in capsys.readouterr().err


def test_saliency_maps_refuse_runs_of_other_architectures(tmp_path):
    from engine.runs.saliency import Unusable, load_run

    (outcome,) = tiny_run("digits_tasks", "ew", tmp_path, TINY_DIGITS + ["model.arch=mmoe"])
    with pytest.raises(Unusable, match="model.arch=mmoe: saliency maps are drawn for hard"):
        load_run(outcome.run_dir)
