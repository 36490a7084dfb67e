"""Building runs from the command line's request and running them, one after another.

Every run of a request is built (config resolved, method composition checked against the
benchmark) before the first one trains, so a typo is refused before any time is spent. A
run that fails or diverges leaves its reason on disk and the others go on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import benchmarks  # noqa: F401  (registers the built-in benchmarks)
import methods  # noqa: F401  (registers the built-in methods)
from benchmarks.base import Benchmark
from benchmarks.registry import BENCHMARKS, check_built, profile_origin, profile_source
from engine.core import results as R
from engine.core.architectures import check_architecture
from engine.core.config import RunConfig, resolve
from engine.core.distributed import World
from engine.errors import UserError
from engine.core.identity import Identity, data_fingerprint, folder_mismatch
from engine.runs.locks import RunLock, RunLocked
from engine.runs.runlog import log_epoch, run_log, tracker_hooks
from engine.core.run_folder import RunFolder
from engine.core.trainer import Diverged, Trainer
from methods.base import Aggregator
from methods.registry import METHODS, Composition, canonical_name, parse_method

log = logging.getLogger(__name__)
FINAL_STATUSES = R.FINAL_STATUSES


def resolve_device(spec: str) -> torch.device:
    """auto -> CUDA when present, else the CPU; anything else is checked, not assumed."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device; expected auto, cpu, cuda, cuda:N "
                        f"or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError(f"--device {spec}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def check_compatible(composition: Composition, spec: str, bench_cls: type[Benchmark]) -> None:
    """Refuse, with the reason, a method that cannot run on this benchmark."""
    needs = composition.needs
    primary = METHODS.get(composition.primary)
    if bench_cls.multi_input and (needs.shared_representation or
                                  (issubclass(primary, Aggregator) and primary.space == "rep")):
        raise UserError(f"{spec} needs one representation shared by all tasks, but "
                        f"{bench_cls.name} is multi-input (each task has its own batch)")


def check_batch(composition: Composition, spec: str, bench_cls: type[Benchmark],
                batch_size: int) -> None:
    """Refuse a method whose batch-wise term cannot be computed on this benchmark's batch."""
    need = max(METHODS.get(name).min_batch for name in composition.components)
    have = bench_cls.fixed_batch or batch_size
    if have < need:
        where = (f"{bench_cls.name} trains on batches of {have} sample(s) whatever "
                 f"train.batch_size" if bench_cls.fixed_batch else f"train.batch_size={have}")
        raise UserError(f"{spec} needs training batches of at least {need} samples, but {where}")


@dataclass
class RunRequest:
    """One (benchmark, method, seed) to train, with its resolved config."""

    config: RunConfig
    composition: Composition
    method_name: str
    data_fingerprint: str | None = None
    """engine/core/identity.py; None when the data were not looked at (a dry run)."""

    def dir(self, out: Path) -> Path:
        return R.run_dir(out, self.config.benchmark, self.method_name, self.config.seed,
                         self.config.hash())

    @property
    def identity(self) -> Identity:
        return Identity(self.config.hash(), self.config.seed, self.data_fingerprint)

    def mismatch(self, out: Path) -> str:
        """Why the run's folder holds another run (config, seed or data), or ""."""
        return folder_mismatch(self.dir(out), self.identity)


