"""Latent-EnSF: the coupled VAE (shapes, training, artifact cache) and the latent assimilation cycle.

Everything runs on the tiny shallow-water configuration (16 x 16 grid, 5 trajectories) in seconds.
"""
from __future__ import annotations

import pytest
import torch

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
    m = LatentEnSF(**{**TINY, **kw})
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
