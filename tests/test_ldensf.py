"""LD-EnSF: LDNet training, the causal LSTM encoder, the artifact cache, latent assimilation.

Fast tests run on a tiny analytic problem (a Gaussian bump orbiting the centre of an 8 x 8 grid, the bump's
initial centre being the parameter); the slow test reloads the shipped default-preset networks.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass
from typing import ClassVar
from unittest import mock

import pytest
import torch

from assimbench.errors import ConfigError
from methods.base import Context
from methods.ldensf import LDEnSF, LatentState
from bench.train import train_method
import methods
from methods import artifact_cache
from methods.artifact_cache import checkpoint_dir
from methods.ldnet import (LDNet, LDNetConfig, LSTMEncoder, LSTMEncoderConfig, PODDecoder, normalize_params,
                          param_normalizer, to_points)
from methods.ldnet_train import (EncoderTrainConfig, LDNetTrainConfig, clean_observations, encoder_targets,
                                 observed_cycles, parent_key, train_encoder, train_ldnet)
from methods.train_loop import TrainLog, rel_l2
from problems.base import Problem, bind_observer

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class OrbitBump(Problem):
    """Two fields ``h = exp(-|xi - c|^2 / (2 w^2))`` and ``g = h (x - 1/2)`` on the unit square; the centre
    ``c`` rotates about (1/2, 1/2) by ``omega`` per observation interval; parameters = the initial centre."""

    name: ClassVar[str] = "orbit_bump"
    field_names: ClassVar[tuple[str, ...]] = ("h", "g")
    param_names: ClassVar[tuple[str, ...]] = ("a", "b")

    n: int = 8
    omega: float = 0.4
    width: float = 0.18
    n_cycles: int = 6
    n_traj: int = 40

    @property
    def state_shape(self):
        return (2, self.n, self.n)

    @property
    def dt_obs(self):
        return 1.0

    def coords(self):
        ax = torch.linspace(0, 1, self.n, dtype=torch.float64)
        X, Y = torch.meshgrid(ax, ax, indexing="ij")
        return torch.stack([X.reshape(-1), Y.reshape(-1)], 1)

    @property
    def param_bounds(self):
        return torch.tensor([0.2, 0.2], dtype=torch.float64), torch.tensor([0.8, 0.8], dtype=torch.float64)

    def render(self, c):
        xi = self.coords().to(c.dtype)
        h = torch.exp(-((xi[None] - c[:, None]) ** 2).sum(-1) / (2 * self.width ** 2))
        g = h * (xi[None, :, 0] - 0.5)
        return torch.stack([h, g], 1).reshape(c.shape[0], *self.state_shape)

    def initial_state(self, params):
        return self.render(params.to(torch.float64))

    def step(self, x, params):
        # the centre is carried by the (deterministic) parameters and the elapsed rotation, recovered here from
        # the field's first moments of h around the grid's centre of mass
        h = x[:, 0].reshape(x.shape[0], -1)
        xi = self.coords().to(x.dtype)
        c = (h[..., None] * xi[None]).sum(1) / h.sum(1, keepdim=True)
        # undo the truncation bias of the first moment: one fixed-point correction against the rendered field
        r = self.render(c)[:, 0].reshape(x.shape[0], -1)
        c = c + (c - (r[..., None] * xi[None]).sum(1) / r.sum(1, keepdim=True))
        co, si = math.cos(self.omega), math.sin(self.omega)
        d = c - 0.5
        c_new = 0.5 + torch.stack([co * d[:, 0] - si * d[:, 1], si * d[:, 0] + co * d[:, 1]], 1)
        return self.render(c_new)


TINY = dict(latent_dim=4, dt_lat=0.5, dyn_width=32, dyn_depth=2, rec_width=48, rec_depth=3, n_fourier=8,
            fourier_scale=0.5, epochs=100, batch_traj=6, points=0, lr=5e-3, lstm_hidden=32, lstm_epochs=150,
            lstm_lr=1e-2, eps_alpha=0.05)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    cache = tmp_path_factory.mktemp("ldcache")
    pb = OrbitBump()
    ds = pb.dataset(cache_dir=cache, progress=False)
    obs = bind_observer(pb, ds, layout="lattice", stride=3, noise=0.05)
    m = LDEnSF(**TINY)
    summary = train_method(m, pb, obs, ds, cache_dir=cache,
                              progress=False, curve_path=cache / "curve.csv")
    return dict(problem=pb, dataset=ds, observer=obs, method=m, summary=summary, cache=cache)


def test_training_lowers_the_loss(setup):
    rows = setup["method"].artifacts["ldnet"].curve
    assert rows[0]["stage"] == "ldnet" and len(rows) >= 3
    assert rows[-1]["train_loss"] < 0.2 * rows[0]["train_loss"]
    s = setup["summary"]["ldnet"]
    assert s["source"] == "trained"
    assert s["test_rrmse_norm"] < 0.5 * rows[0]["test_rrmse"]
    assert math.isfinite(s["test_rrmse_phys"])
    enc = setup["method"].artifacts["encoder"].curve
    assert enc[-1]["train_loss"] < 0.5 * enc[0]["train_loss"]
    assert (setup["cache"] / "curve.csv").read_text().startswith("network,")


def test_lstm_encoder_is_causal():
    enc = LSTMEncoder(LSTMEncoderConfig(6, 5, hidden=12, seed=3))
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 7, 6, generator=g)
    y2 = y.clone()
    y2[:, 4:] += torch.randn(3, 3, 6, generator=g)
    out, _ = enc(y)
    out2, _ = enc(y2)
    assert torch.equal(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    # one step at a time with the carried LSTM state equals the whole sequence at once
    hc, steps = None, []
    for t in range(7):
        o, hc = enc(y[:, t:t + 1], hc)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, 1), out, rtol=1e-5, atol=1e-6)


def test_ldnet_initial_state_is_one_euler_step_from_zero():
    net = LDNet(LDNetConfig(3, 2, 1, 2, 0.7, [0, 0], [1, 1], dyn_width=8, dyn_depth=2, rec_width=8, rec_depth=2))
    u = torch.rand(5, 2)
    torch.testing.assert_close(net.initial(u), 0.7 * net.velocity(torch.zeros(5, 3), u))
    traj = net.rollout(u, 4)
    torch.testing.assert_close(traj[:, 2], traj[:, 1] + 0.7 * net.velocity(traj[:, 1], u))


def test_cached_artifact_reloads_bit_identical(setup):
    pb, ds, obs = setup["problem"], setup["dataset"], setup["observer"]
    m1 = setup["method"]
    m2 = LDEnSF(**TINY)
    s2 = train_method(m2, pb, obs, ds, cache_dir=setup["cache"],
                         progress=False)
    assert s2["ldnet"]["source"] == "cache" and s2["encoder"]["source"] == "cache"
    assert s2["ldnet"]["hash"] == setup["summary"]["ldnet"]["hash"]
    params = pb.sample_params(5, torch.Generator().manual_seed(4))
    st1 = m1.init(None, params, torch.Generator().manual_seed(0))
    st2 = m2.init(None, params, torch.Generator().manual_seed(0))
    assert torch.equal(m1.estimate(st1), m2.estimate(st2))
    y = obs.sample(pb.initial_state(params[:1]).float(), torch.Generator().manual_seed(2))[0]
    a1 = m1.analysis(m1.forecast(st1), y)
    a2 = m2.analysis(m2.forecast(st2), y)
    assert torch.equal(a1.s, a2.s) and torch.equal(a1.u, a2.u)
    files = sorted(p.name for p in (setup["cache"] / "models" / s2["ldnet"]["hash"]).iterdir())
    assert files == ["SHA256SUMS", "config.json", "curve.csv", "log.txt", "weights.pt"]
    cfg = json.loads((setup["cache"] / "models" / s2["ldnet"]["hash"] / "config.json").read_text())
    assert LDNet.from_config(cfg["networks"]["ldnet"]).config() == cfg["networks"]["ldnet"]


def test_stale_shipped_artifact_is_reported(setup, tmp_path, monkeypatch, caplog):
    pb, ds, obs = setup["problem"], setup["dataset"], setup["observer"]
    fake = tmp_path / "shipped" / "0123456789abcdef"
    fake.mkdir(parents=True)
    (fake / "config.json").write_text(json.dumps(dict(hash="0123456789abcdef", kind="ldnet", method="LD-EnSF",
                                                      problem=pb.label, data={}, train={"epochs": 1})))
    monkeypatch.setattr(artifact_cache, "SHIPPED_DIR", tmp_path / "shipped")
    m = LDEnSF(**dict(TINY, epochs=2, lstm_epochs=2))
    with caplog.at_level(logging.WARNING, logger="assimbench.training"):
        train_method(m, pb, obs, ds, cache_dir=tmp_path / "c",
                        progress=False)
    assert any("no longer matches" in r.getMessage() and "training anew" in r.getMessage() for r in caplog.records)


def test_interpolation_at_observation_times(setup):
    m, pb = setup["method"], setup["problem"]
    st0 = m.init(None, pb.sample_params(4, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(0))
    st1 = m.forecast(st0)
    assert torch.equal(m.estimate_at(st0, st1, 0.0), m.estimate(st0))
    assert torch.equal(m.estimate_at(st0, st1, 1.0), m.estimate(st1))
    mid = m.latent_at(st0, st1, 0.5)
    torch.testing.assert_close(mid.s, 0.5 * (st0.s + st1.s))
    assert mid.t == 0.5
    # the runner's hook decodes the interpolated latents
    b = m.estimate_between(st0, st1, [0.25, 0.5])
    assert torch.equal(b[1], m.estimate(mid)) and torch.equal(b[0], m.estimate_at(st0, st1, 0.25))
    # decoding at arbitrary points agrees with the grid decode at the grid points
    x = m.estimate(st1)
    pts = m.decode(st1.s, pb.coords()[[0, 10, 63]])
    torch.testing.assert_close(pts, x.reshape(4, 2, -1)[:, :, [0, 10, 63]].transpose(1, 2), rtol=1e-5,
                               atol=1e-5)


def test_cycles_return_finite_estimates(setup):
    m, pb, obs, ds = setup["method"], setup["problem"], setup["observer"], setup["dataset"]
    truth = ds.test[0]
    g = torch.Generator().manual_seed(5)
    st = m.init(None, pb.sample_params(7, g), g)
    assert st.s.shape == (7, 4) and st.u.shape == (7, 2)
    for t in range(1, 4):
        st = m.forecast(st)
        y = obs.sample(truth[t:t + 1], g)[0]
        st = m.analysis(st, y)
        x = m.estimate(st)
        p = m.estimate_params(st)
        assert x.shape == (7, *pb.state_shape) and p.shape == (7, 2)
        assert torch.isfinite(x).all() and torch.isfinite(p).all()
    assert m.training_summary["sigma_lat"]["used"] > 0


def test_assimilation_reduces_parameter_error(setup):
    """Over the test trajectories, the analysis ensemble's parameters sit closer to the truth than the prior's."""
    m, pb, obs, ds = setup["method"], setup["problem"], setup["observer"], setup["dataset"]
    g = torch.Generator().manual_seed(11)
    prior_err, post_err = [], []
    for i in range(ds.test.shape[0]):
        truth, p_true = ds.test[i], ds.params_test[i].float()
        st = m.init(None, pb.sample_params(10, g), g)
        prior_err.append(float((m.estimate_params(st).mean(0) - p_true).norm()))
        for t in range(1, pb.n_cycles + 1):
            st = m.analysis(m.forecast(st), obs.sample(truth[t:t + 1], g)[0])
        post_err.append(float((m.estimate_params(st).mean(0) - p_true).norm()))
    prior, post = sum(prior_err) / len(prior_err), sum(post_err) / len(post_err)
    assert post < 0.6 * prior, (prior, post)


def test_skip_without_parameters():
    import problems
    assert "parameters" in LDEnSF().skip(problems.get("lorenz96"), None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shallow_water", "kolmogorov"])
def test_shipped_default_networks(name):
    """The shipped default-preset networks load without training and reproduce their documented test error."""
    import problems
    pb = problems.get(name)
    ds = pb.dataset(progress=False)
    obs = bind_observer(pb, ds, layout="lattice", coverage=0.0044, noise=0.1)
    m = LDEnSF()
    m.bind(Context(pb, obs, ds))
    m.fit()
    assert m.artifacts["ldnet"].source == "shipped" and m.artifacts["encoder"].source == "shipped"
    assert str(m.artifacts["ldnet"].path).startswith(str(artifact_cache.SHIPPED_DIR))
    documented = m.artifacts["ldnet"].config["summary"]["test_rrmse_phys"]
    # recompute the physical test rRMSE on the full grid for a subset of test trajectories
    x, p = ds.split("test")
    errs = []
    for i in range(0, x.shape[0], 8):
        st = m.init(None, p[i:i + 1], torch.Generator())
        for t in range(x.shape[1]):
            est = m.estimate(st)[0]
            errs.append(float((est - x[i, t]).norm() / x[i, t].norm()))
            st = m.forecast(st)
    assert abs(sum(errs) / len(errs) - documented) < 0.25 * documented + 0.01


def test_film_decoder_starts_as_the_plain_network_and_round_trips():
    """FiLM modulation is zero at initialisation (training starts from the plain LDNet), changes the output once
    its weights move, and survives the config round trip the artifact cache relies on."""
    kw = dict(latent_dim=5, n_params=2, n_fields=3, coord_dim=2, dt_lat=0.1, coord_lo=[0.0, 0.0],
              coord_hi=[1.0, 1.0], rec_width=16, rec_depth=4, n_fourier=8, fourier_scale=2.0, seed=3)
    plain, film = LDNet(LDNetConfig(**kw)), LDNet(LDNetConfig(**kw, film=True))
    s, xi = torch.randn(4, 5), torch.rand(30, 2) * 2 - 1
    assert torch.equal(plain.reconstruct(s, xi), film.reconstruct(s, xi))
    assert "film" not in plain.config() and film.config()["film"] is True
    with torch.no_grad():
        for lin in film.rec.film:
            lin.weight.normal_()
    out = film.reconstruct(s, xi)
    assert not torch.allclose(out, plain.reconstruct(s, xi))
    again = LDNet.from_config(film.config())
    again.load_state_dict(film.state_dict())
    assert torch.equal(again.reconstruct(s, xi), out)
    # the artifact identity ignores the later-added fields at their defaults (shipped hashes stay valid)
    cfg = LDNetTrainConfig()
    assert "film" not in cfg.identity() and "point_sampling" not in cfg.identity()
    assert LDNetTrainConfig(film=True).identity()["film"] is True


@pytest.mark.parametrize("act", ["relu", "tanh", "silu", "gelu"])
@pytest.mark.parametrize("depth", [4, 5])
def test_decoding_without_autograd_gives_the_training_forward_exactly(act, depth):
    """The in-place inference path of the reconstruction network (ensemble on a grid, no autograd) is the same
    computation as the training forward: the same fields up to rounding, with FiLM and latent Fourier features, an
    odd or even depth (an extra layer or not), each activation; other shapes take the general path."""
    cfg = LDNetConfig(latent_dim=4, n_params=2, n_fields=3, coord_dim=2, dt_lat=0.1, coord_lo=[0.0, 0.0],
                      coord_hi=[1.0, 1.0], rec_width=16, rec_depth=depth, n_fourier=8, fourier_scale=2.0,
                      film=True, rec_fourier=4, act=act, seed=1)
    net = LDNet(cfg)
    with torch.no_grad():
        for lin in net.rec.film:
            lin.weight.normal_(std=0.3)
    s, xi = torch.randn(5, 4), torch.rand(37, 2) * 2 - 1
    with torch.enable_grad():
        ref = net.reconstruct(s, xi).detach()
    close = dict(rtol=1e-5, atol=1e-6)  # the BLAS may block matrices of other shapes differently (last bits)
    fused, calls = net.rec._decode_grid, []
    net.rec._decode_grid = lambda *a: calls.append(a) or fused(*a)
    with torch.no_grad():
        torch.testing.assert_close(net.reconstruct(s, xi), ref, **close)
        torch.testing.assert_close(net.reconstruct(s, xi, chunk=10), ref, **close)
        torch.testing.assert_close(net.reconstruct(s[:, None].expand(5, 2, 4), xi)[:, 1], ref, **close)  # general
    assert len(calls) == 1 + 4  # the inference path took the whole grid and each of the four chunks


# ---- training recipes, checkpoints, the registered decoder ------------------------------------------------------
def test_default_recipe_keeps_the_shipped_identities():
    """The ``cpu`` recipe's training identity is one the shipped networks were hashed with (older networks stay
    shipped beside it where a preset pins them), so the default preset loads shipped networks and trains nothing."""
    from methods.latent_ensf import LatentEnSF
    shipped: dict[tuple, list] = {}
    for p in artifact_cache.SHIPPED_DIR.glob("*/config.json"):
        c = json.loads(p.read_text())
        shipped.setdefault((c["kind"], c["method"], c["problem"].split("[")[0]), []).append(c["train"])
    for name in ("shallow_water", "kolmogorov"):
        assert LDEnSF().ldnet_config(name).identity() in shipped[("ldnet", "LD-EnSF", name)]
        assert LDEnSF().encoder_config(name).identity() in shipped[("encoder", "LD-EnSF", name)]
        assert LatentEnSF().vae_config(name).identity() in shipped[("vae", "Latent-EnSF", name)]


def test_paper_recipe_resolves_per_problem_and_explicit_fields_win():
    tsu = LDEnSF(recipe="paper").ldnet_config("shallow_water")
    assert (tsu.rec_width, tsu.rec_depth, tsu.dyn_width, tsu.dyn_depth) == (300, 10, 50, 8)
    assert (tsu.latent_dim, tsu.points, tsu.point_sampling, tsu.norm, tsu.batch_traj) == (10, 2000, "fixed",
                                                                                         "minmax", 2)
    assert (tsu.epochs, tsu.lr, tsu.schedule, tsu.step_gamma, tsu.film, tsu.amp) == (2000, 1e-3, "step", 0.6,
                                                                                    False, False)
    kol = LDEnSF(recipe="paper").ldnet_config("kolmogorov")
    assert (kol.latent_dim, kol.points, kol.norm, kol.n_fourier, kol.step_gamma) == (9, 5000, "zscore", 10, 0.5)
    assert LDEnSF(recipe="paper").encoder_config("kolmogorov").epochs == 20000
    mine = LDEnSF(recipe="paper", epochs=7, rec_width=20).ldnet_config("shallow_water")
    assert (mine.epochs, mine.rec_width, mine.rec_depth) == (7, 20, 10)
    # a field given explicitly wins even at its class default (as a grid's YAML gives it, through methods.get)
    assert LDEnSF().ldnet_config("kolmogorov").extra_traj > 0                     # the cpu recipe's
    pinned = methods.get("LD-EnSF", extra_traj=0, rec_fourier=0).ldnet_config("kolmogorov")
    assert (pinned.extra_traj, pinned.rec_fourier, pinned.rec_arch) == (0, 0, "pod")
    assert methods.get("LD-EnSF", recipe="paper", film=True).ldnet_config("shallow_water").film is True
    # the recipe enters the identity (a new hash) and the label
    assert tsu.identity()["recipe"] == "paper" and "recipe" not in LDEnSF().ldnet_config("x").identity()
    assert LDEnSF(recipe="paper").label == "LD-EnSF[recipe=paper]"


@pytest.mark.parametrize("method", ["LD-EnSF", "Latent-EnSF"])
def test_unknown_recipe_is_a_config_error_naming_the_valid_ones(method):
    from assimbench.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown training recipe 'gpu'; valid: cpu, paper"):
        methods.get(method, recipe="gpu")


def test_bench_train_unknown_recipe_exits_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "bench", "train", "--preset", "smoke", "--recipe", "gpu",
                        "--cache", str(tmp_path)], capture_output=True, text=True, cwd=root, timeout=300)
    assert r.returncode == 2, r.stderr[-800:]
    assert "unknown training recipe 'gpu'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "datasets").exists()  # stopped before anything was computed


def test_training_resumes_from_its_checkpoint(setup, tmp_path):
    """An interrupted run continued from its checkpoint ends with the weights of an uninterrupted run."""
    pb, ds = setup["problem"], setup["dataset"]
    cfg = LDNetTrainConfig(latent_dim=3, dyn_width=8, dyn_depth=2, rec_width=12, rec_depth=2, epochs=4,
                              batch_traj=8, points=16, eval_every=1, eval_points=16)
    straight, s1 = train_ldnet(pb, ds, cfg, TrainLog(progress=False))
    ck = tmp_path / "ck"

    class Interrupted(TrainLog):  # the run is killed while recording its third evaluation
        def record(self, **row):
            if len(self.rows) == 2:
                raise KeyboardInterrupt
            super().record(**row)
    with pytest.raises(KeyboardInterrupt):
        train_ldnet(pb, ds, cfg, Interrupted(progress=False), checkpoint_dir=ck)
    assert (ck / "ldnet.pt").exists()
    log = TrainLog(progress=False)
    resumed, s2 = train_ldnet(pb, ds, cfg, log, checkpoint_dir=ck)
    assert any("resumed" in line for line in log.lines)
    assert [r["epoch"] for r in log.rows] == [1, 2, 3, 4]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert s1["test_rrmse_norm"] == s2["test_rrmse_norm"]


def test_warm_restart_is_a_finished_run_continued_with_more_epochs(setup, tmp_path):
    """``warm_restart=k`` in one call gives the weights of a finished ``k``-epoch run continued to ``epochs``
    (its schedule re-laid), and its learning rate jumps back up at epoch ``k``; from a checkpoint of the finished
    first run it trains only the continuation."""
    pb, ds = setup["problem"], setup["dataset"]
    base = LDNetTrainConfig(latent_dim=3, dyn_width=8, dyn_depth=2, rec_width=12, rec_depth=2, epochs=3,
                            batch_traj=8, points=16, eval_every=1, eval_points=16)
    first = tmp_path / "first"
    train_ldnet(pb, ds, base, TrainLog(progress=False), checkpoint_dir=first)
    shutil.copytree(first, tmp_path / "seeded")
    cont, s1 = train_ldnet(pb, ds, dataclasses.replace(base, epochs=6), TrainLog(progress=False),
                           checkpoint_dir=first)
    log = TrainLog(progress=False)
    restart = dataclasses.replace(base, epochs=6, warm_restart=3)
    once, s2 = train_ldnet(pb, ds, restart, log)
    for (k, a), b in zip(cont.state_dict().items(), once.state_dict().values()):
        assert torch.equal(a, b), k
    assert s1["test_rrmse_norm"] == s2["test_rrmse_norm"]
    lrs = [r["lr"] for r in log.rows]
    assert [r["epoch"] for r in log.rows] == [1, 2, 3, 4, 5, 6]
    assert lrs[3] > 10 * lrs[2] and lrs[5] < lrs[3]  # back up at the restart, down again by the end
    log2 = TrainLog(progress=False)
    seeded, _ = train_ldnet(pb, ds, restart, log2, checkpoint_dir=tmp_path / "seeded")
    assert sum("resumed" in line for line in log2.lines) == 1  # the first run was not trained again
    for (k, a), b in zip(once.state_dict().items(), seeded.state_dict().values()):
        assert torch.equal(a, b), k
    assert restart.identity() != dataclasses.replace(base, epochs=6).identity()
    assert "warm_restart" not in base.identity()  # a field at its default stays out of shipped hashes
    for bad in (6, 7):
        with pytest.raises(ConfigError, match="warm_restart"):
            train_ldnet(pb, ds, dataclasses.replace(restart, warm_restart=bad), TrainLog(progress=False))


def test_warm_restarts_at_several_epochs_chain_continued_runs(setup, tmp_path):
    """``warm_restart=(2, 4)`` with ``epochs=6`` gives the weights of a 2-epoch run continued to 4, then to 6;
    from a checkpoint taken after the second restart point only the last continuation is trained; one point
    given as a list hashes as the number (the shipped one-restart recipes keep their keys)."""
    pb, ds = setup["problem"], setup["dataset"]
    base = LDNetTrainConfig(latent_dim=3, dyn_width=8, dyn_depth=2, rec_width=12, rec_depth=2, epochs=2,
                            batch_traj=8, points=16, eval_every=1, eval_points=16)
    chain = tmp_path / "chain"
    for epochs in (2, 4):
        train_ldnet(pb, ds, dataclasses.replace(base, epochs=epochs), TrainLog(progress=False), checkpoint_dir=chain)
    shutil.copytree(chain, tmp_path / "at4")
    chained, _ = train_ldnet(pb, ds, dataclasses.replace(base, epochs=6), TrainLog(progress=False),
                             checkpoint_dir=chain)
    two = dataclasses.replace(base, epochs=6, warm_restart=(2, 4))
    log = TrainLog(progress=False)
    once, _ = train_ldnet(pb, ds, two, log)
    for (k, a), b in zip(chained.state_dict().items(), once.state_dict().values()):
        assert torch.equal(a, b), k
    lrs = [r["lr"] for r in log.rows]
    assert lrs[2] > 5 * lrs[1] and lrs[4] > 5 * lrs[3]  # up again at both restart points
    log2 = TrainLog(progress=False)
    resumed, _ = train_ldnet(pb, ds, two, log2, checkpoint_dir=tmp_path / "at4")
    here = [ln for ln in log2.lines if "resumed" in ln and "at4" in ln]  # (the log carries the chain's history)
    assert len(here) == 1 and "at epoch 4" in here[0] and [r["epoch"] for r in log2.rows][-2:] == [5, 6]
    for (k, a), b in zip(once.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    one = dataclasses.replace(base, epochs=6, warm_restart=[2])
    assert one.warm_restart == 2 and one.identity() == dataclasses.replace(base, epochs=6, warm_restart=2).identity()
    assert two.identity() != one.identity()
    for bad in ((4, 2), (2, 6), (0, 3)):
        with pytest.raises(ConfigError, match="warm_restart"):
            dataclasses.replace(base, epochs=6, warm_restart=bad)
    assert methods.get("LD-EnSF", warm_restart=[400, 800]).warm_restart == (400, 800)  # a YAML list
    with pytest.raises(ConfigError, match=r"warm_restart=\[800, 400\] must be > 0, increasing"):
        methods.get("LD-EnSF", warm_restart=[800, 400])


def test_a_recipe_restart_yields_to_epochs_set_by_the_user():
    """A recipe's ``warm_restart`` belongs to its own ``epochs``: given ``epochs`` alone, the run is one run of
    them; a restart past ``epochs`` is refused before training."""
    from methods import ldensf
    recipes = dict(ldensf.RECIPES, cpu=dict(ldensf.RECIPES["cpu"], orbit_bump=dict(epochs=8, warm_restart=4)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ldensf, "RECIPES", recipes)
        assert methods.get("LD-EnSF").ldnet_config("orbit_bump").warm_restart == 4
        assert methods.get("LD-EnSF").ldnet_config("orbit_bump").eval_every == 1  # the first run's interval (4 // 20)
        assert methods.get("LD-EnSF", epochs=20).ldnet_config("orbit_bump").warm_restart == 0
        assert methods.get("LD-EnSF", epochs=20, warm_restart=10).ldnet_config("orbit_bump").warm_restart == 10
        with pytest.raises(ConfigError, match="warm_restart=9 must lie between 0 and epochs=8"):
            methods.get("LD-EnSF", warm_restart=9).ldnet_config("orbit_bump")
        # a training budget cannot be taken along the restart: refused at grid expansion (validate), with the way out
        pb = OrbitBump()
        with pytest.raises(ConfigError, match="train_fraction=0.5 cannot be taken along the warm restart"):
            methods.get("LD-EnSF", train_fraction=0.5).ldnet_config(pb.name)
        assert methods.get("LD-EnSF", train_fraction=0.5, epochs=8).ldnet_config(pb.name).train_fraction == 0.5
    with pytest.raises(ConfigError, match="warm_restart"):
        methods.get("LD-EnSF", epochs=10, warm_restart=10)


def test_method_training_checkpoints_and_a_retraining_resumes_there(setup, tmp_path):
    """LD-EnSF's LDNet training checkpoints in the cache (``checkpoints/<artifact hash>``): with the artifact gone,
    training again resumes from the finished checkpoint and gives the same network without optimising anew."""
    pb, ds, obs = setup["problem"], setup["dataset"], setup["observer"]
    key = setup["summary"]["ldnet"]["hash"]
    m = setup["method"]
    ld_cfg = m.ldnet_config(pb.name)
    ck = checkpoint_dir("ldnet", m.name, {"dataset": pb.data_key()}, ld_cfg.identity(), setup["cache"])
    assert ck == setup["cache"] / "checkpoints" / key and (ck / "ldnet.pt").exists()
    cache = tmp_path / "c"
    shutil.copytree(setup["cache"] / "checkpoints", cache / "checkpoints")
    again = LDEnSF(**TINY)
    s2 = train_method(again, pb, obs, ds, cache_dir=cache, progress=False)
    assert s2["ldnet"]["hash"] == key and s2["ldnet"]["source"] == "trained"
    assert "resumed" in (cache / "models" / key / "log.txt").read_text()
    for (k, a), b in zip(m.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(a, b), k


def test_minmax_normalisation_and_fixed_points_train_and_round_trip(setup):
    pb, ds = setup["problem"], setup["dataset"]
    cfg = LDNetTrainConfig(latent_dim=3, dyn_width=8, dyn_depth=2, rec_width=12, rec_depth=2, epochs=2,
                              batch_traj=8, points=20, point_sampling="fixed", norm="minmax", eval_every=1)
    net, summary = train_ldnet(pb, ds, cfg, TrainLog(progress=False))
    c = net.config()
    Z = to_points(pb, ds, ds.split("train")[0])
    lo, hi = Z.amin((0, 1, 2)), Z.amax((0, 1, 2))
    assert torch.allclose(torch.tensor(c["out_scale"]), (hi - lo) / 2, atol=1e-6)
    again = LDNet.from_config(c)
    again.load_state_dict(net.state_dict())
    s, xi = torch.randn(2, 3), torch.rand(5, 2) * 2 - 1
    assert torch.equal(again.reconstruct(s, xi), net.reconstruct(s, xi))
    assert math.isfinite(summary["test_rrmse_phys"])
    from assimbench.errors import ConfigError
    with pytest.raises(ConfigError, match="norm='l2'; valid: zscore, minmax"):
        train_ldnet(pb, ds, dataclasses.replace(cfg, norm="l2"), TrainLog(progress=False))


def test_registered_decoder_moves_with_its_frames():
    """A field given relative to a frame moves when the frame origin moves: shifting every point and every
    frame origin by the same vector leaves the output unchanged (absolute-coordinate weights off)."""
    kw = dict(latent_dim=4, n_params=2, n_fields=3, coord_dim=2, dt_lat=0.1, coord_lo=[0.0, 0.0],
              coord_hi=[1.0, 1.0], rec_arch="registered", rec_width=16, rec_depth=3, n_fourier=6, n_shifts=4,
              seed=1)
    net = LDNet(LDNetConfig(**kw))
    assert net.config()["n_shifts"] == 4 and net.rec.centres(torch.zeros(1, 4)).shape == (1, 4, 2)
    with torch.no_grad():
        net.rec.raw.weight[:, 3:] = 0  # the columns of the absolute coordinates
    s, xi, v = torch.randn(3, 4), torch.rand(20, 2) * 2 - 1, torch.tensor([0.3, -0.2])
    out = net.reconstruct(s, xi)
    with torch.no_grad():
        net.rec.shift.net[-1].bias += v.repeat(4)
    assert torch.allclose(net.reconstruct(s, xi + v), out, atol=1e-5)
    assert not torch.allclose(net.reconstruct(s, xi), out, atol=1e-3)
    again = LDNet.from_config(net.config())
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.reconstruct(s, xi), net.reconstruct(s, xi))


def test_decoder_of_the_whole_augmented_latent(setup, tmp_path):
    """``rec_params``: R decodes (s, u); LD-EnSF trains it, and its estimates use the members' parameters."""
    pb, ds, obs = setup["problem"], setup["dataset"], setup["observer"]
    m = LDEnSF(**dict(TINY, epochs=4, lstm_epochs=4, rec_params=True))
    train_method(m, pb, obs, ds, cache_dir=tmp_path, progress=False)
    assert m.net.config()["rec_params"] is True
    st = m.init(None, pb.sample_params(3, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    est = m.estimate(st)
    moved = LatentState(st.s, st.u.flip(0), st.t, st.hc)  # same latent states, other parameters
    assert est.shape == (3, *pb.state_shape) and not torch.allclose(m.estimate(moved), est)
    with pytest.raises(ValueError, match="pass the normalised parameters"):
        m.net.reconstruct(st.s, m._grid)


def test_pod_decoder_reproduces_its_modes_span_and_matches_the_field_loss(setup):
    """The POD head: snapshots in the span of its modes decode exactly at the grid points (either point order),
    values between grid points are bilinear, and the coefficient loss is the field loss minus the residual."""
    g = torch.Generator().manual_seed(3)
    ny, nx, C = 5, 7, 2
    for x_major in (False, True):
        ax_x, ax_y = torch.linspace(-1, 1, nx), torch.linspace(-1, 1, ny)
        if x_major:  # points listed with x along the first index, as OrbitBump does
            X, Y = torch.meshgrid(ax_x, ax_y, indexing="ij")
            shape = [nx, ny]
        else:
            Y, X = torch.meshgrid(ax_y, ax_x, indexing="ij")
            shape = [ny, nx]
        xi = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
        P = xi.shape[0]
        # snapshots = a mean + 3 fixed patterns (one of them linear in x, to test the interpolation)
        pats = torch.stack([torch.randn(P, C, generator=g), torch.randn(P, C, generator=g),
                            torch.stack([xi[:, 0], 2 * xi[:, 0]], 1)])
        mean = torch.randn(P, C, generator=g)
        Z = mean + torch.einsum("mk,kpc->mpc", torch.randn(40, 3, generator=g), pats)
        dec = PODDecoder(4, 2, C, 16, 2, "relu", 3, shape, g)
        coeffs, missed = dec.fit_basis(Z, xi)
        assert missed < 1e-10 and int(dec.x_major) == int(x_major)
        back = dec.mean.reshape(C, -1).T + torch.einsum("mk,kcp->mpc", coeffs, dec.modes.reshape(3, C, -1))
        assert torch.allclose(back, Z, atol=1e-4)
        assert torch.allclose(dec.coefficients(Z), coeffs, atol=1e-4)
        mu, phi = dec._at(xi)  # on the grid: the stored values
        assert torch.allclose(mu + torch.einsum("mk,nck->mnc", coeffs, phi), Z, atol=1e-4)
        # a field linear in x is reproduced between the grid points by the bilinear interpolation
        lin = torch.stack([xi[:, 0], 2 * xi[:, 0]], 1)
        c_lin = dec.coefficients(lin[None] + dec.mean.reshape(C, -1).T[None])[0]
        q = torch.tensor([[0.1234, -0.377], [-0.9, 0.55]])
        mu_q, phi_q = dec._at(q)
        val = mu_q + torch.einsum("k,nck->nc", c_lin, phi_q) - mu_q
        assert torch.allclose(val, torch.stack([q[:, 0], 2 * q[:, 0]], 1), atol=1e-4)
        # coefficient loss + projection residual = field loss
        W = torch.randn(6, P, C, generator=g)
        cw = dec.coefficients(W)
        proj = dec.mean.reshape(C, -1).T + torch.einsum("mk,kcp->mpc", cw, dec.modes.reshape(3, C, -1))
        c_pred = torch.randn(6, 3, generator=g)
        pred = dec.mean.reshape(C, -1).T + torch.einsum("mk,kcp->mpc", c_pred, dec.modes.reshape(3, C, -1))
        field = (pred - W).pow(2).sum((1, 2))
        assert torch.allclose(field, (c_pred - cw).pow(2).sum(-1) + (W - proj).pow(2).sum((1, 2)), rtol=1e-4)
    with pytest.raises(ValueError, match="regular grid"):
        PODDecoder(4, 2, C, 16, 2, "relu", 3, [ny, nx], g).fit_basis(Z[:, :P], xi.flip(0) * 0.5)


def test_pod_head_ldnet_trains_on_the_full_grid_and_round_trips(setup):
    pb, ds = setup["problem"], setup["dataset"]
    cfg = LDNetTrainConfig(latent_dim=4, dyn_width=16, dyn_depth=2, rec_arch="pod", n_basis=12, rec_width=32,
                           rec_depth=2, epochs=60, batch_traj=8, lr=5e-3, eval_every=10)
    tlog = TrainLog(progress=False)
    net, summary = train_ldnet(pb, ds, cfg, tlog)
    assert net.config()["grid_shape"] == [pb.n, pb.n]
    # better than the mean snapshot it starts from, and than the curve's first evaluation
    Z = to_points(pb, ds, ds.split("test")[0])
    mean_only = float(((net.rec.mean.reshape(Z.shape[-1], -1).T - Z).pow(2).sum((-1, -2))
                       / Z.pow(2).sum((-1, -2))).sqrt().mean())
    assert summary["test_rrmse_norm"] < 0.8 * mean_only
    assert summary["test_rrmse_norm"] < tlog.rows[0]["test_rrmse"]
    again = LDNet.from_config(net.config())
    again.load_state_dict(net.state_dict())
    s, xi = torch.randn(2, 4), net.normalize_coords(pb.coords().float())
    assert torch.equal(again.reconstruct(s, xi), net.reconstruct(s, xi))
    from assimbench.errors import ConfigError
    with pytest.raises(ConfigError, match="zscore"):
        train_ldnet(pb, ds, dataclasses.replace(cfg, norm="minmax"), TrainLog(progress=False))


def test_pod_head_with_latent_fourier_features_round_trips_and_fits_a_fast_varying_map():
    g = torch.Generator().manual_seed(0)
    plain = PODDecoder(1, 1, 1, 32, 2, "silu", 4, [1, 16], g)
    feat = PODDecoder(1, 1, 1, 32, 2, "silu", 4, [1, 16], g, n_fourier=16, fourier_scale=2.0)
    # coefficients that oscillate along the latent coordinate (as a chaotic flow's do along late-time states)
    s = torch.linspace(-1, 1, 200).unsqueeze(-1)
    target = torch.stack([torch.sin(6 * math.pi * s[:, 0] * (k + 1) / 2) for k in range(4)], -1)
    errs = {}
    for name, dec in (("plain", plain), ("feat", feat)):
        opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
        for _ in range(600):
            opt.zero_grad()
            loss = (dec.predict(s) - target).pow(2).mean()
            loss.backward()
            opt.step()
        errs[name] = float(loss.detach())
    assert errs["feat"] < 0.2 * errs["plain"]
    cfg = LDNetConfig(latent_dim=3, n_params=1, n_fields=1, coord_dim=2, dt_lat=0.1, coord_lo=[0, 0],
                      coord_hi=[1, 1], rec_arch="pod", n_basis=4, grid_shape=[4, 4], rec_fourier=8,
                      rec_fourier_scale=0.5)
    net = LDNet(cfg)
    d = net.config()
    assert d["rec_fourier"] == 8 and d["rec_fourier_scale"] == 0.5
    again = LDNet.from_config(d)
    again.load_state_dict(net.state_dict())
    z = torch.randn(5, 3)
    assert torch.equal(again.rec.predict(z), net.rec.predict(z))
    assert "rec_fourier" not in LDNet(dataclasses.replace(cfg, rec_fourier=0)).config()
    # the pointwise FiLM decoder takes them too (input layer and FiLM maps)
    res = LDNet(dataclasses.replace(cfg, rec_arch="resmlp", film=True, n_fourier=4, grid_shape=None))
    assert res.config()["rec_fourier"] == 8
    again = LDNet.from_config(res.config())
    again.load_state_dict(res.state_dict())
    xi = torch.rand(7, 2) * 2 - 1
    assert torch.equal(again.reconstruct(z, xi), res.reconstruct(z, xi))
    assert res.reconstruct(z, xi).shape == (5, 7, 1)


def test_lbfgs_after_adam_fits_a_pod_head_further_and_keeps_the_best_validation_weights(setup):
    pb, ds = setup["problem"], setup["dataset"]
    cfg = LDNetTrainConfig(latent_dim=4, dyn_width=16, dyn_depth=2, rec_arch="pod", n_basis=12, rec_width=32,
                           rec_depth=2, epochs=15, batch_traj=8, lr=5e-3, eval_every=10, lbfgs_iters=80)
    tlog = TrainLog(progress=False)
    net, summary = train_ldnet(pb, ds, cfg, tlog)
    adam = [r for r in tlog.rows if r["stage"] == "ldnet"]
    lbfgs = [r for r in tlog.rows if r["stage"] == "lbfgs"]
    assert [r["epoch"] for r in lbfgs] == [10, 20, 30, 40, 50, 60, 70, 80]          # one evaluation per chunk
    # full-batch L-BFGS on the same coefficient loss fits the training data far better than the short Adam run
    assert lbfgs[-1]["train_rrmse"] < 0.7 * adam[-1]["train_rrmse"]
    # the network that comes back is the one with the best validation error of both stages
    best = min(r["valid_rrmse"] for r in tlog.rows)
    assert summary["valid_rrmse"] == pytest.approx(best)
    x, p = ds.split("valid")
    U = normalize_params(p, *param_normalizer(pb)).float()
    with torch.no_grad():
        pred = net.reconstruct(net.rollout(U, x.shape[1] - 1), net.normalize_coords(pb.coords().float()), u=U)
    assert float(rel_l2(pred, to_points(pb, ds, x)).mean()) == pytest.approx(best, rel=1e-4)


def test_a_recipe_that_changes_the_latent_size_runs_the_filter(setup, tmp_path, monkeypatch):
    """The filter sizes its latent state by the trained network, not by the class field a recipe overrode."""
    from methods import ldensf
    pb, ds, obs = setup["problem"], setup["dataset"], setup["observer"]
    monkeypatch.setitem(ldensf.RECIPES, "small", {"*": {}, pb.name: dict(latent_dim=3)})
    kw = {k: v for k, v in TINY.items() if k != "latent_dim"}  # left at the class default: the recipe sets it
    m = LDEnSF(**dict(kw, epochs=3, lstm_epochs=3, recipe="small"))
    assert m.latent_dim != 3
    train_method(m, pb, obs, ds, cache_dir=tmp_path, progress=False)
    assert m.net.latent_dim == 3
    g = torch.Generator().manual_seed(5)
    st = m.init(None, pb.sample_params(5, g), g)
    st = m.analysis(m.forecast(st), obs.sample(ds.test[0][1:2], g)[0])
    assert st.s.shape == (5, 3) and st.u.shape == (5, 2) and torch.isfinite(m.estimate(st)).all()


@pytest.mark.parametrize("batch", [0, 7])
def test_an_interrupted_encoder_training_resumes_to_the_uninterrupted_weights(setup, tmp_path, batch):
    """The encoder checkpoints after every evaluation with its generator's state (noise and, with mini-batches, the
    order of the sequences): a run killed during an evaluation and started again trains only the epochs after its
    checkpoint and reaches the weights and scores of the run never stopped, so a long encoder training survives an
    interruption."""
    pb, ds, obs, net = setup["problem"], setup["dataset"], setup["observer"], setup["method"].net.cpu()
    cfg = EncoderTrainConfig(hidden=8, epochs=6, lr=1e-2, train_noise=0.5, eval_every=2, batch=batch)
    straight, s1 = train_encoder(net, pb, obs, ds, cfg, TrainLog(progress=False))
    ck = tmp_path / "ck"

    class Interrupted(TrainLog):  # killed while recording its second evaluation (epoch 4)
        def record(self, **row):
            if len(self.rows) == 1:
                raise KeyboardInterrupt
            super().record(**row)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(net, pb, obs, ds, cfg, Interrupted(progress=False), checkpoint_dir=ck)
    assert torch.load(ck / "encoder.pt", weights_only=False)["epoch"] == 2
    log = TrainLog(progress=False)
    resumed, s2 = train_encoder(net, pb, obs, ds, cfg, log, checkpoint_dir=ck)
    assert any("resumed" in line and "at epoch 2" in line for line in log.lines)
    assert [r["epoch"] for r in log.rows] == [2, 4, 6]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert s1 == s2


def test_encoder_mini_batches_take_more_steps_and_fit_faster(setup):
    """``lstm_batch`` splits each epoch into ``ceil(n / batch)`` Adam steps over a random order of the sequences:
    at the same number of epochs (about the same computation) the encoder fits better than with one full-batch step
    per epoch; a batch of at least the training set is the full batch; the field enters the artifact identity only
    when set, so the shipped encoders keep their hashes."""
    pb, ds, obs, net = setup["problem"], setup["dataset"], setup["observer"], setup["method"].net.cpu()
    n = ds.split("train")[0].shape[0]
    scores, steps = {}, {}
    for batch in (0, 4, n):
        tlog = TrainLog(progress=False)
        cfg = EncoderTrainConfig(hidden=16, epochs=40, lr=3e-3, eval_every=40, batch=batch)
        with mock.patch.object(torch.optim.Adam, "step", autospec=True,
                               side_effect=torch.optim.Adam.step) as step:
            _, summary = train_encoder(net, pb, obs, ds, cfg, tlog)
        scores[batch], steps[batch] = summary["valid_rel"], step.call_count
    assert steps[0] == steps[n] == 40 and steps[4] == 40 * -(-n // 4), steps
    assert scores[n] == scores[0]  # the same training
    assert scores[4] < 0.8 * scores[0], scores  # measured 0.25 against 0.64
    assert "batch" not in EncoderTrainConfig().identity() and EncoderTrainConfig(batch=4).identity()["batch"] == 4
    assert LDEnSF(lstm_batch=16).encoder_config().batch == 16 and LDEnSF().encoder_config().batch == 0
    with pytest.raises(ConfigError, match="lstm_batch"):
        LDEnSF(lstm_batch=-1)


def test_encoder_trained_on_noisy_observations_reads_noisy_observations_better(setup, tmp_path, monkeypatch):
    """``lstm_train_noise`` trains the encoder on observations with the noise it reads online: on noisy test
    sequences it beats the encoder trained on clean ones; ``lstm_extra_traj`` adds simulated training sequences
    (the log counts them) and enters the artifact identity only when set, so earlier encoders keep their hashes."""
    monkeypatch.setenv("ASSIMBENCH_CACHE", str(tmp_path))  # the extra trajectories are cached there
    pb, ds, obs, net = setup["problem"], setup["dataset"], setup["observer"], setup["method"].net.cpu()
    noise = 1.0
    x, p = ds.split("test")
    sel = observed_cycles(obs)
    Y = clean_observations(pb, obs, x)[:, sel]
    K = encoder_targets(net, pb, p, x.shape[1] - 1)[:, sel]
    y_std = Y.reshape(-1, Y.shape[-1]).std(0)
    Yn = Y + noise * y_std * torch.randn(Y.shape, generator=torch.Generator().manual_seed(7))
    errors = {}
    for level in (0.0, noise):
        cfg = EncoderTrainConfig(hidden=32, epochs=400, lr=1e-2, train_noise=level)
        enc, _ = train_encoder(net, pb, obs, ds, cfg, TrainLog(progress=False))
        with torch.no_grad():
            errors[level] = float((enc(Yn)[0] - K).pow(2).sum().div(K.pow(2).sum()).sqrt())
    assert errors[noise] < 0.95 * errors[0.0], errors  # measured 0.25 against 0.29
    tlog = TrainLog(progress=False)
    train_encoder(net, pb, obs, ds, EncoderTrainConfig(hidden=8, epochs=2, extra_traj=10), tlog)
    n_train = ds.split("train")[0].shape[0]
    assert any(f"{n_train + 10} sequences" in line for line in tlog.lines), tlog.lines
    assert "extra_traj" not in EncoderTrainConfig().identity()
    assert EncoderTrainConfig(extra_traj=10).identity()["extra_traj"] == 10
    assert LDEnSF(lstm_extra_traj=10, lstm_train_noise=0.1).encoder_config().identity()["train_noise"] == 0.1
    with pytest.raises(ConfigError, match="lstm_train_noise"):
        LDEnSF(lstm_train_noise=-0.1)


def test_init_from_fine_tunes_a_finished_network(setup):
    """``init_from`` starts the LDNet from a stored artifact's weights: at a vanishing learning rate the network
    and its test error are the parent's, its training time counts on from the parent's, and a few epochs at a real
    rate start near the parent's error instead of a fresh network's; a missing, foreign or differently shaped
    parent is a clear configuration error before anything trains."""
    pb, ds, cache = setup["problem"], setup["dataset"], setup["cache"]
    parent = setup["method"].artifacts["ldnet"]
    base = setup["method"].ldnet_config(pb.name)
    frozen = dataclasses.replace(base, init_from=parent.key, epochs=2, lr=1e-30, eval_every=1)
    log = TrainLog(progress=False)
    net, s = train_ldnet(pb, ds, frozen, log, cache_dir=cache)
    for k, v in net.state_dict().items():
        assert torch.equal(v, parent.weights["ldnet"][k]), k
    assert s["test_rrmse_norm"] == pytest.approx(parent.config["summary"]["test_rrmse_norm"], rel=1e-5)
    carried = parent.config["summary"]["train_cpu_s"]
    assert carried > 0 and log.rows[0]["train_cpu_s"] >= carried
    assert any(f"starts from artifact {parent.key}" in line for line in log.lines)
    assert frozen.identity()["init_from"] == parent.key and "init_from" not in base.identity()

    tuned = dataclasses.replace(base, init_from=parent.key, epochs=3, eval_every=1, lr=base.lr / 20)
    fresh = dataclasses.replace(base, epochs=3, eval_every=1)
    lt, lf = TrainLog(progress=False), TrainLog(progress=False)
    train_ldnet(pb, ds, tuned, lt, cache_dir=cache)
    train_ldnet(pb, ds, fresh, lf)
    parent_valid = parent.config["summary"]["valid_rrmse"]
    assert lt.rows[0]["valid_rrmse"] < 2 * parent_valid < lf.rows[0]["valid_rrmse"]

    with pytest.raises(ConfigError, match="no such LDNet artifact"):
        train_ldnet(pb, ds, dataclasses.replace(base, init_from="0" * 16), TrainLog(progress=False),
                    cache_dir=cache)
    with pytest.raises(ConfigError, match="16-hex-digit"):
        dataclasses.replace(base, init_from="latest")
    with pytest.raises(ConfigError, match="differs from this configuration"):
        train_ldnet(pb, ds, dataclasses.replace(base, init_from=parent.key, rec_width=base.rec_width + 4),
                    TrainLog(progress=False), cache_dir=cache)
    enc = setup["method"].artifacts["encoder"].key
    with pytest.raises(ConfigError, match="is a encoder artifact|not an LDNet"):
        train_ldnet(pb, ds, dataclasses.replace(base, init_from=enc), TrainLog(progress=False), cache_dir=cache)
    m = LDEnSF(**TINY, init_from="f" * 16)
    with pytest.raises(ConfigError, match="no such LDNet artifact"):
        m.validate(pb, setup["observer"], 10)


def test_recipe_parent_trains_then_fine_tunes_on_any_dataset(setup):
    """A recipe whose LDNet names a ``parent`` by training values fine-tunes the LDNet of those values on the
    dataset at hand (the one the fixture trained here: found, not trained again), records the parent in its
    identity and counts its time; epochs set by the user train one run from scratch at the parent's rate."""
    from methods import ldensf
    pb, ds, obs, cache = setup["problem"], setup["dataset"], setup["observer"], setup["cache"]
    parent = setup["method"].artifacts["ldnet"]
    own = {k: v for k, v in TINY.items() if k not in ("epochs", "lr")}
    recipe = {"*": dict(epochs=4, lr=5e-4, parent=dict(epochs=TINY["epochs"], lr=TINY["lr"]))}
    with mock.patch.dict(ldensf.RECIPES, {"cpu": recipe}):
        m = LDEnSF(**own)
        cfg = m.ldnet_config(pb.name)
        assert cfg.parent == {"epochs": 100, "lr": 5e-3} and cfg.epochs == 4 and cfg.lr == 5e-4
        assert parent_key(cfg, pb) == parent.key  # the fixture's network, by its training values
        train_method(m, pb, obs, ds, cache_dir=cache, progress=False)
        child = m.artifacts["ldnet"]
        assert child.source == "trained" and child.config["train"]["parent"] == {"epochs": 100, "lr": 5e-3}
        assert child.curve[0]["train_cpu_s"] >= parent.config["summary"]["train_cpu_s"]
        assert m.artifacts["encoder"].config["data"]["ldnet"] == child.key
        # epochs set here: one run from scratch, at the parent's learning rate
        fresh = LDEnSF(**own, epochs=7).ldnet_config(pb.name)
        assert fresh.parent is None and fresh.lr == 5e-3 and fresh.epochs == 7
    with pytest.raises(ConfigError, match="valid keys"):
        dataclasses.replace(cfg, parent={"epoch": 3})
    with pytest.raises(ConfigError, match="not both"):
        dataclasses.replace(cfg, init_from=parent.key)
    with pytest.raises(ConfigError, match="train it first"):
        train_ldnet(pb, ds, dataclasses.replace(cfg, parent={"epochs": 99}), TrainLog(progress=False),
                    cache_dir=cache)
