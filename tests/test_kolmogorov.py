"""Kolmogorov flow solver: analytic solutions, invariants, convergence order, batching, configuration."""
from __future__ import annotations

import math

import pytest
import torch

import problems
from assimbench.errors import ConfigError
from problems.kolmogorov import Kolmogorov, spectral_ops, velocity_to_vorticity

N_GRID = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small FFTs are fastest (and timing-stable on a shared machine) with one intra-op thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Y, X)`` float64 meshes, ``[i, j] -> (y_i, x_j)``."""
    a = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    return torch.meshgrid(a, a, indexing="ij")


def taylor_green(n: int, k: int, shift=(0.0, 0.0)) -> torch.Tensor:
    """``(2, n, n)`` Taylor-Green vortex of wavenumber ``k`` translated by ``shift = (X, Y)``."""
    Y, X = grid(n)
    X, Y = X - shift[0], Y - shift[1]
    return torch.stack([torch.sin(k * X) * torch.cos(k * Y), -torch.cos(k * X) * torch.sin(k * Y)])


def re(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None]


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-member relative L2 error of ``a`` w.r.t. ``b``."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


@pytest.fixture(scope="module")
def pb() -> Kolmogorov:
    return problems.get("kolmogorov", n=N_GRID)


@pytest.fixture(scope="module")
def x_rand(pb) -> torch.Tensor:
    """A developed (spun-up) flow at Re = 1000, float64, ``(1, 2, n, n)``."""
    return pb.initial_state(re(1000.0))


# ---- configuration -------------------------------------------------------------------------------------------
def test_registry_and_geometry():
    p = problems.get("kolmogorov")
    assert isinstance(p, Kolmogorov) and p.n == 64 and p.n_cycles == 39 and p.n_traj == 200
    assert p.state_shape == (2, 64, 64) and p.field_names == ("u", "v") and p.param_names == ("Re",)
    assert p.dt_obs == 0.2 and p.periodic and p.label == "kolmogorov"
    lo, hi = p.param_bounds
    assert lo.tolist() == [500.0] and hi.tolist() == [1500.0]
    th = p.sample_params(100, torch.Generator().manual_seed(0))
    assert th.shape == (100, 1) and th.min() >= 500 and th.max() <= 1500
    # coords: (x, y), row-major over (i = y index, j = x index)
    c = p.coords()
    assert c.shape == (64 * 64, 2)
    dx = 2 * math.pi / 64
    assert torch.allclose(c[1], torch.tensor([dx, 0.0], dtype=torch.float64))
    assert torch.allclose(c[64], torch.tensor([0.0, dx], dtype=torch.float64))
    assert c.min() == 0 and c.max() < 2 * math.pi
    assert problems.get("kolmogorov", n=150).n_substeps(0.2) == 48  # dt = 0.5 dx / 5 -> 48 sub-steps


@pytest.mark.parametrize("bad", [dict(n=4), dict(cfl=1.5), dict(cfl=0.0), dict(re_min=1500.0, re_max=500.0),
                                 dict(re_min=0.0), dict(forcing_wavenumber=11), dict(drag=-0.1),
                                 dict(dt_obs=0.0), dict(max_velocity=0.0), dict(ic_max_velocity=-1.0),
                                 dict(spinup_time=-1.0), dict(n_cycles=0)])
def test_bad_config_raises(bad):
    with pytest.raises(ConfigError):
        problems.get("kolmogorov", **{"n": N_GRID, **bad})


# ---- analytic solutions --------------------------------------------------------------------------------------
@pytest.mark.parametrize("drag", [0.0, 0.1])
@pytest.mark.parametrize("k", [1, 3])
def test_taylor_green_decays_at_viscous_rate(k, drag):
    p = problems.get("kolmogorov", n=N_GRID, forcing_amplitude=0.0, drag=drag)
    th = re(50.0, 500.0, 1500.0)
    x0 = taylor_green(N_GRID, k).expand(3, -1, -1, -1).contiguous()
    T = 1.0
    x = p.advance(x0, th, T)
    rate = 2 * k**2 / th[:, 0] + drag
    exact = x0 * torch.exp(-rate * T)[:, None, None, None]
    assert rel(x, exact).max() < 1e-6
    assert rel(x, exact).max() < 1e-12  # in fact exact: TG has no advection, the linear part is integrated exactly


def test_taylor_green_in_mean_flow_is_advected():
    """Galilean check: TG + uniform mean velocity U(t) = U0 exp(-drag t) is the TG translated by int U dt."""
    p = problems.get("kolmogorov", n=N_GRID, forcing_amplitude=0.0)
    Re, U0, T = 200.0, torch.tensor([0.7, -0.4], dtype=torch.float64), 1.0
    x0 = taylor_green(N_GRID, 1) + U0[:, None, None]
    x = p.advance(x0[None], re(Re), T, n_sub=40)
    shift = (U0 * (1 - math.exp(-p.drag * T)) / p.drag).tolist()
    exact = taylor_green(N_GRID, 1, shift) * math.exp(-(2 / Re + p.drag) * T) \
        + (U0 * math.exp(-p.drag * T))[:, None, None]
    assert rel(x, exact[None]).item() < 1e-8


def test_laminar_kolmogorov_profile():
    """At low Re the flow settles on u = A sin(4 y), v = 0 with A = 1 / (16 nu + drag)."""
    p = problems.get("kolmogorov", n=N_GRID, spinup_time=0.0, ic_max_velocity=0.5, max_velocity=1.0)
    th = re(2.0, 4.0)
    x = p.advance(p.initial_state(th), th, 45.0)
    Y, _ = grid(N_GRID)
    A = 1.0 / (16.0 / th[:, 0] + 0.1)
    lam = torch.zeros_like(x)
    lam[:, 0] = A[:, None, None] * torch.sin(4 * Y)
    assert rel(x, lam).max() < 1e-6
    # the laminar state is an exact fixed point of the scheme, for any step size
    y = p.advance(lam, th, 1.0, n_sub=1)
    assert rel(y, lam).max() < 1e-13


# ---- invariants ----------------------------------------------------------------------------------------------
def spectral_divergence(x: torch.Tensor) -> torch.Tensor:
    """Spectral ``du/dx + dv/dy`` of ``x (N, 2, n, n)`` (all modes, independent of the solver's operators)."""
    n = x.shape[-1]
    ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64)[None, :]
    xh = torch.fft.rfft2(x, norm="forward")
    return torch.fft.irfft2(1j * kx * xh[:, 0] + 1j * ky * xh[:, 1], s=x.shape[-2:], norm="forward")


