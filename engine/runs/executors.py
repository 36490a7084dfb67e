"""Where the runs of a sweep train: here, in parallel processes, or as SLURM jobs.

All three call the same ``run_spec`` for each run, which rebuilds the run from its
``RunSpec`` (plain data), checks that its config hash has not changed since the sweep was
planned, and calls ``runner.execute``: complete runs are skipped, interrupted ones resume
from their checkpoint, failed ones are retried only with ``retry_failed``, and a run that
another process holds (``engine.runs.locks``) is reported as locked and left alone.

- ``local``: one run after another in this process (benchmarks built once and reused).
- ``processes``: N runs at a time, each in a fresh process (a crash, even a segfault or
  an out-of-memory kill, costs that run only and is recorded in its summary); torch threads
  are divided between the workers and, with several GPUs, workers take them round-robin.
- ``slurm``: one job array through submitit. A job that is preempted or reaches its time
  limit is checkpointed by submitit and requeued; the requeued job resumes the run from its
  last epoch checkpoint. ``cluster="local"`` runs the same jobs through submitit's local
  executor (no cluster needed; used by the tests).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from engine.core import results as R
from engine.errors import UserError
from engine.runs.locks import RunLock, RunLocked
from engine.runs.sweep import RunSpec

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Options:
    """What every run of a sweep is asked to do, the same for all of them."""

    out: str
    force: bool = False
    retry_failed: bool = False
    tensorboard: bool = False
    wandb: bool = False


@dataclass(frozen=True)
class RunResult:
    label: str
    run_dir: str
    status: str
    """complete, failed, diverged, skipped or locked (what this attempt did)."""
    state: str
    """complete, failed, diverged or pending (where the run stands now)."""
    reason: str = ""
    user_error: bool = False
    """Failed or refused for the user's input (data, config, folder): the sweep exits 2."""


def run_spec(spec: RunSpec, options: Options, device: str | None = None, progress: bool = False,
             benchmark_cache: dict | None = None, world=None) -> RunResult:
    """Rebuild one run from its spec and execute it (in whatever process this is)."""
    from engine.registry import load_plugin
    from engine.runs.runner import build_requests, execute

    try:
        for plugin in spec.plugins:
            load_plugin(plugin)
        (request,) = build_requests(spec.benchmark, [spec.method], [spec.seed], spec.profile,
                                    list(spec.overrides), device or spec.device, spec.data_root,
                                    out=Path(options.out))
    except UserError as exc:  # e.g. a plugin that fails to import in this process
        return RunResult(spec.label, spec.run_dir, R.STATUS_FAILED, R.STATUS_FAILED,
                         f"cannot build the run here: {exc}", user_error=True)
    if request.config.hash() != spec.config_hash:
        return RunResult(spec.label, spec.run_dir, R.STATUS_FAILED, R.STATUS_FAILED,
                         f"its config hash is now {request.config.hash()}, not "
                         f"{spec.config_hash}: the code or a profile changed since the sweep was "
                         f"planned; plan it again")
    outcome = execute(request, Path(options.out), force=options.force, progress=progress,
                      benchmark_cache=benchmark_cache, retry_failed=options.retry_failed,
                      tensorboard=options.tensorboard, world=world, wandb=options.wandb)
    return RunResult(spec.label, str(outcome.run_dir), outcome.status, outcome.state,
                     outcome.reason, outcome.user_error)


def _bar(total: int, progress: bool, desc: str):
    from engine.runs.progress import RunProgress

    return RunProgress(total, desc, progress)


# --------------------------------------------------------------------------- local

def run_local(specs: list[RunSpec], options: Options, progress: bool = True) -> list[RunResult]:
    import torch

    results, cache = [], {}
    with _bar(len(specs), progress, "sweep") as bar:
        for spec in specs:
            result = run_spec(spec, options, progress=progress, benchmark_cache=cache)
            results.append(result)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what a failed (out-of-memory) run left behind
            bar.finished(spec.label, result.status)
    return results


# --------------------------------------------------------------------------- processes

