"""Multiple-comparison corrections against their definitions."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.measures import adjust_p_values


def test_holm_matches_the_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1, then made monotone
    expected = np.array([0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(adjust_p_values(p, "holm"), expected)


def test_benjamini_hochberg_matches_the_step_up_definition():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # p_(i) · m / i from the top, made monotone: 0.04, 0.0533, 0.0533, 0.2
    expected = np.array([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    np.testing.assert_allclose(adjust_p_values(p, "bh"), expected)


def test_nan_p_values_stay_out_of_the_family():
    out = adjust_p_values([0.01, np.nan, 0.02], "holm")
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert np.isnan(out[1])


def test_adjusted_p_values_never_fall_below_the_raw_ones_and_cap_at_one():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20)
    for method in ("holm", "bh"):
        adj = adjust_p_values(p, method)
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)


def test_unknown_correction_is_refused():
    with pytest.raises(ValueError, match="holm, bh, none"):
        adjust_p_values([0.1], "bonferroni-ish")
