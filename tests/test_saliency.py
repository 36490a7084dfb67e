"""Saliency maps of trained runs (engine/runs/saliency.py, analysis/saliency.py, the
``saliency`` command) and the per-epoch saliency statistics of ``engine.saliency_every``
(engine/core/saliency_log.py), on tiny runs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from benchmarks.base import Batch, TaskSpec
from engine.cli import main
from engine.core.checkpoint import read_checkpoint
from engine.core.models import MultiTaskModel
from engine.errors import UserError
from engine.runs import saliency as S
from engine.runs.runner import build_requests
from methods import _saliency as sal
from tests.helpers import TINY_DIGITS, read_records, tiny_run

KNOB = ["engine.saliency_every=1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny digits_tasks runs (ew with and without the logging knob, Rep-MTL and stl with
    it) and a tiny synthetic one."""
    out = tmp_path_factory.mktemp("results")
    made = {}
    for key, method, extra in (("ew", "ew", []), ("ew_knob", "ew", KNOB),
                               ("repmtl", "repmtl", KNOB), ("repmtl_plain", "repmtl", []),
                               ("stl", "stl", KNOB)):
        (outcome,) = tiny_run("digits_tasks", method, out, TINY_DIGITS + extra)
        assert outcome.status == "complete", outcome.reason
        made[key] = outcome.run_dir
    (outcome,) = tiny_run("synthetic", "ew", out, ["train.epochs=1", "train.max_steps_per_epoch=2",
                                                   "data.train_size=64", "data.val_size=16",
                                                   "data.test_size=16", "train.batch_size=16"])
    assert outcome.status == "complete", outcome.reason
    made["synthetic"] = outcome.run_dir
    return made


# --------------------------------------------------------------------------- mathematics

def _old_task_entropy(S_: list[Tensor], eps: float) -> Tensor:
    """methods/_saliency.task_entropy before it exposed the per-position distribution."""
    mag = torch.cat([c.mean(dim=2) for c in sal._chunks(sal._per_task(S_))]).abs()
    scale = mag.detach().mean().clamp_min(torch.finfo(mag.dtype).tiny / eps)
    p = mag / (mag.sum(dim=0) + eps * scale)
    return -(p * torch.log(p + eps)).sum(dim=0)


@pytest.mark.parametrize("shape", [(4, 6, 9), (3, 5, 1), (2, 300, 400)])
def test_the_refactored_task_entropy_is_bit_identical_in_value_and_gradient(shape):
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(shape, generator=gen, requires_grad=True) for _ in range(3)]
    old = _old_task_entropy(leaves, 1e-8)
    new = sal.task_entropy(leaves, 1e-8)
    assert torch.equal(old, new)
    g_old = torch.autograd.grad(old.sum(), leaves)
    g_new = torch.autograd.grad(new.sum(), leaves)
    assert all(torch.equal(a, b) for a, b in zip(g_old, g_new))
    p = sal.task_distribution(leaves, 1e-8)
    assert p.shape == (3, shape[0], shape[2])
    assert torch.allclose(p.sum(dim=0), torch.ones(()), atol=1e-6)


class LinearToy(nn.Module):
    """Z = W x (a 1×1 convolution, no bias); task t's loss is the batch mean of
    Σ_{c,n} V_t[c, n] Z[c, n]: ∂L_t/∂Z[b] = V_t / B."""

    def __init__(self, c_in: int, c: int, size: int, tasks: tuple[str, ...]):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.W = nn.Parameter(torch.randn(c, c_in, generator=gen, dtype=torch.float64))
        self.V = nn.ParameterDict({t: nn.Parameter(torch.randn(c, size, size, generator=gen,
                                                               dtype=torch.float64))
                                   for t in tasks})

    def forward(self, batch: Batch):
        z = torch.einsum("ci,bihw->bchw", self.W, batch.inputs)
        preds = {t: (v * z).sum(dim=(1, 2, 3)) for t, v in self.V.items()}
        return {t: z for t in self.V}, preds


