"""EnKF (ETKF and perturbed-observation variants): Kalman limits, localisation, joint parameters, scale."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import methods
import problems
from assimbench.errors import ConfigError
from methods.base import Context, EnsembleState
from methods.enkf import EnKF, gaspari_cohn
from problems.base import Problem

VARIANTS = ["sqrt", "stochastic"]


# ---- helpers ---------------------------------------------------------------------------------------------------
def make(problem, observer, seed=0, **kw) -> EnKF:
    m = EnKF(**kw)
    m.bind(Context(problem, observer, None, dtype=torch.float64))
    m.generator = torch.Generator().manual_seed(seed)
    return m


def sample_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of an ensemble (N, ...)."""
    x = x.reshape(x.shape[0], -1)
    return x.mean(0), torch.cov(x.T)


def kalman_update(mf, Pf, idx, y, sigma):
    """Exact Kalman update of (mean, covariance) with H = selection of ``idx`` and R = diag(sigma^2)."""
    H = torch.zeros(len(idx), len(mf), dtype=mf.dtype)
    H[torch.arange(len(idx)), idx] = 1.0
    Sy = H @ Pf @ H.T + torch.diag(sigma**2)
    K = torch.linalg.solve(Sy, H @ Pf).T
    return mf + K @ (y - H @ mf), (torch.eye(len(mf), dtype=mf.dtype) - K @ H) @ Pf


def correlated_ensemble(N, d, g, scale=1.0, shift=0.0):
    L = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d, dtype=torch.float64)
    return shift + scale * torch.randn(N, d, generator=g, dtype=torch.float64) @ L.T


@dataclass(frozen=True)
class Grid2D(Problem):
    """A tiny static two-field grid (C=2, H x W) for the gridded code paths."""

    name: ClassVar[str] = "grid2d_test"
    field_names: ClassVar[tuple[str, ...]] = ("a", "b")
    periodic: ClassVar[bool] = False
    H: int = 7
    W: int = 8

    @property
    def state_shape(self):
        return (2, self.H, self.W)

    def step(self, x, params):
        return x


@dataclass(frozen=True)
class Grid2DPeriodic(Grid2D):
    periodic: ClassVar[bool] = True


