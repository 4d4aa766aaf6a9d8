"""Latent-EnSF: the coupled VAE (shapes, training, artifact cache) and the latent assimilation cycle.

Everything runs on the tiny shallow-water configuration (16 x 16 grid, 5 trajectories) in seconds.
"""
from __future__ import annotations

import pytest
import torch

import methods
import problems
from methods.base import Context, EnsembleState
from methods.latent_ensf import LatentEnSF
from methods.train_loop import TrainLog
from methods.vae_train import VAETrainConfig, observer_lattice, train_vae
from methods.vae import CoupledVAE, VAEConfig, vae_loss
from problems.base import lattice_stride

TINY = dict(c_lat=2, h_lat=4, width=4, epochs=3, batch=8, n_steps=20)


@pytest.fixture(scope="module")
def tiny(cache_dir):
    pb = problems.get("shallow_water", n=16, n_cycles=4, n_traj=5)
    ds = pb.dataset(cache_dir=cache_dir, progress=False)
    obs = problems.bind_observer(pb, ds, coverage=0.05)
    return pb, ds, obs


def _fitted(tiny, cache_dir, **kw) -> LatentEnSF:
    pb, ds, obs = tiny
    m = methods.get("Latent-EnSF", **{**TINY, **kw})
    m.bind(Context(pb, obs, ds, cache_dir=cache_dir))
    m.fit()
    return m


@pytest.mark.parametrize("arch,n,h", [("conv", 16, 4), ("mlp", 16, 4), ("conv", 20, 4), ("mlp", 64, 8)])
def test_round_trip_shapes(arch, n, h):
    C, m, lattice = 3, 27, [3, 3, 3]
    vae = CoupledVAE(VAEConfig(C, n, m, 2, h, 4, arch, lattice if arch == "conv" else None, arch == "mlp",
                               [0.0] * m, [1.0] * m))
    x = torch.randn(5, C, n, n)
    y = torch.randn(5, m)
    mu, lv = vae.encode_x(x)
    assert mu.shape == lv.shape == (5, 2, h, h)
    muy, lvy = vae.encode_y(y)
    assert muy.shape == lvy.shape == (5, 2, h, h)
    assert vae.decode(mu).shape == (5, C, n, n)
    assert vae.decode(muy.flatten(1)).shape == (5, C, n, n)          # flat latents are accepted
    assert vae.latent_dim == 2 * h * h


def test_same_seed_same_network():
    a = CoupledVAE(VAEConfig(2, 16, 8, 2, 4, 4, "mlp", None, True, [0.0] * 8, [1.0] * 8, seed=3))
    b = CoupledVAE.from_config(a.config())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_observer_lattice_matches_point_major_layout(tiny):
    pb, ds, obs = tiny
    c, ho, wo = observer_lattice(pb, obs)
    x = torch.arange(pb.dim, dtype=torch.float32).reshape(1, *pb.state_shape)
    img = obs.observe(x).reshape(1, ho, wo, c).permute(0, 3, 1, 2)
    stride = lattice_stride(pb.spatial_shape, obs.coverage)
    # the lattice image is the field sampled at (stride i, stride j), field by field
    assert torch.equal(img[0], x[0, list(obs.channels)][:, ::stride, ::stride][:, :ho, :wo])


def test_training_lowers_the_loss(tiny):
    pb, ds, obs = tiny
    cfg = VAETrainConfig(c_lat=2, h_lat=4, width=4, epochs=6, batch=8, lr=3e-3, eval_every=3, eval_max=0)
    vae, summary = train_vae(pb, obs, ds, cfg, TrainLog(progress=False))
    vae0 = CoupledVAE.from_config(vae.config())      # the same seed: the untrained initial weights
    x = ds.normalize(ds.train.reshape(-1, *pb.state_shape), 3)
    y = vae.normalize_obs(obs.observe(ds.train.reshape(-1, *pb.state_shape)))
    with torch.no_grad():
        l0, _ = vae_loss(vae0.eval(), x, y, cfg.beta, cfg.lam, torch.Generator().manual_seed(1))
        l1, parts = vae_loss(vae.eval(), x, y, cfg.beta, cfg.lam, torch.Generator().manual_seed(1))
    assert float(l1) < 0.7 * float(l0)
    for k in ("test_rrmse_norm", "test_rrmse_phys", "test_rrmse_obs_norm", "test_rrmse_obs_phys"):
        assert 0 < summary[k] < 1.5