def test_divergence_free_and_zero_mean_vorticity(pb, x_rand):
    # a random, non-solenoidal input: the step projects it and stays divergence-free
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 2, N_GRID, N_GRID, generator=g, dtype=torch.float64)
    assert spectral_divergence(x0).abs().max() > 1.0
    for x in (pb.step(x0, re(800.0, 1200.0)), pb.step(x_rand, re(1000.0)), x_rand):
        scale = x.abs().max()
        assert spectral_divergence(x).abs().max() < 1e-12 * scale * N_GRID
        # finite-difference vorticity (periodic central differences) has zero mean to round-off
        h = 2 * math.pi / N_GRID
        w = (x[:, 1].roll(-1, -1) - x[:, 1].roll(1, -1) - x[:, 0].roll(-1, -2) + x[:, 0].roll(1, -2)) / (2 * h)
        assert w.mean((-1, -2)).abs().max() < 1e-12 * scale
        # the spectral vorticity has no mean mode
        w_hat, _ = velocity_to_vorticity(x, spectral_ops(N_GRID, "cpu", torch.float64))
        assert w_hat[:, 0, 0].abs().max() < 1e-14 * scale


def test_mean_velocity_decays_by_drag(pb, x_rand):
    x0 = x_rand + torch.tensor([0.5, -0.2], dtype=torch.float64)[:, None, None]
    x = pb.step(x0, re(1000.0))
    assert torch.allclose(x.mean((-1, -2)), x0.mean((-1, -2)) * math.exp(-0.1 * pb.dt_obs), atol=1e-13)


