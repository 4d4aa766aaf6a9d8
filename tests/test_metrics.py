"""bench/metrics.py: the ensemble verification metrics against closed forms and hand-computed cases."""
import math

import pytest
import torch

from bench.metrics import ensemble_metrics, param_rmse


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
