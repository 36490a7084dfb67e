"""The step's peak tensor memory that every run records (engine.core.step_memory)."""
from __future__ import annotations

import torch

from engine.core.step_memory import measure_step, resident_bytes
from tests.helpers import TINY_DIGITS, read_summary, tiny_run


def test_resident_bytes_counts_parameters_gradients_and_optimizer_state_once():
    model = torch.nn.Linear(10, 5)                         # 55 float32 parameters
    assert resident_bytes([model], []) == 55 * 4
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 10)).sum().backward()
    optimizer.step()                                       # grads + exp_avg + exp_avg_sq (+ steps)
    steps = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    assert resident_bytes([model, model], [optimizer]) == 4 * 55 * 4 + steps


def test_cpu_step_peak_is_the_resident_bytes_plus_what_the_step_holds_at_once():
    def step():
        a = torch.empty(250_000)                           # 1 MB
        b = torch.empty(250_000)                           # + 1 MB: the peak
        del a, b
        return "done"

    result, peak = measure_step(step, torch.device("cpu"), lambda: 3_000_000)
    assert result == "done"
    assert 5_000_000 <= peak < 5_050_000


def test_runs_record_the_step_peak_and_a_jacobian_method_holds_more(tmp_path):
    overrides = [*TINY_DIGITS, "train.max_steps_per_epoch=3"]
    peaks = {}
    for method in ("ew", "pcgrad"):
        [outcome] = tiny_run("digits_tasks", method, tmp_path / method, overrides)
        summary = read_summary(outcome.run_dir)
        assert summary["status"] == "complete"
        peaks[method] = summary["step_peak_memory_bytes"]
    # PCGrad keeps the T×P Jacobian of the shared parameters besides what EW's step holds.
    assert 0 < peaks["ew"] < peaks["pcgrad"]


def test_the_profilers_log_lines_are_dropped_and_the_steps_own_output_kept(capfd):
    import os

    def step():
        os.write(2, b"the step's own message\n")
        return torch.ones(100).sum()

    measure_step(step, torch.device("cpu"), lambda: 0)
    made_before = torch.ones(1000)

    def frees_a_tensor_made_before():  # the allocator warns of a block it never saw made
        nonlocal made_before
        del made_before
        return torch.zeros(10)

    measure_step(frees_a_tensor_made_before, torch.device("cpu"), lambda: 0)
    err = capfd.readouterr().err
    assert "the step's own message" in err
    assert "profiler_start" not in err and ".cpp:" not in err
