"""Hand-made step contexts and one real engine step, shared by the method tests of several
families (float64 throughout)."""
from __future__ import annotations

import functools
import io

import torch

from benchmarks.digits_tasks import DigitsTasks, DigitsTasksConfig
from engine.core.gradients.context import TrainStepContext
from engine.core.gradients.passes import GradientEngine
from engine.core.gradients.stats import EpochStats
from engine.core.gradients.update import apply_update
from engine.core.models import MultiTaskModel
from methods.registry import METHODS

D = torch.float64
NAMES = ("a", "b", "c")


class FakeContext:
    """The part of the step context that aggregators use."""

    def __init__(self, losses, names=NAMES, step: int = 0):
        self.losses = torch.as_tensor(losses, dtype=D)
        self.task_names = tuple(names[:len(self.losses)])
        self.step = step
        self.logged: dict[str, list[float]] = {}

    def log(self, name, value):
        self.logged.setdefault(name, []).append(float(value))


def make(name: str, names=NAMES[:2], **overrides):
    cls = METHODS.get(name)
    return cls(cls.Config(**overrides), names)


def random_jacobian(seed: int, tasks: int = 3, dim: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tasks, dim, generator=gen, dtype=D)


def state_round_trip(method, fresh):
    """Save ``method``'s state as a checkpoint would and load it into ``fresh``."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


@functools.cache
def tiny_digits() -> DigitsTasks:
    return DigitsTasks(DigitsTasksConfig(train_size=16, val_size=8, test_size=8), None,
                       torch.device("cpu"))


def one_engine_step(method, jacobian: str):
    """One real update on a tiny digits_tasks batch (float64); returns the per-task losses,
    the heads' gradients and each head's gradient of its own loss alone."""
    bench = tiny_digits()
    tasks = bench.task_names
    torch.manual_seed(0)
    model = MultiTaskModel(bench).double()
    batch = next(bench.batches("train", 8, torch.Generator().manual_seed(0)))
    batch.inputs = batch.inputs.double()
    batch.targets["sum"] = batch.targets["sum"].double()
    reps, preds = model(batch)
    losses = torch.stack([t.loss(preds[t.name], batch.targets[t.name]) for t in bench.tasks])
    engine = GradientEngine(model, tasks, jacobian, 0, torch.device("cpu"))
    own = {t: torch.autograd.grad(losses[i], engine.heads[t], retain_graph=True)
           for i, t in enumerate(tasks)}
    ctx = TrainStepContext(engine=engine, batch=batch, representations=reps,
                           raw_losses=losses, losses=losses, step=0, epoch=0,
                           generator=torch.Generator().manual_seed(0), stats=EpochStats(),
                           loss_fn=None)
    apply_update(method, [], ctx, [])
    heads = {t: [p.grad.clone() for p in engine.heads[t]] for t in tasks}
    return losses.detach(), heads, own, tasks