@dataclass(frozen=True)
class DriftedDecay(Problem):
    """x <- 0.5 x + theta, every component; theta is the uncertain parameter (prior U(0, 3))."""

    name: ClassVar[str] = "drifted_decay_test"
    field_names: ClassVar[tuple[str, ...]] = ("x",)
    param_names: ClassVar[tuple[str, ...]] = ("theta",)
    periodic: ClassVar[bool] = True
    dim: int = 6

    @property
    def state_shape(self):
        return (self.dim,)

    @property
    def param_bounds(self):
        return torch.tensor([0.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)

    def initial_state(self, params):
        return torch.zeros(params.shape[0], self.dim, dtype=torch.float64)

    def step(self, x, params):
        return 0.5 * x + params[:, :1].to(x.dtype)


def local_reference(problem, observer, x, y, radius):
    """Per-grid-point LETKF in state space (a Python loop: reference only): the local analysis mean and the
    analysis covariance of the point's fields are the Kalman update with R_p = sigma^2 / taper (taper > 0)."""
    Cf, P = problem.n_fields, problem.n_points
    mf, Pf = sample_stats(x)
    sigma = observer.noise_std(y)
    grid = problem.grid_index()
    dist = problem.grid_distance(grid, grid[observer.points])  # (P, m_p)
    nf = len(observer.obs_fields)
    mean = torch.empty(Cf * P, dtype=torch.float64)
    covs = []
    for p in range(P):
        w = gaspari_cohn(dist[p], radius).repeat_interleave(nf)  # per observation (point-major, field-minor)
        keep = w > 0
        rows = torch.arange(Cf) * P + p
        if keep.sum() == 0:
            mean[rows] = mf[rows]
            covs.append(Pf[rows][:, rows])
            continue
        ma, Pa = kalman_update(mf, Pf, observer.index[keep], y[keep], sigma[keep] / w[keep].sqrt())
        mean[rows] = ma[rows]
        covs.append(Pa[rows][:, rows])
    return mean, covs


# ---- the exact Kalman limit -------------------------------------------------------------------------------------
@pytest.mark.parametrize("N", [5, 30])
@pytest.mark.parametrize("coverage", [0.5, 1.0])
def test_etkf_step_is_kalman_update_of_sample_moments(N, coverage):
    pb = problems.get("linear_gauss", dim=8)
    obs = problems.bind_observer(pb, None, noise=0.7, noise_type="absolute", coverage=coverage)
    g = torch.Generator().manual_seed(1)
    x = correlated_ensemble(N, 8, g, scale=1.5, shift=0.3)
    y = torch.randn(obs.n_obs, generator=g, dtype=torch.float64)
    m = make(pb, obs, variant="sqrt")
    xa = m.analysis(EnsembleState(x, torch.zeros(N, 0)), y).x
    mf, Pf = sample_stats(x)
    ma_kf, Pa_kf = kalman_update(mf, Pf, obs.index, y, obs.noise_std(y))
    ma, Pa = sample_stats(xa)
    torch.testing.assert_close(ma, ma_kf, rtol=0, atol=1e-12)
    torch.testing.assert_close(Pa, Pa_kf, rtol=0, atol=1e-12)


def test_stochastic_step_matches_kalman_update_within_sampling_error():
    N, d = 20000, 6
    pb = problems.get("linear_gauss", dim=d)
    obs = problems.bind_observer(pb, None, noise=0.8, noise_type="absolute", coverage=0.5)
    g = torch.Generator().manual_seed(2)
    x = correlated_ensemble(N, d, g)
    y = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    xa = make(pb, obs, variant="stochastic").analysis(EnsembleState(x, torch.zeros(N, 0)), y).x
    mf, Pf = sample_stats(x)
    ma_kf, Pa_kf = kalman_update(mf, Pf, obs.index, y, obs.noise_std(y))
    ma, Pa = sample_stats(xa)
    torch.testing.assert_close(ma, ma_kf, rtol=0, atol=1e-10)  # centred perturbations: the mean is exact
    assert (Pa - Pa_kf).abs().max() < 6 * (2.0 / N) ** 0.5 * Pf.diagonal().max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_cycled_filter_tracks_the_kalman_filter(variant):
    """Linear-Gaussian cycling with N >> d: ensemble mean and covariance follow the exact KF."""
    d, N, T = 6, 4000, 6
    pb = problems.get("linear_gauss", dim=d, decay=0.9)
    obs = problems.bind_observer(pb, None, noise=0.5, noise_type="absolute", coverage=0.5)
    g = torch.Generator().manual_seed(3)
    truth = torch.randn(1, d, generator=g, dtype=torch.float64)
    m = make(pb, obs, variant=variant, seed=4)
    state = m.init(pb.sample_initial(torch.zeros(N, 0), g), torch.zeros(N, 0), torch.Generator().manual_seed(5))
    mk, Pk = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64) * pb.prior_std**2
    for _ in range(T):
        truth = pb.step(truth, None)
        y = obs.sample(truth, g)[0]
        state = m.analysis(m.forecast(state), y)
        mk, Pk = pb.decay * mk, pb.decay**2 * Pk
        mk, Pk = kalman_update(mk, Pk, obs.index, y, obs.noise_std(y))
        me, Pe = sample_stats(state.x)
        assert (me - mk).abs().max() < 5 * (Pk.diagonal().max() / N) ** 0.5 + 0.02
        assert (Pe - Pk).abs().max() < 0.1 * Pk.diagonal().max()


# ---- limits, invariants ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("radius", [0.0, 3.0])
def test_no_information_limit_keeps_the_forecast(variant, radius):
    pb = problems.get("lorenz96", dim=40)
    obs = problems.bind_observer(pb, None, noise=1e9, noise_type="absolute")
    g = torch.Generator().manual_seed(6)
    x = 8 + 3 * torch.randn(15, 40, generator=g, dtype=torch.float64)
    y = torch.zeros(obs.n_obs, dtype=torch.float64)
    xa = make(pb, obs, variant=variant, loc_radius=radius).analysis(EnsembleState(x, torch.zeros(15, 0)), y).x
    torch.testing.assert_close(xa, x, rtol=0, atol=1e-6)


