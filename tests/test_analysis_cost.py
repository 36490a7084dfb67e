"""The cost table says how its numbers were measured: under the load of the moment, with
perf named for comparable costs, and the peak memory that runs record named for what it is
(a training step's tensor memory where runs recorded it; for older runs the run's CUDA allocator
peak, or the process's peak RSS on a CPU)."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis.report import (
    COST_CAPTION,
    COST_FORMATS,
    COST_HEADERS,
    CUDA_PEAK,
    PROCESS_PEAK,
    STEP_PEAK,
    cost_table,
)


def test_cost_table_says_what_was_measured():
    costs = pd.DataFrame({"benchmark": "b", "method": ["ew", "ew", "pcgrad"], "seed": [0, 1, 0],
                          "device": ["cpu", "cpu", "cuda:0"], "step_time_s": [0.010, 0.012, 0.004],
                          "wall_time_s": [10.0, 12.0, 3.0], "peak_memory_mib": [800.0, 900.0, 50.0]})
    table = cost_table(costs).set_index("method")
    assert table.loc["ew", "step_time_ms"] == pytest.approx(11.0)
    assert table.loc["ew", "peak_memory_mib"] == 900.0 and table.loc["ew", "seeds"] == 2
    assert table.loc["ew", "memory_measured"] == PROCESS_PEAK
    assert table.loc["pcgrad", "memory_measured"] == CUDA_PEAK
    assert set(COST_HEADERS) == set(table.reset_index().columns)
    assert all("_" not in h for h in COST_HEADERS.values())  # headers in words, with units
    assert {"step_time_ms", "wall_time_s", "peak_memory_mib"} <= set(COST_FORMATS)
    caption = COST_CAPTION.format(bench="b")
    assert "python run_bench.py perf -b b" in caption
    assert "whatever load the machine had" in caption and "one training step" in caption


def test_cost_table_prefers_the_recorded_step_peak_over_the_process_peak():
    costs = pd.DataFrame({"benchmark": "b", "method": ["ew", "ew", "mgda"], "seed": [0, 1, 0],
                          "device": "cpu", "step_time_s": 0.01, "wall_time_s": 1.0,
                          "step_peak_memory_mib": [3.0, 4.0, float("nan")],
                          "peak_memory_mib": [800.0, 900.0, 700.0]})
    table = cost_table(costs).set_index("method")
    assert table.loc["ew", "peak_memory_mib"] == 4.0
    assert table.loc["ew", "memory_measured"] == STEP_PEAK
    assert table.loc["mgda", "peak_memory_mib"] == 700.0   # an older run: the process peak
    assert table.loc["mgda", "memory_measured"] == PROCESS_PEAK
