"""bench/metrics.py: the ensemble verification metrics against closed forms and hand-computed cases, and the
autocorrelation-aware confidence interval of a time average on AR(1) series, whose variance of the mean is known in
closed form."""
import math

import numpy as np
import pytest
import torch

from bench.metrics import (RANK_MAX_ENTRIES, ensemble_metrics, integrated_autocorr_time, param_rmse,
                           rank_entries, rank_histogram, spread_error_ratio, time_mean_ci)


def test_crps_of_a_single_member_is_the_absolute_error():
    E = torch.tensor([[1.0, -2.0]])
    m = ensemble_metrics(E, torch.tensor([0.5, 0.0]))
    assert m["crps"] == pytest.approx((0.5 + 2.0) / 2)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 4) / 2))


def test_crps_of_a_large_gaussian_ensemble_matches_the_closed_form():
    """CRPS(N(0, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = y / s."""
    g = torch.Generator().manual_seed(0)
    s, y = 2.0, 1.0
    E = s * torch.randn(200000, 1, generator=g, dtype=torch.float64)
    z = y / s
    Phi = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    phi = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    exact = s * (z * (2 * Phi - 1) + 2 * phi - 1 / math.sqrt(math.pi))
    assert ensemble_metrics(E, torch.tensor([y])) ["crps"] == pytest.approx(exact, rel=0.02)


def test_relative_errors_and_spread():
    truth = torch.tensor([3.0, 4.0])
    E = torch.tensor([[3.0, 4.0], [3.0, 4.0]]) + torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    m = ensemble_metrics(E, truth)
    assert m["rrmse"] == pytest.approx(0.0)
    assert m["rrmse_member"] == pytest.approx(1 / 5)
    assert m["spread"] == pytest.approx(math.sqrt((2.0 + 0.0) / 2))
    assert math.isnan(param_rmse(None, torch.zeros(0)))
    assert param_rmse(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0])) == pytest.approx(1.0)


# ---- calibration: rank histogram and spread / error ratio ----------------------------------------------------
#: 0.999 quantile of the chi-square distribution with 10 degrees of freedom (N + 1 = 11 bins)
CHI2_10_999 = 29.59


def _chi2(counts: list[int]) -> float:
    c = torch.tensor(counts, dtype=torch.float64)
    e = c.sum() / c.numel()
    return float(((c - e) ** 2 / e).sum())