def test_gradcam_and_input_gradient_of_a_linear_model_equal_their_closed_form():
    tasks = ("a", "b")
    toy = LinearToy(c_in=3, c=4, size=5, tasks=tasks)
    x = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    specs = tuple(TaskSpec(t, lambda pred, _y: pred.mean(), (), lambda: None) for t in tasks)
    batch = Batch(x, {t: torch.zeros(6) for t in tasks})
    maps = S.compute_maps(toy, specs, batch)
    z = torch.einsum("ci,bihw->bchw", toy.W, x).detach()
    for i, t in enumerate(tasks):
        V = toy.V[t].detach()
        alpha = V.mean(dim=(1, 2)) / 6                                 # spatial mean of ∂L/∂Z
        cam = torch.relu(torch.einsum("c,bchw->bhw", alpha, z))        # same size: no resampling
        assert torch.allclose(maps.gradcam[i].double(), cam, rtol=1e-5, atol=1e-12)
        dx = torch.einsum("ci,chw->ihw", toy.W.detach(), V) / 6         # ∂L/∂x[b], every b
        assert torch.allclose(maps.input_grad[i].double(), dx.abs().amax(dim=0).expand(6, 5, 5),
                              rtol=1e-5, atol=1e-12)
        expected_sal = (V.mean(dim=0) / 6).abs().reshape(-1)           # |Ŝ_t| at every sample
        assert torch.allclose(maps.magnitude[i].double(), expected_sal.expand(6, 25), rtol=1e-5)
    # Upsampling to the input's size when Z is coarser: bilinear, the CAM's shape.
    small = S.gradcam(torch.rand(2, 4, 3, 3), torch.rand(2, 4, 3, 3), (12, 12))
    assert small.shape == (2, 12, 12) and bool((small >= 0).all())


def test_topk_overlap_is_the_mean_jaccard_of_the_top_positions():
    same = torch.tensor([[[4.0, 3.0, 1.0, 0.0]], [[5.0, 2.0, 0.0, 1.0]]])   # top-2 {0, 1} twice
    assert S.topk_overlap(same, 0.5) == 1.0
    apart = torch.tensor([[[4.0, 3.0, 1.0, 0.0]], [[0.0, 1.0, 3.0, 5.0]]])
    assert S.topk_overlap(apart, 0.5) == 0.0
    half = torch.tensor([[[4.0, 3.0, 1.0, 0.0]], [[4.0, 0.0, 3.0, 1.0]]])    # {0,1} vs {0,2}
    assert S.topk_overlap(half, 0.5) == pytest.approx(1 / 3)
    assert math.isnan(S.topk_overlap(torch.rand(2, 3, 1), 0.1))


# --------------------------------------------------------------------------- on runs

def _model_and_batch(run_dir: Path, samples: int = 8):
    run = S.load_run(run_dir)
    from benchmarks.registry import BENCHMARKS
    bench = BENCHMARKS.get(run.benchmark)(run.data, None, torch.device("cpu"))
    model = MultiTaskModel(bench)
    model.load_state_dict(run.state["model"])
    model.eval()
    batch, _ = S.first_samples(bench, "val", samples)
    return bench, model, batch


def test_maps_have_their_shapes_and_the_entropy_is_rep_mtls(runs, tmp_path):
    outcome = S.saliency([runs["repmtl"]], tmp_path, samples=6, figures=1)
    (m,) = outcome.maps
    assert m.tasks == ("first", "second", "sum") and m.spatial == (5, 5)
    assert m.magnitude.shape == m.distribution.shape == (3, 6, 25)
    assert m.entropy.shape == (6, 25)
    assert m.gradcam.shape == m.input_grad.shape == (3, 6, 11, 11)
    assert m.images.shape == (1, 6, 1, 11, 11)
    # The entropy is methods/_saliency's, for the same model and batch, computed here apart.
    bench, model, batch = _model_and_batch(runs["repmtl"], 6)
    reps, preds = model(batch)
    grads = [torch.autograd.grad(t.loss(preds[t.name], batch.targets[t.name]), reps[t.name],
                                 retain_graph=True)[0] for t in bench.tasks]
    entropy = sal.task_entropy(sal.flatten_saliencies(grads), 1e-8)
    assert torch.allclose(torch.as_tensor(m.entropy), entropy.double(), rtol=1e-5, atol=1e-7)
    assert m.stats["entropy"] == pytest.approx(float(entropy.double().mean()), rel=1e-5)
    assert m.stats["entropy_norm"] == pytest.approx(m.stats["entropy"] / math.log(3))
    assert m.stats["L_csa"] == pytest.approx(float(sal.csa_loss(sal.flatten_saliencies(grads),
                                                                0.1)), rel=1e-4)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.csv", "summary.md", "notes.txt", "sample0_saliency.png",
            "sample0_distribution.png", "sample0_gradcam.png", "sample0_input_grad.png",
            "training.png", "training.csv"} <= names
    assert "sample1_saliency.png" not in names


