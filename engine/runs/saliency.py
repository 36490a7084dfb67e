"""``run_bench.py saliency``: task-saliency maps of trained runs, computed from their
checkpoints on one fixed set of samples (the first N of a split, the same for every run).

Per run and task, on the shared representation Z of the samples:

- S_t = ∂L_t/∂Z (Rep-MTL's Eq. 3, the raw task loss, a mean over the N samples), Ŝ_t its
  signed channel mean and |Ŝ_t| a map over Z's positions (Eq. 4);
- P_t, the distribution over tasks at each position, and its entropy (Eq. 5, what TSR
  penalises): ``methods/_saliency.py``'s own functions, ε = 1e-8 as Rep-MTL's default;
- Grad-CAM at Z (channel weights = spatial means of ∂L_t/∂Z, ReLU of the weighted sum of
  Z's channels, bilinearly upsampled to the input) and |∂L_t/∂x| (max over the input's
  channels), for image inputs (Grad-CAM only on spatial Z);
- per run, the summary numbers of docs/saliency.md.

Models are evaluated in eval mode (BatchNorm running statistics, no dropout). A run that
cannot be used (no checkpoint, one encoder per task, a checkpoint of another config, ...)
is left out with a one-line reason; the others go on.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import benchmarks  # noqa: F401  (registers the built-in benchmarks)
import methods  # noqa: F401  (registers the built-in methods)
from analysis import saliency as plots
from benchmarks.base import Batch, TaskSpec
from benchmarks.registry import BENCHMARKS
from engine.core import results as R
from engine.core.checkpoint import read_checkpoint
from engine.core.config import apply_values
from engine.core.identity import Identity
from engine.core.models import MultiTaskModel
from engine.errors import UserError
from engine.runs.runner import resolve_device
from methods import _saliency as sal
from methods.registry import parse_method

EPS = 1e-8
"""ε of P_t, Rep-MTL's default (``method.repmtl.eps``)."""
CSA_TAU = 0.1
"""τ of L_csa, Rep-MTL's default (``method.repmtl.tau``)."""


class Unusable(Exception):
    """A run that cannot be used; the message is the one-line reason."""


# --------------------------------------------------------------------------- the maps

def gradcam(z: Tensor, grad: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, H, W]: Grad-CAM of a representation ``z`` [B, C, H', W'] with the gradient
    ``grad`` (same shape) of a loss: ReLU(Σ_c α_c z_c) with α_c the spatial mean of grad_c,
    upsampled to ``size`` (bilinear, align_corners=False)."""
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * z).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def topk_overlap(magnitude: Tensor, fraction: float) -> float:
    """Mean over samples and task pairs of the Jaccard index of the tasks' top-k positions
    (k = max(1, round(fraction·N))) of ``magnitude`` [T, S, N]; NaN with one position."""
    T, _, N = magnitude.shape
    if N < 2 or T < 2:
        return math.nan
    k = max(1, round(fraction * N))
    index = magnitude.topk(k, dim=-1).indices
    mask = torch.zeros(magnitude.shape, dtype=torch.bool,
                       device=magnitude.device).scatter_(-1, index, True)
    scores = [((mask[i] & mask[j]).sum(-1) / (mask[i] | mask[j]).sum(-1)).double().mean()
              for i, j in itertools.combinations(range(T), 2)]
    return float(torch.stack(scores).mean())


def is_image(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_floating_point()


def _full(t: Tensor) -> Tensor:
    """``t`` detached, in float32 at least (a half-precision model's tensors)."""
    t = t.detach()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class Maps:
    """The tensors of ``compute_maps`` (S samples, T tasks, N positions)."""

    saliencies: list[Tensor]        # T × [S, C, N]: S_t = ∂L_t/∂Z
    magnitude: Tensor               # [T, S, N] |Ŝ_t|
    distribution: Tensor            # [T, S, N] P_t
    entropy: Tensor                 # [S, N]
    spatial: tuple[int, ...] | None
    images: Tensor | None           # [K, S, C, H, W]
    gradcam: Tensor | None          # [T, S, H, W]
    input_grad: Tensor | None       # [T, S, H, W]


def compute_maps(model, tasks: tuple[TaskSpec, ...], batch: Batch, eps: float = EPS) -> Maps:
    """Every map of the module docstring for one batch. ``model(batch)`` returns
    ``(reps, preds)`` per task, as ``MultiTaskModel`` does; on a multi-input batch sample b of
    every task's inputs is paired, as Rep-MTL pairs them."""
    names = [t.name for t in tasks]
    multi = isinstance(batch.inputs, dict)
    raw = batch.inputs if multi else {None: batch.inputs}
    leaves = {k: (v.detach().clone().requires_grad_(True) if is_image(v) else v)
              for k, v in raw.items()}
    inputs = leaves if multi else leaves[None]
    with torch.enable_grad():
        reps, preds = model(Batch(inputs, batch.targets))
        rep_grads, input_grads = [], []
        for task in tasks:
            z = reps[task.name]
            x = leaves[task.name] if multi else leaves[None]
            loss = task.loss(preds[task.name], batch.targets[task.name]).float()
            wrt = [z] + ([x] if is_image(x) else [])
            grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
            grads = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads, wrt)]
            rep_grads.append(_full(grads[0]))
            if is_image(x):
                input_grads.append(_full(grads[1]).abs().amax(dim=1))
    z_of = {t: _full(reps[t]) for t in names}
    S = sal.flatten_saliencies(rep_grads)
    magnitude = sal.channel_means(S).abs()
    distribution = sal.task_distribution(S, eps)
    entropy = sal.distribution_entropy(distribution, eps)
    first = z_of[names[0]]
    spatial = tuple(first.shape[2:]) or None
    image_inputs = [leaves[t] if multi else leaves[None] for t in (names if multi else [None])]
    images = (torch.stack([x.detach() for x in image_inputs])
              if all(is_image(x) for x in image_inputs) else None)
    cams = None
    if images is not None and first.dim() == 4:
        size = images.shape[-2:]
        cams = torch.stack([gradcam(z_of[t], g, size) for t, g in zip(names, rep_grads)])
    grads_x = torch.stack(input_grads) if images is not None and input_grads else None
    return Maps(S, magnitude, distribution, entropy, spatial, images, cams, grads_x)


