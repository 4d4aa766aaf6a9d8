"""The shallow-water ("tsunami") problem: invariants, wave physics, batching, dtypes and its observer."""
from __future__ import annotations

import math

import pytest
import torch

import problems
from assimbench.errors import ConfigError
from problems.base import lattice_stride
from problems.shallow_water import ShallowWater, sine_transfer_matrices, to_collocated, to_staggered


def _params(*ab) -> torch.Tensor:
    return torch.tensor(ab, dtype=torch.float64)


def _run(pb: ShallowWater, x: torch.Tensor, p: torch.Tensor, n: int) -> list[torch.Tensor]:
    out = [x]
    for _ in range(n):
        x = pb.step(x, p)
        out.append(x)
    return out


# ---- configuration ------------------------------------------------------------------------------------------
def test_registry_defaults_and_shapes():
    pb = problems.get("shallow_water")
    assert isinstance(pb, ShallowWater)
    assert pb.field_names == ("u", "v", "eta") and pb.param_names == ("a", "b")
    assert pb.state_shape == (3, 64, 64) and pb.n_cycles == 50 and pb.n_traj == 200
    assert pb.dt_obs == pytest.approx(857.1)
    lo, hi = pb.param_bounds
    assert torch.equal(lo, torch.zeros(2, dtype=torch.float64)) and torch.equal(hi, torch.full((2,), 0.5))
    p = pb.sample_params(1000, torch.Generator().manual_seed(0))
    assert p.shape == (1000, 2) and p.dtype == torch.float64 and p.min() >= 0 and p.max() <= 0.5
    assert problems.get("shallow_water", n=150).label == "shallow_water[n=150]"


@pytest.mark.parametrize("bad", [dict(n=4), dict(cfl=0.8), dict(cfl=0.0), dict(depth=-1.0), dict(width=0.0),
                                 dict(amplitude=-200.0), dict(dt_obs=0.0), dict(n_cycles=0),
                                 dict(gravity=float("nan")), dict(f0=10.0)])
def test_impossible_values_raise_config_error(bad):
    with pytest.raises(ConfigError):
        problems.get("shallow_water", **bad)


@pytest.mark.parametrize("n", [32, 64, 150])
def test_substeps_cover_the_interval_within_the_cfl_bound(n):
    pb = ShallowWater(n=n)
    K = pb.n_substeps()
    assert K * pb.dt == pytest.approx(pb.dt_obs, rel=1e-14)
    courant = pb.wave_speed * pb.dt / pb.dx
    assert courant <= pb.cfl
    assert pb.wave_speed * pb.dt_obs / (K - 1) / pb.dx > pb.cfl or K == 1   # the smallest such count
    if n == 150:
        assert K == 9


def test_coords_are_row_major_cell_centres():
    pb = ShallowWater(n=10)
    c = pb.coords()
    assert c.shape == (100, 2) and c.dtype == torch.float64
    dx = 1e5
    i, j = 3, 7
    assert c[i * 10 + j].tolist() == pytest.approx([-5e5 + (j + 0.5) * dx, -5e5 + (i + 0.5) * dx])
    assert c[:, 0].min() == pytest.approx(-5e5 + dx / 2) and c[:, 1].max() == pytest.approx(5e5 - dx / 2)


def test_initial_state_bump_location_and_rest():
    pb = ShallowWater(n=40)
    p = _params([0.25, 0.125], [0.0, 0.5])
    x = pb.initial_state(p)
    assert x.shape == (2, 3, 40, 40) and x.dtype == torch.float64
    assert torch.all(x[:, :2] == 0)
    c = pb.coords()
    for k in range(2):
        peak = c[x[k, 2].reshape(-1).argmax()]
        want = torch.tensor([-5e5 + p[k, 0] * 1e6, -5e5 + p[k, 1] * 1e6], dtype=torch.float64)
        assert (peak - want).abs().max() <= pb.dx / 2 + 1e-6
    # amplitude 1 m and width 50 km: a cell centre exactly at the bump centre has eta = 1
    x = pb.initial_state(_params([0.5 + 0.5 / 40, 0.5 + 0.5 / 40]))
    assert x[0, 2].max().item() == pytest.approx(1.0)
    r2 = ((c - c[x[0, 2].reshape(-1).argmax()]) ** 2).sum(1)
    assert torch.allclose(x[0, 2].reshape(-1), torch.exp(-r2 / (2 * 5e4 ** 2)))


