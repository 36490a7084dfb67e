"""Every method in a plain PyTorch loop (engine/core/user_loop.py): the same update as the
harness's trainer, the method's state across steps, and one-line refusals."""
from __future__ import annotations

import copy
import dataclasses
import io
import warnings

import pytest
import torch
from torch import nn

from engine.core.trainer import Trainer, build_optimizer, derive_seeds
from engine.core.user_loop import MethodStep
from engine.errors import UserError
from engine.runs.runner import build_requests, make_benchmark
from methods.registry import METHODS

CPU = torch.device("cpu")
TINY = ["train.epochs=1", "data.train_size=48", "data.val_size=16", "data.test_size=16",
        "train.batch_size=16", "engine.conflict_every=0"]
EVERY_METHOD = sorted(n for n in METHODS.names()  # the built-in ones (tests register others)
                      if n != "stl" and METHODS.get(n).__module__.startswith("methods.")
                      # refused at construction: they need extra batches per step
                      and not METHODS.get(n).needs.extra_batches)


# MTAdam's step is applied by the run's optimizer unchanged: any optimizer but plain SGD is
# refused for it when the run is built.
PLAIN_SGD = ["train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0"]


def _trainer(spec: str, tmp_path, benchmark: str = "digits_tasks") -> Trainer:
    overrides = TINY + (PLAIN_SGD if "mtadam" in spec.split("+") else [])
    request = build_requests(benchmark, [spec], [0], "quick", overrides, "cpu", None)[0]
    bench = make_benchmark(request.config, CPU)
    return Trainer(request.config, bench, request.composition, CPU, None, progress=False)


def _settings(trainer: Trainer) -> dict:
    return {name: dataclasses.asdict(cfg) for name, cfg in trainer.config.methods.items()}


