"""methods/enff.py: the ensemble flow filter against closed forms on linear-Gaussian problems.

The reference for the guided flow is derived independently of the sampler: for a Gaussian forecast
``N(m0, s0^2)`` (the infinite-ensemble limit of the Monte Carlo velocity) every term of the Euler step is affine
in the particle, so the particle after k steps is ``a_k z_0 + b_k`` with ``z_0 ~ N(0, 1)`` and the analysis moments
are ``(b_K, a_K^2)``, computed below by propagating ``(a, b)`` through the same steps.
"""
from __future__ import annotations

import math

import pytest
import torch

import methods
import problems
from assimbench.errors import ConfigError
from methods.enff import enff_update
from methods.score import gaussian_identity_grad


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# prior N(0, 1), y = 1, sigma_obs = 0.3 (an informative observation)
M0, S0, Y, SO = 0.0, 1.0, 1.0, 0.3


def ot_moments(m0, s0, y, so, n_steps, sigma_min, lam):
    """Mean and variance of the guided OT flow for the Gaussian forecast N(m0, s0^2), Euler steps."""
    P, R = s0 * s0, so * so
    a, b = 1.0, 0.0  # z = a z0 + b
    dt = 1.0 / n_steps
    for k in range(n_steps):
        t = k * dt
        sig, dsig = 1.0 - (1.0 - sigma_min) * t, -(1.0 - sigma_min)
        c = t * P / (t * t * P + sig * sig)          # D(z) = m0 + c (z - t m0): the Gaussian denoiser E[x | z]
        Da, Db = c * a, m0 + c * (b - t * m0)
        va, vb = Da + dsig / sig * (a - t * Da), Db + dsig / sig * (b - t * Db)   # v = D + sig'/sig (z - t D)
        ha, hb = a + (1 - t) * va, b + (1 - t) * vb                                   # x1_hat = z + (1 - t) v
        ga, gb = -lam * ha / R, lam * (y - hb) / R                                   # lam grad log p(y | x1_hat)
        a, b = a + dt * (va + ga), b + dt * (vb + gb)
    return b, a * a


def kalman(m0, s0, y, so):
    v = 1 / (1 / s0**2 + 1 / so**2)
    return v * (m0 / s0**2 + y / so**2), v


def run_linear(N, n_steps, sigma_min, lam, reps, flow="ot", seed=0):
    """Mean over ``reps`` runs of the analysis ensemble's mean and variance (d = 1)."""
    g = torch.Generator().manual_seed(seed)
    grad = gaussian_identity_grad(torch.tensor([Y], dtype=torch.float64), SO)
    ms, vs = [], []
    for _ in range(reps):
        x = torch.randn(N, 1, generator=g, dtype=torch.float64)
        x = (x - x.mean()) / x.std(unbiased=False) * S0 + M0  # exact prior moments: less MC noise
        src = x + 0.5 * torch.randn(N, 1, generator=g, dtype=torch.float64) if flow == "f2p" else None
        z = enff_update(x, grad, n_steps, sigma_min, lam, g, flow=flow, source=src)
        ms.append(z.mean().item())
        vs.append(z.var().item())
    return sum(ms) / reps, sum(vs) / reps


def test_the_reference_is_the_prior_without_guidance_and_moves_to_the_observation_with_it():
    """Fixture check: no guidance transports N(0, 1) onto the forecast (up to the sigma_min smoothing and the
    Euler error); guidance pulls the mean toward y and shrinks the variance."""
    m, v = ot_moments(M0, S0, Y, SO, 400, 1e-3, 0.0)
    assert m == pytest.approx(M0, abs=1e-12) and v == pytest.approx(S0**2, rel=0.01)
    mk, vk = kalman(M0, S0, Y, SO)
    m, v = ot_moments(M0, S0, Y, SO, 50, 0.05, 0.1)
    assert M0 < m < Y and v < S0**2
    # the posterior lies between prior and observation; a stronger guidance moves past the Kalman mean
    m_strong, _ = ot_moments(M0, S0, Y, SO, 200, 0.05, 1.0)
    assert m_strong > mk


@pytest.mark.parametrize("n_steps,sigma_min,lam", [(20, 0.1, 0.1), (10, 0.05, 0.05),
                                                   pytest.param(50, 0.3, 0.02, marks=pytest.mark.slow)])
def test_guided_ot_flow_matches_its_closed_form(n_steps, sigma_min, lam):
    """A large ensemble: the Monte Carlo velocity is the Gaussian one, so the sampler's moments are the
    affine recursion's (within Monte Carlo error of N = 2000 x 3 repetitions)."""
    m_ref, v_ref = ot_moments(M0, S0, Y, SO, n_steps, sigma_min, lam)
    m, v = run_linear(2000, n_steps, sigma_min, lam, reps=3)
    assert m == pytest.approx(m_ref, abs=0.03)
    assert v == pytest.approx(v_ref, rel=0.08, abs=0.005)