def summary_stats(maps: Maps, tasks: tuple[str, ...], topk: float, eps: float = EPS) -> dict:
    """The per-run numbers of docs/saliency.md."""
    T = len(tasks)
    S = maps.saliencies
    samples, _, positions = S[0].shape
    entropy = float(maps.entropy.double().mean())
    out = {"samples": samples, "positions": positions, "entropy": entropy,
           "entropy_norm": entropy / math.log(T) if T > 1 else math.nan,
           "topk_jaccard": topk_overlap(maps.magnitude, topk)}
    if samples >= 2:
        pos, neg = sal.csa_similarities(S, "stacked")
        off = ~torch.eye(samples, dtype=torch.bool, device=neg.device)
        out.update(csa_pos=float(pos.double().mean()), csa_neg=float(neg[off].double().mean()),
                   L_csa=float(sal.csa_loss(S, CSA_TAU)))
    else:
        out.update(csa_pos=math.nan, csa_neg=math.nan, L_csa=math.nan)
    top = maps.distribution.argmax(dim=0)
    for t, task in enumerate(tasks):
        out[f"norm_{task}"] = float(torch.linalg.vector_norm(S[t].double()))
    for t, task in enumerate(tasks):
        out[f"dominant_{task}"] = float((top == t).double().mean())
    return out


# --------------------------------------------------------------------------- runs

@dataclass
class LoadedRun:
    run_dir: Path
    config: dict
    benchmark: str
    method: str
    seed: int
    config_hash: str
    data: object
    """The benchmark's data config."""
    state: dict


