"""synthetic: GradNorm's regression family with scale imbalance (Chen, Badrinarayanan, Lee,
Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
Networks", ICML 2018, §4). The data are in ``datasets/synthetic.py``.

Tasks ``f1`` … ``fT`` regress σ_i · tanh((B + ε_i) x) (x ∈ ℝ²⁵⁰, outputs ℝ¹⁰⁰) with a squared
loss (mean over the outputs); metrics MAE and RMSE (lower is better), on each task's own
scale. Model as in the paper: a shared trunk of 4 fully connected ReLU layers of 100 units
and one affine head per task.

Defaults follow the paper: T = 2 and σ = (1, 100). For other T, ``data.sigmas`` empty means
σ = (1, 2, …, T), the choice of public re-implementations. GradNorm's asymmetry on this
problem is α = 0.12 (a method option, not a data one).

Diagnostic: a squared loss scales with σ_i², so weights ∝ 1/σ_i² equalise the tasks'
contributions. ``extra_record()`` stores these ideal weights (normalised to sum to T, EW's
scale) with the run (``benchmark.json``), to compare against the weights a method applied
(``metrics.jsonl``).

Choices the paper leaves open (documented defaults): inputs x ~ N(0, 0.01²) per entry
(``data.input_distribution=normal``; the alternative ``uniform_normalised`` saturates the
tanh almost everywhere, and a 20-epoch run barely learns it), 4,000 / 1,000 / 1,000
train/val/test samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.base import TaskSpec, TensorBenchmark, TensorSplit
from benchmarks.metrics import MAE, RMSE, RegressionMeter, mse
from benchmarks.registry import register_benchmark
from datasets.synthetic import INPUT_DISTRIBUTIONS, make_maps, sample_inputs, targets
from engine.errors import ConfigError, check_choice, check_range


@dataclass
class SyntheticConfig:
    seed: int = 0
    """Seed of the data generation (not the run seed): fixes B, ε_i and the inputs."""
    num_tasks: int = 2
    sigmas: tuple[float, ...] = (1.0, 100.0)
    """One scale per task; empty = (1, 2, ..., num_tasks)."""
    input_distribution: str = "normal"
    """uniform_normalised (U(-1,1)^d scaled to unit length) | normal (N(0, input_std^2))."""
    input_std: float = 0.01
    input_dim: int = 250
    output_dim: int = 100
    b_std: float = 10.0
    eps_std: float = 3.5
    train_size: int = 4000
    val_size: int = 1000
    test_size: int = 1000
    hidden: int = 100
    """Units of each of the 4 shared layers."""

    def validate(self) -> None:
        check_range("data.num_tasks", self.num_tasks, 1)
        if self.sigmas and len(self.sigmas) != self.num_tasks:
            raise ConfigError(f"data.sigmas has {len(self.sigmas)} values but data.num_tasks="
                              f"{self.num_tasks}; give one scale per task, or an empty list "
                              f"for (1, ..., num_tasks)")
        for i, s in enumerate(self.sigmas):
            check_range(f"data.sigmas[{i}]", s, 0, low_open=True)
        check_choice("data.input_distribution", self.input_distribution, INPUT_DISTRIBUTIONS)
        check_range("data.input_std", self.input_std, 0, low_open=True)
        for name in ("input_dim", "output_dim", "train_size", "val_size", "test_size", "hidden"):
            check_range(f"data.{name}", getattr(self, name), 1)
        check_range("data.b_std", self.b_std, 0)
        check_range("data.eps_std", self.eps_std, 0)

    def task_sigmas(self) -> tuple[float, ...]:
        return tuple(self.sigmas) if self.sigmas else tuple(float(i + 1) for i in range(self.num_tasks))


def ideal_weights(sigmas: tuple[float, ...]) -> list[float]:
    """Weights ∝ 1/σ_i², normalised to sum to the number of tasks."""
    inv = np.asarray(sigmas, dtype=np.float64) ** -2.0
    return (inv * len(sigmas) / inv.sum()).tolist()


@register_benchmark("synthetic")
class Synthetic(TensorBenchmark):
    description = ("GradNorm's synthetic regression: T tasks sigma_i*tanh((B+eps_i)x) with "
                   "scales sigma (default 1 and 100); any number of tasks")
    setting = "task shift"
    Config = SyntheticConfig

    @classmethod
    def task_count(cls, config: SyntheticConfig) -> int:
        return config.num_tasks

    def __init__(self, config: SyntheticConfig, data_root: Path | None, device: torch.device):
        super().__init__(config, data_root, device)
        self.sigmas = config.task_sigmas()
        names = [f"f{i + 1}" for i in range(config.num_tasks)]
        self.tasks = tuple(TaskSpec(name, mse, (MAE, RMSE), RegressionMeter,
                                    f"sigma={s:g} * tanh((B + eps_{i + 1}) x)")
                           for i, (name, s) in enumerate(zip(names, self.sigmas)))
        rng = np.random.default_rng(config.seed)
        maps = make_maps(config.num_tasks, config.input_dim, config.output_dim, config.b_std,
                         config.eps_std, rng)
        sizes = {"train": config.train_size, "val": config.val_size, "test": config.test_size}
        sigmas = np.asarray(self.sigmas)
        self.splits = {}
        for split, count in sizes.items():
            x = sample_inputs(count, config.input_dim, config.input_distribution,
                              config.input_std, rng)
            y = targets(x, maps, sigmas)
            self.splits[split] = TensorSplit(
                torch.from_numpy(x.astype(np.float32)),
                {name: torch.from_numpy(y[i].astype(np.float32)) for i, name in enumerate(names)},
            ).to(device)

    def make_encoder(self) -> nn.Module:
        width, layers = self.config.hidden, []
        for i in range(4):
            layers += [nn.Linear(self.config.input_dim if i == 0 else width, width), nn.ReLU()]
        return nn.Sequential(*layers)

    def encoder_blocks(self, encoder: nn.Sequential) -> list[nn.Module]:
        """The four Linear + ReLU layers."""
        return [encoder[i:i + 2] for i in range(0, len(encoder), 2)]

    def make_head(self, task: TaskSpec) -> nn.Module:
        return nn.Linear(self.config.hidden, self.config.output_dim)

    def extra_record(self) -> dict:
        return {"sigmas": list(self.sigmas), "ideal_weights": ideal_weights(self.sigmas)}