# ---- numerics ------------------------------------------------------------------------------------------------
def direct_advection(w_hat: torch.Tensor, mean: torch.Tensor, n: int) -> torch.Tensor:
    """``-P[u w_x + v w_y]`` on the full rfft layout, straight from the definition (four inverse transforms)."""
    kc = (n - 1) // 3 + 1
    ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64)[None, :]
    mask = ((3 * kx.abs() < n) & (3 * ky.abs() < n)).to(torch.float64)
    wf = torch.zeros(w_hat.shape[0], n, n // 2 + 1, dtype=torch.complex128)
    wf[..., :kc] = w_hat
    k2 = (kx**2 + ky**2).clamp_min(1.0)
    f = [torch.fft.irfft2(m * wf * mask, s=(n, n), norm="forward")
         for m in (1j * ky / k2, -1j * kx / k2, 1j * kx, 1j * ky)]
    u, v = f[0] + mean[:, :1, None], f[1] + mean[:, 1:, None]
    return -(torch.fft.rfft2(u * f[2] + v * f[3], norm="forward") * mask)[..., :kc]


def test_advection_form_equals_the_direct_form(x_rand):
    """The solver's ``d_xy (v^2 - u^2) + (d_xx - d_yy)(u v)`` evaluation of the advection equals
    ``u . grad w`` computed directly, mean flow included: an identity for divergence-free, dealiased fields."""
    from problems.kolmogorov import _tendency, _Workspace, _y_inner

    g = torch.Generator().manual_seed(5)
    x = torch.cat([x_rand, torch.randn(1, 2, N_GRID, N_GRID, generator=g, dtype=torch.float64)])
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
        ops = spectral_ops(N_GRID, "cpu", dtype)
        w_hat, mean = velocity_to_vorticity(x.to(dtype), ops)
        mean = mean + torch.tensor([[0.7, -0.3], [0.0, 0.4]], dtype=dtype)
        w_in = _y_inner(w_hat)
        w_in[:, 0, 0] = torch.complex(mean[:, 0], mean[:, 1])  # how the integrator carries the mean flow
        out = torch.empty_like(w_in)
        _tendency(w_in, _Workspace(2, ops, w_hat.dtype, dtype, "cpu"), torch.view_as_real(out))
        ref = direct_advection(w_hat.to(torch.complex128), mean.double(), N_GRID)
        assert ref.abs().max() > 1.0
        assert (out.to(torch.complex128) - ref).abs().max() < tol * ref.abs().max()


def test_fourth_order_in_time(pb, x_rand):
    th = re(1000.0)
    T = 0.5
    ref = pb.advance(x_rand, th, T, n_sub=320)
    errs = [rel(pb.advance(x_rand, th, T, n_sub=m), ref).item() for m in (10, 20, 40)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(3.8 < o < 4.2 for o in orders), (errs, orders)


def test_batched_equals_looped_and_deterministic(pb):
    th = re(600.0, 1000.0, 1400.0)
    x0 = pb.initial_state(th)
    xb = pb.step(x0, th)
    xl = torch.cat([pb.step(x0[i:i + 1], th[i:i + 1]) for i in range(3)])
    assert (xb - xl).abs().max() < 1e-12
    assert torch.equal(xb, pb.step(x0, th))
    assert rel(xb[:1], xb[2:]).item() > 1e-3  # members really have their own viscosity


def test_float32_follows_float64(pb, x_rand):
    th = re(1000.0)
    y64 = pb.step(x_rand, th)
    y32 = pb.step(x_rand.float(), th.float())
    assert y32.dtype == torch.float32 and y32.device == x_rand.device
    assert rel(y32.double(), y64).item() < 1e-4


def test_initial_state_shared_field_spun_up_per_member():
    p0 = problems.get("kolmogorov", n=N_GRID, spinup_time=0.0)
    x0 = p0.initial_state(re(500.0, 1500.0))
    assert x0.dtype == torch.float64 and x0.shape == (2, 2, N_GRID, N_GRID)
    assert torch.equal(x0[0], x0[1])  # one shared field
    assert 2.8 < x0.pow(2).sum(1).sqrt().max().item() < 3.05  # exactly 3 on the paper's 150 grid
    assert abs(problems.get("kolmogorov", n=150).initial_field().pow(2).sum(0).sqrt().max().item() - 3.0) < 1e-12
    x64 = problems.get("kolmogorov", n=64).initial_field()
    assert torch.allclose(x64, problems.get("kolmogorov", n=128).initial_field()[:, ::2, ::2],
                          atol=1e-13)  # the same continuous field at every resolution that resolves it
    assert x0.mean((-1, -2)).abs().max() < 1e-14 and spectral_divergence(x0).abs().max() < 1e-12
    p = problems.get("kolmogorov", n=N_GRID, spinup_time=0.4)
    x = p.initial_state(re(500.0, 500.0, 1500.0))
    assert torch.equal(x[0], x[1]) and rel(x[:1], x[2:]).item() > 1e-4
    assert torch.allclose(x, p0.simulate(re(500.0, 500.0, 1500.0), n_cycles=2)[:, -1], atol=1e-12)


# ---- paper resolution ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_paper_resolution_no_blowup():
    """n = 150, the full 40-snapshot window after the t = 4 spin-up, at both ends of the Re prior."""
    p = problems.get("kolmogorov", n=150)
    th = re(500.0, 1500.0)
    traj = p.simulate(th)
    assert traj.shape == (2, 40, 2, 150, 150) and torch.isfinite(traj).all()
    speed = traj.pow(2).sum(2).sqrt().amax((-1, -2))
    assert speed.max() < p.max_velocity  # the CFL bound holds, so sub-step counts never adapt
    rms = traj.pow(2).mean((2, 3, 4)).sqrt()
    assert rms.min() > 0.3  # still turbulent, not decayed
    assert spectral_divergence(traj[:, -1]).abs().max() < 1e-10


@pytest.mark.slow
def test_spatial_convergence():
    """The shared field is resolution independent; the flow converges fast under grid refinement at Re = 1000."""
    th = re(1000.0)
    x = {m: problems.get("kolmogorov", n=m, spinup_time=0.4).initial_state(th) for m in (64, 128, 256)}
    e64 = rel(x[64], x[128][..., ::2, ::2]).item()
    e128 = rel(x[128], x[256][..., ::2, ::2]).item()
    assert e128 < 2e-3 and e64 / e128 > 8, (e64, e128)