def load_run(run_dir: Path) -> LoadedRun:
    """A run folder's config and checkpoint; raises Unusable with the reason."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / R.CONFIG).read_text())
    except FileNotFoundError:
        raise Unusable("no config.json: not a run folder") from None
    except (OSError, ValueError) as exc:
        raise Unusable(f"config.json unreadable ({exc})") from None
    if not isinstance(config, dict) or "benchmark" not in config or "method" not in config:
        raise Unusable("config.json is not a run's config")
    method = str(config["method"])
    try:
        bench_cls = BENCHMARKS.get(config["benchmark"])
        composition = parse_method(method)
    except UserError as exc:
        raise Unusable(f"{exc} (a plugin's? pass --plugin)") from None
    if composition.needs.separate_encoders:
        raise Unusable(f"{method} trains one encoder per task: there is no shared "
                       f"representation to take task saliencies of")
    arch = (config.get("model") or {}).get("arch", "hps")
    if arch != "hps":
        raise Unusable(f"model.arch={arch}: saliency maps are drawn for hard parameter sharing "
                       f"(model.arch=hps) only")
    path = run_dir / R.CHECKPOINT
    if not path.is_file():
        raise Unusable("no checkpoint.pt (the run saved none, or it was removed)")
    try:
        state = read_checkpoint(path)
    except Exception as exc:  # any unreadable file: truncated, corrupt, foreign
        raise Unusable(f"checkpoint.pt unreadable ({type(exc).__name__}: {exc})") from None
    identity = Identity(str(config.get("config_hash")), int(config.get("seed", -1)))
    problems = identity.differences(state)
    if problems:
        raise Unusable(f"checkpoint.pt belongs to {'; '.join(problems)}, not to this folder's "
                       f"config.json")
    try:
        data = apply_values(bench_cls.Config(), config.get("data") or {}, "data")
    except UserError as exc:
        raise Unusable(f"config.json's data options do not fit this version of "
                       f"{bench_cls.name} ({exc})") from None
    return LoadedRun(run_dir, config, bench_cls.name, method, int(config.get("seed", -1)),
                     str(config.get("config_hash")), data, state)


def first_samples(bench, split: str, count: int) -> tuple[Batch, int]:
    """The first ``count`` samples of ``split`` in order (on a multi-input benchmark: of
    every task's split, as many as the smallest has), and their number."""
    sizes = bench.split_size(split)
    smallest = min(sizes.values()) if isinstance(sizes, dict) else sizes
    count = min(count, smallest)
    if count < 1:
        raise Unusable(f"the {split} split of {bench.name} is empty")
    return next(iter(bench.batches(split, count, None))), count


def _same_batch(a: Batch, b: Batch) -> bool:
    def same(x, y) -> bool:
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return torch.is_tensor(y) and x.shape == y.shape and torch.equal(x.cpu(), y.cpu())
    return same(a.inputs, b.inputs) and same(a.targets, b.targets)


@dataclass
class Outcome:
    maps: list[plots.RunMaps]
    left_out: dict[str, str]
    notes: list[str]
    written: list[Path]
    table: object = None


def _leave_out(left_out: dict[str, str], run_dir: Path, exc: Exception, echo) -> None:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = text if isinstance(exc, (Unusable, UserError)) else f"{type(exc).__name__}: {text}"
    left_out[str(run_dir)] = reason
    echo(f"{run_dir}: left out: {reason}")


def _labels(runs: list[LoadedRun]) -> list[str]:
    base = [f"{r.method} s{r.seed}" for r in runs]
    return [f"{b} [{r.config_hash}]" if base.count(b) > 1 else b for b, r in zip(base, runs)]


def saliency(run_dirs: list[Path], out: Path, samples: int = 8, split: str = "val",
             figures: int = 3, topk: float = 0.1, device: str = "cpu",
             data_root: str | None = None, echo=print) -> Outcome:
    """Compute, write and return the maps of ``run_dirs``; ``echo`` gets each one-line
    reason of a run left out as it happens. Raises UserError when no run can be used, or
    when the runs are of different benchmarks or see different samples."""
    left_out: dict[str, str] = {}
    loaded: list[LoadedRun] = []
    for run_dir in run_dirs:
        try:
            loaded.append(load_run(run_dir))
        except Unusable as exc:
            _leave_out(left_out, run_dir, exc, echo)
    if not loaded:
        raise UserError(f"saliency: none of the {len(run_dirs)} run folder(s) can be used "
                        f"(reasons above)")
    names = sorted({r.benchmark for r in loaded})
    if len(names) > 1:
        raise UserError(f"saliency compares runs of one benchmark; these are of "
                        f"{', '.join(names)}")
    torch_device = resolve_device(device)
    bench_cls = BENCHMARKS.get(names[0])
    benches: dict[str, object] = {}
    reference: Batch | None = None
    maps: list[plots.RunMaps] = []
    notes: list[str] = []
    labels = dict(zip((r.run_dir for r in loaded), _labels(loaded)))
    for run in loaded:
        key = json.dumps(dataclasses.asdict(run.data), sort_keys=True, default=str)
        try:
            if key not in benches:
                root = data_root or run.config.get("data_root")
                if bench_cls.needs_data_root and not root:
                    raise Unusable(f"{bench_cls.name} reads its data from disk; pass --data-root")
                benches[key] = bench_cls(run.data, Path(root) if root else None, torch_device)
            bench = benches[key]
            batch, count = first_samples(bench, split, samples)
        except (Unusable, UserError, RuntimeError, ValueError, OSError) as exc:
            _leave_out(left_out, run.run_dir, exc, echo)
            continue
        if reference is None:
            reference = batch
        elif not _same_batch(reference, batch):
            raise UserError(f"saliency compares runs on the same samples, but the first "
                            f"{count} {split} samples of {run.run_dir} differ from those of "
                            f"{loaded[0].run_dir} (other data options)")
        try:
            model = MultiTaskModel(bench).to(torch_device)
            model.load_state_dict(run.state["model"])
            model.eval()
            result = compute_maps(model, bench.tasks, batch)
        except (UserError, RuntimeError, ValueError, OSError) as exc:
            _leave_out(left_out, run.run_dir, exc, echo)
            continue
        tasks = bench.task_names
        numpy = lambda t: None if t is None else t.detach().cpu().double().numpy()  # noqa: E731
        maps.append(plots.RunMaps(
            run_dir=str(run.run_dir), label=labels[run.run_dir], method=run.method,
            seed=run.seed, config_hash=run.config_hash, epoch=int(run.state["epoch"]),
            tasks=tasks, spatial=result.spatial, magnitude=numpy(result.magnitude),
            distribution=numpy(result.distribution), entropy=numpy(result.entropy),
            images=numpy(result.images), gradcam=numpy(result.gradcam),
            input_grad=numpy(result.input_grad),
            stats=summary_stats(result, tasks, topk)))
    if not maps:
        raise UserError(f"saliency: none of the {len(run_dirs)} run folder(s) can be used "
                        f"(reasons above)")
    bench = next(iter(benches.values()))
    count = maps[0].stats["samples"]
    notes.append(f"{bench_cls.name}: the first {count} samples of the {split} split, the same "
                 f"for every run; models in eval mode; S_t = ∂L_t/∂Z of the raw task losses "
                 f"(means over these samples).")
    if bench_cls.multi_input:
        notes.append("Multi-input benchmark: each task has its own images; sample b of every "
                     "task's split is paired as one sample, as Rep-MTL pairs the b-th samples "
                     "of the tasks' batches (docs/repmtl.md).")
    if maps[0].spatial is None:
        notes.append("Vector representation (one position per sample): only the per-sample "
                     "task distribution and its entropy; no top-k overlap or Grad-CAM.")
    if len({m.seed for m in maps}) > 1:
        notes.append("The runs have different seeds: rows differ by seed as well as by method.")
    written = write_outputs(maps, left_out, notes, Path(out), figures,
                            f"{bench_cls.name}, {split}")
    return Outcome(maps, left_out, notes, written, plots.summary_frame(maps))


def write_outputs(maps: list[plots.RunMaps], left_out: dict[str, str], notes: list[str],
                  out: Path, figures: int, title: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    frame = plots.summary_frame(maps)
    frame.to_csv(out / plots.SUMMARY, index=False)
    written.append(out / plots.SUMMARY)
    curves, missing = plots.training_curves({m.label: m.run_dir for m in maps})
    for label, reason in missing.items():
        notes.append(f"Over training, {label}: {reason}.")
    md = ["# Saliency", "", *notes, "", plots.markdown_table(frame), ""]
    if left_out:
        md += ["## Runs left out", ""] + [f"- {d}: {r}" for d, r in left_out.items()] + [""]
    (out / plots.SUMMARY_MD).write_text("\n".join(md))
    (out / plots.NOTES).write_text("\n".join(notes + [f"Left out: {d}: {r}"
                                                      for d, r in left_out.items()]) + "\n")
    written += [out / plots.SUMMARY_MD, out / plots.NOTES]
    first = maps[0]
    shown = min(figures, first.distribution.shape[1])
    for sample in range(shown):
        kinds = []
        if first.spatial is not None and len(first.spatial) == 2:
            kinds += ["saliency", "distribution"]
        if first.gradcam is not None:
            kinds.append("gradcam")
        if first.input_grad is not None:
            kinds.append("input_grad")
        for kind in kinds:
            written.append(plots.plot_sample(maps, kind, sample, out / f"sample{sample}_{kind}",
                                             f"{title} sample {sample}"))
    if first.spatial is None or len(first.spatial) != 2:
        written.append(plots.plot_vector_distribution(maps, out / "distribution",
                                                      f"{title}: task distribution"))
    if not curves.empty:
        written.append(plots.plot_training(curves, out / plots.TRAINING,
                                           f"{title}: saliency statistics over training"))
        curves.to_csv(out / "training.csv", index=False)
        written.append(out / "training.csv")
    return written


def default_out(run_dirs: list[Path]) -> Path:
    """``<results>/report/saliency`` of the first run (results/<bench>/<method>/<run>), so
    that ``run_bench.py report <results>`` shows it."""
    first = Path(run_dirs[0]).resolve()
    root = first.parents[2] if len(first.parents) >= 3 else first.parent
    return root / "report" / "saliency"

