"""Kernel micro-benchmarks (pytest-benchmark) not covered by the per-module files.

Covered elsewhere: the shallow-water and Kolmogorov steps at 64 x 64 and 150 x 150 (tests/test_bench_shallow_water.py,
tests/test_bench_kolmogorov.py) and the reverse-SDE step / EnSF sampler (tests/test_bench_ensf.py). Here: the
Lorenz-96 RK4 step, the EnKF analysis, the LDNet forward pass and a whole Lorenz-96 smoke cell through the runner.

Run every kernel benchmark with ``python -m pytest -m benchmark --benchmark-enable -p no:randomly`` (see
docs/benchmarks.md); in a plain ``pytest`` run they are deselected. Each test also checks what it timed.
"""
from __future__ import annotations

import pytest
import torch

import methods
import problems
from bench.config import Cell, freeze
from bench.runner import run_cell
from methods.base import Context, EnsembleState
from problems.lorenz96 import l96_tendency, rk4_step

pytestmark = [pytest.mark.benchmark, pytest.mark.usefixtures("one_thread")]


# --------------------------------------------------------------------------------------------------------------
# Lorenz-96 RK4 step
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [40, 100_000])
def test_bench_l96_rk4_step(benchmark, d):
    """One RK4 step (dt = 0.05) of N = 40 members, float32; d = 40 (the classic test) and d = 1e5."""
    N = 40
    pb = problems.get("lorenz96", dim=d)
    x = 8.0 + torch.randn(N, d, generator=torch.Generator().manual_seed(0))
    params = torch.zeros(N, 0)
    out = benchmark(pb.step, x, params)
    assert out.shape == (N, d) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # consistent with the tendency: one step moves x by dt * f(x) to first order
    ref = x + pb.dt * l96_tendency(x, pb.forcing)
    assert (out - ref).abs().max() < 0.5 * pb.dt * l96_tendency(x, pb.forcing).abs().max()
    assert torch.equal(out, rk4_step(x, pb.dt, pb.forcing))
    benchmark.extra_info.update(d=d, members=N, member_steps_per_s=None)
    if getattr(benchmark, "stats", None) is not None:
        benchmark.extra_info["member_steps_per_s"] = N / benchmark.stats.stats.mean


# --------------------------------------------------------------------------------------------------------------
# EnKF analysis
# --------------------------------------------------------------------------------------------------------------
def _enkf_case(d: int, N: int, **params):
    pb = problems.get("lorenz96", dim=d)
    obs = problems.bind_observer(pb, None, coverage=0.5, noise=1.0, noise_type="absolute")
    g = torch.Generator().manual_seed(0)
    truth = 8.0 + 3.0 * torch.randn(1, d, generator=g)
    x = truth + torch.randn(N, d, generator=g)
    y = obs.sample(truth.double(), g)[0].float()
    m = methods.get("EnKF", **params)
    m.bind(Context(pb, obs, None, dtype=torch.float32))
    st = m.init(x, torch.zeros(N, 0), torch.Generator().manual_seed(1))
    return m, st, y, obs, truth


@pytest.mark.parametrize("d, variant, loc_radius", [(40, "sqrt", 0.0), (1000, "sqrt", 0.0),
                                                    (1000, "stochastic", 4.0)])
def test_bench_enkf_analysis(benchmark, d, variant, loc_radius):
    """One EnKF analysis, N = 20, every second point observed (identity, std 1), float32."""
    m, st, y, obs, truth = _enkf_case(d, 20, variant=variant, loc_radius=loc_radius, inflation=1.0)
    out = benchmark(m.analysis, st, y)
    assert isinstance(out, EnsembleState) and out.x.shape == st.x.shape and torch.isfinite(out.x).all()
    # the analysis pulls the observed components towards the observations
    before = (obs.select(st.x.mean(0, keepdim=True))[0] - y).pow(2).mean()
    after = (obs.select(out.x.mean(0, keepdim=True))[0] - y).pow(2).mean()
    assert after < before
    benchmark.extra_info.update(d=d, members=20, n_obs=obs.n_obs, variant=variant, loc_radius=loc_radius)


