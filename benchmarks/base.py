"""What to train and how to score it: Benchmark, TaskSpec, metrics and batches.

A Benchmark owns its data (train/val/test), its tasks (loss, metrics with their direction),
a model factory (one shared encoder, one head per task) and its profiles of
hyperparameters (``benchmarks/profiles/<name>.toml``). It knows nothing of methods.

Small benchmarks keep their tensors on the training device and draw batches by index
(``TensorSplit``); image-folder benchmarks implement ``batches`` with a DataLoader.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MetricSpec:
    """One reported number of a task, with its direction (for Δ measures and ranks)."""

    name: str
    higher_is_better: bool
    unit: str = ""


class Meter(Protocol):
    """Accumulates predictions over a whole split; ``compute`` returns every metric."""

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class TaskSpec:
    """A task: its loss (a batch mean), its metrics and a factory of split meters."""

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    metrics: tuple[MetricSpec, ...]
    meter: Callable[[], Meter]
    description: str = ""


@dataclass
class Batch:
    """One training or evaluation batch. ``inputs`` is a tensor on single-input benchmarks
    and a dict task -> tensor on multi-input ones (each task its own images)."""

    inputs: Tensor | dict[str, Tensor]
    targets: dict[str, Tensor]

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        inputs = ({k: move(v) for k, v in self.inputs.items()}
                  if isinstance(self.inputs, dict) else move(self.inputs))
        return Batch(inputs, {k: move(v) for k, v in self.targets.items()})

    def input_for(self, task: str) -> Tensor:
        return self.inputs[task] if isinstance(self.inputs, dict) else self.inputs

    def size(self) -> int:
        """Samples per task (every task of a multi-input batch has the same count)."""
        first = next(iter(self.targets.values()))
        return first.shape[0]

    def select(self, index: slice) -> Batch:
        """The same samples ``index`` of every input and target (a data-parallel shard)."""
        inputs = ({k: v[index] for k, v in self.inputs.items()}
                  if isinstance(self.inputs, dict) else self.inputs[index])
        return Batch(inputs, {k: v[index] for k, v in self.targets.items()})


@dataclass
class TensorSplit:
    """A split held as tensors (inputs and one target tensor per task)."""

    inputs: Tensor
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device) -> TensorSplit:
        return TensorSplit(self.inputs.to(device), {k: v.to(device) for k, v in self.targets.items()})

    def take(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.inputs[index], {k: v[index] for k, v in self.targets.items()}


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def index_batches(n: int, batch_size: int, generator: torch.Generator | None,
                  drop_last: bool, device: torch.device) -> Iterator[Tensor]:
    """Indices of one pass over n items: shuffled with ``generator`` (on the CPU, so the
    order is the same on every device) or in order when it is None."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order.to(device)
    for i in range(num_batches(n, batch_size, drop_last)):
        yield order[i * batch_size:(i + 1) * batch_size]


