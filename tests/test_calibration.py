"""The calibrated quick profiles still train what docs/benchmarks.md says they train.

Each check runs the benchmark's real quick profile for one seed and asserts floors set well
below the figures measured over 5 seeds (docs/benchmarks.md, "Calibration"), so that a change
to a model, a loss or a profile that breaks training fails here, not in a user's table."""
from __future__ import annotations

import pytest

from tests.helpers import read_records, tiny_run

pytestmark = pytest.mark.slow


def _last_test(outcome) -> dict:
    records = [r for r in read_records(outcome.run_dir) if r["split"] == "test"]
    return records[-1]["metrics"]


def test_digits_tasks_quick_trains_stl_and_ew_well_above_chance(tmp_path):
    (stl,) = tiny_run("digits_tasks", "stl", tmp_path, [])
    (ew,) = tiny_run("digits_tasks", "ew", tmp_path, [])
    for outcome in (stl, ew):
        m = _last_test(outcome)
        # measured (5 seeds): stl 93.4 / 93.0 % and MAE 1.38; ew 93.7 / 93.3 % and MAE 1.66;
        # chance is 10 %, predicting the median sum gives MAE 3.3
        assert m["first"]["acc"] > 85 and m["second"]["acc"] > 85, m
        assert m["sum"]["mae"] < 2.2, m


def test_digits_domains_quick_trains_ew_above_chance_on_every_domain(tmp_path):
    (ew,) = tiny_run("digits_domains", "ew", tmp_path, [])
    m = _last_test(ew)
    # measured (3 seeds): ink 81, negative 57, tilted 42, colour 34 %; chance 10 %
    for domain in ("ink", "negative", "tilted", "colour"):
        assert m[domain]["acc"] > 20, m
