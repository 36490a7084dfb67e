"""Power-law fits: training curves from known (a, α, c), weight spectra from a known power
law (checked against the ``powerlaw`` package), conv pooling, checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import powerlaw
import pytest
import torch

from analysis.collect import load_runs
from analysis.curves import (
    extrapolation_error,
    fit_curves,
    fit_power_law,
    load_curves,
    power_law_window,
)
from analysis.spectra import checkpoint_spectra, fit_spectrum, layer_eigenvalues
from tests.test_analysis_support import const, write_run


def _curve(a, alpha, c, steps, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return (a * steps ** (-alpha) + c) * np.exp(rng.normal(0.0, noise, steps.size))


@pytest.mark.parametrize("a,alpha,c", [(5.0, 0.5, 0.1), (3.0, 0.7, 0.2), (10.0, 1.0, 0.05)])
def test_curve_fit_recovers_known_parameters(a, alpha, c):
    steps = np.arange(10, 20001, 10, dtype=float)
    t, y = power_law_window(steps, _curve(a, alpha, c, steps, noise=0.002))
    fit = fit_power_law(t, y)
    assert fit.alpha == pytest.approx(alpha, rel=0.03)
    assert fit.c == pytest.approx(c, rel=0.05)
    assert fit.a == pytest.approx(a, rel=0.1)
    assert fit.r2 > 0.99
    assert extrapolation_error(t, y) < 0.01


def test_curve_fit_is_robust_to_outliers():
    steps = np.geomspace(10, 1e4, 40)
    y = _curve(4.0, 0.6, 0.1, steps)
    y[[5, 20, 30]] *= 3.0  # spikes
    assert fit_power_law(steps, y).alpha == pytest.approx(0.6, rel=0.05)


def test_a_pure_power_law_is_identified_with_c_zero():
    """c = 0 is the pure power law, a member of the model, not a failed fit."""
    steps = np.geomspace(10, 1e4, 40)
    fit = fit_power_law(steps, 2.0 * steps ** -0.5)
    assert fit.alpha == pytest.approx(0.5, abs=1e-3) and fit.c == pytest.approx(0, abs=1e-6)
    assert fit.r2 > 0.999 and fit.identified, fit.problems()
    assert fit_power_law(steps, _curve(2.0, 0.5, 0.2, steps)).identified


def test_a_plateau_then_drop_is_not_a_power_law():
    """High R² is not enough: the plateau alternative fits by far better (AIC)."""
    steps = np.geomspace(10, 1e4, 40)
    fit = fit_power_law(steps, 0.2 + 2.0 / (1 + (steps / 300) ** 3))
    assert fit.r2 > 0.8  # R² alone would pass it
    assert not fit.identified
    assert fit.problems() == ["a plateau-then-drop curve fits better"]


def test_noisy_power_laws_stay_identified():
    """With 2% noise, the plateau alternative's extra parameter does not win: the rule keeps
    real power laws (at least 9 of 10 noisy curves)."""
    steps = np.geomspace(10, 1e4, 40)
    rng = np.random.default_rng(0)
    kept = sum(fit_power_law(steps, _curve(3.0, 0.4, 0.1, steps)
                             * np.exp(rng.normal(0, 0.02, steps.size))).identified
               for _ in range(10))
    assert kept >= 9


def test_c_at_its_upper_bound_is_flagged():
    steps = np.geomspace(10, 1e4, 40)
    flat_end = 0.1 + 2.0 * steps ** -2.0  # at its floor long before the end
    assert fit_power_law(steps, flat_end).c_at_bound
    assert not fit_power_law(steps, _curve(2.0, 0.5, 0.2, steps)).c_at_bound


def test_window_rules():
    steps = np.arange(1, 10001, dtype=float)
    t, y = power_law_window(steps, _curve(1.0, 0.5, 0.0, steps), lr_drop_step=5000.0)
    assert t.min() >= 0.01 * 10000 and t.max() < 5000 and len(t) <= 40
    ratios = np.diff(np.log(t))
    assert ratios.max() < 3 * ratios.mean()  # log-spaced, not linear
    with pytest.raises(ValueError, match="fewer than"):
        fit_power_law(t[:5], y[:5])


def test_curves_from_results_with_lr_drop(tmp_path):
    for seed, alpha in enumerate([0.5, 0.55, 0.6]):
        steps = np.arange(10, 3001, 10)
        loss = _curve(3.0, alpha, 0.1, steps - 4.5)  # a record is the mean of its 10 steps
        # the lr halves at epoch 2 (steps > 2000): the loss falls off the power law there
        loss[steps > 2000] *= 0.5
        curve = [{"step": int(s), "epoch": int((s - 1) // 1000), "losses": {"a": float(v), "b": 2 * float(v)}}
                 for s, v in zip(steps, loss)]
        write_run(tmp_path, "bench", "ew", seed, {("a", "acc"): const(1.0)}, curve=curve,
                  tasks={("a", "acc"): (True, "%")}, lrs=[1e-3, 1e-3, 5e-4])
    data, problems = load_curves(load_runs(tmp_path))
    assert not problems and data.lr_drop_step.iloc[0] == 2005.5  # the midpoint of steps 2001-2010
    fits = fit_curves(data).set_index("task")
    assert fits.loc["a", "alpha"] == pytest.approx(0.55, rel=0.03)
    assert fits.loc["a", "seeds"] == 3
    assert fits.loc["a", "alpha_lo"] <= fits.loc["a", "alpha"] <= fits.loc["a", "alpha_hi"]
    assert fits.loc["b", "alpha"] == pytest.approx(0.55, rel=0.03)


def _pareto_sample(alpha, xmin, n, rng):
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("alpha", [2.0, 3.5, 5.0])
def test_spectrum_fit_matches_powerlaw_package(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    # a power-law tail above x_min = 1 with a non-power-law bulk below it
    x = np.concatenate([_pareto_sample(alpha, 1.0, 800, rng), rng.uniform(0.05, 1.0, 200)])
    fit = fit_spectrum(x)
    # the package restricts α to [0, 3] unless told otherwise; spectra need more room
    ref = powerlaw.Fit(x, verbose=False, parameter_ranges={"alpha": [1, 20]})
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-6)
    assert fit.xmin == pytest.approx(ref.xmin, rel=1e-9)
    assert fit.alpha == pytest.approx(alpha, abs=4 * fit.sigma + 0.05)
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(fit.n_tail))


def test_conv_kernels_are_pooled():
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    eigs = np.sort(layer_eigenvalues(w))
    expected = np.sort(np.concatenate([np.linalg.svd(w[:, :, i, j].numpy(), compute_uv=False) ** 2
                                       for i in range(3) for j in range(3)]))
    assert eigs.size == 9 * 4
    np.testing.assert_allclose(eigs, expected, rtol=1e-10)
    lin = torch.randn(5, 8, dtype=torch.float64)
    np.testing.assert_allclose(np.sort(layer_eigenvalues(lin)),
                               np.sort(np.linalg.eigvalsh((lin.T @ lin).numpy()))[-5:], rtol=1e-8)


def test_checkpoint_spectra_groups_and_skips(tmp_path):
    torch.manual_seed(0)
    model = {"encoders.0.conv.weight": torch.randn(16, 8, 3, 3), "encoders.0.bn.weight": torch.ones(16),
             "encoders.0.fc.weight": torch.randn(64, 100), "heads.a.weight": torch.randn(10, 64),
             "heads.b.fc.weight": torch.randn(60, 80), "heads.b.fc.bias": torch.zeros(60)}
    torch.save({"model": model, "epoch": 0}, tmp_path / "checkpoint.pt")
    table, eigs = checkpoint_spectra(tmp_path / "checkpoint.pt", keep_eigs=True)
    assert table.set_index("layer").group.to_dict() == {
        "encoders.0.conv": "encoder", "encoders.0.fc": "encoder", "heads.a": "head a",
        "heads.b.fc": "head b"}
    assert table.set_index("layer").eigenvalues.to_dict() == {
        "encoders.0.conv": 72, "encoders.0.fc": 64, "heads.a": 10, "heads.b.fc": 60}
    assert set(eigs) == {"encoders.0.conv", "encoders.0.fc", "heads.b.fc"}
    fitted = table[table.layer != "heads.a"]
    assert isinstance(table, pd.DataFrame) and (fitted.alpha > 1).all()
    assert "too few eigenvalues" in table.set_index("layer").loc["heads.a", "trust"]
