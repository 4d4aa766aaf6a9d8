"""Latent-EnSF (Si & Chen, ICLR 2025): full-space forecast, EnSF in the latent space of a coupled VAE.

Offline (``fit``, one cached artifact ``vae``, see :mod:`methods.artifact_cache`; the trainer is
:mod:`methods.vae_train`):

1. the coupled VAE (:class:`methods.vae.CoupledVAE`: state encoder ``E_x``, observation encoder ``E_y``, shared
   decoder ``D``) is trained on every snapshot of the training split, with the clean observations
   ``observer.observe(x)`` of the same snapshots, on
   ``L = |x - D(z_x)|^2 + |x - D(z_y)|^2 + beta (KL_x + KL_y) + lam (|mu_x - mu_y|^2 + |logvar_x - logvar_y|^2)``
   (element means, see :func:`methods.vae.vae_loss`), and the weights with the smallest validation
   ``rRMSE(D(mu_x(x))) + rRMSE(D(mu_y(y)))`` are kept; the test reconstruction rRMSE of both paths is reported
   in normalised and physical units;
   (the ``cpu`` recipe's state path is linear, a whitened POD projection, and only ``E_y`` is trained; see
   :data:`RECIPES`);
2. the latent observation noise ``sigma_lat`` is calibrated on the validation split at the observer's operating
   noise: RMS over snapshots (and, with ``sigma_lat_mode='scalar'``, over latent components) of
   ``mu_y(y~) - mu_x(x)`` with ``y~ = observer.sample(x)``.

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
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from assimbench.errors import ConfigError, Diverged
from assimbench.naming import content_hash
from methods.artifact_cache import load_or_train, observer_layout, snapshot_run
from methods.base import EnsembleState, Method, Tunable
from methods.score import SamplerFields, ensf_update, gaussian_identity_grad
from methods.train_loop import check_fraction, recipe_values, resolve_recipe, train_field
from methods.vae import CoupledVAE
from methods.vae_train import VAETrainConfig, observer_lattice, rescore_vae, snapshots, train_vae
from problems.base import Dataset, Observer, Problem


#: Named training recipes of the coupled VAE (see :data:`methods.ldensf.RECIPES` for the rules). ``cpu``: the
#: POD state path (:class:`methods.vae.PODStateMap`) with 8 x 8 x 8 = 512 modes and an MLP observation encoder,
#: the other fields at the class defaults (40 epochs): on a 64 x 64 grid its state path reconstructs the test
#: snapshots 4-14 x more accurately than the convolutional networks a CPU can train (0.02 / 0.04 against 0.30 /
#: 0.27 rRMSE, tsunami / Kolmogorov); ``paper``: the convolutional VAE with the published latent map of
#: 4 x 10 x 10 (the other training details of the authors' VAE are not published; they stay at the class
#: defaults).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"*": dict(state_arch="pod", c_lat=8)},
    "paper": {"*": dict(c_lat=4, h_lat=10)},
}




# --------------------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------------------
@dataclass
class LatentEnSF(SamplerFields, Method):
    """Latent-EnSF: full-space forecast, EnSF on the coupled-VAE latents ``mu_x(x_i)`` against ``mu_y(y)``.

    Network and training fields (defaults sized for the default preset, 64 x 64 grids, a few minutes on one
    CPU thread)
    ----------------------------------------------------------------------------------------------------------
    c_lat, h_lat : latent shape ``(c_lat, h_lat, h_lat)`` (the paper: 4 x 10 x 10 at 150 x 150; default
        4 x 8 x 8 = 256 at 64 x 64).
    width : base channel count of the convolutions.
    obs_arch : ``auto`` (``conv`` on lattice layouts with the convolutional state path, else ``mlp``), ``conv``
        or ``mlp``.
    state_arch : ``conv`` (convolutional state encoder and decoder) or ``pod`` (a linear whitened POD state path
        of ``c_lat h_lat^2`` modes, :class:`methods.vae.PODStateMap`, with an ``mlp`` observation encoder).
    epochs, batch, lr, schedule : Adam on mini-batches of snapshots.
    beta : KL weight relative to the reconstruction (element means; beta-VAE style, default 1e-4).
    lam : weight of the latent matching term (lambda; default 1).
    obs_train_noise : noise added to the normalised training observations (0 = clean observations).
    train_seed : seed of every random draw of the training.
    recipe : named training recipe (:data:`RECIPES`: ``cpu``, ``paper``); fields left at their class default
        take the recipe's value, fields set explicitly win.
    train_fraction : the training budget: the VAE is taken after this fraction of its ``epochs`` (a snapshot
        along the run's training curve, its schedule unchanged; 1 = the whole run). The snapshots of one run
        continue each other, so a sweep over budgets costs one run.

    Filter fields
    -------------
    n_steps, eps_alpha, eps_beta, prior_score : the EnSF reverse SDE (:class:`methods.score.ScoreConfig`).
    scaling : latents are multiplied by this before EnSF and divided after (worth tuning within 1-500).
    sigma_lat : latent observation std in latent units; 0 = calibrate on the validation split (RMS of
        ``mu_y(y~) - mu_x(x)`` at the observer's noise). The value used and the calibrated RMS are reported in
        ``training_summary['sigma_lat']``.
    sigma_lat_mode : how ``sigma_lat = 0`` calibrates: ``scalar`` (one std for all latent components),
        ``diagonal`` (one per component: the RMS of that component of ``mu_y(y~) - mu_x(x)``), or ``auto``
        (``diagonal`` with the POD state path, ``scalar`` with the convolutional one). With the POD state path
        the observations determine the leading modes well and the trailing ones hardly (errors from 0.1 to 1 of
        their unit RMS on Kolmogorov): one std for all over-trusts the encoder on the trailing modes and
        under-trusts it on the leading ones. The convolutional latents blow up with ``diagonal`` (some
        components are nearly noise-free on the validation split). A fixed ``sigma_lat > 0`` is used as given
        (``diagonal`` then stops the run).
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

    c_lat: int = train_field(default=4)
    h_lat: int = train_field(default=8)
    width: int = train_field(default=8)
    obs_arch: Literal["auto", "conv", "mlp"] = train_field(default="auto")
    state_arch: Literal["conv", "pod"] = train_field(default="conv")
    epochs: int = train_field(default=40)
    batch: int = train_field(default=64)
    lr: float = train_field(default=3e-3)
    schedule: Literal["constant", "cosine", "onecycle", "step"] = train_field(default="cosine")
    beta: float = train_field(default=1e-4)
    lam: float = train_field(default=1.0)
    obs_train_noise: float = train_field(default=0.0)
    train_seed: int = train_field(default=0)
    recipe: str = train_field(default="cpu")
    train_fraction: float = train_field(default=1.0)

    scaling: float = 1.0
    sigma_lat: float = 0.0
    sigma_lat_mode: Literal["auto", "scalar", "diagonal"] = "auto"
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
        if self.state_arch not in ("conv", "pod"):
            raise ConfigError(f"Latent-EnSF state_arch={self.state_arch!r}; valid: conv, pod")
        if self.state_arch == "pod" and self.obs_arch == "conv":
            raise ConfigError("Latent-EnSF state_arch='pod' has no spatial latent map: it needs obs_arch 'mlp' or "
                              "'auto'")
        if self.sigma_lat_mode not in ("auto", "scalar", "diagonal"):
            raise ConfigError(f"Latent-EnSF sigma_lat_mode={self.sigma_lat_mode!r}; valid: auto, scalar, diagonal")
        if self.sigma_lat_mode == "diagonal" and self.sigma_lat > 0:
            raise ConfigError(f"Latent-EnSF sigma_lat_mode='diagonal' calibrates sigma_lat per latent component; "
                              f"it needs sigma_lat=0, got {self.sigma_lat}")
        recipe_values(RECIPES, self.recipe, None)  # an unknown recipe stops here, naming the valid ones
        check_fraction(self.train_fraction, "Latent-EnSF")
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
        v = resolve_recipe(self, RECIPES, problem_name)
        names = {f.name for f in dataclasses.fields(VAETrainConfig)}
        kw = {k: val for k, val in v.items() if k in names}
        return VAETrainConfig(**kw, eval_every=max(1, v["epochs"] // 15), seed=v["train_seed"])

    # ---- offline ---------------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Load or train the coupled VAE, then calibrate ``sigma_lat``.

        Training is seeded by ``train_seed``, so the artifact depends only on the configuration (dataset,
        observer layout, training fields); the calibration noise comes from a generator seeded by the artifact
        hash and the observer's noise.
        """
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

        data = {"dataset": pb.data_key(), "observer": observer_layout(vae_obs)}
        snaps = snapshot_run("vae", self.name, data, cfg, ctx.cache_dir)

        def trainer(tlog):
            vae, summary = train_vae(pb, vae_obs, ds, cfg, tlog, device=train_dev, snapshot_run=snaps)
            return {"vae": vae}, {"vae": vae.config()}, summary

        art = load_or_train("vae", self.name, pb.label, data, cfg.identity(), trainer,
                            ctx.cache_dir, ctx.progress, dataset=ds, rescore=rescore_vae(pb, vae_obs, ds))
        vae = CoupledVAE.from_config(art.config["networks"]["vae"])
        vae.load_state_dict(art.weights["vae"])
        vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        self.vae = vae.to(ctx.device, ctx.dtype)
        self.artifacts = {"vae": art}
        self._ds = ds
        # one calibrated std per latent component (a fixed sigma_lat is used as given)
        self._diag = self.sigma_lat == 0 and (self.sigma_lat_mode == "diagonal"
                                              or (self.sigma_lat_mode == "auto" and cfg.state_arch == "pod"))
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
        ctx = self.ctx
        obs = ctx.observer
        g = torch.Generator().manual_seed(int(content_hash(key, obs.noise, obs.noise_type), 16) % (2**62))
        x = snapshots(ctx.problem, ds, "valid")
        y = obs.sample(x.double(), g)
        zx = self.encode_states(x)
        err = self.encode_obs(y) - zx
        rms = float(err.pow(2).mean().sqrt())
        calib = dict(rms=rms, rms_clean=float((self.encode_obs(obs.observe(x)) - zx).pow(2).mean().sqrt()),
                     latent_std=float(zx.std(0).mean()))
        if self._diag:
            per = err.pow(2).mean(0).sqrt().clamp_min(1e-6)
            calib.update(used=float(per.pow(2).mean().sqrt()), diag_min=float(per.min()), diag_max=float(per.max()))
            return per.to(ctx.device, ctx.dtype), calib
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
        x = state.x
        z = self.encode_states(x)
        z_obs = self.encode_obs(y.reshape(1, -1))[0]
        k = self.scaling
        grad = gaussian_identity_grad(z_obs * k, self._sigma * k)
        post = ensf_update(z * k, grad, self._score, self.generator) / k
        if not torch.isfinite(post).all():
            raise Diverged("Latent-EnSF analysis produced non-finite latents")
        xa = self.decode(post).to(x.device, x.dtype)
        return EnsembleState(xa, state.params)
