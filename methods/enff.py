"""EnFF: the training-free ensemble flow filter of Transue, Chen, Takao & Wang (2025).

Reference: T. Transue, B. Chen, S. Takao, B. Wang, "Flow Matching for Efficient and Scalable Data Assimilation",
arXiv:2508.13313 (2025); public code: github.com/Utah-Math-Data-Science/Data-Assimilation-Flow-Matching.

Where EnSF integrates a reverse-time SDE driven by a score, EnFF integrates the flow-matching ODE
``dz/dt = v(z, t) + g(z, t)`` in flow time ``t`` from 0 (source) to 1 (analysis) with explicit Euler steps:

- ``v`` is the *marginal* velocity of a Gaussian conditional path towards the forecast members ``x_j``,
  estimated by Monte Carlo over the ensemble: ``v(z, t) = sum_j w_j(z, t) u_j(z, t)``, with ``w_j`` the
  responsibilities of the path's Gaussians ``N(mu_t(x_j), sigma_t^2 I)`` for ``z`` (the same softmax as EnSF's
  mixture score, :func:`methods.score.mixture_mean`) and ``u_j`` the conditional velocity towards member ``j``;
- ``g`` is the local guidance, ``lambda grad log p(y | x1_hat)`` at the one-step prediction of the endpoint
  ``x1_hat = z + (1 - t) v(z, t)``: a constant ``lambda`` (``guidance``) times the likelihood score.

Two paths (``flow``):

- ``ot``, the conditional optimal-transport path from standard normal noise: ``mu_t = t x_j``,
  ``sigma_t = 1 - (1 - sigma_min) t``, ``u_j = x_j + sigma_t' / sigma_t (z - t x_j)`` (the authors' EnFF-OT);
- ``f2p``, the authors' filtering-to-predictive path: from the previous analysis member ``a_j`` to its forecast
  ``x_j``, ``mu_t = (1 - t) a_j + t x_j``, constant ``sigma_t = sigma_min``, ``u_j = x_j - a_j``; each particle
  starts at its own previous analysis member plus ``N(0, sigma_min^2 I)`` (the authors' EnFF-F2P).

With ``guidance = 0`` both flows transport their source onto (a smoothing of) the forecast ensemble, i.e. the
analysis is a prior sample; the guidance moves it toward the observation. The guided flow is not the exact
Bayesian posterior (the local guidance is an approximation, as EnSF's damped likelihood score is); on a
linear-Gaussian problem its moments are known in closed form (tests/test_enff.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from assimbench.errors import ConfigError, Diverged
from methods.base import EnsembleState, Method, Tunable
from methods.ensf import autograd_loglik_grad
from methods.score import LoglikGrad, mixture_mean, param_box, working_generator


@dataclass
class FlowState(EnsembleState):
    """An ensemble ``x (N, *state_shape)`` with parameters, and the previous analysis ``prior_analysis`` (the same
    shape; the source of the ``f2p`` flow) that the forecast keeps."""

    prior_analysis: torch.Tensor | None = None


def ot_path(t: float, sigma_min: float) -> tuple[float, float]:
    """``(sigma_t, d sigma_t / dt)`` of the conditional optimal-transport path at flow time ``t``."""
    return 1.0 - (1.0 - sigma_min) * t, -(1.0 - sigma_min)


def enff_update(prior: torch.Tensor, loglik_grad: LoglikGrad | None, n_steps: int, sigma_min: float,
                guidance: float, generator: torch.Generator, flow: str = "ot",
                source: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
    """Sample the analysis ensemble with the EnFF flow ODE.

    Parameters
    ----------
    prior : ``(N, d)`` forecast members ``x_j``; device and dtype of every computation follow it.
    loglik_grad : ``x (N, d) -> grad_x log p(y | x) (N, d)``, evaluated at the predicted endpoints ``x1_hat``
        (None, or ``guidance = 0``: no observation, the flow samples the forecast ensemble).
    n_steps : explicit Euler steps over ``t in [0, 1]``, ``dt = 1 / n_steps``, velocities at ``t_k = k dt``,
        ``k = 0 .. n_steps - 1`` (the authors' ``sampling_time_step_count`` is ``n_steps + 1`` grid points).
    sigma_min : the path's noise scale at ``t = 1`` (``ot``) or throughout (``f2p``); > 0.
    guidance : ``lambda``, the constant weight of the likelihood score in the local guidance.
    generator : source of the flow's randomness (the source sample); a CPU generator used for a GPU ensemble
        seeds a device generator (:func:`methods.score.working_generator`).
    flow : ``ot`` (from N(0, I)) or ``f2p`` (from ``source``, the previous analysis members ``a_j (N, d)``).
    chunk : particles per block of the responsibilities (0 = automatic).

    Returns
    -------
    ``(N, d)`` analysis ensemble, a new tensor. Cost per step ``O(N^2 d)`` (the Monte Carlo velocity over every
    member for every particle) plus one likelihood gradient; memory ``O(N d)``.
    """
    if prior.dim() != 2:
        raise ValueError(f"enff_update expects a flat (N, d) ensemble, got shape {tuple(prior.shape)}")
    if flow == "f2p" and (source is None or source.shape != prior.shape):
        raise ValueError("the f2p flow starts from the previous analysis members: give source of the prior's shape")
    g = working_generator(generator, prior.device)
    eps = torch.randn(prior.shape, generator=g, device=prior.device, dtype=prior.dtype)
    if flow == "ot":
        z = eps
    else:
        z = source.to(prior.dtype).add(eps, alpha=sigma_min)
        delta = prior - source.to(prior.dtype)            # (N, d): the conditional velocities x_j - a_j
    dt = 1.0 / n_steps
    for k in range(n_steps):
        t = k * dt
        if flow == "ot":
            sigma, dsigma = ot_path(t, sigma_min)
            x1 = mixture_mean(z, prior, t, sigma * sigma, chunk)       # sum_j w_j x_j
            # v = sum_j w_j (x_j + sigma'/sigma (z - t x_j)) = x1 + sigma'/sigma (z - t x1)
            v = torch.add(z, x1, alpha=-t).mul_(dsigma / sigma).add_(x1)
        else:
            centres = torch.lerp(source.to(prior.dtype), prior, t)    # (1 - t) a_j + t x_j
            v = mixture_mean(z, centres, 1.0, sigma_min * sigma_min, chunk, values=delta)
        step = v
        if guidance != 0.0 and loglik_grad is not None:
            x1_hat = torch.add(z, v, alpha=1.0 - t)
            step = v + guidance * loglik_grad(x1_hat)
        z = z.add_(step, alpha=dt)
    return z


@dataclass
class EnFF(Method):
    """Ensemble flow filter in the full state space (works on every problem and observer).

    Each analysis flattens the forecast ensemble ``x (N, *state_shape)`` to ``(N, d)`` (z-scored per field with
    the training statistics when ``normalize``; the ``P`` parameters, mapped to the unit box, appended when
    ``joint``), optionally inflates its anomalies, and integrates the EnFF flow (:func:`enff_update`).

    Hyperparameters
    ---------------
    n_steps : explicit Euler steps of the flow ODE (the authors call ``n_steps + 1`` the sampling time step count).
    sigma_min : noise scale of the conditional path at the analysis end (``ot``) or along it (``f2p``).
    guidance : ``lambda``, the constant weight of the local likelihood guidance. The authors tune ``sigma_min``
        and ``lambda`` per setting; on their Lorenz-96 setting (arctan observations with std 0.05, N = 20) the
        best were ``ot``: 20 grid points ``sigma_min = 0.1, lambda = 0.1``, 100 points ``sigma_min = 0.01, lambda
        = 0.8``; ``f2p``: ``sigma_min = 0.01, lambda = 0.05`` (bench/presets/enff_l96.yaml).
    flow : ``ot`` (EnFF-OT, from standard normal noise) or ``f2p`` (EnFF-F2P, from the previous analysis).
    obs_std_scale : likelihood std = ``obs_std_scale`` x the true observation-error std.
    joint : the parameters, in the unit box of the problem's ``param_bounds``, ride along in the flow: the Monte
        Carlo velocity moves them with the members whose states the particle follows; the likelihood gives them
        no guidance. ``joint = False`` carries them untouched.
    inflation : multiplicative inflation of the forecast anomalies before the analysis (1 = none).
    normalize : run the flow on the state z-scored per field (the source is N(0, I)); false for states already
        of order one (the Lorenz-96 literature settings).
    likelihood : ``closed`` (``Observer.loglik_grad``) or ``autograd`` (through ``Observer.observe``).

    Cost per analysis: ``O(n_steps N^2 d)`` (the Monte Carlo velocity) plus ``n_steps`` likelihood gradients;
    memory ``O(N d)``; no matrix factorisation.
    """

    name: ClassVar[str] = "EnFF"
    min_ens: ClassVar[int] = 2
    tunable: ClassVar[dict[str, Tunable]] = {
        # the authors' search ranges for both (log scale)
        "sigma_min": Tunable(1e-3, 1.0, log=True, doc="noise scale of the conditional path"),
        "guidance": Tunable(1e-3, 1.0, log=True, doc="lambda, weight of the local likelihood guidance"),
        "n_steps": Tunable(4, 100, log=True, integer=True, doc="explicit Euler steps of the flow"),
    }
    conformance_params: ClassVar[dict] = {"n_steps": 5}

    n_steps: int = 20
    sigma_min: float = 0.1
    guidance: float = 0.1
    flow: Literal["ot", "f2p"] = "ot"
    obs_std_scale: float = 1.0
    joint: bool = True
    inflation: float = 1.0
    normalize: bool = True
    likelihood: Literal["closed", "autograd"] = "closed"

    def __post_init__(self):
        if not isinstance(self.n_steps, int) or isinstance(self.n_steps, bool) or self.n_steps < 1:
            raise ConfigError(f"EnFF n_steps={self.n_steps} must be an integer >= 1")
        if not (0.0 < self.sigma_min <= 1.0):
            raise ConfigError(f"EnFF sigma_min={self.sigma_min} must lie in (0, 1]")
        if not (self.guidance >= 0.0) or self.guidance == float("inf"):
            raise ConfigError(f"EnFF guidance={self.guidance} must be a finite number >= 0 (0 = prior sample)")
        if self.flow not in ("ot", "f2p"):
            raise ConfigError(f"EnFF flow={self.flow!r}; valid: ot, f2p")
        if not (self.obs_std_scale > 0) or self.obs_std_scale == float("inf"):
            raise ConfigError(f"EnFF obs_std_scale={self.obs_std_scale} must be a finite number > 0")
        if not (self.inflation > 0) or self.inflation == float("inf"):
            raise ConfigError(f"EnFF inflation={self.inflation} must be a finite number > 0 (1 = none)")
        if self.likelihood not in ("closed", "autograd"):
            raise ConfigError(f"EnFF likelihood={self.likelihood!r}; valid: closed, autograd")

    # ---- the cycle -------------------------------------------------------------------------------------------
    def init(self, x0: torch.Tensor, params: torch.Tensor, generator: torch.Generator) -> FlowState:
        self.generator = generator
        return FlowState(x0, params, x0)

    def forecast(self, state: EnsembleState) -> FlowState:
        """Advance the ensemble; keep the analysis it started from (the source of the ``f2p`` flow)."""
        return FlowState(self.ctx.problem.step(state.x, state.params), state.params, state.x)

    def _flat(self, x: torch.Tensor, params: torch.Tensor | None, scale) -> torch.Tensor:
        """``(N, d [+ P])``: the state (normalised when ``scale``), then the unit-box parameters when joint."""
        n = x.shape[0]
        m, s = scale
        flat = (x if m is None else (x - m) / s).reshape(n, -1)
        if params is not None:
            lo, width = self._param_box(params)
            flat = torch.cat([flat, ((params - lo) / width).to(x.device, x.dtype)], dim=1)
        return flat

    def _param_box(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return param_box(self.ctx.problem, like)

    def analysis(self, state: EnsembleState, y: torch.Tensor) -> FlowState:
        """Integrate the guided flow given the observation ``y (m,)``."""
        x = state.x
        n, shape = x.shape[0], x.shape
        dev, dtype = x.device, x.dtype
        obs = self.ctx.observer
        y = y.to(dev, dtype)
        std = obs.noise_std(y, device=dev, dtype=dtype) * self.obs_std_scale
        d = x[0].numel()
        joint = self.joint and state.params is not None and state.params.dim() == 2 and state.params.shape[1] > 0
        params = state.params if joint else None
        ds = self.ctx.dataset
        if self.normalize and ds is not None:
            nd = len(self.ctx.problem.state_shape)
            scale = (ds.field_view(x, ds.field_mean, nd), ds.field_view(x, ds.field_std, nd))
        else:
            scale = (None, None)
        m, s = scale
        prior = self._flat(x, params, scale)
        if self.inflation != 1.0:
            mean = prior.mean(0, keepdim=True)
            prior = mean + self.inflation * (prior - mean)
        source = None
        if self.flow == "f2p":
            prev = getattr(state, "prior_analysis", None)
            source = self._flat(prev if prev is not None else x, params, scale)
        grad_fn = obs.loglik_grad if self.likelihood == "closed" else \
            (lambda xs, yy, ss: autograd_loglik_grad(obs, xs, yy, ss))

        def loglik_grad(z: torch.Tensor) -> torch.Tensor:
            xz = z[:, :d].reshape(shape)
            g = grad_fn(xz if m is None else xz * s + m, y, std)
            g = (g if m is None else g * s).reshape(n, d)  # chain rule through the normalisation
            if z.shape[1] > d:
                g = torch.cat([g, torch.zeros(n, z.shape[1] - d, device=dev, dtype=dtype)], dim=1)
            return g

        if self.generator is None:
            raise RuntimeError("EnFF.analysis called before init(): no generator")
        post = enff_update(prior, loglik_grad, self.n_steps, self.sigma_min, self.guidance, self.generator,
                           flow=self.flow, source=source)
        if not torch.isfinite(post).all():
            raise Diverged(f"{self.label}: the analysis ensemble is not finite; the explicit guidance step is too "
                           "large for this observation error: lower guidance or raise n_steps")
        x_a = post[:, :d].reshape(shape)
        if m is not None:
            x_a = x_a * s + m
        new_params = state.params
        if joint:
            lo, width = self._param_box(state.params)
            new_params = (lo + width * post[:, d:].to(lo.dtype).clamp(0.0, 1.0)).to(state.params.dtype)
        return FlowState(x_a, new_params, getattr(state, "prior_analysis", None))