def build_requests(benchmark: str, method_specs: list[str], seeds: list[int], profile: str,
                   overrides: list[str], device: str, data_root: str | None,
                   check_data: bool = True, out: Path | None = None) -> list[RunRequest]:
    """Every run of a request, resolved and checked. ``check_data=False`` skips the checks
    of the device and the data folder (listing a sweep planned for another machine).
    ``out``, the results folder, is left out of the data fingerprint."""
    bench_cls = BENCHMARKS.get(benchmark)
    from_default = data_root is None and bench_cls.default_data_root is not None
    if data_root is None and bench_cls.needs_data_root:
        data_root = bench_cls.default_data_root
    if check_data:
        resolve_device(device)  # refuse an unavailable device before anything is written
    if bench_cls.needs_data_root and check_data:
        if data_root is None:
            raise UserError(f"benchmark {benchmark} reads its data from disk; pass --data-root "
                            f"DIR (see docs/paper_benchmarks.md)")
        if not Path(data_root).is_dir() and from_default:
            raise UserError(f"benchmark {benchmark}: no data folder {data_root} (its default); "
                            f"{bench_cls.data_hint}")
        if not Path(data_root).is_dir():
            raise UserError(f"--data-root {data_root}: no such folder (benchmark {benchmark}; "
                            f"{bench_cls.data_hint})")
    if data_root is not None and not bench_cls.needs_data_root:
        raise UserError(f"--data-root {data_root}: benchmark {benchmark} reads no data from "
                        f"disk (its data are generated or bundled); leave --data-root out")
    fingerprints: dict[str, str] = {}
    profiles = profile_source(bench_cls)
    requests = []
    unused_per_run: list[set[str]] = []
    names = [canonical_name(spec) for spec in method_specs]
    # Two spellings of one composition (repmtl+pcgrad, pcgrad+repmtl) are one run.
    method_specs = [spec for i, spec in enumerate(method_specs) if names[i] not in names[:i]]
    for spec in method_specs:
        composition = parse_method(spec)
        check_compatible(composition, spec, bench_cls)
        method_configs = {name: METHODS.get(name).Config() for name in composition.components}
        for seed in seeds:
            unused: set[str] = set()
            config = resolve(benchmark, canonical_name(spec), seed, profile, overrides,
                             bench_cls.Config, method_configs, profiles, device, data_root,
                             unused=unused, profile_origin=profile_origin(bench_cls))
            unused_per_run.append(unused)
            check_batch(composition, spec, bench_cls, config.train.batch_size)
            check_architecture(config.model, composition.needs, spec, bench_cls, config.data,
                               config.engine)
            if bench_cls.multi_input and config.engine.conflict_space == "rep":
                raise UserError(f"engine.conflict_space=rep needs one representation shared by "
                                f"all tasks, but {benchmark} is multi-input; use param")
            fingerprint = None
            if check_data:
                key = json.dumps(dataclasses.asdict(config.data), sort_keys=True, default=str)
                if key not in fingerprints:
                    fingerprints[key] = data_fingerprint(bench_cls, config.data, data_root,
                                                         out)
                fingerprint = fingerprints[key]
            requests.append(RunRequest(config, composition, canonical_name(spec), fingerprint))
    never_used = set.intersection(*unused_per_run) if unused_per_run else set()
    if never_used:
        # Resolve strictly for the first run to get the precise message.
        first = requests[0]
        resolve(benchmark, first.config.method, first.config.seed, profile,
                [o for o in overrides if o.partition("=")[0].strip() in never_used],
                bench_cls.Config, {n: METHODS.get(n).Config() for n in first.composition.components},
                profiles, device, data_root, profile_origin=profile_origin(bench_cls))
    return requests


@dataclass
class RunOutcome:
    request: RunRequest
    run_dir: Path
    status: str
    reason: str = ""
    wall_s: float = 0.0
    previous: str = ""
    """For a skipped run: the status on disk (complete, failed or diverged)."""
    user_error: bool = False
    """The run failed, or was refused, because of the user's input (its data, config or
    folder), not a bug or divergence: the command exits 2, as for any user mistake."""

    @property
    def state(self) -> str:
        """Where the run stands after this call: complete, failed, diverged or pending
        (locked by another process, or interrupted)."""
        if self.status == "skipped":
            return self.previous
        if self.status == "refused":
            return R.STATUS_FAILED
        return self.status if self.status in FINAL_STATUSES else "pending"


def make_benchmark(config: RunConfig, device: torch.device) -> Benchmark:
    bench_cls = BENCHMARKS.get(config.benchmark)
    root = Path(config.data_root) if config.data_root else None
    if bench_cls.needs_data_root and root is None:
        raise UserError(f"benchmark {config.benchmark} reads its data from disk; pass "
                        f"--data-root DIR (see docs/paper_benchmarks.md)")
    benchmark = bench_cls(config.data, root, device)
    check_built(benchmark)
    return benchmark


def execute(request: RunRequest, out: Path, force: bool = False, progress: bool = True,
            benchmark_cache: dict | None = None, retry_failed: bool = False,
            tensorboard: bool = False, world: World | None = None,
            wandb: bool = False) -> RunOutcome:
    """Train one run, resuming from its checkpoint, unless it is complete, or it failed or
    diverged and ``retry_failed`` is False (such runs are skipped and keep their status;
    a retried run resumes from its last checkpoint). ``force`` retrains every run from
    scratch. A run that another process is training is not touched: status "locked".
    Never raises for a failed run: the failure is written to its summary and returned.

    Data parallel (``world``): rank 0 decides, locks and writes; every rank trains."""
    run_dir = request.dir(out)
    if world is not None:
        return _execute_distributed(request, out, force, progress, benchmark_cache,
                                    retry_failed, world)
    skipped = _skip(request, run_dir, force, retry_failed, out)
    if skipped is not None:
        if tensorboard and skipped.previous == R.STATUS_COMPLETE:
            backfill_tensorboard(run_dir)
        return skipped
    try:
        with RunLock(run_dir):
            # Another process may have finished the run between the check and the lock.
            skipped = _skip(request, run_dir, force, retry_failed, out)
            if skipped is not None:
                return skipped
            with run_log(run_dir):
                return _train(request, run_dir, force, progress, benchmark_cache, tensorboard,
                              wandb=wandb)
    except RunLocked as exc:
        return RunOutcome(request, run_dir, "locked", str(exc))
    except UserError as exc:  # the lock file cannot be taken (a folder, no permission)
        return RunOutcome(request, run_dir, "refused", str(exc), user_error=True)
    except OSError as exc:  # the run folder cannot be created or written
        return RunOutcome(request, run_dir, "refused",
                          f"cannot write to run folder {run_dir}: {exc.strerror or exc}",
                          user_error=True)


