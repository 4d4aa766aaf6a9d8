"""Latent-EnSF (Si & Chen, ICLR 2025): full-space forecast, EnSF in the latent space of a coupled VAE.

Offline (``fit``, one cached artifact ``vae``, see :mod:`methods.training`):

1. the coupled VAE (:class:`methods.vae.CoupledVAE`: state encoder ``E_x``, observation encoder ``E_y``, shared
   decoder ``D``) is trained on every snapshot of the training split, with the clean observations
   ``observer.observe(x)`` of the same snapshots, on
   ``L = |x - D(z_x)|^2 + |x - D(z_y)|^2 + beta (KL_x + KL_y) + lam (|mu_x - mu_y|^2 + |logvar_x - logvar_y|^2)``
   (element means, see :func:`methods.vae.vae_loss`), and the weights with the smallest validation
   ``rRMSE(D(mu_x(x))) + rRMSE(D(mu_y(y)))`` are kept; the test reconstruction rRMSE of both paths is reported
   in normalised and physical units;
2. the latent observation noise ``sigma_lat`` is calibrated on the validation split at the observer's operating
   noise: RMS over snapshots and latent components of ``mu_y(y~) - mu_x(x)`` with ``y~ = observer.sample(x)``.

Online (the state is the full-space :class:`methods.base.EnsembleState`):

- ``forecast`` (T_d): the problem's solver on every member (the base class);
- ``analysis`` (T_a): ``z_i = mu_x(x_i)``, ``z_obs = mu_y(y)`` (``mu_y(H^{-1}(y))`` for a nonlinear operator
  ``H``, see ``invert_operator``), EnSF (:func:`methods.score.ensf_update`) on
  ``scaling * z`` with the identity likelihood ``z_obs = z + N(0, sigma_lat^2 I)``, then ``x_i = D(z_i)``
  (denormalised): the decoded members are the analysis ensemble and the next forecast starts from them;
- ``estimate`` (T_r): the full-space members themselves (no extra decoding);
- parameters are carried along unchanged (like ``FreeRun``): the VAE does not see them, so Latent-EnSF does
  not estimate them; ``estimate_params`` returns the prior draws.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from assimbench.errors import ConfigError
from methods.base import EnsembleState, Method, Tunable
from methods.score import SamplerFields
from methods.training import HashedConfig
from problems.base import Dataset, Observer, Problem, lattice_stride


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAETrainConfig(HashedConfig):
    """Everything that determines a trained coupled VAE (architecture + optimisation).

    ``beta``: weight of the two KL terms relative to the reconstruction terms (element means);
    ``lam``: weight of the latent matching term; ``obs_train_noise``: std of Gaussian noise added to the
    normalised training observations (0 = clean observations); ``eval_max``: validation/test snapshots used by the
    per-epoch evaluation (a fixed random subset; the final test uses the whole split).
    """

    c_lat: int = 4
    h_lat: int = 8
    width: int = 8
    obs_arch: str = "auto"
    epochs: int = 40
    batch: int = 64
    lr: float = 3e-3
    schedule: str = "cosine"
    beta: float = 1e-4
    lam: float = 1.0
    obs_train_noise: float = 0.0
    eval_every: int = 2
    eval_max: int = 512
    seed: int = 0
    recipe: str = "cpu"

    #: fields added after artifacts were shipped: left out of the identity (hash) while at their defaults
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("recipe",)



def observer_lattice(problem: Problem, observer: Observer) -> tuple[int, int, int] | None:
    """``(C_obs, h_obs, w_obs)`` of a lattice observer on a 2-D grid, else None."""
    if observer.layout != "lattice" or len(problem.spatial_shape) != 2:
        return None
    H, W = problem.spatial_shape
    stride = observer.stride or lattice_stride((H, W), observer.coverage)
    ho, wo = math.ceil(H / stride), math.ceil(W / stride)
    c = len(observer.channels)
    if ho * wo * c != observer.n_obs:
        return None
    return (c, ho, wo)


def _snapshots(problem: Problem, ds: Dataset, name: str) -> torch.Tensor:
    """All snapshots of a split, ``(n (T+1), C, H, W)`` float32 physical."""
    x, _ = ds.split(name)
    return x.reshape(-1, *problem.state_shape).to(torch.float32)


def _rrmse(pred: torch.Tensor, true: torch.Tensor, mean: torch.Tensor | None = None,
           std: torch.Tensor | None = None) -> torch.Tensor:
    """Per-snapshot relative L2 of normalised ``(N, C, H, W)`` fields (physical units with ``mean``/``std``)."""
    from methods.training import rel_l2
    return rel_l2(pred.flatten(2).transpose(1, 2), true.flatten(2).transpose(1, 2), mean, std)


def train_vae(problem: Problem, observer: Observer, dataset: Dataset, cfg: VAETrainConfig, tlog,
              device: torch.device | str = "cpu"):
    """Train the coupled VAE on all training snapshots, select by validation, report test errors.

    Returns the network (best validation weights, eval mode) and a summary with ``test_rrmse_norm`` /
    ``test_rrmse_phys`` (state path ``D(mu_x(x))``) and ``test_rrmse_obs_norm`` / ``test_rrmse_obs_phys``
    (observation path ``D(mu_y(y))``, clean observations), per-snapshot relative L2 averaged over the whole test
    split.
    """
    from methods.training import run_stage
    from methods.vae import CoupledVAE, vae_loss
    g = torch.Generator().manual_seed(cfg.seed)
    nsd = len(problem.state_shape)
    data = {}
    for name in ("train", "valid", "test"):
        x = _snapshots(problem, dataset, name)
        data[name] = (dataset.normalize(x, nsd).contiguous(), observer.observe(x).to(torch.float32))
    Xtr, Ytr_raw = data["train"]
    m = Ytr_raw.shape[1]
    c_obs = len(observer.channels)
    per_chan = Ytr_raw.reshape(-1, m // c_obs, c_obs)
    y_mean = per_chan.mean((0, 1)).repeat(m // c_obs)
    y_std = per_chan.std((0, 1)).clamp_min(1e-8).repeat(m // c_obs)
    lattice = observer_lattice(problem, observer)
    arch = cfg.obs_arch if cfg.obs_arch != "auto" else ("conv" if lattice is not None else "mlp")
    if arch == "conv" and lattice is None:
        raise ConfigError("Latent-EnSF obs_arch='conv' needs a lattice observer; use obs_arch='mlp' or 'auto'")
    C, H, W = problem.state_shape
    vae = CoupledVAE(C, H, m, cfg.c_lat, cfg.h_lat, cfg.width, arch, list(lattice) if lattice else None,
                     bool(problem.periodic), y_mean.tolist(), y_std.tolist(), cfg.seed).to(device)
    norm_y = {k: vae.normalize_obs(v[1].to(device)) for k, v in data.items()}
    Xtr, Ytr = Xtr.to(device), norm_y["train"]
    n_tr = Xtr.shape[0]
    mean, std = dataset.field_mean.to(torch.float32), dataset.field_std.to(torch.float32)
    tlog.info(f"coupled VAE: {sum(p.numel() for p in vae.parameters())} parameters; latent "
              f"{cfg.c_lat}x{cfg.h_lat}x{cfg.h_lat}; {n_tr} training snapshots of {C}x{H}x{W}; {m} observations "
              f"({arch} encoder{', lattice ' + 'x'.join(map(str, lattice)) if lattice else ''})")

    ge = torch.Generator().manual_seed(cfg.seed + 7919)
    eval_sets = {}
    for name in ("valid", "test"):
        X, Y = data[name][0], norm_y[name]
        if 0 < cfg.eval_max < X.shape[0]:
            idx = torch.randperm(X.shape[0], generator=ge)[:cfg.eval_max]
            X, Y = X[idx], Y[idx]
        eval_sets[name] = (X.to(device), Y)

    def reconstruct(X: torch.Tensor, Y: torch.Tensor, bs: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        rx, ry = [], []
        for i in range(0, X.shape[0], bs):
            rx.append(vae.decode(vae.encode_x(X[i:i + bs])[0]))
            ry.append(vae.decode(vae.encode_y(Y[i:i + bs])[0]))
        return torch.cat(rx), torch.cat(ry)

    def evaluate() -> dict[str, float]:
        vae.eval()
        out = {}
        for name, (X, Y) in eval_sets.items():
            rx, ry = reconstruct(X, Y)
            out[f"{name}_rrmse"] = float(_rrmse(rx, X).mean())
            out[f"{name}_rrmse_obs"] = float(_rrmse(ry, X).mean())
        out["valid_sel"] = out["valid_rrmse"] + out["valid_rrmse_obs"]
        vae.train()
        return out

    def batches(ep: int) -> Iterable[torch.Tensor]:
        perm = torch.randperm(n_tr, generator=g)
        for i in range(0, n_tr, cfg.batch):
            b = perm[i:i + cfg.batch].to(device)
            y = Ytr[b]
            if cfg.obs_train_noise > 0:
                y = y + cfg.obs_train_noise * torch.randn(y.shape, generator=g).to(device)
            loss, _ = vae_loss(vae, Xtr[b], y, cfg.beta, cfg.lam, g)
            yield loss

    vae.train()
    best = run_stage("vae", {"vae": vae}, list(vae.parameters()), batches, epochs=cfg.epochs,
                     steps_per_epoch=math.ceil(n_tr / cfg.batch), lr=cfg.lr, schedule=cfg.schedule,
                     evaluate=evaluate, select="valid_sel", eval_every=cfg.eval_every, tlog=tlog)
    vae.eval()
    with torch.no_grad():
        X, Y = data["test"][0].to(device), norm_y["test"]
        rx, ry = reconstruct(X, Y)
        summary = dict(test_rrmse_norm=float(_rrmse(rx, X).mean()),
                       test_rrmse_phys=float(_rrmse(rx, X, mean, std).mean()),
                       test_rrmse_obs_norm=float(_rrmse(ry, X).mean()),
                       test_rrmse_obs_phys=float(_rrmse(ry, X, mean, std).mean()),
                       best_epoch=best.get("epoch"), valid_rrmse=best.get("valid_rrmse"),
                       valid_rrmse_obs=best.get("valid_rrmse_obs"), obs_arch=arch,
                       n_weights=sum(p.numel() for p in vae.parameters()))
    tlog.info(f"VAE test rRMSE (whole split): state path {summary['test_rrmse_norm']:.4f} normalised, "
              f"{summary['test_rrmse_phys']:.4f} physical; observation path {summary['test_rrmse_obs_norm']:.4f} "
              f"normalised, {summary['test_rrmse_obs_phys']:.4f} physical")
    return vae, summary


#: Named training recipes of the coupled VAE (see :data:`methods.ldensf.RECIPES` for the rules). ``cpu``: the
#: class defaults; ``paper``: the published latent map of 4 x 10 x 10 (the other training details of the
#: authors' VAE are not published; they stay at the ``cpu`` values).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"*": {}},
    "paper": {"*": dict(c_lat=4, h_lat=10)},
}


# --------------------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def score_vae(vae, problem: Problem, observer: Observer, dataset: Dataset) -> dict[str, float]:
    """A coupled VAE's test errors on ``dataset``, as :func:`train_vae` reports them (whole test split)."""
    vae.eval()
    x = _snapshots(problem, dataset, "test")
    X = dataset.normalize(x, len(problem.state_shape))
    Y = vae.normalize_obs(observer.observe(x).to(torch.float32))
    mean, std = dataset.field_mean.to(torch.float32), dataset.field_std.to(torch.float32)
    rx, ry = [], []
    for i in range(0, X.shape[0], 256):
        rx.append(vae.decode(vae.encode_x(X[i:i + 256])[0]))
        ry.append(vae.decode(vae.encode_y(Y[i:i + 256])[0]))
    rx, ry = torch.cat(rx), torch.cat(ry)
    return dict(test_rrmse_norm=float(_rrmse(rx, X).mean()), test_rrmse_phys=float(_rrmse(rx, X, mean, std).mean()),
                test_rrmse_obs_norm=float(_rrmse(ry, X).mean()),
                test_rrmse_obs_phys=float(_rrmse(ry, X, mean, std).mean()))