def _api_for(trainer: Trainer, model: nn.Module) -> MethodStep:
    last = ([p for p in model.last_shared.parameters()] if model.last_shared is not None
            else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MethodStep(trainer.config.method, model.shared_parameters(),
                          {t: model.head_parameters(t) for t in trainer.task_names},
                          settings=_settings(trainer), last_shared=last,
                          seed=derive_seeds(trainer.config.seed)[2])


def _loop_step(api: MethodStep, model, bench, batch, optimizer) -> None:
    """One step of a user's loop: forward, the method's backward, the optimizer."""
    def losses():
        reps, preds = model(batch)
        return reps, [t.loss(preds[t.name], batch.targets[t.name]).float() for t in bench.tasks]

    reps, task_losses = losses()
    api.backward(task_losses, features=reps, recompute=lambda: losses()[1])
    optimizer.step()
    api.after_optimizer_step()


@pytest.mark.parametrize("spec", EVERY_METHOD + ["pcgrad+repmtl", "upgrad+repmtl_csa"])
def test_two_steps_leave_the_trainers_gradients(spec, tmp_path):
    """Two steps (so that a method's state carries over), an epoch end between them: the
    user's loop leaves in .grad what the trainer's own step does, to 1e-6 relative."""
    trainer = _trainer(spec, tmp_path)
    bench = trainer.benchmark
    model = copy.deepcopy(trainer.model)
    api = _api_for(trainer, model)
    optimizer = build_optimizer(list(model.parameters()) + api.parameters(), trainer.config.train)
    batches = list(bench.batches("train", 16, torch.Generator().manual_seed(1)))[:2]
    from engine.core.gradients.stats import EpochStats
    for epoch, batch in enumerate(batches):
        stats = EpochStats()
        trainer.train_step(batch, epoch, stats)
        trainer.step += 1
        stats.add_losses(torch.zeros(len(bench.tasks)))
        _loop_step(api, model, bench, batch, optimizer)
        if epoch == 0:
            for m in trainer.methods.values():
                m.on_epoch_end(0, trainer._recompute(batch))
            for m in api.methods.values():  # the same epoch means as the trainer's
                m.on_epoch_end(0, trainer._recompute(batch))
            api.epoch += 1
    pairs = list(zip(trainer.model.parameters(), model.parameters()))
    pairs += list(zip(trainer.method_params, api.parameters()))
    assert pairs
    for ours, theirs in pairs:
        assert theirs.grad is not None
        torch.testing.assert_close(theirs.grad, ours.grad, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(theirs, ours, rtol=1e-6, atol=1e-9)


def _tiny_model():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8))
    heads = nn.ModuleDict({"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    return encoder, heads


def _plain_loop(spec: str, steps: int, settings=None, state=None, data_seed: int = 0):
    encoder, heads = _tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api = MethodStep(spec, encoder.parameters(),
                         {t: h.parameters() for t, h in heads.items()}, settings=settings)
    if state is not None:
        encoder.load_state_dict(state["encoder"])
        heads.load_state_dict(state["heads"])
        api.load_state_dict(state["method"])
    optimizer = torch.optim.Adam([*encoder.parameters(), *heads.parameters(), *api.parameters()],
                                 lr=3e-2)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    gen = torch.Generator().manual_seed(data_seed)
    epochs = []
    for step in range(steps):
        x = torch.randn(16, 5, generator=gen)
        ya, yb = x.sum(1, keepdim=True), 2 * x[:, :1]

        def losses():
            z = encoder(x)
            return z, [nn.functional.mse_loss(heads["a"](z), ya),
                       nn.functional.mse_loss(heads["b"](z), yb)]

        z, task_losses = losses()
        api.backward(task_losses, features=z, recompute=lambda: losses()[1])
        optimizer.step()
        api.after_optimizer_step()
        if step % 5 == 4:
            epochs.append(api.end_epoch())
    buffer = io.BytesIO()
    torch.save({"encoder": encoder.state_dict(), "heads": heads.state_dict(),
                "method": api.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    api.epochs = epochs
    return api, encoder, torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("spec", ["famo", "repmtl", "dwa", "nashmtl", "excessmtl"])
def test_a_plain_loop_of_20_steps_resumes_to_the_same_state(spec):
    """20 steps in one go equal 12 steps, a save through torch.save and 8 more."""
    settings = {"nashmtl.update_weights_every": 1} if spec == "nashmtl" else None
    whole, encoder_whole, _ = _plain_loop(spec, 20, settings)
    _, _, saved = _plain_loop(spec, 12, settings)
    resumed, encoder_resumed, _ = _resume(spec, settings, saved)
    assert resumed.step == whole.step == 20
    for a, b in zip(encoder_whole.parameters(), encoder_resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (k, a), (_, b) in zip(whole.methods.state_dict().items(),
                              resumed.methods.state_dict().items()):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def _resume(spec, settings, saved):
    """Continue a saved 12-step loop for 8 steps on the same data stream."""
    encoder, heads = _tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api = MethodStep(spec, encoder.parameters(),
                         {t: h.parameters() for t, h in heads.items()}, settings=settings)
    encoder.load_state_dict(saved["encoder"])
    heads.load_state_dict(saved["heads"])
    api.load_state_dict(saved["method"])
    optimizer = torch.optim.Adam([*encoder.parameters(), *heads.parameters(), *api.parameters()],
                                 lr=3e-2)
    optimizer.load_state_dict(saved["optimizer"])
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        torch.randn(16, 5, generator=gen)
    for step in range(12, 20):
        x = torch.randn(16, 5, generator=gen)
        ya, yb = x.sum(1, keepdim=True), 2 * x[:, :1]

        def losses():
            z = encoder(x)
            return z, [nn.functional.mse_loss(heads["a"](z), ya),
                       nn.functional.mse_loss(heads["b"](z), yb)]

        z, task_losses = losses()
        api.backward(task_losses, features=z, recompute=lambda: losses()[1])
        optimizer.step()
        api.after_optimizer_step()
        if step % 5 == 4:
            api.end_epoch()
    return api, encoder, None


@pytest.mark.parametrize("spec", ["famo", "repmtl"])
def test_the_loop_lowers_both_losses(spec):
    epochs = _plain_loop(spec, 20)[0].epochs
    assert len(epochs) == 4
    for task in ("a", "b"):
        assert epochs[-1]["losses"][task] < 0.9 * epochs[0]["losses"][task]
    if spec == "repmtl":
        assert epochs[-1]["logged"]  # Rep-MTL's terms are logged per epoch


def test_duties_are_said_once_at_construction():
    encoder, heads = _tiny_model()
    with pytest.warns(UserWarning, match="famo: re-evaluates the losses"):
        MethodStep("famo", encoder.parameters(), {t: h.parameters() for t, h in heads.items()})
    with pytest.warns(UserWarning, match="dwa: weighs by the epoch's mean losses"):
        MethodStep("dwa", encoder.parameters(), {t: h.parameters() for t, h in heads.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MethodStep("pcgrad", encoder.parameters(), {t: h.parameters() for t, h in heads.items()})


@pytest.mark.parametrize("call, message", [
    (lambda e, h: MethodStep("stl", e.parameters(), h), "one model per task"),
    (lambda e, h: MethodStep("nope", e.parameters(), h), "unknown method"),
    (lambda e, h: MethodStep("ew", e.parameters(), {}), "expected a mapping"),
    (lambda e, h: MethodStep("ew", next(e.parameters()), h), "iterable of parameters"),
    (lambda e, h: MethodStep("ew", e.parameters(), {"a": e.parameters(), "b": []}),
     "also shared"),
    (lambda e, h: MethodStep("gradnorm", e.parameters(), h), "pass last_shared="),
    (lambda e, h: MethodStep("pcgrad", e.parameters(), h, settings={"repmtl.lambda_tsr": 1}),
     "not a component"),
    (lambda e, h: MethodStep("cagrad", e.parameters(), h, settings={"cagrad.c": -1}),
     "cagrad"),
    (lambda e, h: MethodStep("cagrad", e.parameters(), h, settings={"cagrad.cc": 1}),
     "unknown key"),
    (lambda e, h: MethodStep("modo", e.parameters(), h), "extra independent batches"),
    (lambda e, h: MethodStep("sdmgrad", e.parameters(), h), "extra independent batches"),
])
def test_bad_construction_is_one_line(call, message):
    encoder, heads = _tiny_model()
    params = {t: list(m.parameters()) for t, m in heads.items()}
    with pytest.raises(UserError, match=message) as info:
        call(encoder, params)
    assert "\n" not in str(info.value)


def test_bad_steps_are_one_line():
    encoder, heads = _tiny_model()
    params = {t: list(m.parameters()) for t, m in heads.items()}
    x = torch.randn(4, 5)
    z = encoder(x)
    losses = [heads[t](z).pow(2).mean() for t in heads]
    with pytest.raises(UserError, match="pass features="):
        MethodStep("mgda_ub", encoder.parameters(), params).backward(losses)
    with pytest.raises(UserError, match="expected 2 losses"):
        MethodStep("ew", encoder.parameters(), params).backward(losses[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        famo = MethodStep("famo", encoder.parameters(), params)
    with pytest.raises(UserError, match="pass recompute="):
        famo.backward(losses)
    with pytest.raises(UserError, match="one representation shared by all tasks"):
        MethodStep("graddrop", encoder.parameters(), params).backward(
            losses, features={"a": z, "b": z * 1})
    with pytest.raises(UserError, match="cannot be loaded into pcgrad"):
        MethodStep("pcgrad", encoder.parameters(), params).load_state_dict(
            MethodStep("ew", encoder.parameters(), params).state_dict())


def test_backward_sets_rather_than_accumulates():
    encoder, heads = _tiny_model()
    api = MethodStep("ew", encoder.parameters(), {t: h.parameters() for t, h in heads.items()})
    x = torch.randn(4, 5)

    def step():
        z = encoder(x)
        api.backward([heads[t](z).pow(2).mean() for t in heads])
        return [p.grad.clone() for p in encoder.parameters()]

    first, second = step(), step()
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    z = encoder(x)
    expected = torch.autograd.grad(sum(heads[t](z).pow(2).mean() for t in heads),
                                   list(encoder.parameters()))
    for a, b in zip(first, expected):
        torch.testing.assert_close(a, b)