def backfill_tensorboard(run_dir: Path) -> None:
    """``--tensorboard`` on a run that was complete before: its events from the recorded
    metrics, unless the folder already has events."""
    from engine.runs.runlog import TENSORBOARD_DIR, TensorBoardHook

    events = run_dir / TENSORBOARD_DIR
    if events.is_dir() and any(events.iterdir()):
        return
    records = R.read_jsonl(run_dir / R.METRICS)
    hook = TensorBoardHook(run_dir)
    try:
        for epoch in sorted({r["epoch"] for r in records if isinstance(r.get("epoch"), int)}):
            hook(epoch, records)
    finally:
        hook.close()


def _execute_distributed(request: RunRequest, out: Path, force: bool, progress: bool,
                         benchmark_cache: dict | None, retry_failed: bool,
                         world: World) -> RunOutcome:
    import torch.distributed as dist

    run_dir = request.dir(out)
    lock = None
    decision: list = [None]
    if world.is_main:
        skipped = _skip(request, run_dir, force, retry_failed, out)
        if skipped is None:
            lock = RunLock(run_dir)
            try:
                lock.__enter__()
            except RunLocked as exc:
                lock = None
                skipped = RunOutcome(request, run_dir, "locked", str(exc))
            except (UserError, OSError) as exc:
                lock = None
                skipped = RunOutcome(request, run_dir, "refused", str(exc), user_error=True)
        decision[0] = None if skipped is None else (skipped.status, skipped.reason,
                                                    skipped.previous, skipped.user_error)
    dist.broadcast_object_list(decision, src=0)
    if decision[0] is not None:
        status, reason, previous, user_error = decision[0]
        return RunOutcome(request, run_dir, status, reason, previous=previous,
                          user_error=user_error)
    try:
        if world.is_main:
            with run_log(run_dir):
                return _train(request, run_dir, force, progress, benchmark_cache, False, world)
        return _train(request, run_dir, force, False, benchmark_cache, False, world)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _skip(request: RunRequest, run_dir: Path, force: bool, retry_failed: bool,
          out: Path) -> RunOutcome | None:
    """The outcome of a run that is not to train (settled on disk, or its folder holds
    another run), or None."""
    if force:
        return None
    mismatch = request.mismatch(out)
    if mismatch:
        return RunOutcome(request, run_dir, "refused", mismatch, user_error=True)
    state = R.run_state(run_dir)  # absent or unreadable: this run (re)writes it
    if state.status == R.STATUS_COMPLETE:
        return RunOutcome(request, run_dir, "skipped", "already complete (use --force to rerun)",
                          previous=state.status)
    if state.status in (R.STATUS_FAILED, R.STATUS_DIVERGED) and not retry_failed:
        return RunOutcome(request, run_dir, "skipped",
                          f"{state.status} before: {state.reason} (--retry-failed "
                          f"retries it from its last checkpoint, --force from scratch)",
                          previous=state.status, user_error=state.user_error)
    return None