# ---- centre <-> face maps -----------------------------------------------------------------------------------
def test_sine_transfer_maps_are_exact_inverses_and_norm_preserving():
    n = 24
    to_face, to_centre = sine_transfer_matrices(n)
    assert torch.allclose(to_face @ to_centre, torch.eye(n - 1, dtype=torch.float64), atol=1e-13)
    proj = to_centre @ to_face
    checker = torch.tensor([(-1.0) ** j for j in range(n)], dtype=torch.float64)
    assert torch.allclose(proj @ checker, torch.zeros(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(proj @ proj, proj, atol=1e-12) and torch.allclose(proj, proj.T, atol=1e-13)
    faces = torch.randn(n - 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert (to_centre @ faces).norm().item() == pytest.approx(faces.norm().item(), rel=1e-12)
    # a wall-vanishing smooth profile is interpolated exactly (it is one sine mode)
    s_c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    s_f = torch.arange(1, n, dtype=torch.float64) / n
    assert torch.allclose(to_face @ torch.sin(3 * math.pi * s_c), torch.sin(3 * math.pi * s_f), atol=1e-12)


def test_public_state_is_a_lossless_view_of_the_solver_state():
    pb = ShallowWater(n=32)
    x1 = pb.step(pb.initial_state(_params([0.2, 0.35])), None)
    U, V, eta = to_staggered(x1)
    assert torch.allclose(to_collocated(U, V, eta), x1, atol=1e-15, rtol=0)


@pytest.mark.parametrize("amplitude, tol", [(1.0, 1e-3), (1e-6, 1e-9)])
def test_restart_matches_one_long_integration(amplitude, tol):
    """Two observation intervals = one integration over 2 dt_obs, up to the unmerged continuity half-steps,
    whose O(dt^2 eta/H) difference comes from the nonlinear flux only (it vanishes with the amplitude)."""
    pb = ShallowWater(n=32, amplitude=amplitude)
    x0 = pb.initial_state(_params([0.2, 0.35]))
    U, V, eta = to_staggered(x0)
    pb.integrate(U, V, eta, 2 * pb.n_substeps())
    x2 = pb.step(pb.step(x0, None), None)
    err = (to_collocated(U, V, eta) - x2).abs().amax(dim=(0, 2, 3)) / x2.abs().amax(dim=(0, 2, 3))
    assert err.max() < tol


# ---- invariants ------------------------------------------------------------------------------------------------
def test_mass_is_conserved_to_round_off():
    pb = ShallowWater(n=32)
    p = _params([0.0, 0.0], [0.25, 0.4], [0.5, 0.1])       # corner bump: the wave hits the walls at once
    x = pb.initial_state(p)
    g = torch.Generator().manual_seed(3)
    x = torch.cat([x, x[:1] + 0.05 * torch.randn(x[:1].shape, generator=g, dtype=torch.float64)])  # "analysis"
    m0 = x[:, 2].sum(dim=(1, 2))
    scale = x[:, 2].abs().sum(dim=(1, 2))
    for _ in range(200):
        x = pb.step(x, None)
    assert torch.isfinite(x).all()
    assert ((x[:, 2].sum(dim=(1, 2)) - m0).abs() / scale).max() < 1e-13


def test_no_normal_flow_through_the_walls():
    pb = ShallowWater(n=24)
    x = pb.initial_state(_params([0.0, 0.0], [0.4, 0.1]))
    U, V, eta = to_staggered(x)
    pb.integrate(U, V, eta, 50)
    assert U.abs().max() > 1e-3 and V.abs().max() > 1e-3
    assert torch.all(U[:, :, 0] == 0) and torch.all(U[:, :, -1] == 0)
    assert torch.all(V[:, 0, :] == 0) and torch.all(V[:, -1, :] == 0)


def test_walls_reflect_like_a_mirror():
    """Without rotation a bump in the corner of a basin evolves exactly as the bump at the centre of a basin twice
    as wide, restricted to one quadrant (method of images): the wall is a perfect mirror, nonlinear terms included."""
    n = 16
    small = ShallowWater(n=n, f0=0.0, beta=0.0)
    big = ShallowWater(n=2 * n, length=2e6, f0=0.0, beta=0.0)
    assert small.n_substeps() == big.n_substeps()
    xs = small.initial_state(_params([0.0, 0.0]))
    xb = big.initial_state(_params([0.5, 0.5]))
    for _ in range(20):
        xs, xb = small.step(xs, None), big.step(xb, None)
    assert xs[:, 2].abs().max() > 0.01                 # the wave has reflected several times
    assert torch.allclose(xb[:, :, n:, n:], xs, atol=1e-12, rtol=0)


def test_front_travels_at_the_gravity_wave_speed():
    """A small (near-linear) bump without rotation: the ring's crest radius grows at sqrt(g H) within 2 %."""
    pb = ShallowWater(n=128, f0=0.0, beta=0.0, amplitude=0.01, width=2.5e4, dt_obs=500.0)
    x = pb.initial_state(_params([0.5, 0.5]))
    r = pb.coords().norm(dim=1)
    bins = (r / pb.dx).round().long()
    count = torch.zeros(int(bins.max()) + 1, dtype=torch.float64).index_add_(0, bins, torch.ones_like(r))
    times, radii = [], []
    for k in range(1, 27):                              # to t = 13000 s, before the crest reaches the walls
        x = pb.step(x, None)
        if k * 500.0 < 4000.0:
            continue
        prof = torch.zeros_like(count).index_add_(0, bins, x[0, 2].reshape(-1)) / count
        prof = prof[: int(0.5 * pb.length / pb.dx)]     # azimuthal mean inside the inscribed circle
        i = int(prof[3:].argmax()) + 3
        y0, y1, y2 = prof[i - 1].item(), prof[i].item(), prof[i + 1].item()
        radii.append((i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * pb.dx)
        times.append(k * 500.0)
    t = torch.tensor(times, dtype=torch.float64)
    rr = torch.tensor(radii, dtype=torch.float64)
    speed = ((t - t.mean()) * (rr - rr.mean())).sum() / ((t - t.mean()) ** 2).sum()
    assert speed.item() == pytest.approx(math.sqrt(9.81 * 100.0), rel=0.02)


def test_energy_stays_bounded_over_the_run():
    pb = ShallowWater(n=48)
    p = _params([0.25, 0.3], [0.0, 0.5], [0.5, 0.5])
    traj = _run(pb, pb.initial_state(p), p, pb.n_cycles)
    e = torch.stack([pb.energy(x) for x in traj]) / pb.energy(traj[0])
    assert (e - 1).abs().max() < 0.02


def test_no_secular_energy_growth_over_a_long_run():
    pb = ShallowWater(n=24)
    p = _params([0.1, 0.4])
    x = pb.initial_state(p)
    e0 = pb.energy(x)
    e = []
    for _ in range(500):                                # ten times the dataset's length
        x = pb.step(x, p)
        e.append(pb.energy(x) / e0)
    e = torch.cat(e)
    assert torch.isfinite(x).all() and e.max() < 1.05 and e.min() > 0.95
    assert abs(e[-100:].mean().item() - e[:100].mean().item()) < 0.01


# ---- batching, determinism, dtype, device ------------------------------------------------------------------
def test_batched_equals_looped_and_deterministic():
    pb = ShallowWater(n=32)
    p = pb.sample_params(4, torch.Generator().manual_seed(5))
    x = pb.initial_state(p)
    for _ in range(3):
        x = pb.step(x, p)
    x0 = pb.initial_state(p)
    for k in range(4):
        xk = x0[k:k + 1]
        for _ in range(3):
            xk = pb.step(xk, p[k:k + 1])
        assert torch.allclose(xk[0], x[k], atol=1e-14, rtol=0)
    again = pb.simulate(p, 3)[:, -1]
    assert torch.equal(again, x)


def test_float32_tracks_float64():
    pb = ShallowWater(n=32)
    p = _params([0.3, 0.2], [0.05, 0.45])
    x64 = pb.initial_state(p)
    x32 = x64.float()
    for _ in range(pb.n_cycles):
        x64, x32 = pb.step(x64, p), pb.step(x32, p)
    assert x32.dtype == torch.float32 and x64.dtype == torch.float64
    scale = x64.abs().amax(dim=(0, 2, 3), keepdim=True)
    assert ((x32.double() - x64).abs() / scale).max() < 1e-4


def test_simulate_shapes_and_dtype():
    pb = ShallowWater(n=16, n_cycles=3)
    p = _params([0.1, 0.2])
    traj = pb.simulate(p, dtype=torch.float32)
    assert traj.shape == (1, 4, 3, 16, 16) and traj.dtype == torch.float32
    assert torch.equal(traj[:, 0], pb.initial_state(p).float())


def test_dataset_builds_and_caches(tmp_path):
    pb = ShallowWater(n=12, n_cycles=2, n_traj=5)
    ds = pb.dataset(cache_dir=tmp_path, progress=False)
    assert ds.train.shape == (3, 3, 3, 12, 12) and ds.params_test.shape == (1, 2)
    assert ds.times[-1].item() == pytest.approx(2 * 857.1)
    assert torch.isfinite(ds.train).all() and ds.field_std.shape == (3,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    pb = ShallowWater(n=32)
    p = _params([0.3, 0.2])
    x = pb.initial_state(p)
    xc = pb.step(x.cuda(), p)
    assert xc.device.type == "cuda"
    assert torch.allclose(xc.cpu(), pb.step(x, p), atol=1e-12)


# ---- observations on this problem --------------------------------------------------------------------------
def test_paper_lattice_has_100_points_of_all_three_fields():
    pb = ShallowWater(n=150)
    assert lattice_stride((150, 150), 0.0044) == 15
    obs = problems.bind_observer(pb, None, coverage=0.0044, noise_type="absolute")
    assert len(obs.points) == 100 and obs.n_obs == 300
    assert obs.actual_coverage == pytest.approx(100 / 22500)
    explicit = problems.bind_observer(pb, None, stride=15, noise_type="absolute")
    assert torch.equal(explicit.points, obs.points)
    # the lattice points are the grid indices 0, 15, ..., 135 in both directions
    idx = torch.arange(0, 150, 15)
    want = (idx[:, None] * 150 + idx[None, :]).reshape(-1)
    assert torch.equal(obs.points, want)
    xy = pb.coords()[obs.points]
    assert xy[1].tolist() == pytest.approx([-5e5 + 15.5 * pb.dx, -5e5 + 0.5 * pb.dx])


def test_observation_is_linear_point_sampling():
    pb = ShallowWater(n=30)
    obs = problems.bind_observer(pb, None, stride=6, noise_type="absolute", noise=0.01)
    p = _params([0.2, 0.3], [0.4, 0.1])
    x = pb.step(pb.initial_state(p), p)
    y = pb.initial_state(p)
    a, b = 2.5, -0.7
    assert torch.allclose(obs.observe(a * x + b * y), a * obs.observe(x) + b * obs.observe(y), atol=1e-15)
    h = obs.observe(x)
    assert h.shape == (2, 25 * 3)
    # point-major, field-minor: entry p * 3 + c is field c at lattice point p
    pt = int(obs.points[7])
    assert torch.equal(h[:, 7 * 3:8 * 3], x.reshape(2, 3, -1)[:, :, pt])


# ---- paper resolution ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_paper_resolution_full_run_is_stable(dtype):
    pb = ShallowWater(n=150)
    p = pb.sample_params(6, torch.Generator().manual_seed(42))
    p = torch.cat([p, _params([0.0, 0.0], [0.5, 0.5])])
    traj = pb.simulate(p, dtype=dtype)
    assert traj.shape == (8, 51, 3, 150, 150)
    assert torch.isfinite(traj).all()
    x = traj.double()
    e = torch.stack([pb.energy(x[:, t]) for t in range(51)]) / pb.energy(x[:, 0])
    assert (e - 1).abs().max() < (0.01 if dtype == torch.float64 else 0.02)
    mass = x[:, :, 2].sum(dim=(-2, -1))
    tol = 1e-13 if dtype == torch.float64 else 1e-4
    assert ((mass - mass[:, :1]).abs() / x[:, 0, 2].abs().sum(dim=(-2, -1))[:, None]).max() < tol
    # the paper's normalisation ranges: u, v in [-0.2, 0.2] m/s, eta in [-0.5, 1.0] m
    assert x[:, :, :2].abs().max() < 0.2 and x[:, 1:, 2].max() < 1.0 and x[:, :, 2].min() > -0.5


@pytest.mark.slow
def test_front_speed_with_the_paper_bump_width():
    pb = ShallowWater(n=256, length=2e6, f0=0.0, beta=0.0, amplitude=0.01, dt_obs=1000.0)
    x = pb.initial_state(_params([0.5, 0.5]))
    r = pb.coords().norm(dim=1)
    bins = (r / pb.dx).round().long()
    count = torch.zeros(int(bins.max()) + 1, dtype=torch.float64).index_add_(0, bins, torch.ones_like(r))
    times, radii = [], []
    for k in range(1, 29):
        x = pb.step(x, None)
        if k < 8:
            continue
        prof = (torch.zeros_like(count).index_add_(0, bins, x[0, 2].reshape(-1)) / count)[:128]
        i = int(prof[3:].argmax()) + 3
        y0, y1, y2 = prof[i - 1].item(), prof[i].item(), prof[i + 1].item()
        radii.append((i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * pb.dx)
        times.append(k * 1000.0)
    t = torch.tensor(times, dtype=torch.float64)
    rr = torch.tensor(radii, dtype=torch.float64)
    speed = ((t - t.mean()) * (rr - rr.mean())).sum() / ((t - t.mean()) ** 2).sum()
    assert speed.item() == pytest.approx(math.sqrt(9.81 * 100.0), rel=0.01)


def test_the_old_name_of_dt_obs_is_accepted_and_hashes_stay():
    """``obs_interval`` (the former name of ``dt_obs``) still works, with a warning; dataset keys, and with them
    the hashes of cached datasets and shipped artifacts, are unchanged by the rename."""
    with pytest.warns(FutureWarning, match="'obs_interval' is now called 'dt_obs'"):
        old = problems.get("shallow_water", n=32, obs_interval=500.0)
    assert old == problems.get("shallow_water", n=32, dt_obs=500.0) and old.dt_obs == 500.0
    assert old.data_key() == "shallow_water-0d83d8638be7"
    assert problems.get("shallow_water").data_key() == "shallow_water-875a48596dbb"
    with pytest.raises(ConfigError, match="'dt_obs' is given twice, once under its old name 'obs_interval'"):
        problems.get("shallow_water", obs_interval=500.0, dt_obs=400.0)
