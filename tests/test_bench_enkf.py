"""Kernel timings of one EnKF analysis (pytest-benchmark; run with `pytest -m benchmark --benchmark-enable`).

- Lorenz-96 d = 40, N = 40, every variable observed (unit noise): sqrt / stochastic, global / localised.
- Localised analysis at d = 10^5 (CPU) and d = 10^6 (CUDA only), N = 20, every variable observed.
"""
from __future__ import annotations

import pytest
import torch

import problems
from methods.base import Context
from methods.enkf import EnKF

pytestmark = pytest.mark.benchmark


def _setup(d: int, N: int, device: str, dtype=torch.float32, **kw):
    pb = problems.get("lorenz96", dim=d)
    obs = problems.bind_observer(pb, None, noise=1.0, noise_type="absolute")
    g = torch.Generator().manual_seed(0)
    center = 8 + 3 * torch.randn(1, d, generator=g, dtype=torch.float64)
    x = (center + 2 * torch.randn(N, d, generator=g, dtype=torch.float64)).to(device, dtype)
    y = obs.sample(center, g)[0].to(device, dtype)
    m = EnKF(**kw)
    m.bind(Context(pb, obs, None, device=torch.device(device), dtype=dtype))
    state = m.init(x, torch.zeros(N, 0, device=device), torch.Generator().manual_seed(1))
    return m, state, y


def _run(m, state, y, device):
    out = m.analysis(state, y)
    if device == "cuda":
        torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("variant", ["sqrt", "stochastic"])
@pytest.mark.parametrize("loc_radius", [0.0, 4.0])
def test_bench_l96_d40(benchmark, variant, loc_radius):
    m, state, y = _setup(40, 40, "cpu", variant=variant, loc_radius=loc_radius, inflation=1.02)
    out = benchmark(_run, m, state, y, "cpu")
    assert torch.isfinite(out.x).all()


@pytest.mark.parametrize("variant", ["sqrt", "stochastic"])
@pytest.mark.parametrize("d,device", [
    (100_000, "cpu"),
    pytest.param(1_000_000, "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
])
def test_bench_l96_local_large(benchmark, variant, d, device):
    m, state, y = _setup(d, 20, device, variant=variant, loc_radius=2.0, inflation=1.02)
    _run(m, state, y, device)  # warm-up: localisation geometry, kernels
    out = benchmark.pedantic(_run, args=(m, state, y, device), rounds=3, iterations=1)
    assert torch.isfinite(out.x).all()