def test_cached_artifact_reloads_bit_identical(tiny, cache_dir):
    a = _fitted(tiny, cache_dir, train_seed=11)
    b = _fitted(tiny, cache_dir, train_seed=11)
    assert a.artifacts["vae"].source == "trained" or a.artifacts["vae"].source == "cache"
    assert b.artifacts["vae"].source == "cache"
    assert a.artifacts["vae"].key == b.artifacts["vae"].key
    pb, ds, obs = tiny
    x = ds.test[0]
    y = obs.observe(x)
    assert torch.equal(a.encode_states(x), b.encode_states(x))
    assert torch.equal(a.encode_obs(y), b.encode_obs(y))
    assert torch.equal(a.decode(a.encode_states(x)), b.decode(b.encode_states(x)))
    # a filter field is not part of the hash, a training field is
    c = LatentEnSF(**{**TINY, "train_seed": 11, "scaling": 7.0})
    d = LatentEnSF(**{**TINY, "train_seed": 12})
    assert c.vae_config() == a.vae_config() and d.vae_config() != a.vae_config()


def test_cycles_on_tiny_shallow_water(tiny, cache_dir):
    pb, ds, obs = tiny
    m = _fitted(tiny, cache_dir)
    summ = m.training_summary
    assert summ["vae"]["source"] in ("trained", "cache", "shipped")
    assert summ["sigma_lat"]["used"] > 0 and summ["sigma_lat"]["rms"] >= summ["sigma_lat"]["rms_clean"] * 0.5
    g = torch.Generator().manual_seed(0)
    N = 6
    params = pb.sample_params(N, g)
    x0 = pb.sample_initial(params, g).to(torch.float32)
    state = m.init(x0, params.to(torch.float32), g)
    truth = ds.test[0]
    ys = obs.sample(truth[1:].double(), g).to(torch.float32)
    for t in range(pb.n_cycles):
        state = m.forecast(state)
        state = m.analysis(state, ys[t])
        x = m.estimate(state)
        assert isinstance(state, EnsembleState)
        assert x.shape == (N, *pb.state_shape) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
        assert torch.equal(m.estimate_params(state), params.to(torch.float32))   # carried unchanged
    # the analysis lives on the decoder's manifold: re-encoding and decoding changes it little
    re = m.decode(m.encode_states(x))
    assert float((re - x).norm() / x.norm()) < 1.0


def test_prior_only_analysis_is_the_decoded_forecast(tiny, cache_dir):
    """With a huge latent noise the likelihood vanishes; with eps_alpha = 1 and many steps the paired EnSF
    returns each member's latent, so the analysis is ``D(mu_x(x_i))``."""
    m = _fitted(tiny, cache_dir, sigma_lat=1e6, eps_alpha=1.0, eps_beta=0.0, n_steps=400)
    pb, ds, obs = tiny
    x = ds.test[0, 1:4]
    st = EnsembleState(x.clone(), torch.zeros(3, pb.n_params))
    m.generator = torch.Generator().manual_seed(0)
    out = m.analysis(st, obs.observe(x[:1])[0]).x
    ref = m.decode(m.encode_states(x))
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_conformance_and_skip():
    from bench.conformance import check
    assert check("Latent-EnSF", "shallow_water") is None
    reason = check("Latent-EnSF", "lorenz96")
    assert isinstance(reason, str) and "(C, n, n)" in reason


def test_bad_parameters_raise():
    from assimbench.errors import ConfigError
    with pytest.raises(ConfigError):
        LatentEnSF(c_lat=0)
    with pytest.raises(ConfigError):
        LatentEnSF(scaling=0.0)
    with pytest.raises(ConfigError):
        LatentEnSF(obs_arch="transformer")


def test_arctan_observations_reuse_the_identity_vae_through_tan_or_train_their_own(tiny, cache_dir):
    """invert_operator (default): the observation branch gets tan(y) clamped to the training range and the VAE is
    the identity layout's (same artifact; noise-free arctan observations encode exactly as identity ones);
    invert_operator: false trains a VAE of its own on the arctan observations."""
    pb, ds, _ = tiny
    arctan = problems.bind_observer(pb, ds, coverage=0.05, operator="arctan")
    identity = _fitted(tiny, cache_dir)
    inverted = LatentEnSF(**TINY)
    inverted.bind(Context(pb, arctan, ds, cache_dir=cache_dir))
    inverted.fit()
    own = LatentEnSF(**TINY, invert_operator=False)
    own.bind(Context(pb, arctan, ds, cache_dir=cache_dir))
    own.fit()
    h = {k: m.training_summary["vae"]["hash"] for k, m in (("id", identity), ("inv", inverted), ("own", own))}
    assert h["inv"] == h["id"] != h["own"]
    x = ds.test[0, 1:3].to(torch.float32)  # (2, C, n, n): inside the training range
    z_id = identity.encode_obs(identity.ctx.observer.observe(x))
    err_inverted = (inverted.encode_obs(arctan.observe(x)) - z_id).abs().max()
    err_raw = (identity.encode_obs(arctan.observe(x)) - z_id).abs().max()  # atan(y) fed as if it were y
    assert err_inverted < 1e-4 and err_inverted < 1e-2 * err_raw, (err_inverted, err_raw)
    assert torch.isfinite(own.encode_obs(arctan.observe(x))).all()


