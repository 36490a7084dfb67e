"""The one training loop that serves every method and benchmark.

Seeds: the run seed is split (numpy SeedSequence) into independent streams for the model's
initialisation, the order of the training batches, the method's randomness and everything
else (dropout). So for a given seed every method starts from the same weights and sees
exactly the same batches in the same order, whatever randomness the method itself draws.

Extra batches: a method that declares ``Needs.extra_batches = k`` (MoDo, SDMGrad) gets k
more training batches at every step, drawn from a stream of their own: independent
shuffles of the training split from a fifth seed, a new pass whenever one is used up and at
the start of every epoch. The step's own batch is still the one every other method sees at
that step; the stream's generator is saved in the checkpoint, and since it restarts at each
epoch, a resumed run draws the same extra batches as one never interrupted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from benchmarks.base import Batch, Benchmark
from benchmarks.registry import check_metric_names
from engine.core.amp import GradientOverflow, LossScaler, autocast
from engine.core.architectures import build_model, check_architecture
from engine.core.checkpoint import check_loadable, portable, restore
from engine.core.config import RunConfig
from engine.core.cpu_malloc import reuse_freed_memory
from engine.core.distributed import World, slice_for
from engine.errors import UserError
from engine.core.gradients.context import TrainStepContext
from engine.core.gradients.lookahead import Lookahead
from engine.core.gradients.passes import GradientEngine
from engine.core.gradients.stats import EpochStats
from engine.core.gradients.update import apply_update
from engine.core.identity import Identity
from engine.core.run_folder import RunFolder
from engine.core.saliency_log import SaliencyLog
from engine.core.second_order import convert_convolutions
from engine.core.step_memory import measure_step, resident_bytes
from engine.core.traces import Traces
from methods.base import Method, Regularizer
from methods.registry import METHODS, Composition


class Diverged(Exception):
    """A task loss (or a penalty) became NaN or infinite."""

    def __init__(self, step: int, epoch: int, what: str):
        super().__init__(f"non-finite {what} at step {step} (epoch {epoch})")
        self.step, self.epoch, self.what = step, epoch, what


EXTRA_SEED = 4
"""Index of the extra batches' stream among the run's derived seeds (the fifth: the first
four are as they always were)."""


def derive_seeds(seed: int, count: int = 4) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)]


def build_optimizer(params: list, train) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train):
    if train.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.step_size, gamma=train.gamma)
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    return None


@dataclass
class FitResult:
    epochs_done: int
    steps: int
    records: list[dict]
    resumed_from: int
    wall_time_s: float | None = None
    """Wall time of the whole run, summed over the processes that trained it (None when a
    checkpoint written before this was recorded was resumed)."""


class Trainer:
    """Builds model, method and optimizer for one run and trains it epoch by epoch,
    writing metrics and a checkpoint after each epoch."""

    def __init__(self, config: RunConfig, benchmark: Benchmark, composition: Composition,
                 device: torch.device, folder: RunFolder | None, progress: bool = True,
                 world: World | None = None, data_fingerprint: str | None = None):
        self.config = config
        self.data_fingerprint = data_fingerprint
        self.method_state_checked = False
        self.world = world
        self.writes = world is None or world.is_main
        """Only one process of a data-parallel run writes files."""
        self.benchmark = benchmark
        self.device = device
        self.folder = folder
        """Where the run's epochs and checkpoints go, and where it resumes from; None
        (``perf``, scripts): nothing is written and training starts from scratch."""
        self.progress = progress
        self.task_names = benchmark.task_names
        needs = composition.needs
        init_seed, data_seed, method_seed, other_seed = derive_seeds(config.seed)

        engine_cfg = config.engine
        if device.type == "cpu" and engine_cfg.cpu_malloc == "reuse":
            reuse_freed_memory()
        torch.manual_seed(init_seed)
        check_architecture(config.model, needs, config.method, type(benchmark), config.data,
                           engine_cfg)
        self.model = build_model(
            benchmark, config.model, separate_encoders=needs.separate_encoders,
            stacked_forward=engine_cfg.multi_input_forward == "stacked",
            channels_last=engine_cfg.channels_last).to(device)
        if engine_cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if engine_cfg.compile:
            self.model.compile_encoders(engine_cfg.compile_backend)
        if needs.second_order and engine_cfg.head_convs == "second_order":
            convert_convolutions(self.model.heads)
        self.amp = engine_cfg.amp
        self.scaler = LossScaler(device) if engine_cfg.amp == "fp16" else None
        self.primary: Method = METHODS.get(composition.primary)(
            config.methods[composition.primary], self.task_names)
        self.regularizers: list[Regularizer] = [
            METHODS.get(name)(config.methods[name], self.task_names)
            for name in composition.regularizers]
        self.methods = nn.ModuleDict({composition.primary: self.primary,
                                      **{r.name: r for r in self.regularizers}}).to(device)
        self.method_params = [p for m in self.methods.values() for p in m.trainable_parameters()]
        self.optimizer = build_optimizer(list(self.model.parameters()) + self.method_params,
                                         config.train)
        self.scheduler = build_scheduler(self.optimizer, config.train)
        self.lookahead = (Lookahead(self.model, self.optimizer, self._lookahead_losses)
                          if needs.lookahead else None)
        self.engine = GradientEngine(self.model, self.task_names, engine_cfg.jacobian,
                                     engine_cfg.chunk_size, device, world, self.scaler,
                                     compiled=engine_cfg.compile)
        self.data_generator = torch.Generator().manual_seed(data_seed)
        self.method_generator = torch.Generator(device=device).manual_seed(method_seed)
        torch.manual_seed(other_seed)
        self.after_step = needs.after_step
        self.extra_batches = max(m.needs.extra_batches for m in self.methods.values())
        self.extra_generator: torch.Generator | None = None
        self._extra_stream = None
        if self.extra_batches:
            if world is not None:
                raise UserError(f"{config.method} draws {self.extra_batches} extra batches per "
                                f"step, which data-parallel runs do not offer; train it in "
                                f"one process")
            self.extra_generator = torch.Generator().manual_seed(
                derive_seeds(config.seed, EXTRA_SEED + 1)[EXTRA_SEED])
        if needs.lookahead and (engine_cfg.amp == "fp16" or engine_cfg.compile):
            setting = "engine.amp=fp16" if engine_cfg.amp == "fp16" else "engine.compile=true"
            raise UserError(f"{config.method} evaluates the model at lookahead parameters "
                            f"through backward passes of its own, which {setting} does not "
                            f"cover (loss scaling, compiled encoders); train it without it")
        conflict_every = engine_cfg.conflict_every
        self.notes: list[str] = []
        """Things the run did differently from its config, with the reason (summary.json)."""
        if conflict_every and not self.engine.shared:
            conflict_every = 0
            self.notes.append("gradient conflict not recorded: the model has no shared "
                              "parameters (one encoder per task)")
        self.traces = Traces(self.task_names, engine_cfg.curve_every, conflict_every,
                             engine_cfg.conflict_space, benchmark.trajectory_every)
        self.saliency_log = SaliencyLog.for_run(engine_cfg.saliency_every, self.task_names,
                                                not self.model.separate, self.notes)
        self.step = 0
        self.steps_here = 0
        """Training steps taken by this process (a resumed run starts again at 0)."""
        self.step_peak_bytes: int | None = None
        """The peak tensor memory of one training step (engine.core.step_memory), measured
        on this process's second step, when the optimizer state exists."""
        self.peak_before_measure = 0
        """The CUDA allocator's peak before that measurement reset it (for the run's peak)."""
        # Called as hook(epoch, records) once an epoch is on disk (run.log, TensorBoard).
        self.epoch_hooks: list = []
        self.train_batch = config.train.batch_size
        self.eval_batch = config.train.eval_batch_size or config.train.batch_size
        if benchmark.batches_per_epoch("train", self.train_batch) == 0:
            raise UserError(f"{config.benchmark}: the training split ({benchmark.split_size('train')} "
                            f"samples) is smaller than one batch of {self.train_batch}; lower "
                            f"train.batch_size or enlarge the split")
        if world is not None and self.train_batch % world.size:
            raise UserError(f"train.batch_size={self.train_batch} is the global batch of a "
                            f"data-parallel run; it must be divisible by the {world.size} processes")

    # ------------------------------------------------------------------ losses
    def compute_task_losses(self, batch: Batch, model=None) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Z per task and the T task losses as separate float32 scalars (each with only its
        own task's graph, so that per-task backward passes touch one head each). ``model``:
        something called like the model (a lookahead's substituted parameters)."""
        with autocast(self.device, self.amp):
            reps, preds = (self.model if model is None else model)(batch)
            losses = [task.loss(preds[task.name], batch.targets[task.name]).float()
                      for task in self.benchmark.tasks]
        return reps, losses

    def compute_losses(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        reps, losses = self.compute_task_losses(batch)
        return reps, torch.stack(losses)

    def _lookahead_losses(self, model, batch: Batch) -> list[Tensor]:
        """The T losses of ``model`` on ``batch`` as methods see them (after any
        regularizer's transform), for a bilevel method's lookahead (``Needs.lookahead``)."""
        losses = torch.stack(self.compute_task_losses(batch, model)[1])
        for reg in self.regularizers:
            losses = reg.transform_losses(losses)
        return list(losses.unbind())

    def _recompute(self, batch: Batch) -> Tensor:
        with torch.inference_mode():
            return self.compute_losses(batch)[1]

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Batch, epoch: int, stats: EpochStats):
        """One optimisation step. Returns the raw task losses (detached), the applied
        weights, the penalty and a finiteness flag per task (+ one for the penalty), all
        on the device: nothing here waits for the host.

        Data parallel (``world``): this rank trains on its slice of the global batch, and
        its losses enter as straight-through global values (see engine/core/distributed.py)."""
        world = self.world
        if world is not None:
            batch = batch.select(slice_for(batch.size(), world))
        reps, raw_parts = self.compute_task_losses(batch)
        if world is not None:
            # One all-reduce for the T values; each loss keeps its own graph.
            local = [part / world.size for part in raw_parts]
            total = torch.stack([part.detach() for part in local])
            world.sum_(total)
            raw_parts = [part + (total[t] - part.detach()) for t, part in enumerate(local)]
        raw = torch.stack(raw_parts)
        losses = raw
        for reg in self.regularizers:
            losses = reg.transform_losses(losses)
        # A regularizer's transform (Rep-MTL's log losses) exists only on the vector.
        parts = raw_parts if losses is raw else None
        ctx = TrainStepContext(engine=self.engine, batch=batch, representations=reps,
                               raw_losses=raw, losses=losses, step=self.step, epoch=epoch,
                               generator=self.method_generator, stats=stats,
                               loss_fn=self._recompute, raw_parts=raw_parts, parts=parts,
                               extra_batches=self._draw_extra(),
                               extra_loss_fn=lambda b: self.compute_task_losses(b)[1],
                               lookahead=self.lookahead)
        self.engine.zero_grad(self.method_params)
        values = raw.detach()
        try:
            if self.traces.wants_conflict(self.step):
                self.traces.add_conflict(self.step, epoch, self._conflict_grads(ctx))
            inspect_penalty = None
            if self.saliency_log is not None and self.saliency_log.wants(self.step):
                self.saliency_log.record(ctx)
                inspect_penalty = self.saliency_log.record_penalty
            weights, penalty = apply_update(self.primary, self.regularizers, ctx,
                                            self.method_params, inspect_penalty)
        except GradientOverflow:  # fp16: what a method was to see overflowed
            self._skip_step()
            return values, None, None, torch.isfinite(torch.cat([values, values.new_zeros(1)]))
        self.engine.reduce_grads()
        finite = torch.isfinite(values)
        finite = torch.cat([finite, torch.isfinite(penalty).reshape(1) if penalty is not None
                            else finite.new_ones(1)])
        if self.scaler is not None and not self._scaled_step(finite):
            # Skipped: the weights and penalty of overflowed gradients are not recorded.
            return values, None, None, finite
        self.optimizer.step()
        if self.after_step:
            for m in self.methods.values():
                if m.needs.after_step:
                    with ctx.asked_by(m):
                        m.after_step(ctx)
        return values, weights, penalty, finite

    def _draw_extra(self) -> list[Batch]:
        """The step's extra batches (``Needs.extra_batches``), from their own stream."""
        drawn = []
        while len(drawn) < self.extra_batches:
            if self._extra_stream is None:
                self._extra_stream = self.benchmark.batches("train", self.train_batch,
                                                            self.extra_generator)
            batch = next(self._extra_stream, None)
            if batch is None:
                self._extra_stream = None
                continue
            drawn.append(batch)
        return drawn

    def _scaled_step(self, finite: Tensor) -> bool:
        """fp16: unscale the gradients and step unless the scaled gradients overflowed
        (then skip the step and back off the scale, as torch.amp.GradScaler does). A
        penalty made non-finite by that overflow is not divergence. Returns whether the
        optimizer is to step; one host sync per step."""
        scaler = self.scaler
        self.engine.unscale_grads(self.method_params)
        if self.world is not None:
            self.world.sum_(scaler.found_inf)
        finite[-1] |= scaler.found_inf > 0
        skip = scaler.overflowed()
        if skip:
            self._skip_step()
        else:
            scaler.update()
        return not skip

    def _skip_step(self) -> None:
        """fp16: the step's scaled gradients overflowed; back off the scale, no update."""
        self.scaler.update()
        self.scaler.skipped_steps += 1

    def train_epoch(self, epoch: int, bar) -> dict:
        self.model.set_epoch(epoch, self.config.train.epochs)
        self.model.train()
        self.methods.train()
        self._extra_stream = None  # the extra batches start a new pass with every epoch
        stats = EpochStats()
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        bad_tasks = torch.zeros(len(self.task_names) + 1, dtype=torch.bool, device=self.device)
        check_every = self.config.engine.nan_check_every
        limit = self.config.train.max_steps_per_epoch
        start = time.perf_counter()
        steps = 0
        for batch in self.benchmark.batches("train", self.train_batch, self.data_generator):
            if limit and steps >= limit:
                break
            if self.steps_here == 1 and self.step_peak_bytes is None:
                values, weights, penalty, finite = self._measured_step(batch, epoch, stats)
            else:
                values, weights, penalty, finite = self.train_step(batch, epoch, stats)
            self.steps_here += 1
            first_bad = (bad_step < 0) & ~finite.all()
            bad_step = torch.where(first_bad, self.step, bad_step)
            bad_tasks = torch.where(first_bad, ~finite, bad_tasks)
            if (steps + 1) % check_every == 0 and bool(bad_step >= 0):
                self._raise_diverged(bad_step, bad_tasks, epoch)
            stats.add_losses(values)
            self.traces.add_losses(self.step, epoch, values)
            if self.traces.wants_trajectory(self.step + 1):
                self.traces.add_trajectory(self.step + 1, self.benchmark.trajectory_point(self.model),
                                           self._recompute(batch))
            if weights is not None:
                stats.add_weights(weights)
            if penalty is not None:
                stats.log("penalty", penalty)
            self.step += 1
            steps += 1
            if bar is not None:
                bar.update(1)
        if bool(bad_step >= 0):
            self._raise_diverged(bad_step, bad_tasks, epoch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.traces.flush(self.step, epoch)
        means = stats.means()
        for m in self.methods.values():
            m.on_epoch_end(epoch, stats.loss_sum / max(stats.steps, 1))
        record = {"epoch": epoch, "split": "train", "steps": steps,
                  "losses": dict(zip(self.task_names, means["loss"])),
                  "lr": self.optimizer.param_groups[0]["lr"]}
        if means["weights"] is not None:
            record["weights"] = dict(zip(self.task_names, means["weights"]))
        if means["logged"]:
            record["method"] = means["logged"]
        record["step_time_s"] = elapsed / max(steps, 1)
        return record

    def _measured_step(self, batch: Batch, epoch: int, stats: EpochStats):
        """One training step whose peak tensor memory is recorded (``step_peak_bytes``)."""
        if self.device.type == "cuda":
            self.peak_before_measure = int(torch.cuda.max_memory_allocated(self.device))
        resident = partial(resident_bytes, [self.model, self.methods], [self.optimizer])
        out, self.step_peak_bytes = measure_step(lambda: self.train_step(batch, epoch, stats),
                                                 self.device, resident)
        return out

    def _conflict_grads(self, ctx: TrainStepContext) -> Tensor:
        """Per-task gradients of the raw losses for the conflict statistics. Computed
        beside the method's own requests (not cached in the context), so recording them
        never changes the update."""
        if self.config.engine.conflict_space == "rep":
            return torch.stack([g.reshape(-1) for g in ctx.rep_grads(raw=True)])
        return self.engine.jacobian(ctx.raw_losses, parts=ctx.loss_parts(raw=True))

    def _raise_diverged(self, bad_step: Tensor, bad_tasks: Tensor, epoch: int) -> None:
        names = [*self.task_names, "penalty"]
        what = ", ".join(n for n, bad in zip(names, bad_tasks.tolist()) if bad)
        raise Diverged(int(bad_step), epoch, f"loss of {what}")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str, epoch: int) -> dict:
        self.model.eval()
        meters = {t.name: t.meter() for t in self.benchmark.tasks}
        loss_sums = {t: 0.0 for t in self.task_names}
        loss_sums_t: dict[str, Tensor] = {}
        counts = {t: 0 for t in self.task_names}
        for batch in self.benchmark.batches(split, self.eval_batch, None):
            with autocast(self.device, self.amp):
                _, preds = self.model(batch)
            preds = {name: pred.float() for name, pred in preds.items()}
            for task in self.benchmark.tasks:
                if task.name not in batch.targets:
                    continue
                target = batch.targets[task.name]
                n = target.shape[0]
                value = task.loss(preds[task.name], target) * n
                loss_sums_t[task.name] = value if task.name not in loss_sums_t else loss_sums_t[task.name] + value
                counts[task.name] += n
                meters[task.name].update(preds[task.name], target)
        for name, value in loss_sums_t.items():
            loss_sums[name] = float(value) / counts[name]
        metrics = {name: meter.compute() for name, meter in meters.items()}
        check_metric_names(self.benchmark, metrics)
        return {"epoch": epoch, "split": split, "losses": loss_sums, "metrics": metrics}

    # ------------------------------------------------------------------ the run
    def state(self, epoch: int, records: list[dict]) -> dict:
        rng = {"torch": torch.get_rng_state(), "data": self.data_generator.get_state(),
               "method": self.method_generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.extra_generator is not None:
            rng["extra"] = self.extra_generator.get_state()
        methods = portable(self.methods.state_dict())
        if not self.method_state_checked:
            for name in self.methods:
                prefix = f"{name}."
                check_loadable(name, {k: v for k, v in methods.items() if k.startswith(prefix)})
            self.method_state_checked = True
        return {"epoch": epoch, "step": self.step, "config_hash": self.config.hash(),
                "wall_time_s": self.wall_time_s(),
                "seed": self.config.seed, "data_fingerprint": self.data_fingerprint,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "methods": methods, "rng": rng, "records": records,
                "traces": self.traces.state(),
                "loss_scale": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.methods.load_state_dict(restore(state["methods"]))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.data_generator.set_state(rng["data"])
        self.method_generator.set_state(rng["method"])
        if self.extra_generator is not None:
            self.extra_generator.set_state(rng["extra"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = state["step"]
        if self.scaler is not None and state.get("loss_scale") is not None:
            self.scaler.load_state_dict(state["loss_scale"])
        self.traces.load_state(state.get("traces", {}))

    def wall_time_s(self) -> float | None:
        """This run's wall time so far, over every process that trained it. A run resumed
        from the checkpoint of its last epoch (its summary was lost) trains nothing here,
        so it costs what the checkpoint recorded, not this process's set-up time."""
        if self.time_before is None or self.resumed_at_end:
            return self.time_before
        return self.time_before + time.perf_counter() - self.started

    def fit(self, resume: bool = True, started: float | None = None) -> FitResult:
        """Train to the last epoch. ``started`` (perf_counter) is when this process began
        the run (before building the data), for the wall time."""
        self.started = time.perf_counter() if started is None else started
        self.time_before: float | None = 0.0
        self.resumed_at_end = False
        records: list[dict] = []
        start_epoch = 0
        if self.world is not None and not self.writes:
            torch.distributed.barrier()  # rank 0 has checked (and set aside) the checkpoints
        if resume and self.folder is not None:
            state = self.folder.load_checkpoint(Identity(self.config.hash(), self.config.seed,
                                                         self.data_fingerprint))
            if state is not None:
                self.load_state(state)
                start_epoch = state["epoch"] + 1
                records = state["records"]
                self.time_before = state.get("wall_time_s")
        if self.world is not None:
            if self.writes:
                torch.distributed.barrier()
            torch.distributed.barrier()  # every rank has read the checkpoint before rank 0 writes
        epochs = self.config.train.epochs
        self.resumed_at_end = start_epoch >= epochs
        steps_per_epoch = self.benchmark.batches_per_epoch("train", self.train_batch)
        if self.config.train.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, self.config.train.max_steps_per_epoch)
        bar = tqdm(total=(epochs - start_epoch) * steps_per_epoch, leave=False,
                   desc=f"{self.config.benchmark}/{self.config.method}/seed{self.config.seed}",
                   # None: tqdm shows the per-step bar on a terminal only (no log spam)
                   disable=None if self.progress else True, unit="step")
        if start_epoch == 0 and self.traces.wants_trajectory(0):
            first = next(iter(self.benchmark.batches("train", self.train_batch, None)))
            self.traces.add_trajectory(0, self.benchmark.trajectory_point(self.model),
                                       self._recompute(first))
        try:
            for epoch in range(start_epoch, epochs):
                train_record = self.train_epoch(epoch, bar)
                records.append(train_record)
                records.append(self.evaluate("val", epoch))
                records.append(self.evaluate("test", epoch))
                if self.scheduler is not None:
                    self.scheduler.step()
                if not self.writes:
                    continue
                if self.folder is not None:
                    self.folder.end_epoch(records, self.traces, self.state(epoch, records))
                for hook in self.epoch_hooks:
                    hook(epoch, records)
        finally:
            bar.close()
        return FitResult(epochs_done=epochs, steps=self.step, records=records,
                         resumed_from=start_epoch, wall_time_s=self.wall_time_s())
