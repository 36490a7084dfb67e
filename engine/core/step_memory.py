"""The peak tensor memory of one training step, as runs record it and ``perf`` measures it.

A process's peak resident memory (what the operating system reports) covers everything the
process did before, earlier runs of the same command included, and on the CPU mostly one-time
costs (the allocator's and oneDNN's caches): it says little about a method. What a method
costs is the tensor memory of its step: what the model, its gradients and the optimizer state
hold (resident), plus the peak of what the step allocates on top (the forward's activations,
the backward passes, the method's own buffers).

- CUDA: the caching allocator's peak during the step, which counts the resident tensors too.
- CPU: the torch profiler's allocation (+) and release (−) events of the step, summed in time
  order, give the peak above the level at the step's start; the resident part is the bytes of
  the parameters, their gradients, the buffers and the optimizer state.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Callable, Iterable, TypeVar

import torch

T = TypeVar("T")


def cpu_peak_bytes(step: Callable[[], object], steps: int) -> int:
    """The peak, over ``steps`` calls of ``step()``, of the CPU tensor memory allocated
    above the level at the start: the running sum of the profiler's allocation (+) and
    release (−) events, in time order."""
    _, peak = _profile_cpu(lambda: [step() for _ in range(steps)])
    return peak


# The profiler's C++ side logs its stages to the process's stderr ("USDT:... profiler_start",
# "ERROR:... gpuGetDeviceCount failed" on a machine without a GPU), and the allocator warns
# when a tensor made before the profiled step is freed during it: noise in every run's log.
KINETO_LINE = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \w+\.cpp:\d+\]"
                         r"|^\[W\d{4} [\d:.]+ CPUAllocator\.cpp:\d+\] Memory block of unknown size")


@contextlib.contextmanager
def _without_profiler_log():
    """Capture file descriptor 2 and give back everything but the profiler's own lines
    (warnings of the measured step itself still reach stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not KINETO_LINE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _profile_cpu(fn: Callable[[], T]) -> tuple[T, int]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _without_profiler_log():
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            result = fn()
        events = [e for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return result, peak


def resident_bytes(modules: Iterable[torch.nn.Module],
                   optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Bytes of the tensors that live across steps: parameters, their gradients, buffers
    and optimizer state (each tensor counted once)."""
    seen: set[int] = set()
    total = 0

    def add(t) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for module in modules:
        for p in module.parameters():
            add(p)
            add(p.grad)
        for b in module.buffers():
            add(b)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for value in state.values():
                add(value)
    return total


def measure_step(step: Callable[[], T], device: torch.device,
                 resident: Callable[[], int]) -> tuple[T, int | None]:
    """Run ``step()`` once and return its result and the step's peak tensor memory in
    bytes (None on a device without allocator statistics). ``resident()`` gives the bytes
    held across steps, added on the CPU where the profiler sees only the step's own
    allocations."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = step()
        torch.cuda.synchronize(device)
        return result, int(torch.cuda.max_memory_allocated(device))
    if device.type == "cpu":
        before = resident()
        result, peak = _profile_cpu(step)
        return result, before + peak
    return step(), None