def _draw(n_ens: int, d: int, member_std: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Members ``N(0, member_std^2)`` and a truth ``N(0, 1)``, per entry: calibrated when ``member_std = 1``."""
    g = torch.Generator().manual_seed(seed)
    return member_std * torch.randn(n_ens, d, generator=g, dtype=torch.float64), \
        torch.randn(d, generator=g, dtype=torch.float64)


def test_a_calibrated_ensemble_has_a_flat_rank_histogram_and_ratio_one():
    """Truth and members drawn from one distribution are exchangeable: every rank is equally likely."""
    E, x = _draw(10, 8000, 1.0)
    counts = rank_histogram(E, x)
    assert len(counts) == 11 and sum(counts) == 8000
    assert _chi2(counts) < CHI2_10_999  # flat within chance
    m = ensemble_metrics(E, x)
    assert spread_error_ratio(m["spread"], m["rmse"], 10) == pytest.approx(1.0, abs=0.03)


def test_an_under_dispersed_ensemble_has_a_u_shaped_histogram_and_ratio_below_one():
    E, x = _draw(10, 8000, 0.5)
    counts = rank_histogram(E, x)
    middle = sum(counts[3:8]) / 5
    assert counts[0] > 3 * middle and counts[-1] > 3 * middle  # the truth falls outside the ensemble too often
    assert _chi2(counts) > 10 * CHI2_10_999
    m = ensemble_metrics(E, x)
    ratio = spread_error_ratio(m["spread"], m["rmse"], 10)
    assert 0.4 < ratio < 0.6  # spread 0.5 against an error of about sqrt(1 + 0.25 / 10)


def test_an_over_dispersed_ensemble_is_dome_shaped_and_a_biased_one_slopes():
    E, x = _draw(10, 8000, 2.0)
    counts = rank_histogram(E, x)
    assert counts[5] > 3 * counts[0] and counts[5] > 3 * counts[-1]
    assert spread_error_ratio(ensemble_metrics(E, x)["spread"], ensemble_metrics(E, x)["rmse"], 10) > 1.5
    E, x = _draw(10, 8000, 1.0)
    counts = rank_histogram(E + 1.0, x)  # members too high: the truth sits low in the ensemble
    assert counts[0] > counts[5] > counts[-1]


def test_rank_ties_take_the_middle_rank_and_large_states_a_fixed_subset():
    E = torch.tensor([[0.0], [1.0], [1.0], [2.0]])
    assert rank_histogram(E, torch.tensor([1.0])) == [0, 0, 1, 0, 0]  # 1 below, 2 tied: rank 1 + 1
    assert rank_histogram(E, torch.tensor([5.0])) == [0, 0, 0, 0, 1]
    assert rank_entries(RANK_MAX_ENTRIES) is None
    idx = rank_entries(10 * RANK_MAX_ENTRIES)
    assert len(idx) == RANK_MAX_ENTRIES and idx[0] == 0 and idx[-1] == 10 * RANK_MAX_ENTRIES - 1
    assert torch.equal(idx, rank_entries(10 * RANK_MAX_ENTRIES))  # the same entries every cycle
    E, x = _draw(4, 3 * RANK_MAX_ENTRIES, 1.0)
    assert sum(rank_histogram(E, x)) == RANK_MAX_ENTRIES


def test_the_time_averaged_ratio_is_a_ratio_of_mean_squares():
    """Cycles pool as mean squares: a cycle with a tiny error does not dominate as a mean of ratios would."""
    spread, rmse = [1.0, 1.0], [1.0, 0.01]
    assert spread_error_ratio(spread, rmse, 3) == pytest.approx(math.sqrt(4 / 3 * 1.0 / ((1 + 1e-4) / 2)))
    assert math.isnan(spread_error_ratio([1.0], [0.0], 3))
    assert math.isnan(spread_error_ratio([float("nan")], [1.0], 3))

# ---- the confidence interval of a time average ----------------------------------------------------------------
def ar1(a: float, n: int, rng: np.random.Generator, reps: int = 1) -> np.ndarray:
    """``reps`` stationary AR(1) series ``x_t = a x_{t-1} + e_t`` (unit innovations), shape ``(reps, n)``."""
    x = np.empty((reps, n))
    x[:, 0] = rng.standard_normal(reps) / math.sqrt(1 - a * a)
    e = rng.standard_normal((reps, n))
    for t in range(1, n):
        x[:, t] = a * x[:, t - 1] + e[:, t]
    return x


def var_of_mean_ar1(a: float, n: int) -> float:
    """Exact variance of the mean of ``n`` consecutive values of the stationary AR(1) with unit innovations."""
    s2 = 1.0 / (1 - a * a)
    k = np.arange(1, n)
    return s2 / n * (1 + 2 * np.sum((1 - k / n) * a ** k))


@pytest.mark.parametrize("a", [0.0, 0.5, 0.9], ids=["white", "a=0.5", "a=0.9"])
def test_autocorrelation_time_of_ar1(a):
    x = ar1(a, 100_000, np.random.default_rng(1))[0]
    assert integrated_autocorr_time(x) == pytest.approx((1 + a) / (1 - a), rel=0.12)


@pytest.mark.parametrize("a", [0.0, 0.8], ids=["white", "a=0.8"])
def test_ci_width_matches_the_exact_variance_and_covers(a):
    n, reps = 1000, 400
    xs = ar1(a, n, np.random.default_rng(7), reps)
    res = np.array([time_mean_ci(x, level=0.95) for x in xs])
    exact_half = 1.959964 * math.sqrt(var_of_mean_ar1(a, n))
    # the typical half-width is the exact one (the naive i.i.d. interval would be 3x too narrow at a = 0.8)
    assert np.median(res[:, 1]) == pytest.approx(exact_half, rel=0.15)
    covered = np.mean(np.abs(res[:, 0]) <= res[:, 1])  # the true mean is 0
    assert 0.90 <= covered <= 0.99


def test_ci_edge_cases():
    assert integrated_autocorr_time(np.full(50, 2.0)) == 1.0
    m, h = time_mean_ci([1.0, float("nan"), 3.0])
    assert m == 2.0 and math.isnan(h)
    with pytest.raises(ValueError):
        time_mean_ci([1.0, 2.0, 3.0], level=1.5)
