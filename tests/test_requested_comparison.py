"""`run`, `sweep` and `mtl_harness.compare` tabulate exactly the runs asked for, with the
stl runs of the same configuration already on disk as the Δ baseline."""
from __future__ import annotations

import dataclasses

import pytest

from engine.runs.runner import build_requests
from engine.runs.tables import baseline_request, requested_comparison
from tests.helpers import TINY_DIGITS, tiny_run

# Enough steps and test samples that no stl accuracy is 0 (Δ is undefined against 0).
TINY = [o for o in TINY_DIGITS if "max_steps" not in o and "test_size" not in o] + [
    "data.test_size=200", "train.lr=0.01"]


def _requests(methods, seeds, overrides=TINY):
    return build_requests("digits_tasks", methods, seeds, "quick", list(overrides), "cpu", None)


def test_the_baseline_request_is_what_run_resolves_for_stl():
    for overrides in (TINY_DIGITS, TINY_DIGITS + ["method.cagrad.c=0.2"]):
        ours = _requests(["cagrad"], [3], overrides)[0]
        theirs = _requests(["stl"], [3], [o for o in overrides if not o.startswith("method.")])[0]
        base = baseline_request(ours)
        assert base.config.hash() == theirs.config.hash()
        assert dataclasses.asdict(base.config) == dataclasses.asdict(theirs.config)


@pytest.mark.slow
def test_existing_stl_runs_of_the_same_configuration_give_the_deltas(tmp_path):
    tiny_run("digits_tasks", "stl", tmp_path, TINY, seeds=(0, 1))
    tiny_run("digits_tasks", "stl", tmp_path, TINY + ["train.lr=0.003"], seeds=(0,))
    tiny_run("digits_tasks", "ew", tmp_path, TINY, seeds=(0, 1))
    comparison = requested_comparison(_requests(["ew"], [0]), tmp_path)
    (table,) = comparison.tables
    assert table.deltas is not None and table.baseline is not None
    assert dict(table.seeds) == {"stl": 1, "ew": 1}  # only the seed asked for
    assert "already in" in comparison.notes[0] and "seed 0)" in comparison.notes[0]
    assert "stl/seed0-" in comparison.notes[0]
    # Another configuration has no stl run: no Δ, and the note says how to get one.
    other = requested_comparison(_requests(["ew"], [0], TINY + ["train.lr=0.02"]),
                                 tmp_path)
    assert "no Δ columns" in other.notes[0] and "-m stl" in other.notes[0]


@pytest.mark.slow
def test_a_request_naming_stl_uses_only_its_own_runs(tmp_path):
    tiny_run("digits_tasks", "stl", tmp_path, TINY, seeds=(0, 1))
    tiny_run("digits_tasks", "ew", tmp_path, TINY, seeds=(0,))
    comparison = requested_comparison(_requests(["stl", "ew"], [1]), tmp_path)
    (table,) = comparison.tables
    assert dict(table.seeds) == {"stl": 1}  # ew seed 1 was not trained: nothing to show
    assert not comparison.notes