# --------------------------------------------------------------------------------------------------------------
# LDNet forward (latent step + reconstruction on a 64 x 64 grid)
# --------------------------------------------------------------------------------------------------------------
def test_bench_ldnet_forward(benchmark):
    """One latent Euler step and the decoding of N = 20 latents at 64 x 64 points (3 fields), float32."""
    ldnet = pytest.importorskip("methods.ldnet", reason="methods.ldnet (the LDNet module) is not available")
    N, n, d_s, d_u, C = 20, 64, 10, 2, 3
    net = ldnet.LDNet(ldnet.LDNetConfig(latent_dim=d_s, n_params=d_u, n_fields=C, coord_dim=2, dt_lat=0.1,
                                        coord_lo=[0.0, 0.0], coord_hi=[1.0, 1.0], dyn_width=64, dyn_depth=4,
                                        rec_width=64, rec_depth=4, seed=0)).eval()
    ax = torch.linspace(0.0, 1.0, n)
    coords = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, d_s, generator=g)
    u = torch.rand(N, d_u, generator=g) * 2 - 1

    @torch.no_grad()
    def forward():
        s1 = net.step(s, u)
        return s1, net.decode(s1, coords)

    s1, fields = benchmark(forward)
    assert s1.shape == (N, d_s) and fields.shape == (N, n * n, C) and torch.isfinite(fields).all()
    # the decoder is pointwise: decoding in chunks gives the same fields
    with torch.no_grad():
        assert torch.allclose(net.decode(s1, coords, chunk=1000), fields, atol=1e-5)
    benchmark.extra_info.update(members=N, points=n * n, latent_dim=d_s)


@pytest.mark.parametrize("path", ["inference", "autograd"])
def test_bench_ldnet_decode_shipped_shape(benchmark, path):
    """Decoding N = 20 latents on 64 x 64 points (3 fields) with a decoder of the shipped tsunami network's shape
    (width 128, depth 4, FiLM, 32 Fourier features of the coordinates and 32 of the latent state): the in-place
    inference path LD-EnSF's analysis uses against the training forward (the ratio of the two rows is the gain)."""
    ldnet = pytest.importorskip("methods.ldnet", reason="methods.ldnet (the LDNet module) is not available")
    N, n, d_s, d_u, C = 20, 64, 10, 2, 3
    net = ldnet.LDNet(ldnet.LDNetConfig(latent_dim=d_s, n_params=d_u, n_fields=C, coord_dim=2, dt_lat=0.1,
                                        coord_lo=[0.0, 0.0], coord_hi=[1.0, 1.0], rec_width=128, rec_depth=4,
                                        n_fourier=32, fourier_scale=2.0, film=True, rec_fourier=32, seed=0)).eval()
    ax = torch.linspace(0.0, 1.0, n)
    coords = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    s = torch.randn(N, d_s, generator=torch.Generator().manual_seed(0))

    def decode():
        with torch.set_grad_enabled(path == "autograd"):
            return net.decode(s, coords).detach()

    fields = benchmark(decode)
    assert fields.shape == (N, n * n, C) and torch.isfinite(fields).all()
    benchmark.extra_info.update(members=N, points=n * n, width=128, path=path)


# --------------------------------------------------------------------------------------------------------------
# a whole Lorenz-96 smoke cell through the runner
# --------------------------------------------------------------------------------------------------------------
def test_bench_l96_run_cell(benchmark, cache_dir):
    """A whole Lorenz-96 cell: d = 40, 30 cycles, every variable observed (std 1), localised square-root EnKF
    (radius 4, inflation 1.04), N = 10: a setting where the filter tracks (without localisation N = 10 < d
    collapses to the free run's error)."""
    cell = Cell("lorenz96", freeze({"dim": 40, "n_cycles": 30, "n_traj": 5}),
                freeze({"coverage": 1.0, "noise": 1.0, "noise_type": "absolute"}), "EnKF",
                freeze({"variant": "sqrt", "inflation": 1.04, "loc_radius": 4.0}), 10, 0, "cpu", "float32", 2)
    run_cell(cell, cache_dir=cache_dir)  # builds the dataset once, outside the timing
    out = benchmark.pedantic(run_cell, args=(cell,), kwargs={"cache_dir": cache_dir}, rounds=3, iterations=1)
    row = out.row
    assert row["status"] == "ok", row["error"]
    assert row["n_cycles"] == 30
    # it tracks: the analysis error is below the observation noise (std 1) and far below the free run's
    # (rRMSE 0.83, RMSE 3.9 in this setting)
    assert row["rrmse_a"] < row["rrmse_f"] and row["rrmse_a"] < 0.2 and row["rmse_a"] < 1.0
    benchmark.extra_info.update(rrmse_a=row["rrmse_a"], time_per_cycle_s=row["time_per_cycle_s"])
