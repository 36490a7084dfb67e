"""Trajectories of the 2-D toy problem (trajectory.jsonl of toy2d runs), drawn for every
method: in parameter space over the contours of the mean loss (L1 + L2)/2 (the CAGrad
figure), and in loss space with the Pareto front (the Nash-MTL figure).

The loss surface, the Pareto front and the losses along each path are evaluated with the
toy's own pure functions (``datasets.toy``), so the loss-space plot shows the raw losses
(L1, L2) whatever scale or offset a run applied to its training losses. A run with one
encoder per task (``stl``) records one point per encoder; its path is drawn per encoder and
its loss-space point is (L1 of encoder 1, L2 of encoder 2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.collect import load_optional_jsonl
from analysis.plots import grid, save
from datasets.toy import PARETO_X1, PARETO_X2, pareto_front, toy_losses
from datasets.toy import grid as loss_grid


def load_trajectories(runs: pd.DataFrame) -> tuple[dict[str, list[tuple[str, np.ndarray]]],
                                                    dict[str, str]]:
    """{method: [(run label, [steps, 2·E] points)]} of usable runs with a trajectory.jsonl,
    and problems by run folder."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    problems = {}
    for run in runs[runs.usable].itertuples():
        records, problem = load_optional_jsonl(Path(run.run_dir), "trajectory.jsonl")
        if problem:
            problems[run.run_dir] = problem
        points = [r.get("point") for r in sorted(records, key=lambda r: r.get("step", 0))]
        points = [p for p in points if isinstance(p, list) and len(p) >= 2 and len(p) % 2 == 0]
        if not points or len({len(p) for p in points}) != 1:
            if records:
                problems[run.run_dir] = "trajectory.jsonl points are malformed"
            continue
        label = f"start ({points[0][0]:.1f}, {points[0][1]:.1f}) seed {run.seed}"
        out.setdefault(run.method, []).append((label, np.asarray(points, dtype=float)))
    for paths in out.values():
        paths.sort(key=lambda p: p[0])  # the same start gets the same colour in every panel
    return out, problems


def raw_losses(points: np.ndarray) -> np.ndarray:
    """(L1, L2) along a path of [steps, 2·E] points: with E > 1 encoders, task i's loss is
    taken at encoder i's point."""
    xs = torch.as_tensor(points, dtype=torch.float64).reshape(len(points), -1, 2)
    losses = toy_losses(xs).numpy()
    if xs.shape[1] == 1:
        return losses[:, 0, :]
    return np.stack([losses[:, 0, 0], losses[:, 1, 1]], axis=1)


def plot_parameter_space(traj: dict, stem: Path, title: str) -> Path:
    xy, losses = loss_grid(-10.0, 10.0, 201)
    mean = losses.mean(dim=-1).numpy()
    fig, axes = grid(len(traj), 3.8, 3.6)
    for ax, (method, paths) in zip(axes, sorted(traj.items())):
        ax.contourf(xy[..., 0].numpy(), xy[..., 1].numpy(), mean, levels=30, cmap="Greys", alpha=0.6)
        ax.plot([-PARETO_X1, PARETO_X1], [PARETO_X2, PARETO_X2], color="k", lw=2, label="Pareto set")
        for label, pts in paths:
            encoders = pts.shape[1] // 2
            for e in range(encoders):
                # one path per encoder (stl): each named, with its own start
                name = label if encoders == 1 else (
                    f"encoder {e + 1} (L{e + 1}): start ({pts[0, 2 * e]:.1f}, "
                    f"{pts[0, 2 * e + 1]:.1f}) seed {label.rsplit(' seed ', 1)[-1]}")
                line, = ax.plot(pts[:, 2 * e], pts[:, 2 * e + 1], lw=1.5, label=name)
                ax.plot(pts[0, 2 * e], pts[0, 2 * e + 1], "o", color=line.get_color(), ms=4)
                ax.plot(pts[-1, 2 * e], pts[-1, 2 * e + 1], "*", color=line.get_color(), ms=8)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_title(method)
        ax.legend(fontsize=6)
    fig.suptitle(title + " (contours: (L1 + L2)/2; o start, * end)")
    return save(fig, stem)


def plot_loss_space(traj: dict, stem: Path, title: str) -> Path:
    front = pareto_front(200).numpy()
    fig, axes = grid(len(traj), 3.8, 3.6)
    for ax, (method, paths) in zip(axes, sorted(traj.items())):
        ax.plot(front[:, 0], front[:, 1], color="k", lw=2, label="Pareto front")
        for label, pts in paths:
            loss = raw_losses(pts)
            line, = ax.plot(loss[:, 0], loss[:, 1], lw=1.5, label=label)
            ax.plot(loss[0, 0], loss[0, 1], "o", color=line.get_color(), ms=4)
            ax.plot(loss[-1, 0], loss[-1, 1], "*", color=line.get_color(), ms=8)
        ax.set_xlabel("L1")
        ax.set_ylabel("L2")
        ax.set_title(method)
        ax.legend(fontsize=6)
    fig.suptitle(title + " (raw losses; o start, * end)")
    return save(fig, stem)