def test_pod_state_path_is_the_whitened_projection():
    """The POD state path: orthonormal modes, unit-RMS training coefficients, exact round trip in the span,
    projection (never worse than the mean field) outside it."""
    g = torch.Generator().manual_seed(0)
    C, n, K = 2, 8, 2 * 2 * 2
    basis = torch.linalg.qr(torch.randn(C * n * n, K, generator=g, dtype=torch.float64))[0].float()
    coef = torch.randn(60, K, generator=g) * torch.linspace(3.0, 0.5, K)
    X = (coef @ basis.T + 0.3).reshape(60, C, n, n)
    vae = CoupledVAE(VAEConfig(C, n, 5, 2, 2, 4, "mlp", None, False, [0.0] * 5, [1.0] * 5, state_arch="pod"))
    missed = vae.fit_basis(X)
    assert missed < 1e-6
    modes = vae.pod.modes
    assert torch.allclose(modes @ modes.T, torch.eye(K), atol=1e-5)
    mu, lv = vae.encode_x(X)
    assert mu.shape == lv.shape == (60, 2, 2, 2)
    assert torch.allclose(mu.flatten(1).pow(2).mean(0), torch.ones(K), atol=1e-4)   # whitened coefficients
    assert torch.allclose(vae.decode(mu), X, atol=1e-4)                              # exact in the span
    off = torch.randn(3, C, n, n, generator=g)
    rec = vae.decode(vae.encode_x(off)[0])
    resid = (off - rec).flatten(1)
    # the residual is orthogonal to the modes: the decoder returns the projection
    assert torch.allclose(resid @ modes.T, torch.zeros(3, K), atol=1e-4)
    with pytest.raises(ValueError, match="obs_arch='mlp'"):
        CoupledVAE(VAEConfig(C, n, 27, 2, 2, 4, "conv", [3, 3, 3], False, [0.0] * 27, [1.0] * 27,
                             state_arch="pod"))


def test_pod_state_path_trains_the_observation_encoder_and_cycles(tiny, cache_dir):
    pb, ds, obs = tiny
    m = _fitted(tiny, cache_dir, state_arch="pod", epochs=4)
    s = m.training_summary["vae"]
    assert s["obs_arch"] == "mlp"
    x = ds.test.reshape(-1, *pb.state_shape)[:32]
    xn = ds.normalize(x, 3)
    # the state path is the projection: applying it twice changes nothing
    once = m.vae.decode(m.vae.encode_x(xn)[0])
    assert torch.allclose(m.vae.decode(m.vae.encode_x(once)[0]), once, atol=1e-4)
    # the observation path learned: closer to the states than with its initial weights (same seed, same basis)
    init = CoupledVAE.from_config(m.vae.config())
    init.pod.load_state_dict(m.vae.pod.state_dict())
    yn = m.vae.normalize_obs(obs.observe(x).float())
    with torch.no_grad():
        err = [(v.decode(v.encode_y(yn)[0]) - xn).pow(2).mean() for v in (m.vae, init)]
    assert err[0] < 0.5 * err[1]
    g = torch.Generator().manual_seed(0)
    params = pb.sample_params(6, g)
    state = m.init(pb.sample_initial(params, g).to(torch.float32), params.to(torch.float32), g)
    ys = obs.sample(ds.test[0][1:].double(), g).to(torch.float32)
    for t in range(pb.n_cycles):
        state = m.analysis(m.forecast(state), ys[t])
        assert torch.isfinite(m.estimate(state)).all()
    # the analysis members lie in the modes' span: re-encoding and decoding them is exact
    x = m.estimate(state)
    assert torch.allclose(m.decode(m.encode_states(x)), x, atol=1e-3 * float(x.abs().max()))
    with pytest.raises(Exception, match="state_arch"):
        LatentEnSF(state_arch="linear")


def test_per_component_latent_noise_is_each_components_rms(tiny, cache_dir):
    pb, ds, obs = tiny
    scalar = _fitted(tiny, cache_dir, state_arch="pod", epochs=4, sigma_lat_mode="scalar")
    diag = _fitted(tiny, cache_dir, state_arch="pod", epochs=4)          # auto: diagonal with the POD path
    s, d = scalar._sigma, diag._sigma
    assert s.dim() == 0 and d.shape == (diag.vae.latent_dim,)
    # the same validation errors: the scalar is the RMS of the per-component values
    assert torch.allclose(d.pow(2).mean().sqrt(), s, rtol=1e-4)
    assert float(d.min()) < float(d.max())
    c = diag.training_summary["sigma_lat"]
    assert c["diag_min"] == pytest.approx(float(d.min())) and c["used"] == pytest.approx(float(s), rel=1e-4)
    assert _fitted(tiny, cache_dir, state_arch="conv")._sigma.dim() == 0      # auto: one std for conv latents
    with pytest.raises(Exception, match="sigma_lat_mode"):
        LatentEnSF(sigma_lat=0.1, sigma_lat_mode="diagonal")
    with pytest.raises(Exception, match="valid: auto, scalar, diagonal"):
        LatentEnSF(sigma_lat_mode="full")