def _train(request: RunRequest, run_dir: Path, force: bool, progress: bool,
           benchmark_cache: dict | None, tensorboard: bool,
           world: World | None = None, wandb: bool = False) -> RunOutcome:
    config = request.config
    folder = RunFolder(run_dir, writes=world is None or world.is_main)
    log.info("run %s: %s on %s, seed %d, config %s", run_dir, request.method_name,
             config.benchmark, config.seed, config.hash())
    device = resolve_device(config.device)
    if device.type == "cpu" and config.engine.cpu_threads:
        torch.set_num_threads(config.engine.cpu_threads)  # before env.json records it
    folder.open(force)
    identity = request.identity.record()
    summary = {"status": R.STATUS_RUNNING, "benchmark": config.benchmark,
               "method": request.method_name, **identity,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "world_size": world.size if world is not None else 1}
    folder.start({**config.to_dict(), **identity},
                 {**R.environment(device), "world_size": world.size if world is not None else 1},
                 summary)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = None
    trackers: list = []
    try:
        torch.use_deterministic_algorithms(config.engine.deterministic, warn_only=True)
        key = (config.benchmark, repr(config.data), str(device), config.data_root)
        if benchmark_cache is not None and key in benchmark_cache:
            benchmark = benchmark_cache[key]
        else:
            benchmark = make_benchmark(config, device)
            if benchmark_cache is not None:
                benchmark_cache[key] = benchmark
        summary["tasks"] = task_record(benchmark)
        summary["setting"] = benchmark.setting
        extra = benchmark.extra_record()  # e.g. a generated split, the validation protocol
        if extra:
            folder.write_benchmark_record(extra)
        trainer = Trainer(config, benchmark, request.composition, device, folder, progress, world,
                          data_fingerprint=request.data_fingerprint)
        trainer.epoch_hooks.append(log_epoch)
        trackers = tracker_hooks(run_dir, request.method_name, config.to_dict(), tensorboard, wandb)
        trainer.epoch_hooks.extend(trackers)
        fit = trainer.fit(resume=not force, started=start)
        summary.update(status=R.STATUS_COMPLETE, reason="", epochs=fit.epochs_done,
                       steps=fit.steps, resumed_from_epoch=fit.resumed_from)
    except Diverged as exc:
        summary.update(status=R.STATUS_DIVERGED, reason=str(exc), diverged_step=exc.step,
                       diverged_epoch=exc.epoch, diverged_what=exc.what)
    except UserError as exc:  # its data, config or plugin: the user's to fix
        summary.update(status=R.STATUS_FAILED, reason=str(exc), user_error=True)
    except Exception as exc:  # a failed run must not stop the others; its traceback is kept
        tb = traceback.format_exc()
        folder.write_traceback(tb)
        log.error("%s", tb)
        summary.update(status=R.STATUS_FAILED, reason=f"{type(exc).__name__}: {exc}",
                       traceback=R.TRACEBACK)
    finally:
        for tracker in trackers:
            tracker.close()
    wall = time.perf_counter() - start
    log.info("run %s: %s %s (%.1f s)", run_dir, summary["status"], summary.get("reason", ""), wall)
    # The cost of the run, not of this process: a resumed run adds the time its
    # checkpoint recorded (a run resumed at its end would otherwise cost seconds); unknown
    # (None) when an older checkpoint recorded none.
    total = trainer.wall_time_s() if trainer is not None and hasattr(trainer, "started") else wall
    peak = R.peak_memory_bytes(device)
    if trainer is not None:
        peak = max(peak, trainer.peak_before_measure)
    summary.update(wall_time_s=total, session_wall_time_s=wall, peak_memory_bytes=peak,
                   device=str(device))
    if trainer is not None:
        summary.update(step_peak_memory_bytes=trainer.step_peak_bytes)
        summary.update(jacobian_path=trainer.engine.jacobian_path,
                       jacobian_fallback=trainer.engine.fallback_reason,
                       multi_input_forward=(config.engine.multi_input_forward
                                            if trainer.benchmark.multi_input else None),
                       methods=_method_summaries(trainer), notes=trainer.notes)
    folder.write_summary(summary)
    folder.close()
    return RunOutcome(request, run_dir, summary["status"], summary.get("reason", ""), wall,
                      user_error=summary.get("user_error") is True)


def task_record(benchmark: Benchmark) -> dict:
    """Each task's metrics with their direction and unit, as summary.json records them."""
    return {t.name: {m.name: {"higher_is_better": m.higher_is_better, "unit": m.unit}
                     for m in t.metrics} for t in benchmark.tasks}


def _method_summaries(trainer: Trainer) -> dict:
    out = {}
    for name, method in trainer.methods.items():
        report = method.run_report()
        if report:
            out[name] = report
    return out


def refuse_mismatches(requests: list[RunRequest], out: Path) -> None:
    """Refuse, before anything trains, runs whose folders hold another config, seed or data."""
    problems = [p for p in (r.mismatch(out) for r in requests) if p]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def run_all(requests: list[RunRequest], out: Path, force: bool = False,
            progress: bool = True, retry_failed: bool = False,
            world: World | None = None, tensorboard: bool = False,
            wandb: bool = False) -> list[RunOutcome]:
    if world is None or world.is_main:
        R.check_writable(out)
    if world is None and not force:
        refuse_mismatches(requests, out)
    progress = progress and (world is None or world.is_main)
    outcomes = []
    cache: dict = {}
    from engine.runs.progress import RunProgress

    with RunProgress(len(requests), "runs", progress, min_runs=2) as bar:
        for request in requests:
            outcome = execute(request, out, force=force, progress=progress,
                              benchmark_cache=cache, retry_failed=retry_failed, world=world,
                              tensorboard=tensorboard, wandb=wandb)
            outcomes.append(outcome)
            bar.finished(f"{request.config.benchmark}/{request.method_name}/seed"
                         f"{request.config.seed}", outcome.state)
            if outcome.status not in (R.STATUS_COMPLETE, "skipped"):
                log.warning("%s: %s (%s)", outcome.run_dir, outcome.status, outcome.reason)
    return outcomes