def test_rotation_preserves_mean_and_covariance():
    pb = problems.get("lorenz96", dim=40)
    obs = problems.bind_observer(pb, None, noise=1.0, noise_type="absolute", coverage=0.5)
    g = torch.Generator().manual_seed(7)
    x = 8 + 3 * torch.randn(12, 40, generator=g, dtype=torch.float64)
    y = 8 + torch.randn(obs.n_obs, generator=g, dtype=torch.float64)
    for radius in (0.0, 2.5):
        a = make(pb, obs, loc_radius=radius).analysis(EnsembleState(x, torch.zeros(12, 0)), y).x
        b = make(pb, obs, loc_radius=radius, rotate=True).analysis(EnsembleState(x, torch.zeros(12, 0)), y).x
        assert not torch.allclose(a, b)
        torch.testing.assert_close(b.mean(0), a.mean(0), rtol=0, atol=1e-10)
        torch.testing.assert_close(torch.cov(b.T), torch.cov(a.T), rtol=0, atol=1e-10)


def test_inflation_scales_forecast_anomalies():
    pb = problems.get("linear_gauss", dim=5)
    obs = problems.bind_observer(pb, None, noise=1e9, noise_type="absolute")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    xa = make(pb, obs, inflation=1.3).analysis(EnsembleState(x, torch.zeros(9, 0)), torch.zeros(5)).x
    torch.testing.assert_close(xa, x.mean(0) + 1.3 * (x - x.mean(0)), rtol=0, atol=1e-6)


def test_dtype_and_arctan_operator():
    """float32 in, float32 out; a nonlinear (arctan) operator pulls the mean toward the truth."""
    pb = problems.get("lorenz96", dim=40)
    obs = problems.bind_observer(pb, None, noise=0.05, noise_type="absolute", operator="arctan")
    g = torch.Generator().manual_seed(9)
    truth = torch.randn(1, 40, generator=g, dtype=torch.float64)
    x = (truth + 0.7 + torch.randn(80, 40, generator=g, dtype=torch.float64)).float()  # biased forecast
    y = obs.sample(truth, g)[0].float()
    for variant in VARIANTS:
        for radius in (0.0, 3.0):
            xa = make(pb, obs, variant=variant, loc_radius=radius).analysis(
                EnsembleState(x, torch.zeros(80, 0)), y).x
            assert xa.dtype == torch.float32 and torch.isfinite(xa).all()
            err_f = (x.double().mean(0) - truth).pow(2).mean().sqrt()
            err_a = (xa.double().mean(0) - truth).pow(2).mean().sqrt()
            assert err_a < 0.6 * err_f


def test_relative_noise_uses_the_observation():
    pb = problems.get("lorenz96", dim=40)
    obs = problems.bind_observer(pb, None, noise=0.1, noise_type="relative", coverage=0.25)
    g = torch.Generator().manual_seed(10)
    x = 8 + 2 * torch.randn(20, 40, generator=g, dtype=torch.float64)
    y = obs.sample(x[:1], g)[0]
    xa = make(pb, obs, loc_radius=4.0).analysis(EnsembleState(x[1:], torch.zeros(19, 0)), y).x
    assert torch.isfinite(xa).all()
    assert (xa.mean(0)[obs.index] - y).abs().mean() < (x[1:].mean(0)[obs.index] - y).abs().mean()


# ---- localisation -----------------------------------------------------------------------------------------------
def test_gaspari_cohn_taper():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    t = gaspari_cohn(r, 2.0)
    torch.testing.assert_close(t[[0, 2, 4, 5]], torch.tensor([1.0, 5 / 24, 0.0, 0.0], dtype=torch.float64))
    assert (t.diff() <= 0).all() and 0 < t[3] < t[2]
    z = torch.linspace(0, 2.5, 1001, dtype=torch.float64)
    assert gaspari_cohn(z, 1.0).diff().abs().max() < 5e-3  # continuous


