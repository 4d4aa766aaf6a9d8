"""bench/metrics.py: the ensemble verification metrics against closed forms and hand-computed cases, and the
autocorrelation-aware confidence interval of a time average on AR(1) series, whose variance of the mean is known in
closed form."""
import math

import numpy as np
import pytest
import torch

from bench.metrics import ensemble_metrics, integrated_autocorr_time, param_rmse, time_mean_ci


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
