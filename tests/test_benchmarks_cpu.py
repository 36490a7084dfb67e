"""The CPU-sized benchmarks that need no download: data checks, determinism of the
generated data, golden values of the toy functions, and tiny end-to-end runs through the
runner and through the command line."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.digits_domains import DigitsDomains, DigitsDomainsConfig
from benchmarks.scenes import Scenes, ScenesConfig
from benchmarks.synthetic import Synthetic, SyntheticConfig, ideal_weights
from benchmarks.toy2d import Toy2d, Toy2dConfig
from datasets.domains import DOMAINS, render
from datasets.scenes import CLASSES, generate_scenes
from datasets.toy import pareto_distance, toy_losses
from engine.errors import ConfigError
from tests.helpers import read_records, read_summary, tiny_run

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

TINY = {
    "toy2d": ["train.epochs=2", "data.steps_per_epoch=5", "data.trajectory_every=2"],
    "synthetic": ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=16",
                  "data.train_size=32", "data.val_size=16", "data.test_size=16",
                  "data.num_tasks=3", "data.sigmas=[]"],
    "digits_domains": ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=8"],
    "scenes": ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4",
               "data.size=16", "data.train_size=8", "data.val_size=4", "data.test_size=4",
               "data.width=4"],
}
EXPECTED_METRICS = {
    "toy2d": {"L1": {"value", "pareto_dist"}, "L2": {"value"}},
    "synthetic": {f"f{i}": {"mae", "rmse"} for i in (1, 2, 3)},
    "digits_domains": {d: {"acc"} for d in DOMAINS},
    "scenes": {"seg": {"miou", "pixacc"}, "depth": {"abs_err", "rel_err"},
               "normal": {"angle_mean", "angle_median", "within_11.25", "within_22.5",
                          "within_30"}},
}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: a second thread only adds contention on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- toy2d

def test_toy_losses_golden_values():
    # x2 = 20: c2 = 0, c1 = tanh(10); at x1 = -7: g1 = log|0 + tanh(20)| + 6 ≈ 6,
    # g2 = log|0.5·10 − tanh(20) + 2| + 6 ≈ log 6 + 6.
    x = torch.tensor([-7.0, 20.0], dtype=torch.float64)
    l1, l2 = toy_losses(x).tolist()
    c1 = math.tanh(10.0)
    assert l1 == pytest.approx(c1 * (math.log(math.tanh(20.0)) + 6))
    assert l2 == pytest.approx(c1 * (math.log(5 - math.tanh(20.0) + 2) + 6))
    # x2 = -20: c1 = 0, c2 = tanh(10); at x1 = 7: h1 = (0 + 0.1·12²)/10 − 20 = −18.56.
    l1, l2 = toy_losses(torch.tensor([7.0, -20.0], dtype=torch.float64)).tolist()
    assert l1 == pytest.approx(math.tanh(10.0) * -18.56)
    assert l2 == pytest.approx(math.tanh(10.0) * ((14 ** 2 + 14.4) / 10 - 20))
    # Each task's minimum on the Pareto set is about −19.989 (the published value).
    assert float(toy_losses(torch.tensor([7.0, -8.3552]))[0]) == pytest.approx(-19.989, abs=1e-3)


def test_pareto_distance_to_the_segment():
    points = torch.tensor([[0.0, -8.3552], [10.0, -8.3552], [0.0, 0.0], [-10.0, -4.3552]])
    assert pareto_distance(points).tolist() == pytest.approx([0.0, 3.0, 8.3552, 5.0], abs=1e-5)


def test_toy_task_losses_apply_scale_and_l_star():
    config = Toy2dConfig(protocol="famo", loss_scale=(0.1, 1.0), l_star=(-2.1, -21.0))
    bench = Toy2d(config, None, CPU)
    x = torch.tensor([[1.0, -2.0]])
    raw = toy_losses(x[0])
    dummy = torch.zeros(1)
    assert float(bench.tasks[0].loss(x, dummy)) == pytest.approx(0.1 * float(raw[0]) + 2.1, rel=1e-6)
    assert float(bench.tasks[1].loss(x, dummy)) == pytest.approx(float(raw[1]) + 21.0, rel=1e-6)


def test_toy_start_points_and_trajectory_point():
    bench = Toy2d(Toy2dConfig(protocol="nashmtl", start=3), None, CPU)
    encoder = bench.make_encoder()
    assert encoder.x.tolist() == [-7.5, -0.5]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoders = torch.nn.ModuleList([encoder])

    assert bench.trajectory_point(Model()).tolist() == [-7.5, -0.5]
    explicit = Toy2d(Toy2dConfig(start_point=(1.0, 2.0)), None, CPU)
    assert explicit.make_encoder().x.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("changes, key", [
    ({"start": 3}, "data.start"), ({"protocol": "x"}, "data.protocol"),
    ({"loss_scale": (1.0,)}, "data.loss_scale"), ({"loss_scale": (1.0, 0.0)}, "data.loss_scale[1]"),
    ({"l_star": (1.0,)}, "data.l_star"), ({"start_point": (1.0, 2.0, 3.0)}, "data.start_point"),
    ({"steps_per_epoch": 0}, "data.steps_per_epoch"),
])
def test_toy_config_errors_name_the_parameter(changes, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Toy2dConfig(**changes).validate()


# ----------------------------------------------------------------------------- synthetic

def small_synthetic(**changes) -> Synthetic:
    config = SyntheticConfig(train_size=20, val_size=10, test_size=10, **changes)
    config.validate()
    return Synthetic(config, None, CPU)


def test_synthetic_data_shapes_scales_and_determinism():
    bench = small_synthetic(num_tasks=3, sigmas=())
    assert bench.task_names == ("f1", "f2", "f3")
    train = bench.splits["train"]
    assert train.inputs.shape == (20, 250)
    for i, name in enumerate(bench.task_names):
        y = train.targets[name]
        assert y.shape == (20, 100)
        assert float(y.abs().max()) <= i + 1 + 1e-5  # |σ_i tanh(·)| ≤ σ_i
        assert float(y.abs().max()) > 0.1 * (i + 1)
    again = small_synthetic(num_tasks=3, sigmas=())
    assert torch.equal(train.inputs, again.splits["train"].inputs)
    assert torch.equal(train.targets["f2"], again.splits["train"].targets["f2"])
    other = small_synthetic(num_tasks=3, sigmas=(), seed=1)
    assert not torch.equal(train.targets["f2"], other.splits["train"].targets["f2"])


def test_synthetic_uniform_inputs_have_unit_length():
    bench = small_synthetic(input_distribution="uniform_normalised")
    norms = bench.splits["val"].inputs.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_synthetic_ideal_weights_are_inverse_squared_scales():
    w = ideal_weights((1.0, 100.0))
    assert w == pytest.approx([2 / (1 + 1e-4), 2e-4 / (1 + 1e-4)])
    assert small_synthetic().extra_record()["ideal_weights"] == pytest.approx(w)


def test_synthetic_config_errors():
    with pytest.raises(ConfigError, match="data.sigmas"):
        SyntheticConfig(num_tasks=3, sigmas=(1.0, 2.0)).validate()
    with pytest.raises(ConfigError, match="data.input_distribution"):
        SyntheticConfig(input_distribution="cauchy").validate()


# ----------------------------------------------------------------------------- digits_domains

def test_domains_are_distinct_renderings_in_range():
    digits = np.random.default_rng(0).uniform(0, 1, size=(5, 8, 8)).astype(np.float32)
    images = {d: render(d, digits, np.random.default_rng(1)) for d in DOMAINS}
    for x in images.values():
        assert x.shape == (5, 3, 12, 12) and x.dtype == np.float32
        assert x.min() >= 0 and x.max() <= 1
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1:]:
            assert np.abs(images[a] - images[b]).mean() > 0.05, (a, b)


def test_digits_domains_splits_disjoint_labelled_and_deterministic():
    bench = DigitsDomains(DigitsDomainsConfig(), None, CPU)
    assert bench.task_names == DOMAINS
    total = 0
    for domain in DOMAINS:
        splits = bench.domain_splits[domain]
        assert set(splits) == {"train", "val", "test"}
        for split in splits.values():
            assert set(split.targets) == {domain}
            labels = split.targets[domain]
            assert labels.min() >= 0 and labels.max() <= 9
            assert split.inputs.shape[1:] == (3, 12, 12)
            total += len(split)
    assert total == 1797
    again = DigitsDomains(DigitsDomainsConfig(), None, CPU)
    for domain in DOMAINS:
        assert torch.equal(bench.domain_splits[domain]["train"].inputs,
                           again.domain_splits[domain]["train"].inputs)
    # Evaluation batches: each domain's own split once, targets keyed by the domain.
    sizes = {d: 0 for d in DOMAINS}
    for batch in bench.batches("test", 64):
        for d, y in batch.targets.items():
            assert batch.inputs[d].shape[0] == y.shape[0]
            sizes[d] += y.shape[0]
    assert sizes == bench.split_size("test")


def test_digits_domains_pools_do_not_share_images():
    from benchmarks.digits_domains import domain_pools
    pools = domain_pools(1797, 4, seed=0)
    union = np.concatenate(pools)
    assert len(union) == len(set(union.tolist())) == 1797


def test_digits_domains_config_errors():
    with pytest.raises(ConfigError, match="at least two"):
        DigitsDomainsConfig(domains=("ink",)).validate()
    with pytest.raises(ConfigError, match=r"data.domains\[1\]"):
        DigitsDomainsConfig(domains=("ink", "sepia")).validate()


# ----------------------------------------------------------------------------- scenes

def test_scenes_data_shapes_ranges_and_validity():
    s = generate_scenes(24, 16, seed=[0, 0])
    assert s.image.shape == (24, 3, 16, 16) and s.image.dtype == np.float32
    assert s.label.shape == (24, 16, 16) and s.label.dtype == np.int64
    assert s.depth.shape == (24, 1, 16, 16) and s.normal.shape == (24, 3, 16, 16)
    assert s.image.min() >= 0 and s.image.max() <= 1
    assert s.label.min() == -1 and s.label.max() < len(CLASSES)
    assert set(np.unique(s.label)) >= {-1, 0, 1}  # floor and walls are always in view
    valid_depth = s.depth[:, 0] > 0
    assert 0 < valid_depth.mean() < 1  # some invalid pixels, mostly valid
    assert s.depth.min() >= 0 and s.depth.max() <= 9.0
    norms = np.linalg.norm(s.normal, axis=1)
    valid_normal = norms > 0
    assert np.allclose(norms[valid_normal], 1.0, atol=1e-5)
    assert np.array_equal(valid_normal, valid_depth)
    # Normals face the camera: negative dot product with each pixel's viewing ray (pinhole,
    # 60° field of view, x right, y up, z forward).
    centres = (np.arange(16) + 0.5) / 16 * 2 - 1
    u, v = np.meshgrid(centres, -centres, indexing="xy")
    rays = np.stack([u, v, np.full_like(u, 1 / math.tan(math.radians(30)))])
    facing = np.einsum("nchw,chw->nhw", s.normal, rays)
    assert (facing[valid_normal] < 0).all()


def test_scenes_geometry_floor_normal_points_up():
    s = generate_scenes(8, 16, seed=[0, 0])
    floor = (s.label == 0) & (s.depth[:, 0] > 0)
    up = s.normal[:, 1][floor]
    assert floor.sum() > 0 and (up > 0.8).all()  # pitch ≤ 25°: cos 25° ≈ 0.91


def test_scenes_generation_is_deterministic_from_its_seed():
    a = generate_scenes(6, 16, seed=[3, 1])
    b = generate_scenes(6, 16, seed=[3, 1])
    c = generate_scenes(6, 16, seed=[4, 1])
    for field in ("image", "label", "depth", "normal"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image, c.image)


def test_scenes_benchmark_uses_the_dense_tasks():
    bench = Scenes(ScenesConfig(size=16, train_size=4, val_size=2, test_size=2, width=4), None, CPU)
    assert bench.task_names == ("seg", "depth", "normal")
    batch = next(iter(bench.batches("train", 4, torch.Generator().manual_seed(0))))
    assert batch.inputs.shape == (4, 3, 16, 16)
    z = bench.make_encoder()(batch.inputs)
    assert z.shape == (4, 8, 8, 8)  # half resolution: the losses upsample the predictions
    for task in bench.tasks:
        pred = bench.make_head(task)(z)
        assert torch.isfinite(task.loss(pred, batch.targets[task.name]))
    with pytest.raises(ConfigError, match="data.size"):
        ScenesConfig(size=18).validate()


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_run_end_to_end(name, tmp_path):
    (outcome,) = tiny_run(name, "ew", tmp_path, TINY[name])
    assert outcome.status == "complete", outcome.reason
    assert read_summary(outcome.run_dir)["status"] == "complete"
    records = read_records(outcome.run_dir)
    test = [r for r in records if r["split"] == "test"][-1]
    got = {task: set(m) for task, m in test["metrics"].items()}
    assert got == EXPECTED_METRICS[name]
    for task_metrics in test["metrics"].values():
        assert all(math.isfinite(v) for v in task_metrics.values())
    if name == "synthetic":  # T = 3, σ = (1, 2, 3): weights ∝ 1, 1/4, 1/9, summing to 3
        record = json.loads((outcome.run_dir / "benchmark.json").read_text())
        inverse = [1.0, 1 / 4, 1 / 9]
        assert record["ideal_weights"] == pytest.approx([3 * w / sum(inverse) for w in inverse])
    if name == "toy2d":
        lines = (outcome.run_dir / "trajectory.jsonl").read_text().splitlines()
        points = [json.loads(line) for line in lines]
        assert [p["step"] for p in points] == [0, 2, 4, 6, 8, 10]
        assert points[0]["point"] == [-8.5, 7.5]  # CAGrad's first start
        assert points[-1]["point"] != points[0]["point"]


@pytest.mark.parametrize("method", ["cagrad", "mgda_ub"])
def test_toy2d_heads_without_parameters_serve_gradient_methods(method, tmp_path):
    # The Jacobian (parameter space) and the representation-gradient paths: x must move.
    (outcome,) = tiny_run("toy2d", method, tmp_path, TINY["toy2d"])
    assert outcome.status == "complete", outcome.reason
    lines = (outcome.run_dir / "trajectory.jsonl").read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert last["point"] != first["point"]


@pytest.mark.slow
def test_cli_runs_every_cpu_benchmark(tmp_path):
    # One interpreter for the four runs: the command line's own entry point, called as
    # run_bench.py calls it.
    calls = [["run", "-b", name, "-m", "ew", "-s", "0", "--out", str(tmp_path), "--no-progress",
              *[arg for item in TINY[name] for arg in ("--set", item)]] for name in sorted(TINY)]
    code = ("import sys; from engine.cli import main; "
            f"sys.exit(max(main(argv) for argv in {calls!r}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in TINY:
        (summary,) = (tmp_path / name / "ew").glob("seed0-*/summary.json")
        assert json.loads(summary.read_text())["status"] == "complete"
