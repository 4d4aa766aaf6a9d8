"""Lorenz-96 physics, its dataset cache, and observers on a 1-D state."""
import math

import pytest
import torch

import problems
from problems.lorenz96 import l96_tendency


def test_l96_energy_budget_of_the_advection_term():
    """The quadratic term conserves energy: sum_i x_i (x_{i+1} - x_{i-2}) x_{i-1} = 0 for any x."""
    x = torch.randn(5, 40, dtype=torch.float64)
    adv = l96_tendency(x, 0.0) + x  # remove the linear damping
    assert (x * adv).sum(-1).abs().max() < 1e-12


def test_l96_fixed_point_and_translation_equivariance():
    p = problems.get("lorenz96", dim=12)
    x = torch.full((1, 12), 8.0, dtype=torch.float64)
    assert torch.allclose(p.step(x, torch.zeros(1, 0)), x)  # x = F is a fixed point
    z = torch.randn(3, 12, dtype=torch.float64) + 8
    a = p.step(torch.roll(z, 3, -1), torch.zeros(3, 0))
    b = torch.roll(p.step(z, torch.zeros(3, 0)), 3, -1)
    assert torch.allclose(a, b, atol=1e-12)


def test_l96_rk4_is_fourth_order():
    x0 = 8 + torch.randn(1, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    def run(dt):
        p = problems.get("lorenz96", dt=dt, steps_per_obs=round(0.2 / dt))
        return p.step(x0, torch.zeros(1, 0))
    ref = run(0.0005)
    e1, e2 = (run(0.01) - ref).norm(), (run(0.005) - ref).norm()
    assert 3.6 < math.log2(e1 / e2) < 4.4


def test_l96_batched_equals_looped_and_float32_close():
    p = problems.get("lorenz96", dim=20, steps_per_obs=5)
    x = 8 + torch.randn(4, 20, dtype=torch.float64)
    batched = p.step(x, torch.zeros(4, 0))
    looped = torch.cat([p.step(x[i:i + 1], torch.zeros(1, 0)) for i in range(4)])
    assert torch.equal(batched, looped)
    assert (p.step(x.float(), torch.zeros(4, 0)).double() - batched).abs().max() < 1e-4


def test_l96_climatology_statistics(cache_dir):
    """The attractor of F = 8: mean ~2.3, std ~3.6 (Lorenz & Emanuel 1998)."""
    ds = problems.get("lorenz96", n_cycles=500, n_traj=5).dataset(cache_dir=cache_dir, progress=False)
    assert abs(float(ds.field_mean[0]) - 2.35) < 0.25
    assert abs(float(ds.field_std[0]) - 3.63) < 0.25


def test_dataset_cache_roundtrip_and_split(cache_dir):
    p = problems.get("lorenz96", dim=8, n_cycles=5, n_traj=10, spinup_time=1.0)
    a = p.dataset(cache_dir=cache_dir, progress=False)
    from problems import base
    base._MEMO.clear()
    b = p.dataset(cache_dir=cache_dir, progress=False)  # from disk
    assert torch.equal(a.test, b.test) and a.train.shape == (6, 6, 8) and b.valid.shape[0] == 2
    assert b.test.dtype == torch.float32


@pytest.mark.parametrize("layout", ["lattice", "random"])
def test_observer_counts_and_linearity(layout):
    p = problems.get("lorenz96", dim=40)
    o = problems.bind_observer(p, None, layout=layout, coverage=0.25, noise=1.0, noise_type="absolute")
    assert o.n_obs == 10
    x, z = torch.randn(3, 40), torch.randn(3, 40)
    assert torch.allclose(o.observe(2 * x + z), 2 * o.observe(x) + o.observe(z))
    if layout == "lattice":
        assert o.points.tolist() == list(range(0, 40, 4))
