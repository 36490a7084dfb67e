"""Hard parameter sharing: one shared encoder, one head per task (or, for single-task
learning, one encoder per task). The other architectures (``model.arch``) subclass
``MultiTaskModel`` in engine/core/architectures.py."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.base import Batch, Benchmark


class MultiTaskModel(nn.Module):
    """Encoder(s) and heads of a benchmark. ``forward`` returns, per task present in the
    batch, the representation its head consumed (Z) and its prediction."""

    arch = "hps"
    head_takes_input = False
    """The heads are called with (Z, the batch input) instead of Z (the gates of a mixture
    of experts read the input)."""
    common_rep = True
    """On a single-input batch every task's Z is one tensor (representation-level methods
    need it)."""
    rep_is_cut = True
    """Every path from the shared parameters to task t's loss passes through Z_t, so the
    shared gradient of any weighted sum can be backpropagated from the Z_t's."""

    def __init__(self, benchmark: Benchmark, separate_encoders: bool = False,
                 stacked_forward: bool = False, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        """4-D inputs are converted to channels_last (the caller converts the parameters)."""
        self.task_names = benchmark.task_names
        self.multi_input = benchmark.multi_input
        self.separate = separate_encoders
        self.stacked = stacked_forward and benchmark.multi_input and not separate_encoders
        count = len(self.task_names) if separate_encoders else 1
        self.encoders = nn.ModuleList(benchmark.make_encoder() for _ in range(count))
        self.heads = nn.ModuleDict({t.name: benchmark.make_head(t) for t in benchmark.tasks})
        self.last_shared = None if separate_encoders else benchmark.last_shared_layer(self.encoders[0])

    def compile_encoders(self, backend: str) -> None:
        """torch.compile every encoder in place (state_dict keys unchanged); the heads stay
        eager, since Rep-MTL differentiates through them twice."""
        for encoder in self.encoders:
            encoder.compile(backend=backend)

    def _format(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def encoder_for(self, task: str) -> nn.Module:
        return self.encoders[self.task_names.index(task)] if self.separate else self.encoders[0]

    def forward(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        tasks = [t for t in self.task_names if t in batch.targets]
        if not self.multi_input and not self.separate:
            x = self._format(batch.inputs)
            z = self.encoders[0](x)
            reps = {t: z for t in tasks}
            if self.head_takes_input:
                return reps, {t: self.heads[t](z, x) for t in tasks}
        elif self.stacked:
            sizes = [batch.inputs[t].shape[0] for t in tasks]
            zs = self.encoders[0](self._format(torch.cat([batch.inputs[t] for t in tasks]))).split(sizes)
            reps = dict(zip(tasks, zs))
        else:
            reps = {t: self.encoder_for(t)(self._format(batch.input_for(t))) for t in tasks}
        preds = {t: self.heads[t](reps[t]) for t in tasks}
        return reps, preds

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at the start of every training epoch (0-based, of
        ``epochs``), resumed runs included; architectures whose forward depends on the epoch
        (ltb's warm-up and temperature) read it here."""

    def shared_parameters(self) -> list[nn.Parameter]:
        if self.separate:
            return []
        return [p for p in self.encoders[0].parameters() if p.requires_grad]

    def head_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.heads[task].parameters() if p.requires_grad]