def test_the_maps_change_when_the_checkpoint_changes(runs, tmp_path):
    run = tmp_path / "digits_tasks" / "ew" / runs["ew"].name
    shutil.copytree(runs["ew"], run)
    before = S.saliency([run], tmp_path / "a", samples=4, figures=0).maps[0]
    state = read_checkpoint(run / "checkpoint.pt")
    for key, value in state["model"].items():
        if key.startswith("encoders.0.") and value.is_floating_point():
            value.mul_(1.5)
    torch.save(state, run / "checkpoint.pt")
    after = S.saliency([run], tmp_path / "b", samples=4, figures=0).maps[0]
    for name in ("magnitude", "distribution", "entropy", "gradcam", "input_grad"):
        assert not (getattr(before, name) == getattr(after, name)).all(), name


def test_vector_features_get_the_task_distribution_only(runs, tmp_path):
    outcome = S.saliency([runs["synthetic"]], tmp_path, samples=5, figures=2)
    m = outcome.maps[0]
    assert m.spatial is None and m.distribution.shape == (2, 5, 1)
    assert m.gradcam is None and m.input_grad is None
    assert math.isnan(m.stats["topk_jaccard"])
    names = {p.name for p in tmp_path.iterdir()}
    assert "distribution.png" in names and not any(n.startswith("sample") for n in names)
    assert any("Vector representation" in n for n in outcome.notes)


# --------------------------------------------------------------------------- the knob

def test_the_logging_knob_changes_no_hash_when_off_and_nothing_in_training(runs):
    hashes = [build_requests("digits_tasks", ["ew"], [0], "quick", TINY_DIGITS + extra, "cpu",
                             None)[0].config.hash()
              for extra in ([], ["engine.saliency_every=0"], KNOB)]
    assert hashes[0] == hashes[1] != hashes[2]
    assert runs["ew"].name.endswith(hashes[0]) and runs["ew_knob"].name.endswith(hashes[2])
    plain, logged = read_records(runs["ew"]), read_records(runs["ew_knob"])
    def drop(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in ("method", "step_time_s")}

    assert [drop(r) for r in plain] == [drop(r) for r in logged]
    train = logged[0]["method"]
    assert {"saliency.task_entropy", "saliency.L_tsr", "saliency.L_csa", "saliency.norm.first",
            "saliency.norm.second", "saliency.norm.sum"} <= set(train)
    assert train["saliency.task_entropy"] == pytest.approx(train["saliency.L_tsr"] / math.log(3))


def test_the_penalty_diagnostics_leave_rep_mtls_training_unchanged(runs):
    """With a penalty the knob also takes ‖∇penalty‖ / ‖∇Σ L_t‖ per parameter group: extra
    backward passes that must not change the update."""
    plain, logged = read_records(runs["repmtl_plain"]), read_records(runs["repmtl"])

    def drop(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in ("method", "step_time_s")}

    assert [drop(r) for r in plain] == [drop(r) for r in logged]
    train = logged[0]["method"]
    groups = {"encoder", "head.first", "head.second", "head.sum"}
    assert {f"saliency.penalty_ratio.{g}" for g in groups} <= set(train)
    assert all(train[f"saliency.penalty_ratio.{g}"] > 0 for g in groups)
    assert {f"saliency.mean_abs.{t}" for t in ("first", "second", "sum")} <= set(train)
    ew = read_records(runs["ew_knob"])[0]["method"]
    assert not any(k.startswith("saliency.penalty_ratio") for k in ew)  # no penalty, none


def test_the_knob_logs_what_rep_mtl_logs_for_the_same_batches(runs):
    train = read_records(runs["repmtl"])[0]["method"]
    for stat in ("task_entropy", "L_tsr", "L_csa"):
        assert train[f"saliency.{stat}"] == pytest.approx(train[f"repmtl.{stat}"], rel=1e-5)
    summary = json.loads((runs["stl"] / "summary.json").read_text())
    assert any("no shared representation" in n for n in summary["notes"])
    logged = read_records(runs["stl"])[0].get("method", {})
    assert not any(k.startswith("saliency.") for k in logged)