def die_with_parent(parent_pid: int) -> None:
    """Make this worker end when the sweep's process does (SIGKILL included): Linux's
    parent-death signal, and a check that the parent did not die before it was set. On
    other systems the worker's pipe to the parent is its only link."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _process_main(spec: RunSpec, options: Options, device: str | None, threads: int,
                  conn, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    conn.send(run_spec(spec, options, device=device))
    conn.close()


def worker_devices(device: str, jobs: int) -> list[str | None]:
    """The device of each worker slot: round-robin over the GPUs when there are several
    and the sweep asks for auto or cuda; else every worker keeps the sweep's device."""
    import torch

    count = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if count < 2:
        return [None] * jobs
    return [f"cuda:{k % count}" for k in range(jobs)]


def run_processes(specs: list[RunSpec], options: Options, jobs: int,
                  progress: bool = True) -> list[RunResult]:
    ctx = multiprocessing.get_context("spawn")  # no forked CUDA or thread-pool state
    threads = max(1, R.usable_cores() // jobs)
    devices = worker_devices(specs[0].device, jobs) if specs else []
    queue = list(enumerate(specs))
    running: dict[Any, tuple] = {}  # sentinel -> (index, slot, spec, connection, process)
    results: list[RunResult | None] = [None] * len(specs)
    free = list(range(jobs))
    with _bar(len(specs), progress, f"sweep ({jobs} processes)") as bar:
        try:
            while queue or running:
                while queue and free:
                    index, spec = queue.pop(0)
                    slot = free.pop(0)
                    parent, child = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_process_main, name=f"run-{spec.label}",
                                       args=(spec, options, devices[slot], threads, child,
                                             os.getpid()))
                    proc.start()
                    child.close()
                    running[proc.sentinel] = (index, slot, spec, parent, proc)
                for sentinel in wait(list(running)):
                    index, slot, spec, conn, proc = running.pop(sentinel)
                    proc.join()
                    try:
                        result = conn.recv() if conn.poll() else None
                    except EOFError:  # died before sending anything
                        result = None
                    conn.close()
                    if result is None:
                        result = record_crash(spec, f"the process training it died "
                                                    f"({_exit_reason(proc.exitcode)})")
                    results[index] = result
                    free.append(slot)
                    bar.finished(spec.label, result.status)
        except KeyboardInterrupt:
            # The workers got the same SIGINT; their runs stay resumable.
            for _, _, _, _, proc in running.values():
                proc.terminate()
            for _, _, _, _, proc in running.values():
                proc.join()
            raise
    return [r for r in results if r is not None]


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        name = signal.Signals(-code).name
        hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
        return f"signal {name}{hint}"
    return f"exit code {code}"


def record_crash(spec: RunSpec, reason: str) -> RunResult:
    """A worker died without reporting: write the failure into the run's summary (unless
    another process has taken the run meanwhile)."""
    run_dir = Path(spec.run_dir)
    try:
        with RunLock(run_dir):
            path = run_dir / R.SUMMARY
            summary = dict(R.run_state(run_dir).summary)
            summary.update(status=R.STATUS_FAILED, reason=reason)
            R.atomic_write_json(path, summary)
    except RunLocked:
        return RunResult(spec.label, spec.run_dir, "locked", "pending", reason)
    except (UserError, OSError) as exc:  # the folder cannot be written: report it here
        reason = f"{reason}; not recorded in its folder ({exc})"
    log.warning("%s: %s", spec.label, reason)
    return RunResult(spec.label, spec.run_dir, R.STATUS_FAILED, R.STATUS_FAILED, reason)


# --------------------------------------------------------------------------- SLURM

class SweepJob:
    """The callable of one cluster job. submitit calls ``checkpoint`` when the job is
    preempted or about to time out; the job is requeued with the same call, which resumes
    the run from its last epoch checkpoint (the lock died with the old process)."""

    def __init__(self, spec: RunSpec, options: Options, ddp: int = 1):
        self.spec, self.options, self.ddp = spec, options, ddp

    def __call__(self) -> RunResult:
        import torch

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:  # torch would otherwise use every core of the node
            torch.set_num_threads(int(cpus))
        if self.ddp <= 1:
            return run_spec(self.spec, self.options)
        import submitit

        from engine.core.distributed import init_from_env, shutdown

        # The job's tasks are the processes of one data-parallel run: submitit describes
        # them (rank, world size, master address) in the torch.distributed variables.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        world, device = init_from_env(self.spec.device or "auto")
        result = run_spec(self.spec, self.options, device=device, world=world)
        shutdown(world)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        log.info("%s: preempted or timed out; requeued to resume from its checkpoint",
                 self.spec.label)
        return submitit.helpers.DelayedSubmission(SweepJob(self.spec, self.options, self.ddp))