class Benchmark:
    """Base of every benchmark. Subclasses set the class attributes, build ``self.tasks``
    and their data in ``__init__``, and implement the model factory."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    setting: ClassVar[str] = "task shift"  # or "domain shift"
    multi_input: ClassVar[bool] = False
    needs_data_root: ClassVar[bool] = False
    default_data_root: ClassVar[str | None] = None
    """Where the data are read from when no ``--data-root`` is given (a system package's
    folder); None: ``--data-root`` is required."""
    data_hint: ClassVar[str] = "see docs/paper_benchmarks.md for the expected layout"
    """How to get the data, said when the data folder is missing (for a default folder:
    the package that installs it, and ``--data-root``)."""
    profiles: ClassVar[dict | str | Path | None] = None
    """A plugin's own profiles: ``{"quick": {"train": {...}, "data": {...}}, ...}`` or the
    path of a TOML file in the layout of ``benchmarks/profiles/`` (relative to the file that
    defines the benchmark). None: ``benchmarks/profiles/<name>.toml`` when it exists."""
    fixed_batch: ClassVar[int | None] = None
    """Samples in every training batch whatever ``train.batch_size`` (toy2d: 1); None:
    ``train.batch_size``."""
    Config: ClassVar[type] = None  # a dataclass of data/model options, set by subclasses

    tasks: tuple[TaskSpec, ...]

    def __init__(self, config, data_root: Path | None, device: torch.device):
        self.config = config
        self.data_root = data_root
        self.device = device

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @classmethod
    def task_count(cls, config) -> int | None:
        """How many tasks the benchmark has with this data config, where that is known
        without building the data (the leaderboard plans with it before the first run);
        None: only a built benchmark tells."""
        return None

    def make_encoder(self) -> nn.Module:
        raise NotImplementedError

    def make_head(self, task: TaskSpec) -> nn.Module:
        raise NotImplementedError

    def last_shared_layer(self, encoder: nn.Module) -> nn.Module:
        """The last parametrised layer of the encoder (GradNorm balances its gradients).
        Default: the last module that owns parameters directly."""
        last = None
        for module in encoder.modules():
            if any(True for _ in module.parameters(recurse=False)):
                last = module
        if last is None:
            raise ValueError(f"{self.name}: the encoder has no parameters")
        return last

    def encoder_blocks(self, encoder: nn.Module) -> list[nn.Module] | None:
        """The encoder (made by ``make_encoder``) as consecutive blocks whose composition is
        its forward, sharing its modules; None: it has no natural split. Architectures
        that work block by block (PLE, cross-stitch, MTAN: docs/architectures.md) need it."""
        return None

    @classmethod
    def has_encoder_blocks(cls, config) -> bool:
        """Whether ``encoder_blocks`` splits the encoder under data options ``config``
        (known before the data are built). Default: whether the benchmark overrides it."""
        return cls.encoder_blocks is not Benchmark.encoder_blocks

    def split_size(self, split: str) -> int | dict[str, int]:
        raise NotImplementedError

    def batches_per_epoch(self, split: str, batch_size: int) -> int:
        raise NotImplementedError

    def batches(self, split: str, batch_size: int,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches of a split, on the training device. Training passes a generator
        (shuffle, drop the last incomplete batch); evaluation passes None."""
        raise NotImplementedError

    def extra_record(self) -> dict:
        """Anything the benchmark wants recorded with the run (e.g. a generated split)."""
        return {}

    trajectory_every: int = 0
    """Record ``trajectory_point`` every N training steps in trajectory.jsonl (0 = never;
    toy2d sets it from its data options)."""

    def trajectory_point(self, model: nn.Module) -> Tensor:
        """The model's state as a point to draw (toy2d: x ∈ ℝ²); only called when
        ``trajectory_every`` is set."""
        raise NotImplementedError(f"{self.name}: trajectory_every is set but "
                                  f"trajectory_point is not implemented")

    @classmethod
    def reads_data_file(cls, config, path: PurePosixPath) -> bool:
        """Whether the benchmark, with data options ``config``, may read the file ``path``
        (relative to its data folder). The run's data fingerprint covers only these files,
        so that notes or results kept beside the data do not change it. Default: every
        file (hidden files and folders are never counted)."""
        return True


class TensorBenchmark(Benchmark):
    """A single-input benchmark whose splits are tensors on the training device."""

    splits: dict[str, TensorSplit]

    def split_size(self, split: str) -> int:
        return len(self.splits[split])

    def batches_per_epoch(self, split: str, batch_size: int) -> int:
        return num_batches(len(self.splits[split]), batch_size, drop_last=split == "train")

    def batches(self, split: str, batch_size: int,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        data = self.splits[split]
        for index in index_batches(len(data), batch_size, generator, generator is not None,
                                   data.inputs.device):
            inputs, targets = data.take(index)
            yield Batch(inputs, targets)


class MultiInputTensorBenchmark(Benchmark):
    """A multi-input benchmark (each task its own data), as tensors on the device.

    An epoch has as many steps as the largest task's split needs; smaller tasks start a new
    shuffled pass when theirs is used up (the protocol of LibMTL's multi-input loaders)."""

    multi_input = True
    domain_splits: dict[str, dict[str, TensorSplit]]  # task -> split name -> data

    def split_size(self, split: str) -> dict[str, int]:
        return {t: len(s[split]) for t, s in self.domain_splits.items()}

    def batches_per_epoch(self, split: str, batch_size: int) -> int:
        return max(num_batches(len(s[split]), batch_size, drop_last=split == "train")
                   for s in self.domain_splits.values())

    def batches(self, split: str, batch_size: int,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        if generator is None:
            # Evaluation: every task's split exactly once; tasks whose split is used up
            # simply stop appearing in the batch.
            streams = {t: list(index_batches(len(s[split]), batch_size, None, False,
                                             s[split].inputs.device))
                       for t, s in self.domain_splits.items()}
            for i in range(max(len(v) for v in streams.values())):
                inputs, targets = {}, {}
                for task, chunks in streams.items():
                    if i < len(chunks):
                        x, y = self.domain_splits[task][split].take(chunks[i])
                        inputs[task], targets[task] = x, y[task]
                yield Batch(inputs, targets)
            return
        steps = self.batches_per_epoch(split, batch_size)
        iters = {t: self._cycle(s[split], batch_size, generator) for t, s in self.domain_splits.items()}
        for _ in range(steps):
            inputs, targets = {}, {}
            for task, it in iters.items():
                x, y = next(it)
                inputs[task], targets[task] = x, y[task]
            yield Batch(inputs, targets)

    @staticmethod
    def _cycle(data: TensorSplit, batch_size: int, generator: torch.Generator) -> Iterator:
        while True:
            for index in index_batches(len(data), batch_size, generator, True, data.inputs.device):
                yield data.take(index)