@pytest.mark.parametrize("variant", VARIANTS)
def test_huge_radius_equals_global_analysis(variant):
    pb = problems.get("lorenz96", dim=40)
    obs = problems.bind_observer(pb, None, noise=1.0, noise_type="absolute", coverage=0.5)
    g = torch.Generator().manual_seed(11)
    x = 8 + 3 * torch.randn(16, 40, generator=g, dtype=torch.float64)
    y = 8 + torch.randn(obs.n_obs, generator=g, dtype=torch.float64)
    glob = make(pb, obs, variant=variant, seed=3).analysis(EnsembleState(x, torch.zeros(16, 0)), y).x
    loc = make(pb, obs, variant=variant, seed=3, loc_radius=1e7).analysis(EnsembleState(x, torch.zeros(16, 0)), y).x
    torch.testing.assert_close(loc, glob, rtol=0, atol=1e-8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_points_far_from_observations_are_unchanged(variant):
    pb = problems.get("lorenz96", dim=40)
    obs = problems.bind_observer(pb, None, noise=0.5, noise_type="absolute", stride=10)  # points 0, 10, 20, 30
    g = torch.Generator().manual_seed(12)
    x = 8 + 3 * torch.randn(25, 40, generator=g, dtype=torch.float64)
    y = torch.zeros(obs.n_obs, dtype=torch.float64)
    xa = make(pb, obs, variant=variant, loc_radius=1.5).analysis(EnsembleState(x, torch.zeros(25, 0)), y).x
    dist = pb.grid_distance(pb.grid_index(), pb.grid_index()[obs.points]).min(1).values
    far = dist >= 3.0  # support 2 * 1.5
    assert far.sum() == 20  # distances 3..7 in each gap of 10
    torch.testing.assert_close(xa[:, far], x[:, far], rtol=0, atol=1e-12)  # up to xbar + (x - xbar) round-off
    assert ((xa - x)[:, dist == 0].abs() > 1e-3).all()


@pytest.mark.parametrize("N", [6, 24])  # J >= N (N-side eigh) and J < N (observation-side eigh)
def test_l96_local_analysis_matches_pointwise_reference(N):
    pb = problems.get("lorenz96", dim=40)
    obs = problems.bind_observer(pb, None, noise=0.8, noise_type="absolute")
    g = torch.Generator().manual_seed(13)
    x = correlated_ensemble(N, 40, g, scale=2.0, shift=8.0)
    y = 8 + torch.randn(obs.n_obs, generator=g, dtype=torch.float64)
    m = make(pb, obs, loc_radius=3.0)
    xa = m.analysis(EnsembleState(x, torch.zeros(N, 0)), y).x
    assert m._geom["cpu"].mode == "stencil"
    mean, covs = local_reference(pb, obs, x, y, 3.0)
    torch.testing.assert_close(xa.mean(0), mean, rtol=0, atol=1e-10)
    var = xa.var(0)
    torch.testing.assert_close(var, torch.stack([c[0, 0] for c in covs]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", [Grid2D, Grid2DPeriodic])
@pytest.mark.parametrize("radius,mode", [(1.0, "stencil"), (2.5, "dense")])
@pytest.mark.parametrize("fields", [("a", "b"), ("b",)])
def test_gridded_local_analysis_matches_pointwise_reference(cls, radius, mode, fields):
    pb = cls()
    obs = problems.bind_observer(pb, None, layout="random", coverage=0.5, fields=fields, noise=0.6,
                                 noise_type="absolute", layout_seed=3)
    N = 12
    g = torch.Generator().manual_seed(14)
    x = correlated_ensemble(N, pb.dim, g, scale=1.0).reshape(N, *pb.state_shape)
    y = torch.randn(obs.n_obs, generator=g, dtype=torch.float64)
    m = make(pb, obs, loc_radius=radius)
    xa = m.analysis(EnsembleState(x, torch.zeros(N, 0)), y).x
    assert m._geom["cpu"].mode == mode and xa.shape == x.shape
    mean, covs = local_reference(pb, obs, x, y, radius)
    torch.testing.assert_close(xa.reshape(N, -1).mean(0), mean, rtol=0, atol=1e-10)
    P = pb.n_points
    flat = xa.reshape(N, 2, P)
    cov_pts = torch.einsum("ncp,nep->pce", flat - flat.mean(0), flat - flat.mean(0)) / (N - 1)
    torch.testing.assert_close(cov_pts, torch.stack(covs), rtol=0, atol=1e-10)


def test_stochastic_local_stencil_and_dense_agree():
    """Both ways of finding local observations give the same stochastic analysis (same perturbations)."""
    pb = Grid2D()
    obs = problems.bind_observer(pb, None, layout="random", coverage=0.5, noise=0.6, noise_type="absolute")
    g = torch.Generator().manual_seed(15)
    x = torch.randn(10, *pb.state_shape, generator=g, dtype=torch.float64)
    y = torch.randn(obs.n_obs, generator=g, dtype=torch.float64)
    a = make(pb, obs, variant="stochastic", loc_radius=1.0, seed=1)
    xa = a.analysis(EnsembleState(x, torch.zeros(10, 0)), y).x
    assert a._geom["cpu"].mode == "stencil"
    b = make(pb, obs, variant="stochastic", loc_radius=1.0, seed=1)
    b._geometry("cpu")
    b._geom["cpu"].mode = "dense"
    xb = b.analysis(EnsembleState(x, torch.zeros(10, 0)), y).x
    torch.testing.assert_close(xa, xb, rtol=0, atol=1e-10)


# ---- joint state-parameter estimation ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("radius", [0.0, 1.0])
def test_joint_update_pulls_parameters_to_truth(variant, radius):
    pb = DriftedDecay()
    obs = problems.bind_observer(pb, None, noise=0.3, noise_type="absolute")
    N, theta = 40, 1.5
    g = torch.Generator().manual_seed(16)
    truth = torch.zeros(1, pb.dim, dtype=torch.float64)
    m = make(pb, obs, variant=variant, loc_radius=radius, seed=2)
    params0 = pb.sample_params(N, g)
    state = m.init(pb.initial_state(params0), params0.clone(), torch.Generator().manual_seed(17))
    err0, spread0 = (params0.mean() - theta).abs(), params0.std()
    for _ in range(5):
        truth = pb.step(truth, torch.tensor([[theta]], dtype=torch.float64))
        state = m.analysis(m.forecast(state), obs.sample(truth, g)[0])
    assert (state.params.mean() - theta).abs() < min(0.15, 0.5 * err0)
    assert state.params.std() < 0.3 * spread0
    frozen = make(pb, obs, variant=variant, loc_radius=radius, joint=False)
    st = frozen.analysis(frozen.forecast(EnsembleState(pb.initial_state(params0), params0)), obs.sample(truth, g)[0])
    assert torch.equal(st.params, params0)


def test_local_analysis_updates_parameters_with_the_global_gain():
    pb = DriftedDecay()
    obs = problems.bind_observer(pb, None, noise=0.3, noise_type="absolute")
    g = torch.Generator().manual_seed(18)
    params = pb.sample_params(10, g)
    x = pb.step(torch.randn(10, pb.dim, generator=g, dtype=torch.float64), params)
    y = torch.ones(pb.dim, dtype=torch.float64)
    pg = make(pb, obs).analysis(EnsembleState(x, params), y).params
    pl = make(pb, obs, loc_radius=1.0).analysis(EnsembleState(x, params), y).params
    torch.testing.assert_close(pl, pg, rtol=0, atol=1e-12)


# ---- scale, configuration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_local_analysis_at_d_1e5(variant):
    d, N = 100_000, 10
    pb = problems.get("lorenz96", dim=d)
    obs = problems.bind_observer(pb, None, noise=1.0, noise_type="absolute")
    g = torch.Generator().manual_seed(19)
    center = 8 + 3 * torch.randn(1, d, generator=g)
    truth = center + 2 * torch.randn(1, d, generator=g)  # the truth is a draw from the forecast distribution
    x = center + 2 * torch.randn(N, d, generator=g)
    y = obs.sample(truth, g)[0]
    xa = make(pb, obs, variant=variant, loc_radius=2.0).analysis(EnsembleState(x, torch.zeros(N, 0)), y).x
    assert xa.shape == x.shape and xa.dtype == torch.float32 and torch.isfinite(xa).all()
    assert (xa.mean(0) - truth).pow(2).mean() < 0.5 * (x.mean(0) - truth).pow(2).mean()


def test_configuration_errors():
    with pytest.raises(ConfigError, match="inflation"):
        methods.get("EnKF", inflation=0.0)
    with pytest.raises(ConfigError, match="loc_radius"):
        methods.get("EnKF", loc_radius=-1.0)
    with pytest.raises(ConfigError, match="variant"):
        methods.get("EnKF", variant="deterministic")
    m = methods.get("EnKF", inflation=1.05, variant="stochastic")
    assert isinstance(m, EnKF) and m.label == "EnKF[inflation=1.05,variant=stochastic]"
    pb = problems.get("linear_gauss", dim=4)
    obs = problems.bind_observer(pb, None, noise=1.0, noise_type="absolute")
    with pytest.raises(ConfigError, match="at least 2"):
        make(pb, obs).analysis(EnsembleState(torch.zeros(1, 4), torch.zeros(1, 0)), torch.zeros(4))
