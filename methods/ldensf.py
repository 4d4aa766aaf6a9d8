"""LD-EnSF (Xiao, Si & Chen, ICLR 2026): the ensemble score filter in the latent space of an LDNet.

Offline (``fit``, cached artifacts, see :mod:`methods.artifact_cache`; the trainers are :mod:`methods.ldnet_train`):

1. an LDNet (:class:`methods.ldnet.LDNet`) learns the latent dynamics ``s_t = s_{t-1} + dt_lat F(s_{t-1}, u)``
   from ``s_{-1} = 0`` and the pointwise reconstruction ``x(t, xi) = R(s_t, xi)`` on the training trajectories;
2. a causal LSTM (:class:`methods.ldnet.LSTMEncoder`) learns ``E: y_{1:t} -> (s_t, u)`` from the clean sparse
   observations of the same trajectories (through the observer's operator, at its observed cycles only when
   ``obs_every > 1``), against the LDNet latents and the true (normalised) parameters;
3. the latent observation noise is calibrated on the validation split at the observer's operating noise: RMS
   of ``E(y~_{1:t}) - kappa_t`` with ``y~`` drawn by ``observer.sample`` (used when ``sigma_lat = 0``; the
   default is the paper's fixed value, see :class:`LDEnSF`).

Online, the state is the augmented latent ``kappa = (s, u)`` of each member (``d_s + d_u`` numbers):

- ``init``: ``u`` = the normalised prior parameters passed by the runner, ``s_0 = dt_lat F(0, u)`` (``x0`` is not
  used: the LDNet encodes the initial condition through ``u``);
- ``forecast`` (T_d): one latent Euler step; the parameters are carried unchanged;
- ``analysis`` (T_a): one LSTM step on the new observation (the LSTM state is kept in the ensemble state, so a
  cycle costs one step), then EnSF (:func:`methods.score.ensf_update`) on ``scaling * kappa`` with the identity
  likelihood ``phi_t = kappa_t + N(0, sigma_lat^2 I)``;
- ``estimate`` (T_r): decode every member on the full grid with ``R`` (chunked), physical units.

Continuous time and space: :meth:`LDEnSF.decode` evaluates members at arbitrary physical points and
:meth:`LDEnSF.latent_at` interpolates the latent state linearly between two stored states.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from assimbench.errors import ConfigError, Diverged
from assimbench.naming import content_hash
from methods.artifact_cache import checkpoint_dir, load_or_train, observer_layout, snapshot_run
from methods.base import Method, Tunable
from methods.ldnet import LDNet, LSTMEncoder, denormalize_params, from_points, normalize_params, param_normalizer
from methods.ldnet_train import (EncoderTrainConfig, LDNetTrainConfig, encoder_targets, normalise_restarts,
                                 observed_cycles, parent_artifact, parent_config, rescore_encoder, rescore_ldnet,
                                 restart_points, train_encoder, train_ldnet)
from methods.score import SamplerFields, ensf_update, gaussian_identity_grad
from methods.train_loop import check_fraction, recipe_values, resolve_recipe, train_field, user_set
from problems.base import Observer, Problem


@dataclass
class LatentState:
    """LD-EnSF ensemble: latent states ``s (N, d_s)``, normalised parameters ``u (N, d_u)`` (in [-1, 1] on the
    prior box), the cycle index ``t`` and the LSTM state ``hc`` after the observations assimilated so far."""

    s: torch.Tensor
    u: torch.Tensor
    t: float = 0
    hc: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def kappa(self) -> torch.Tensor:
        """The augmented latent ``(N, d_s + d_u)``."""
        return torch.cat([self.s, self.u], dim=1)


#: Named training recipes: values of the network/training fields (of :class:`LDEnSF` or, for keys it does not
#: have, of :class:`methods.ldnet_train.LDNetTrainConfig` / the encoder), per problem name (``"*"``: any problem).
#: ``cpu`` is the class defaults (the best found for a 2-core CPU, see ``docs/training.md``); ``paper`` is the
#: authors' released training scripts (pengpeng-xiao/ld-ensf, ``*/train_ldnet.py``): residual ReLU networks with
#: Glorot-normal weights, Adam 1e-3 with a step decay every 200 of 2000 epochs, one random subset of grid points
#: drawn once, min-max (tsunami) / Gaussian (Kolmogorov) normalisation, a frozen Fourier embedding (Kolmogorov),
#: an LSTM trained for 20,000 epochs. Meant for a GPU: on a CPU one epoch of it takes minutes.
#: the observation encoder of the ``cpu`` recipe on the PDE problems: trained on the default preset's 10 % noise
#: and on 360 trajectories beside the training split (four times the sequences; see docs/training.md); per
#: problem it is also wider (tsunami, 512 hidden units, 1000 epochs of 8 steps of 60 sequences) or longer
#: (Kolmogorov, 4000 epochs of 4 steps of 120), as measured on that problem's analysis
ENCODER_CPU = dict(lstm_train_noise=0.1, lstm_extra_traj=360)

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "*": {},
        # the class defaults (a FiLM residual MLP over trainable Fourier features of the coordinates) at width 128,
        # with 32 trainable Fourier features of the latent state beside it, trained on 480 trajectories (the
        # dataset's 120 + 360 simulated with another data seed) 400 epochs, then continued to 800 and to 1600 by
        # two warm restarts (the parent), then fine-tuned 800 epochs from its weights (a fresh Adam, cosine from
        # 7.5e-4); the encoder 512 units wide, 1000 epochs of 8 mini-batches (see docs/training.md)
        "shallow_water": dict(rec_width=128, rec_fourier=32, rec_fourier_scale=1.0, extra_traj=360, epochs=800,
                              lr=7.5e-4, parent=dict(epochs=1600, lr=3e-3, warm_restart=(400, 800)),
                              lstm_hidden=512, lstm_epochs=1000, lstm_batch=60, **ENCODER_CPU),
        # a POD head (1024 modes of the training snapshots, an MLP 3 x 1024 of the latent state and 64 trainable
        # Fourier features of it predicting their coefficients), trained on the full grid in coefficient space, with
        # 360 training trajectories simulated beside the dataset's 120 (see docs/training.md: the 512-mode head with
        # a 3 x 512 MLP under-fitted at 0.060, and longer training did not help it)
        "kolmogorov": dict(rec_arch="pod", n_basis=1024, rec_width=1024, rec_depth=3, latent_dim=16, epochs=1000,
                           batch_traj=8, lr=1e-3, amp=False, rec_fourier=64, rec_fourier_scale=1.0,
                           extra_traj=360, lstm_epochs=4000, lstm_batch=120, **ENCODER_CPU),
    },
    "paper": {
        "*": dict(film=False, n_fourier=0, train_fourier=False, epochs=2000, lr=1e-3, schedule="step", amp=False,
                  rec_arch="resmlp", point_sampling="fixed", act="relu", lstm_epochs=20000),
        "shallow_water": dict(latent_dim=10, dyn_width=50, dyn_depth=8, rec_width=300, rec_depth=10, batch_traj=2,
                              points=2000, norm="minmax", step_gamma=0.6),
        "kolmogorov": dict(latent_dim=9, dyn_width=200, dyn_depth=9, rec_width=500, rec_depth=14, batch_traj=6,
                           points=5000, n_fourier=10, fourier_scale=1.0, norm="zscore", step_gamma=0.5),
    },
}


@dataclass
class LDEnSF(SamplerFields, Method):
    """LD-EnSF (Xiao, Si & Chen, ICLR 2026): EnSF on the augmented LDNet latent ``(s, u)``.

    Network and training fields (defaults sized for the default preset, 64 x 64 grids on a 2-core CPU)
    ----------------------------------------------------------------------------------------------------
    latent_dim : d_s (the paper: 10 tsunami, 9 Kolmogorov).
    dt_lat : latent Euler step per observation interval.
    dyn_width, dyn_depth : the dynamics MLP ``F`` (ReLU).
    rec_arch : ``resmlp`` (LD-EnSF's residual MLP over ``[s, gamma(xi)]``), ``separable``
        (``sum_k b_k(s) t_k(xi)``, much cheaper to train on full grids) or ``registered`` (a sum over
        ``n_shifts`` moving frames whose origins the latent state predicts, :class:`methods.ldnet.RegisteredDecoder`)
        or ``pod`` (an MLP of the latent state predicting the coefficients of ``n_basis`` POD modes of the training
        snapshots, :class:`methods.ldnet.PODDecoder`; trained on the full grid in coefficient space).
    n_shifts : frames of the ``registered`` decoder.
    rec_params : the reconstruction network decodes ``(s, u)`` (the whole augmented latent the filter updates)
        instead of ``s`` alone (the paper).
    extra_traj : training trajectories simulated in addition to the dataset's training split (another data
        seed; validation and test are unchanged).
    recipe : named training recipe (:data:`RECIPES`: ``cpu``, ``paper``): fields left at their class default take
        the recipe's value for the problem at hand; fields set explicitly win.
    rec_fourier, rec_fourier_scale : trainable Fourier features of the latent input of a ``pod`` or ``resmlp``
        head, beside the latent state (0 = the state alone).
    rec_width, rec_depth, n_basis : reconstruction network sizes (``n_basis``: the basis functions of
        ``separable``, the POD modes of ``pod``).
    n_fourier, fourier_scale, train_fourier : Fourier features of the coordinates (0 = raw coordinates).
    film : FiLM conditioning of ``R`` (the latent state scales and shifts every hidden layer; not in the paper:
        it lowers the error reached in the same training time, see ``docs/training.md``).
    epochs, batch_traj, points, lr, schedule : stage-1 Adam training (``points`` per snapshot, 0 = full grid).
    warm_restart : Adam first runs this many epochs with its own schedule, which is then re-laid over ``epochs``
        and the run continues from there (a warm restart: how a finished run is extended; 0 = one run); a list of
        increasing epochs restarts at each in turn.
    init_from : the hash of a finished LDNet artifact (shipped or cached) of the same architecture and dataset whose
        weights start the LDNet's training: a fine-tune of ``epochs`` epochs with a fresh optimiser and its own
        schedule, its training time counted on from the parent's ("" = a fresh initialisation).
    rec_epochs : stage-2 epochs retraining ``R`` with ``F`` frozen (0 = off).
    lbfgs_iters : L-BFGS iterations after Adam (0 = off).
    amp : bfloat16 autocast in the LDNet training steps (2-3x faster on CPUs with AMX / AVX512-BF16).
    lstm_hidden, lstm_epochs, lstm_lr : the observation encoder.
    lstm_train_noise : Gaussian noise added to the encoder's training observations, as a fraction of their
        per-channel std (0 = clean observations, the paper; the observer's additive ``noise`` matches the noise
        the encoder reads online).
    lstm_extra_traj : trajectories simulated beside the training split for the encoder (as ``extra_traj``; their
        latent targets are the LDNet's rollouts from their parameters).
    lstm_batch : sequences per Adam step of the encoder (0 = full batch, one step per epoch); an epoch then takes
        ``ceil(n / lstm_batch)`` steps over a fresh random order of the training sequences.
    train_seed : seed of every random draw of the training (initialisation, batches, points).
    train_fraction : the training budget: the LDNet is taken after this fraction of its ``epochs`` (a snapshot
        along the run's training curve, its learning-rate schedule unchanged; 1 = the whole run); the encoder is
        trained in full on each snapshot. The snapshots of one run continue each other, so a sweep over budgets
        costs one run (see ``docs/training.md``, accuracy against offline compute).

    Filter fields
    -------------
    n_steps, eps_alpha, eps_beta, prior_score : the EnSF reverse SDE (:class:`methods.score.ScoreConfig`).
    scaling : latents are multiplied by this before EnSF and divided after (the paper: 100).
    sigma_lat : latent observation std (latent units); 0 = calibrate on the validation split (RMS of
        ``E(y~) - kappa`` at the observer's noise). Default 1e-3, the paper's 0.1 in scaled units: with the
        paired prior score the forecast enters the analysis as a Gaussian of variance ~``1/(K scaling^2)``
        around each member (``1e-6`` here), so a calibrated ``sigma_lat`` (~0.05) leaves the ensemble almost
        unchanged (measured on the test problem: parameter error 0.258 -> 0.257, vs 0.025 with 1e-3). The
        calibrated value is always reported in ``training_summary['sigma_lat']``.
    latent_noise : ``isotropic`` (one sigma, the paper) or ``diagonal`` (one per latent component).
    decode_chunk : points per reconstruction call in ``estimate`` (bounds memory).
    """

    name: ClassVar[str] = "LD-EnSF"
    tunable: ClassVar[dict[str, Tunable]] = {
        "sigma_lat": Tunable(1e-4, 0.1, log=True, doc="latent observation std (the observation scale)"),
        "eps_beta": Tunable(0.0, 0.1, doc="noise variance left at tau = 0"),
    }
    #: a tiny network and a few epochs: seconds of training for the conformance suite
    conformance_params: ClassVar[dict] = {"latent_dim": 4, "dyn_width": 16, "dyn_depth": 2, "rec_width": 16,
                                          "rec_depth": 2, "epochs": 3, "batch_traj": 2, "points": 64,
                                          "lstm_hidden": 8, "lstm_epochs": 3}

    latent_dim: int = train_field(default=10)
    dt_lat: float = train_field(default=0.1)
    dyn_width: int = train_field(default=64)
    dyn_depth: int = train_field(default=4)
    rec_arch: Literal["resmlp", "separable", "registered", "pod"] = train_field(default="resmlp")
    rec_width: int = train_field(default=64)
    rec_depth: int = train_field(default=4)
    n_basis: int = train_field(default=64)
    n_fourier: int = train_field(default=32)
    fourier_scale: float = train_field(default=2.0)
    train_fourier: bool = train_field(default=True)
    film: bool = train_field(default=True)
    epochs: int = train_field(default=400)
    batch_traj: int = train_field(default=4)
    points: int = train_field(default=64)
    lr: float = train_field(default=3e-3)
    schedule: Literal["constant", "cosine", "onecycle", "step"] = train_field(default="cosine")
    rec_epochs: int = train_field(default=0)
    lbfgs_iters: int = train_field(default=0)
    amp: bool = train_field(default=True)
    lstm_hidden: int = train_field(default=128)
    lstm_epochs: int = train_field(default=1000)
    lstm_lr: float = train_field(default=3e-3)
    lstm_train_noise: float = train_field(default=0.0)
    lstm_extra_traj: int = train_field(default=0)
    lstm_batch: int = train_field(default=0)
    train_seed: int = train_field(default=0)
    n_shifts: int = train_field(default=0)
    rec_params: bool = train_field(default=False)
    extra_traj: int = train_field(default=0)
    recipe: str = train_field(default="cpu")
    train_fraction: float = train_field(default=1.0)
    rec_fourier: int = train_field(default=0)
    rec_fourier_scale: float = train_field(default=1.0)
    warm_restart: int | tuple[int, ...] = train_field(default=0)
    init_from: str = train_field(default="")

    scaling: float = 100.0
    sigma_lat: float = 1e-3
    latent_noise: Literal["isotropic", "diagonal"] = "isotropic"
    decode_chunk: int = 4096

    def __post_init__(self):
        for k in ("latent_dim", "dyn_width", "dyn_depth", "rec_width", "rec_depth", "n_basis", "batch_traj",
                  "lstm_hidden", "n_steps"):
            if getattr(self, k) < 1:
                raise ConfigError(f"LD-EnSF {k}={getattr(self, k)} must be >= 1")
        for k in ("epochs", "points", "rec_epochs", "lbfgs_iters", "lstm_epochs", "n_fourier", "decode_chunk"):
            if getattr(self, k) < 0:
                raise ConfigError(f"LD-EnSF {k}={getattr(self, k)} must be >= 0")
        if self.epochs < 1 or self.lstm_epochs < 1:
            raise ConfigError("LD-EnSF needs epochs >= 1 and lstm_epochs >= 1")
        if not 0 <= self.lstm_train_noise < 10:
            raise ConfigError(f"LD-EnSF lstm_train_noise={self.lstm_train_noise} must lie in [0, 10)")
        for k in ("dt_lat", "lr", "lstm_lr", "scaling"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"LD-EnSF {k}={getattr(self, k)} must be > 0")
        if self.sigma_lat < 0:
            raise ConfigError(f"LD-EnSF sigma_lat={self.sigma_lat} must be >= 0 (0 = calibrate on validation)")
        if self.n_shifts < 0 or self.extra_traj < 0 or self.lstm_extra_traj < 0 or self.lstm_batch < 0:
            raise ConfigError("LD-EnSF n_shifts, extra_traj, lstm_extra_traj and lstm_batch must be >= 0")
        # against epochs only when they are set here (a recipe's epochs are checked with its values, ldnet_config)
        epochs = self.epochs if self.epochs != type(self).epochs else None
        self.warm_restart = normalise_restarts(self.warm_restart, epochs, "LD-EnSF ")
        if self.rec_arch == "registered" and self.n_shifts < 1:
            raise ConfigError("LD-EnSF rec_arch='registered' needs n_shifts >= 1 (moving frames)")
        recipe_values(RECIPES, self.recipe, None)  # an unknown recipe stops here, naming the valid ones
        check_fraction(self.train_fraction, "LD-EnSF")
        if self.train_fraction < 1 and (self.rec_epochs > 0 or self.lbfgs_iters > 0):
            raise ConfigError("LD-EnSF train_fraction < 1 takes a snapshot of the Adam stage; it cannot be combined "
                              "with rec_epochs or lbfgs_iters (stages after it)")
        self._score = self.score_config()

    # ---- configuration ---------------------------------------------------------------------------------------
    def validate(self, problem: Problem, observer: Observer, n_ens: int) -> None:
        super().validate(problem, observer, n_ens)
        cfg = self.ldnet_config(problem.name)  # the recipe's values for this problem, checked before anything runs
        if cfg.init_from:  # the network a fine-tune starts from exists and fits this problem's data
            parent_artifact(cfg.init_from, problem, getattr(getattr(self, "ctx", None), "cache_dir", None))
        if cfg.parent:
            parent_config(cfg)  # its values make a valid configuration

    def skip(self, problem: Problem, observer: Observer) -> str | None:
        if problem.n_params == 0:
            return (f"LD-EnSF encodes the initial condition through the parameters, and {problem.name} has none "
                    "(its initial states vary freely)")
        return None

    def training_values(self, problem_name: str | None = None) -> dict[str, Any]:
        """Every training value under :attr:`recipe` for ``problem_name`` (see :func:`resolve_recipe`)."""
        return resolve_recipe(self, RECIPES, problem_name)

    def ldnet_config(self, problem_name: str | None = None) -> LDNetTrainConfig:
        """The LDNet training configuration for ``problem_name`` (recipes may differ per problem)."""
        v = self.training_values(problem_name)
        if user_set(self, "epochs") and not user_set(self, "warm_restart"):
            v["warm_restart"] = 0  # a recipe's restart belongs to the recipe's schedule, not to epochs set here
        if v.get("parent") and any(user_set(self, k) for k in ("epochs", "warm_restart", "init_from")):
            # so does its fine-tune stage: epochs set here train one run from scratch at the parent's rate
            if not user_set(self, "lr"):
                v["lr"] = v["parent"].get("lr", type(self).lr)
            v["parent"] = None
        names = {f.name for f in dataclasses.fields(LDNetTrainConfig)}
        kw = {k: val for k, val in v.items() if k in names}
        kw["seed"] = v["train_seed"]
        kw["eval_every"] = max(1, (restart_points(v["warm_restart"]) or (v["epochs"],))[0] // 20)  # the first run's
        try:
            return LDNetTrainConfig(**kw)
        except ConfigError as e:  # say where the values came from
            raise ConfigError(f"LD-EnSF ({self.recipe!r} recipe, {problem_name}): {e}") from None

    def encoder_config(self, problem_name: str | None = None) -> EncoderTrainConfig:
        v = self.training_values(problem_name)
        return EncoderTrainConfig(hidden=v["lstm_hidden"], epochs=v["lstm_epochs"], lr=v["lstm_lr"],
                                  train_noise=v["lstm_train_noise"], extra_traj=v["lstm_extra_traj"],
                                  batch=v["lstm_batch"],
                                  seed=v["train_seed"])

    # ---- offline ---------------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Load or train the LDNet and the encoder, then calibrate ``sigma_lat``.

        Training is seeded by ``train_seed``, so the artifact depends only on the configuration; the calibration
        noise is drawn from a generator seeded by the artifact hashes.
        """
        ctx = self.ctx
        pb, obs = ctx.problem, ctx.observer
        reason = self.skip(pb, obs)
        if reason:
            raise ConfigError(reason)
        ds = ctx.dataset if ctx.dataset is not None else pb.dataset(ctx.cache_dir, progress=ctx.progress)
        train_dev = ctx.device
        ld_cfg = self.ldnet_config(pb.name)

        ld_data = {"dataset": pb.data_key()}

        def ldnet_artifact(cfg: LDNetTrainConfig):
            """The LDNet of ``cfg``: shipped, cached, or trained (after the network it continues, if any)."""
            snaps = snapshot_run("ldnet", self.name, ld_data, cfg, ctx.cache_dir)
            # a whole run outside the snapshot runs checkpoints in the cache (an interrupted training resumes there)
            ckpt = checkpoint_dir("ldnet", self.name, ld_data, cfg.identity(), ctx.cache_dir) if snaps is None \
                else None

            def train_ld(tlog):
                if cfg.parent:  # only a network that is trained here needs its parent (loaded or trained first)
                    ldnet_artifact(parent_config(cfg))
                net, summary = train_ldnet(pb, ds, cfg, tlog, device=train_dev, snapshot_run=snaps,
                                           checkpoint_dir=ckpt, cache_dir=ctx.cache_dir)
                return {"ldnet": net}, {"ldnet": net.config()}, summary

            return load_or_train("ldnet", self.name, pb.label, ld_data, cfg.identity(), train_ld, ctx.cache_dir,
                                 ctx.progress, dataset=ds, rescore=rescore_ldnet(pb, ds))

        art_ld = ldnet_artifact(ld_cfg)
        net = LDNet.from_config(art_ld.config["networks"]["ldnet"])
        net.load_state_dict(art_ld.weights["ldnet"])
        net.eval()
        enc_cfg = self.encoder_config(pb.name)

        data = {"dataset": pb.data_key(), "observer": observer_layout(obs, times=True), "ldnet": art_ld.key}

        def train_enc(tlog):  # checkpoints in the cache too (an interrupted training resumes there)
            enc, summary = train_encoder(net.to(train_dev), pb, obs, ds, enc_cfg, tlog, device=train_dev,
                                         checkpoint_dir=checkpoint_dir("encoder", self.name, data,
                                                                       enc_cfg.identity(), ctx.cache_dir))
            return {"encoder": enc}, {"encoder": enc.config()}, summary

        art_enc = load_or_train("encoder", self.name, pb.label, data, enc_cfg.identity(), train_enc,
                                ctx.cache_dir, ctx.progress, dataset=ds, rescore=rescore_encoder(net, pb, obs, ds))
        enc = LSTMEncoder.from_config(art_enc.config["networks"]["encoder"])
        enc.load_state_dict(art_enc.weights["encoder"])
        enc.eval()
        for p in list(net.parameters()) + list(enc.parameters()):
            p.requires_grad_(False)
        self.net = net.to(ctx.device, ctx.dtype)
        self.encoder = enc.to(ctx.device, ctx.dtype)
        self.artifacts = {"ldnet": art_ld, "encoder": art_enc}
        self._p_lo, self._p_hi = param_normalizer(pb)
        self._grid = self.net.normalize_coords(pb.coords().to(ctx.device, ctx.dtype))
        self._field_mean = ds.field_mean.to(ctx.device, ctx.dtype)
        self._field_std = ds.field_std.to(ctx.device, ctx.dtype)
        self._sigma, calib = self._calibrate(ds, art_ld.key + art_enc.key)
        self.training_summary = {
            "ldnet": dict(art_ld.config.get("summary", {}), hash=art_ld.key, source=art_ld.source,
                          path=str(art_ld.path)),
            "encoder": dict(art_enc.config.get("summary", {}), hash=art_enc.key, source=art_enc.source,
                            path=str(art_enc.path)),
            "sigma_lat": calib,
        }

    @torch.no_grad()
    def _calibrate(self, ds, key: str) -> tuple[torch.Tensor, dict]:
        """``sigma_lat`` from the validation split at the observer's noise (or the user's fixed value)."""
        ctx = self.ctx
        pb, obs = ctx.problem, ctx.observer
        xv, pv = ds.split("valid")
        n, T1 = xv.shape[:2]
        g = torch.Generator().manual_seed(int(content_hash(key, obs.noise, obs.noise_type), 16) % (2**62))
        x = xv[:, 1:].reshape(n * (T1 - 1), *pb.state_shape).to(ctx.device, ctx.dtype)
        sel = observed_cycles(obs)  # the sequence the encoder reads online
        y = obs.sample(x, g).reshape(n, T1 - 1, -1)[:, sel]
        phi, _ = self.encoder(y)
        kappa = encoder_targets(self.net, pb, pv, T1 - 1)[:, sel].to(ctx.device, ctx.dtype)
        err = (phi - kappa).reshape(-1, kappa.shape[-1])
        rms_iso = float(err.pow(2).mean().sqrt())
        rms_diag = err.pow(2).mean(0).sqrt()
        d_s = self.net.latent_dim
        calib = dict(rms=rms_iso, rms_s=float(err[:, :d_s].pow(2).mean().sqrt()),
                     rms_u=float(err[:, d_s:].pow(2).mean().sqrt()) if err.shape[1] > d_s else 0.0)
        if self.sigma_lat > 0:
            sigma = torch.tensor(self.sigma_lat, device=ctx.device, dtype=ctx.dtype)
        elif self.latent_noise == "diagonal":
            sigma = rms_diag.clamp_min(1e-6)
        else:
            sigma = torch.tensor(max(rms_iso, 1e-6), device=ctx.device, dtype=ctx.dtype)
        calib["used"] = sigma.tolist()
        return sigma, calib

    # ---- the cycle -------------------------------------------------------------------------------------------
    def init(self, x0: torch.Tensor, params: torch.Tensor, generator: torch.Generator) -> LatentState:
        """``u`` from the prior draws ``params (N, P)`` (physical), ``s_0 = dt_lat F(0, u)``; ``x0`` is unused."""
        self.generator = generator
        ctx = self.ctx
        u = normalize_params(params.to(ctx.device, torch.float64), self._p_lo, self._p_hi).to(ctx.dtype)
        with torch.no_grad():
            s = self.net.initial(u)
        return LatentState(s, u, 0, None)

    @torch.no_grad()
    def forecast(self, state: LatentState) -> LatentState:
        return LatentState(self.net.step(state.s, state.u), state.u, state.t + 1, state.hc)

    @torch.no_grad()
    def analysis(self, state: LatentState, y: torch.Tensor) -> LatentState:
        """One LSTM step on ``y (m,)`` (physical, after the operator), then EnSF on ``scaling * (s, u)``."""
        ctx = self.ctx
        phi, hc = self.encoder(y.reshape(1, 1, -1).to(ctx.device, ctx.dtype), state.hc)
        phi = phi[0, 0]
        k = self.scaling
        prior = state.kappa * k
        grad = gaussian_identity_grad(phi * k, self._sigma * k)
        post = ensf_update(prior, grad, self._score, self.generator) / k
        d_s = self.net.latent_dim
        if not torch.isfinite(post).all():
            raise Diverged("LD-EnSF analysis produced non-finite latents")
        return LatentState(post[:, :d_s].contiguous(), post[:, d_s:].contiguous(), state.t, hc)

    @torch.no_grad()
    def estimate(self, state: LatentState) -> torch.Tensor:
        """Decode every member on the full grid: ``(N, *state_shape)`` in physical units."""
        z = self.net.reconstruct(state.s, self._grid, self.decode_chunk, u=state.u)  # (N, P, C) normalised
        x = z * self._field_std + self._field_mean
        return from_points(self.ctx.problem, x)

    def estimate_params(self, state: LatentState) -> torch.Tensor:
        """``(N, P)`` parameters in physical units."""
        return denormalize_params(state.u.to(torch.float64), self._p_lo, self._p_hi).to(state.u.dtype)

    # ---- continuous time and space ---------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, s: torch.Tensor, coords: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """Fields at arbitrary physical points: ``s (N, d_s)``, ``coords (n, k)`` -> ``(N, n, C)`` physical
        (``u (N, d_u)``, normalised parameters, for networks that decode ``(s, u)``)."""
        ctx = self.ctx
        u = u.to(ctx.device, ctx.dtype) if u is not None else None
        z = self.net.decode(s.to(ctx.device, ctx.dtype), coords.to(ctx.device, ctx.dtype), self.decode_chunk, u)
        return z * self._field_std + self._field_mean

    def latent(self, state: LatentState) -> torch.Tensor:
        """The augmented latent ``(s, u)`` of every member, ``(N, d_s + d_u)``."""
        return state.kappa

    @staticmethod
    def latent_at(before: LatentState, after: LatentState, frac: float) -> LatentState:
        """Linear interpolation of the latent state a fraction ``frac`` in [0, 1] of the way from ``before`` to
        ``after`` (``frac = 0`` returns ``before``'s latents, 1 ``after``'s)."""
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"latent_at: frac={frac} must lie in [0, 1]")
        if frac == 0.0:
            return LatentState(before.s, before.u, before.t, None)
        if frac == 1.0:
            return LatentState(after.s, after.u, after.t, None)
        s = torch.lerp(before.s, after.s, frac)
        u = torch.lerp(before.u, after.u, frac)
        return LatentState(s, u, before.t + frac * (after.t - before.t), None)

    def estimate_at(self, before: LatentState, after: LatentState, frac: float) -> torch.Tensor:
        """Physical ensemble ``(N, *state_shape)`` at an intermediate time (linearly interpolated latent)."""
        return self.estimate(self.latent_at(before, after, frac))

    def estimate_between(self, before: LatentState, after: LatentState, fracs: list[float]) -> list[torch.Tensor]:
        """The runner's hook: :meth:`estimate_at` at each fraction (the latent Euler step is linear in time, so
        this is exactly the latent trajectory between the two observations, decoded)."""
        return [self.estimate_at(before, after, f) for f in fracs]
