"""EnSF in full state space: the training-free ensemble score filter of Bao, Zhang & Zhang (2024).

The forecast ensemble is flattened to ``(N, d)`` (``d = prod(state_shape)``, plus the ``P`` parameters when
``joint``), the likelihood score comes from the observer (closed form, or autograd through ``observe``), and the
analysis ensemble is sampled by :func:`methods.score.ensf_update`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from assimbench.errors import ConfigError, Diverged
from methods.base import EnsembleState, Method, Tunable
from methods.score import SamplerFields, ScoreConfig, ensf_update, param_box
from problems.base import Observer


def autograd_loglik_grad(observer: Observer, x: torch.Tensor, y: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``grad_x log N(y; H(x), diag(std^2))`` by autograd through ``observer.observe``, ``x (n, *state_shape)``.

    The generic path for operators without a closed form; equals :meth:`Observer.loglik_grad` where both exist.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        r = (observer.observe(xr) - y) / std
        (g,) = torch.autograd.grad(-0.5 * r.pow(2).sum(), xr)
    return g


@dataclass
class EnSF(SamplerFields, Method):
    """Ensemble score filter in the full state space (works on every problem and observer).

    Each analysis flattens the forecast ensemble ``x (N, *state_shape)`` to ``(N, d)``, optionally inflates its
    anomalies, and runs ``n_steps`` Euler-Maruyama steps of the EnSF reverse SDE (:mod:`methods.score`) with the
    posterior score ``S_prior + (1 - tau) grad log p(y | z)``; the likelihood uses the observer's noise std times
    ``obs_std_scale``.

    Hyperparameters
    ---------------
    n_steps, eps_alpha, eps_beta, prior_score, mixture_batch, damping, clip, restandardize :
        see :class:`methods.score.ScoreConfig`. The defaults (K = 100, eps_alpha = 0.05, eps_beta = 0, paired)
        are the full-space baseline used on the PDE problems. The EnSF paper's Lorenz-96 setting
        (CMAME 2024: d = 1e6, arctan observations with std 0.05, observed every 10 RK4 steps of dt = 0.01) is
        ``N = 20, n_steps = 500, eps_alpha = 0.5, eps_beta = 0.025``, no inflation; the explicit step needs
        large K there (``dtau * sigma^2 / sigma_obs^2`` must stay below ~2).
    obs_std_scale : likelihood std = ``obs_std_scale`` x the true observation-error std.
    joint : joint state-parameter filtering: the ``P`` parameters, mapped to the unit box by the problem's
        ``param_bounds``, are appended to the state vector. The likelihood gradient with respect to them is
        zero, so with the ``paired`` score each parameter only returns to its own forecast value plus the
        sampler's jitter (variance ~ eps_beta + 1/K in unit-box units), clipped to the prior box: **EnSF cannot
        learn unobserved parameters** (nor unobserved state components); the ``mixture`` score couples them to
        the observed components only through the weights. ``joint = False`` carries the parameters along untouched.
    inflation : multiplicative inflation of the forecast anomalies (state and parameters) before the analysis.
    normalize : run the sampler on the state z-scored per field with the training statistics (the diffusion
        starts from N(0, I), so a state in physical units such as 1e-2 m/s velocities beside 1 m heights is badly
        scaled and the explicit step is unstable at the true observation error); the likelihood gradient is
        transformed by the chain rule. Set false for the EnSF paper's Lorenz-96 runs in physical units.
    likelihood : ``closed`` (``Observer.loglik_grad``: identity and arctan) or ``autograd`` (differentiate the
        Gaussian log-likelihood through ``Observer.observe``; any differentiable operator).

    Cost per analysis: ``O(K N (d + m))`` with the paired score, ``O(K N J d)`` with the mixture; memory
    ``O(N d)``; no matrix factorisation, so the analysis time is linear in ``d`` and in ``N``.
    """

    name: ClassVar[str] = "EnSF"
    tunable: ClassVar[dict[str, Tunable]] = {
        "eps_alpha": Tunable(0.01, 1.0, log=True, doc="signal scale left at tau = 1"),
        # tuned on the default preset's L96 block with 0-0.1, the best values sat at 0.1: the range goes further
        "eps_beta": Tunable(0.0, 0.3, doc="noise variance left at tau = 0"),
        "n_steps": Tunable(50, 500, log=True, integer=True, doc="K, reverse-SDE steps"),
    }

    mixture_batch: int = 0
    damping: Literal["linear", "none", "reweight"] = "linear"
    clip: float = 0.0
    restandardize: bool = False
    obs_std_scale: float = 1.0
    joint: bool = True
    inflation: float = 1.0
    likelihood: Literal["closed", "autograd"] = "closed"
    normalize: bool = True

    def __post_init__(self):
        self.score_config()  # validates the sampler's fields
        if not (self.obs_std_scale > 0) or self.obs_std_scale == float("inf"):
            raise ConfigError(f"EnSF obs_std_scale={self.obs_std_scale} must be a finite number > 0")
        if not (self.inflation > 0) or self.inflation == float("inf"):
            raise ConfigError(f"EnSF inflation={self.inflation} must be a finite number > 0 (1 = none)")
        if self.likelihood not in ("closed", "autograd"):
            raise ConfigError(f"EnSF likelihood={self.likelihood!r}; valid: closed, autograd")

    def score_config(self) -> ScoreConfig:
        """The :class:`ScoreConfig` of these hyperparameters."""
        return super().score_config(mixture_batch=self.mixture_batch, damping=self.damping, clip=self.clip,
                                    restandardize=self.restandardize)

    # ---- parameters <-> unit box ------------------------------------------------------------------------------
    def _param_box(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return param_box(self.ctx.problem, like)

    # ---- the cycle -------------------------------------------------------------------------------------------
    def analysis(self, state: EnsembleState, y: torch.Tensor) -> EnsembleState:
        """Sample the analysis ensemble given the observation ``y (m,)``."""
        x = state.x
        n = x.shape[0]
        dev, dtype = x.device, x.dtype
        obs = self.ctx.observer
        y = y.to(dev, dtype)
        std = obs.noise_std(y, device=dev, dtype=dtype) * self.obs_std_scale
        d = x[0].numel()
        n_par = state.params.shape[1] if (self.joint and state.params is not None and state.params.dim() == 2) \
            else 0

        ds = self.ctx.dataset
        if self.normalize and ds is not None:
            nd = len(self.ctx.problem.state_shape)
            m = ds.field_view(x, ds.field_mean, nd)
            s = ds.field_view(x, ds.field_std, nd)
        else:
            m = s = None
        prior = (x if m is None else (x - m) / s).reshape(n, d)
        if n_par:
            lo, width = self._param_box(state.params)
            u = ((state.params - lo) / width).to(dev, dtype)
            prior = torch.cat([prior, u], dim=1)
        if self.inflation != 1.0:
            mean = prior.mean(0, keepdim=True)
            prior = mean + self.inflation * (prior - mean)

        shape = x.shape
        grad_fn = obs.loglik_grad if self.likelihood == "closed" else \
            (lambda xs, yy, ss: autograd_loglik_grad(obs, xs, yy, ss))

        def loglik_grad(z: torch.Tensor) -> torch.Tensor:
            xz = z[:, :d].reshape(shape)
            if m is None:
                g = grad_fn(xz, y, std).reshape(n, d)
            else:  # chain rule: d/dz log p(y | m + s z) = s * grad_x
                g = (grad_fn(xz * s + m, y, std) * s).reshape(n, d)
            if n_par:
                g = torch.cat([g, torch.zeros(n, n_par, device=dev, dtype=dtype)], dim=1)
            return g

        gen = self.generator
        if gen is None:
            raise RuntimeError("EnSF.analysis called before init(): no generator")
        member_ll = None
        if self.damping == "reweight":  # log p(y | x_j) of the forecast members weights the mixture score
            r = (obs.observe(x) - y) / std
            member_ll = -0.5 * r.double().pow(2).sum(1)
        post = ensf_update(prior, loglik_grad, self.score_config(), gen, member_loglik=member_ll)
        if not torch.isfinite(post).all():
            raise Diverged(f"{self.label}: the analysis ensemble is not finite; the explicit reverse-SDE step is "
                           "unstable for this observation error; raise n_steps (or eps_alpha), or set clip")
        x_a = post[:, :d].reshape(shape)
        if m is not None:
            x_a = x_a * s + m
        params = state.params
        if n_par:
            # the sampler's jitter random-walks unobserved parameters; keep them in the prior's support (e.g. a
            # Reynolds number must stay positive for the forecast to exist)
            u_a = post[:, d:].to(lo.device, lo.dtype).clamp(0.0, 1.0)
            params = (lo + width * u_a).to(state.params.dtype)
        return EnsembleState(x_a, params)