# --------------------------------------------------------------------------- the command

def test_the_command_names_each_unusable_run_in_one_line_and_goes_on(runs, tmp_path, capsys):
    missing = tmp_path / "digits_tasks" / "ew" / runs["ew"].name
    shutil.copytree(runs["ew"], missing)
    (missing / "checkpoint.pt").unlink()
    out = tmp_path / "out"
    code = main(["saliency", str(runs["ew"]), str(runs["stl"]), str(missing), "--out", str(out),
                 "--samples", "4", "--figures", "0"])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.splitlines()
    stl = [line for line in lines if line.startswith(str(runs["stl"]))]
    assert stl == [f"{runs['stl']}: left out: stl trains one encoder per task: there is no "
                   f"shared representation to take task saliencies of"]
    gone = [line for line in lines if line.startswith(str(missing))]
    assert gone == [f"{missing}: left out: no checkpoint.pt (the run saved none, or it was "
                    f"removed)"]
    assert "1 of 3 run(s) used" in captured.out and (out / "summary.csv").is_file()


def test_the_command_exits_2_when_no_run_is_usable_or_benchmarks_differ(runs, tmp_path, capsys):
    code = main(["saliency", str(runs["stl"]), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: saliency: none of the 1 run folder(s) can be used "
                                 "(reasons above)"]
    code = main(["saliency", str(runs["ew"]), str(runs["synthetic"]), "--out",
                 str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: saliency compares runs of one benchmark; these are of "
                                 "digits_tasks, synthetic"]
    with pytest.raises(UserError):
        S.saliency([tmp_path / "nothing"], tmp_path / "c")


def test_the_report_shows_a_saliency_folder_written_into_it(runs, tmp_path):
    from analysis.names import SECTIONS
    from analysis.report import build_report

    root = Path(runs["ew"]).parents[2]
    out = tmp_path / "report"
    S.saliency([runs["ew"], runs["repmtl"]], out / "saliency", samples=4, figures=0)
    build_report(root, out, ("md", "csv"), skip=tuple(s for s in SECTIONS if s != "saliency"))
    text = (out / "report.md").read_text()
    assert "## Saliency" in text and "saliency/training.png" in text
    assert "| repmtl s0 | repmtl |" in text
    assert (out / "tables" / "saliency_summary.csv").is_file()
    # Over training: Rep-MTL's logged statistics are drawn, ew (no logging) is named.
    assert "ew s0: no saliency statistics" in (out / "saliency" / "notes.txt").read_text()
    curves = (out / "saliency" / "training.csv").read_text()
    assert "repmtl s0" in curves and "ew s0" not in curves
    build_report(root, out, ("md",), skip=SECTIONS)
    assert "Saliency" not in (out / "report.md").read_text()


def test_the_diagnostics_script_tabulates_the_logged_statistics(runs, capsys):
    """benchmarks/scripts/saliency_diagnostics.py: one line per run and epoch with the
    logged values; the penalty columns empty for a run without a penalty; a run without
    the statistics refused."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scripts" / "saliency_diagnostics.py"
    spec = importlib.util.spec_from_file_location("saliency_diagnostics", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([f"ew={runs['ew_knob']}", f"repmtl={runs['repmtl']}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:4] == ["run", "epoch", "task entropy", "L_csa (log(B − 1))"]
    assert "penalty ratio encoder" in head and "mean abs Ŝ sum" in head
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in lines[2:]}
    assert set(rows) == {("ew", "0"), ("repmtl", "0")}
    logged = read_records(runs["repmtl"])[0]["method"]
    cells = [c.strip() for c in rows["repmtl", "0"].strip("|").split("|")]
    assert cells[2] == f"{logged['saliency.task_entropy']:.3f}"
    batch = json.loads((runs["repmtl"] / "config.json").read_text())["train"]["batch_size"]
    assert cells[3] == f"{logged['saliency.L_csa']:.2f} ({math.log(batch - 1):.2f})"
    assert cells[head.index("penalty ratio encoder")] == \
        f"{logged['saliency.penalty_ratio.encoder']:.3g}"
    ew_cells = [c.strip() for c in rows["ew", "0"].strip("|").split("|")]
    assert ew_cells[head.index("penalty ratio encoder")] == "–"
    with pytest.raises(SystemExit, match="no saliency statistics"):
        script.main([f"ew={runs['ew']}"])