SLURM_DEFAULTS = {"time_min": 1440, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32,
                  "array_parallelism": 64, "max_num_timeout": 10}


def make_submitit_executor(folder: Path, slurm: dict[str, Any], cluster: str = "slurm"):
    """A submitit executor for SLURM, or (``cluster="local"``) for this machine with the
    same jobs, parameters and requeue handling."""
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs the submitit package: pip install submitit") from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no SLURM on this machine (sbatch not found); use "
                        "--executor processes here, or --submitit-cluster local to try the "
                        "SLURM path locally")
    params = {**SLURM_DEFAULTS, **{k: v for k, v in slurm.items() if v is not None}}
    ddp = params.get("ddp", 1)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     **{f"{cluster}_max_num_timeout": params["max_num_timeout"]})
    # Jobs unpickle engine.runs.executors.SweepJob: the project root must be importable there.
    setup = [f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", *params.get("setup", [])]
    gpus = params["gpus_per_node"]
    if cluster == "local":  # the local executor would expose GPUs that do not exist
        import torch

        gpus = min(gpus, torch.cuda.device_count())
    if ddp > 1 and gpus:
        gpus = max(gpus, ddp)  # one GPU per process
    executor.update_parameters(tasks_per_node=ddp,
        name="mtl-sweep", timeout_min=params["time_min"], gpus_per_node=gpus,
        cpus_per_task=params["cpus_per_task"], mem_gb=params["mem_gb"],
        slurm_array_parallelism=params["array_parallelism"], slurm_setup=setup,
        slurm_additional_parameters=params.get("additional", {}), local_setup=setup,
        **{f"slurm_{k}": params[k] for k in ("partition", "account", "qos", "constraint")
           if k in params})
    return executor


def submit_slurm(specs: list[RunSpec], options: Options, folder: Path, slurm: dict[str, Any],
                 cluster: str = "slurm"):
    """Submit one job array; returns the jobs (submitit Job objects)."""
    executor = make_submitit_executor(folder, slurm, cluster)
    ddp = slurm.get("ddp") or 1
    with executor.batch():
        jobs = [executor.submit(SweepJob(spec, options, ddp)) for spec in specs]
    return jobs


def wait_jobs(specs: list[RunSpec], jobs: list, progress: bool = True,
              poll_s: float = 1.0) -> list[RunResult]:
    """Wait for every job; a job that failed outside the run (killed, node failure) is
    recorded in the run's summary like a crashed process."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    results: list[RunResult | None] = [None] * len(jobs)
    pending = set(range(len(jobs)))
    with _bar(len(jobs), progress, "sweep (jobs)") as bar:
        while pending:
            for i in sorted(pending):
                if not jobs[i].done():
                    continue
                pending.discard(i)
                try:
                    # A data-parallel job has one task per process; rank 0 reports the run.
                    results[i] = jobs[i].results()[0]
                except (FailedJobError, UncompletedJobError) as exc:  # died outside run_spec
                    results[i] = record_crash(specs[i], f"job {jobs[i].job_id} failed: "
                                                        f"{str(exc).strip().splitlines()[-1:]}")
                bar.finished(specs[i].label, results[i].status)
            if pending:
                time.sleep(poll_s)
    return [r for r in results if r is not None]


def describe_jobs(jobs: list) -> str:
    ids = [j.job_id for j in jobs]
    if not ids:
        return "no jobs"
    return f"{len(ids)} jobs: {ids[0]}" + (f" .. {ids[-1]}" if len(ids) > 1 else "")



# --------------------------------------------------------------------------- planning

def plan(specs: list[RunSpec], options: Options) -> tuple[list[RunSpec], list[RunResult]]:
    """Split the runs into those with work to do and those settled on disk (complete, or
    failed/diverged without --retry-failed), so that no process or job starts for nothing.
    ``execute`` checks again under the run's lock."""
    settled_statuses = (R.STATUS_COMPLETE,) if options.retry_failed else (
        R.STATUS_COMPLETE, R.STATUS_FAILED, R.STATUS_DIVERGED)
    todo, settled = [], []
    for spec in specs:
        state = R.run_state(Path(spec.run_dir))
        if options.force or state.status not in settled_statuses:
            todo.append(spec)
        else:
            settled.append(RunResult(spec.label, spec.run_dir, "skipped", state.status,
                                     state.reason, state.user_error))
    return todo, settled