def _rescore_vae(problem: Problem, observer: Observer, dataset: Dataset):
    """``rescore`` for ``load_or_train``: the artifact's VAE scored on ``dataset``."""
    def rescore(art) -> dict[str, float]:
        from methods.vae import CoupledVAE
        vae = CoupledVAE.from_config(art.config["networks"]["vae"])
        vae.load_state_dict(art.weights["vae"])
        return score_vae(vae, problem, observer, dataset)
    return rescore


def _train(**kw) -> Any:
    """A training hyperparameter: part of the artifact hash (the filter's own fields are not)."""
    return field(metadata={"train": True}, **kw)


@dataclass
class LatentEnSF(SamplerFields, Method):
    """Latent-EnSF: full-space forecast, EnSF on the coupled-VAE latents ``mu_x(x_i)`` against ``mu_y(y)``.

    Network and training fields (defaults sized for the default preset, 64 x 64 grids, a few minutes on one
    CPU thread)
    ----------------------------------------------------------------------------------------------------------
    c_lat, h_lat : latent shape ``(c_lat, h_lat, h_lat)`` (the paper: 4 x 10 x 10 at 150 x 150; default
        4 x 8 x 8 = 256 at 64 x 64).
    width : base channel count of the convolutions.
    obs_arch : ``auto`` (``conv`` on lattice layouts, else ``mlp``), ``conv`` or ``mlp``.
    epochs, batch, lr, schedule : Adam on mini-batches of snapshots.
    beta : KL weight relative to the reconstruction (element means; beta-VAE style, default 1e-4).
    lam : weight of the latent matching term (lambda; default 1).
    obs_train_noise : noise added to the normalised training observations (0 = clean observations).
    train_seed : seed of every random draw of the training.
    recipe : named training recipe (:data:`RECIPES`: ``cpu``, ``paper``); fields left at their class default
        take the recipe's value, fields set explicitly win.

    Filter fields
    -------------
    n_steps, eps_alpha, eps_beta, prior_score : the EnSF reverse SDE (:class:`methods.score.ScoreConfig`).
    scaling : latents are multiplied by this before EnSF and divided after (worth tuning within 1-500).
    sigma_lat : latent observation std in latent units; 0 = calibrate on the validation split (RMS of
        ``mu_y(y~) - mu_x(x)`` at the observer's noise). The value used and the calibrated RMS are reported in
        ``training_summary['sigma_lat']``.
    encode_batch : members per encoder / decoder call (bounds memory).
    invert_operator : with a nonlinear observation operator (``arctan``), ``True`` (default) gives the
        observation encoder ``H^{-1}(y)``, the observations mapped back through the operator's inverse and clamped
        to the training range of each observed field (:meth:`problems.base.Observer.invert`), and uses the VAE
        trained on identity observations of the same points (the same artifact): no retraining, exact in the
        noise-free limit; the noise, amplified by the inverse (``1 + x^2`` for arctan), is what the calibrated
        ``sigma_lat`` measures. ``False`` trains a VAE on the operator's own observations (its own artifact, the
        full VAE training time). No effect with the identity operator.
    """

    name: ClassVar[str] = "Latent-EnSF"
    tunable: ClassVar[dict[str, Tunable]] = {
        "sigma_lat": Tunable(1e-3, 1.0, log=True, doc="latent observation std (the observation scale)"),
        "eps_beta": Tunable(0.0, 0.1, doc="noise variance left at tau = 0"),
    }
    conformance_params: ClassVar[dict] = {"c_lat": 2, "h_lat": 4, "width": 4, "epochs": 2, "batch": 8,
                                          "n_steps": 10}

    c_lat: int = _train(default=4)
    h_lat: int = _train(default=8)
    width: int = _train(default=8)
    obs_arch: Literal["auto", "conv", "mlp"] = _train(default="auto")
    epochs: int = _train(default=40)
    batch: int = _train(default=64)
    lr: float = _train(default=3e-3)
    schedule: Literal["constant", "cosine", "onecycle", "step"] = _train(default="cosine")
    beta: float = _train(default=1e-4)
    lam: float = _train(default=1.0)
    obs_train_noise: float = _train(default=0.0)
    train_seed: int = _train(default=0)
    recipe: str = _train(default="cpu")

    scaling: float = 1.0
    sigma_lat: float = 0.0
    encode_batch: int = 64
    invert_operator: bool = True

    def __post_init__(self):
        for k in ("c_lat", "h_lat", "width", "epochs", "batch", "n_steps", "encode_batch"):
            if getattr(self, k) < 1:
                raise ConfigError(f"Latent-EnSF {k}={getattr(self, k)} must be >= 1")
        for k in ("lr", "scaling"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"Latent-EnSF {k}={getattr(self, k)} must be > 0")
        for k in ("beta", "lam", "obs_train_noise", "sigma_lat"):
            v = getattr(self, k)
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"Latent-EnSF {k}={v} must be a finite number >= 0")
        if self.obs_arch not in ("auto", "conv", "mlp"):
            raise ConfigError(f"Latent-EnSF obs_arch={self.obs_arch!r}; valid: auto, conv, mlp")
        from methods.training import recipe_values
        recipe_values(RECIPES, self.recipe, None)  # an unknown recipe stops here, naming the valid ones
        self._score = self.score_config()

    # ---- configuration ---------------------------------------------------------------------------------------
    def skip(self, problem: Problem, observer: Observer) -> str | None:
        s = problem.state_shape
        if len(s) != 3 or s[1] != s[2]:
            return (f"Latent-EnSF's convolutional VAE needs a square gridded (C, n, n) state; {problem.name} has "
                    f"state shape {tuple(s)}")
        if s[1] < self.h_lat:
            return f"Latent-EnSF latent map h_lat={self.h_lat} is larger than the {s[1]} x {s[2]} grid"
        if self.obs_arch == "conv" and observer_lattice(problem, observer) is None:
            return "Latent-EnSF obs_arch='conv' needs a lattice observer (use obs_arch='auto' or 'mlp')"
        return None

    def vae_config(self, problem_name: str | None = None) -> VAETrainConfig:
        """The VAE training configuration under :attr:`recipe` for ``problem_name``."""
        from methods.training import resolve_recipe
        v = resolve_recipe(self, RECIPES, problem_name)
        names = {f.name for f in dataclasses.fields(VAETrainConfig)}
        kw = {k: val for k, val in v.items() if k in names}
        return VAETrainConfig(**kw, eval_every=max(1, v["epochs"] // 15), seed=v["train_seed"])

    # ---- offline ---------------------------------------------------------------------------------------------
    def fit(self, generator: torch.Generator) -> None:
        """Load or train the coupled VAE, then calibrate ``sigma_lat``.

        Training is seeded by ``train_seed`` (not by ``generator``), so the artifact depends only on the
        configuration (dataset, observer layout, training fields); the calibration noise comes from a generator
        seeded by the artifact hash and the observer's noise.
        """
        from methods import training as tr
        from methods.vae import CoupledVAE
        ctx = self.ctx
        pb, obs = ctx.problem, ctx.observer
        reason = self.skip(pb, obs)
        if reason:
            raise ConfigError(reason)
        ds = ctx.dataset if ctx.dataset is not None else pb.dataset(ctx.cache_dir, progress=ctx.progress)
        cfg = self.vae_config(pb.name)
        train_dev = ctx.device
        self._invert = self.invert_operator and obs.operator != "identity"
        # the observer the VAE's observation branch is trained for: the same points, identity when inverting
        vae_obs = dataclasses.replace(obs.config, operator="identity").bind(pb, obs.field_std) if self._invert \
            else obs
        self._obs_range = obs.obs_range(ds)

        def trainer(tlog):
            vae, summary = train_vae(pb, vae_obs, ds, cfg, tlog, device=train_dev)
            return {"vae": vae}, {"vae": vae.config()}, summary

        data = {"dataset": pb.data_key(), "observer": tr.observer_layout(vae_obs)}
        art = tr.load_or_train("vae", self.name, pb.label, data, cfg.identity(), trainer,
                               ctx.cache_dir, ctx.progress, dataset=ds, rescore=_rescore_vae(pb, vae_obs, ds))
        vae = CoupledVAE.from_config(art.config["networks"]["vae"])
        vae.load_state_dict(art.weights["vae"])
        vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        self.vae = vae.to(ctx.device, ctx.dtype)
        self.artifacts = {"vae": art}
        self._ds = ds
        self._sigma, calib = self._calibrate(ds, art.key)
        self.training_summary = {
            "vae": dict(art.config.get("summary", {}), hash=art.key, source=art.source, path=str(art.path)),
            "sigma_lat": calib,
        }

    # ---- encoders on physical inputs -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_states(self, x: torch.Tensor) -> torch.Tensor:
        """Physical states ``(N, C, n, n)`` -> latent means ``mu_x`` flattened ``(N, d_lat)``."""
        ctx = self.ctx
        xn = self._ds.normalize(x.to(ctx.device, ctx.dtype), 3)
        out = [self.vae.encode_x(xn[i:i + self.encode_batch])[0].flatten(1)
               for i in range(0, xn.shape[0], self.encode_batch)]
        return torch.cat(out)

    @torch.no_grad()
    def encode_obs(self, y: torch.Tensor) -> torch.Tensor:
        """Physical observations ``(N, m)`` (after the operator) -> latent means ``mu_y`` flattened ``(N, d_lat)``
        (through the operator's inverse first, see ``invert_operator``)."""
        ctx = self.ctx
        y = y.to(ctx.device, ctx.dtype)
        if self._invert:
            y = ctx.observer.invert(y, *self._obs_range)
        yn = self.vae.normalize_obs(y)
        out = [self.vae.encode_y(yn[i:i + self.encode_batch])[0].flatten(1)
               for i in range(0, yn.shape[0], self.encode_batch)]
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Flat latents ``(N, d_lat)`` -> physical states ``(N, C, n, n)``."""
        out = [self.vae.decode(z[i:i + self.encode_batch]) for i in range(0, z.shape[0], self.encode_batch)]
        return self._ds.denormalize(torch.cat(out), 3)

    @torch.no_grad()
    def _calibrate(self, ds: Dataset, key: str) -> tuple[torch.Tensor, dict]:
        """``sigma_lat`` from the validation split at the observer's noise (or the user's fixed value)."""
        from assimbench.naming import content_hash
        ctx = self.ctx
        obs = ctx.observer
        g = torch.Generator().manual_seed(int(content_hash(key, obs.noise, obs.noise_type), 16) % (2**62))
        x = _snapshots(ctx.problem, ds, "valid")
        y = obs.sample(x.double(), g)
        err = self.encode_obs(y) - self.encode_states(x)
        rms = float(err.pow(2).mean().sqrt())
        calib = dict(rms=rms, rms_clean=float((self.encode_obs(obs.observe(x)) - self.encode_states(x))
                                              .pow(2).mean().sqrt()),
                     latent_std=float(self.encode_states(x).std(0).mean()))
        sigma = self.sigma_lat if self.sigma_lat > 0 else max(rms, 1e-6)
        calib["used"] = sigma
        return torch.tensor(sigma, device=ctx.device, dtype=ctx.dtype), calib

    # ---- the cycle -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def latent(self, state: EnsembleState) -> torch.Tensor:
        """VAE latent means ``mu_x`` of the members, ``(N, d_lat)``."""
        return self.encode_states(state.x)

    def analysis(self, state: EnsembleState, y: torch.Tensor) -> EnsembleState:
        """Encode the forecast members and ``y (m,)`` (physical), EnSF on ``scaling * z``, decode."""
        from methods.score import ensf_update, gaussian_identity_grad
        x = state.x
        z = self.encode_states(x)
        z_obs = self.encode_obs(y.reshape(1, -1))[0]
        k = self.scaling
        grad = gaussian_identity_grad(z_obs * k, self._sigma * k)
        post = ensf_update(z * k, grad, self._score, self.generator) / k
        if not torch.isfinite(post).all():
            from assimbench.errors import Diverged
            raise Diverged("Latent-EnSF analysis produced non-finite latents")
        xa = self.decode(post).to(x.device, x.dtype)
        return EnsembleState(xa, state.params)