def test_guidance_moves_the_mean_and_collapses_the_spread_when_strong():
    """The analysis mean moves monotonically from the forecast mean toward the observation as a weak lambda
    grows, and passes the Kalman mean between lambda = 0.1 and 0.2 here; the local guidance is not Bayesian:
    a strong lambda overshoots the observation and collapses the ensemble (variance ~ 0: under-dispersed)."""
    mk, vk = kalman(M0, S0, Y, SO)
    weak = [ot_moments(M0, S0, Y, SO, 50, 0.05, lam) for lam in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)]
    means, variances = [m for m, _ in weak], [v for _, v in weak]
    assert means == sorted(means) and variances == sorted(variances, reverse=True)
    assert means[0] == pytest.approx(M0, abs=1e-12) and means[-1] < mk < ot_moments(M0, S0, Y, SO, 50, 0.05, 0.2)[0]
    m_strong, v_strong = ot_moments(M0, S0, Y, SO, 50, 0.05, 1.0)
    assert m_strong > mk and v_strong < 1e-3 * vk


@pytest.mark.parametrize("flow", ["ot", "f2p"])
def test_no_guidance_returns_a_prior_sample(flow):
    """guidance = 0: the flow transports its source onto the forecast ensemble (a non-Gaussian one here)."""
    g = torch.Generator().manual_seed(4)
    N, d = 300, 2
    sign = torch.where(torch.rand(N, 1, generator=g) < 0.3, -1.0, 1.0).double()
    x = sign * 1.5 + 0.4 * torch.randn(N, d, generator=g, dtype=torch.float64)
    src = x + 0.3 * torch.randn(N, d, generator=g, dtype=torch.float64) if flow == "f2p" else None
    z = enff_update(x, lambda q: torch.full_like(q, float("nan")), 50, 0.01, 0.0, g, flow=flow, source=src)
    assert torch.isfinite(z).all()  # the likelihood is never called without guidance
    assert torch.allclose(z.mean(0), x.mean(0), atol=4 * (x.var(0) / N).sqrt().max().item())
    assert torch.allclose(z.var(0), x.var(0), rtol=0.12)
    assert (z[:, 0] < 0).double().mean().item() == pytest.approx((x[:, 0] < 0).double().mean().item(), abs=0.06)


def test_f2p_guidance_moves_toward_the_observation():
    m_prior, v_prior = run_linear(2000, 20, 0.01, 0.0, reps=1, flow="f2p")
    m, v = run_linear(2000, 20, 0.01, 0.05, reps=1, flow="f2p")
    assert m_prior == pytest.approx(M0, abs=0.01) and v_prior == pytest.approx(S0**2, rel=0.02)
    assert M0 + 0.2 < m < Y and v < 0.8 * v_prior


def test_determinism_dtype_and_errors():
    x = torch.randn(8, 30, generator=torch.Generator().manual_seed(0))
    grad = gaussian_identity_grad(torch.zeros(30), 0.5)
    a = enff_update(x, grad, 10, 0.1, 0.1, torch.Generator().manual_seed(7))
    b = enff_update(x, grad, 10, 0.1, 0.1, torch.Generator().manual_seed(7))
    c = enff_update(x, grad, 10, 0.1, 0.1, torch.Generator().manual_seed(8))
    assert a.dtype == x.dtype and a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="source"):
        enff_update(x, grad, 10, 0.1, 0.1, torch.Generator(), flow="f2p")
    for bad in ({"n_steps": 0}, {"sigma_min": 0.0}, {"sigma_min": 1.5}, {"guidance": -1.0}, {"flow": "vp"},
                {"inflation": 0.0}, {"likelihood": "numeric"}):
        with pytest.raises(ConfigError):
            methods.get("EnFF", **bad)
    assert methods.get("EnFF", flow="f2p").label == "EnFF[flow=f2p]"


def test_the_method_assimilates_a_linear_gaussian_problem():
    """Through the Method contract on linear_gauss (identity observations of every component): the analysis
    error is far below the free run's, and the f2p flow keeps the previous analysis as its source."""
    pb = problems.get("linear_gauss", dim=4, decay=0.95, n_cycles=10, n_traj=5)
    obs = problems.bind_observer(pb, None, coverage=1.0, noise=0.3, noise_type="absolute")
    none = torch.zeros(1, 0, dtype=torch.float64)
    truth = pb.simulate(none, 10, x0=pb.sample_initial(none, torch.Generator().manual_seed(0)))[0]
    ys = obs.sample(truth[1:], torch.Generator().manual_seed(1))
    x0 = pb.sample_initial(torch.zeros(40, 0), torch.Generator().manual_seed(2))
    errs = {}
    for name, params in (("FreeRun", {}), ("EnFF", {"n_steps": 20, "sigma_min": 0.05, "guidance": 0.05}),
                         ("EnFF", {"n_steps": 20, "sigma_min": 0.05, "guidance": 0.05, "flow": "f2p"})):
        m = methods.get(name, **params)
        m.bind(methods.Context(pb, obs, None, dtype=torch.float64))
        st = m.init(x0.clone(), torch.zeros(40, 0, dtype=torch.float64), torch.Generator().manual_seed(3))
        err = []
        for k in range(10):
            f = m.forecast(st)
            st = m.analysis(f, ys[k])
            if name == "EnFF":
                assert torch.equal(st.prior_analysis, f.prior_analysis)  # the source of the next f2p flow
            err.append((st.x.mean(0) - truth[k + 1]).pow(2).mean().sqrt().item())
        errs[m.label] = sum(err[3:]) / len(err[3:])
    free = errs.pop("FreeRun")
    assert all(e < 0.5 * free for e in errs.values()), (errs, free)
    assert all(math.isfinite(e) for e in errs.values())

