"""The training-free ensemble score filter (EnSF) update, written once for every score-based method.

EnSF (Bao, Zhang & Zhang 2024) samples the analysis ensemble by integrating a reverse-time SDE in pseudo-time
``tau`` from 1 (pure noise) down to 0, driven by a posterior score built from the forecast ensemble and the
likelihood gradient. The full-space :class:`methods.ensf.EnSF` calls :func:`ensf_update` on ``(N, d)`` flattened
states; the latent methods call it on ``(N, d_latent)`` latent ensembles with :func:`gaussian_identity_grad`.

Forward diffusion (per component), ``Z_tau | Z_0 ~ N(alpha_tau Z_0, beta2_tau I)``::

    alpha_tau = 1 - (1 - eps_alpha) tau          (alpha_0 = 1, alpha_1 = eps_alpha)
    beta2_tau = eps_beta + (1 - eps_beta) tau    (beta2_1 = 1)
    dZ = b(tau) Z dtau + sigma(tau) dW,  b = d log(alpha)/dtau,  sigma^2 = d(beta2)/dtau - 2 b beta2

(the drift and diffusion are exact for every ``eps_beta``; the EnSF legacy code uses ``d(beta2)/dtau = 1``, exact
only for ``eps_beta = 0``).

Posterior score ``S(z, tau) = S_prior(z, tau) + h(tau) grad_z log p(y | z)`` with damping ``h = 1 - tau``:

- ``paired`` prior score (what the released EnSF / LD-EnSF codes do): particle ``i`` sees only its own forecast
  member, ``-(z_i - alpha x_i) / beta2``. Cost O(N d) per step; particles interact only through the likelihood.
- ``mixture`` prior score (what the papers write): the score of the diffused empirical forecast distribution,
  ``-sum_j w_ij (z_i - alpha x_j) / beta2`` with ``w_ij = softmax_j(-|z_i - alpha x_j|^2 / (2 beta2))`` over
  ``J`` members (all, or a fresh random subset of ``J`` per pseudo-time step). Cost O(N J d) per step, memory
  O(N d) plus an ``N x J`` block, computed in chunks of particles.

Known limitations (measured in ``tests/test_ensf.py`` on a linear-Gaussian problem):

- the damped sum ``S_prior + (1 - tau) grad log p`` is a heuristic, not the score of the diffused posterior, so
  even the ``mixture`` form with N, K -> infinity does not sample the Bayesian posterior exactly: it is
  under-dispersed (posterior variance too small);
- the ``paired`` form ignores the ensemble spread: near ``tau = 0`` each particle solves a Kalman-like update with
  prior variance ``~ eps_beta + 1/K`` around its own member, so the observation is under-weighted whenever the
  forecast variance exceeds ``eps_beta`` (mean corrected too little, variance too large);
- ``damping='reweight'`` (mixture only) replaces the heuristic by the exact score of the diffused empirical
  posterior (members weighted by their likelihood): it recovers the posterior as N grows, smoothed by an
  ``N(0, eps_beta)`` kernel, at the price of a particle filter's weight degeneracy in high dimension;
- the explicit Euler-Maruyama step is stable only while ``dtau * sigma^2 * (h / sigma_obs^2 + 1 / beta2) < 2``
  roughly: a small observation error (``sigma_obs = 0.05``) needs ``n_steps`` of several hundred, or ``clip``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from assimbench.errors import ConfigError

LoglikGrad = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ScoreConfig:
    """Hyperparameters of one EnSF update.

    Parameters
    ----------
    n_steps : K, the number of uniform Euler-Maruyama steps in pseudo-time (``dtau = 1 / K``).
    eps_alpha : ``alpha_1``, the signal scale left at ``tau = 1``; in (0, 1].
    eps_beta : ``beta2_0``, the noise variance left at ``tau = 0``; in [0, 1).
    prior_score : ``paired`` (particle i against its own forecast member) or ``mixture`` (weighted score of the
        diffused empirical forecast distribution).
    mixture_batch : J, members used by the mixture score per step (0 = all N; else a fresh random subset of J
        members, shared by all particles, is drawn at every pseudo-time step).
    chunk : particles per block of the mixture score (0 = automatic, about 2^23 elements per temporary).
    damping : ``linear`` (``h(tau) = 1 - tau``, EnSF), ``none`` (``h = 0``: sample the prior only) or
        ``reweight`` (``mixture`` only; no likelihood gradient: each member ``x_j`` of the mixture score is
        weighted by ``p(y | x_j)``, which makes the score the *exact* score of the diffused empirical posterior
        ``sum_j p(y | x_j) delta(x - x_j)``. The sampler then draws from that weighted ensemble smoothed by an
        ``N(0, eps_beta)`` kernel: consistent as N grows, like a particle filter, and like one it degenerates
        when the likelihood is sharp compared with the spread of the members, i.e. in high dimension).
    clip : clip every component of the posterior score to ``[-clip, clip]`` (0 = off; the EnSF repo uses 1000).
    restandardize : re-standardise the initial noise ``Z_1`` to mean 0 and std 1 per component across the
        ensemble (the EnSF repo does this).
    """

    n_steps: int = 100
    eps_alpha: float = 0.05
    eps_beta: float = 0.0
    prior_score: Literal["paired", "mixture"] = "paired"
    mixture_batch: int = 0
    chunk: int = 0
    damping: Literal["linear", "none"] = "linear"
    clip: float = 0.0
    restandardize: bool = False

    def __post_init__(self):
        if not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ConfigError(f"EnSF n_steps={self.n_steps} must be an integer >= 1")
        if not (0.0 < self.eps_alpha <= 1.0):
            raise ConfigError(f"EnSF eps_alpha={self.eps_alpha} must lie in (0, 1] (alpha at tau = 1)")
        if not (0.0 <= self.eps_beta < 1.0):
            raise ConfigError(f"EnSF eps_beta={self.eps_beta} must lie in [0, 1) (noise variance at tau = 0)")
        if self.prior_score not in ("paired", "mixture"):
            raise ConfigError(f"EnSF prior_score={self.prior_score!r}; valid: paired, mixture")
        if self.damping not in ("linear", "none", "reweight"):
            raise ConfigError(f"EnSF damping={self.damping!r}; valid: linear, none, reweight")
        if self.damping == "reweight" and self.prior_score != "mixture":
            raise ConfigError("EnSF damping='reweight' weights the members of the mixture score; it needs "
                              "prior_score='mixture' (valid with paired: linear, none)")
        if self.mixture_batch < 0:
            raise ConfigError(f"EnSF mixture_batch={self.mixture_batch} must be >= 0 (0 = all members)")
        if self.chunk < 0:
            raise ConfigError(f"EnSF chunk={self.chunk} must be >= 0 (0 = automatic)")
        if not (self.clip >= 0.0) or math.isinf(self.clip):
            raise ConfigError(f"EnSF clip={self.clip} must be a finite number >= 0 (0 = off)")


@dataclass(kw_only=True)
class SamplerFields:
    """The reverse-SDE hyperparameters of every score-based method, as keyword-only dataclass fields.

    A method mixes this in before :class:`methods.base.Method` (``class EnSF(SamplerFields, Method)``) and builds
    its sampler with :meth:`score_config`; see :class:`ScoreConfig` for what each field means.
    """

    n_steps: int = 100
    eps_alpha: float = 0.05
    eps_beta: float = 0.0
    prior_score: Literal["paired", "mixture"] = "paired"

    def score_config(self, **more) -> ScoreConfig:
        """The validated :class:`ScoreConfig` of these fields (``more``: the other ScoreConfig fields)."""
        return ScoreConfig(n_steps=self.n_steps, eps_alpha=self.eps_alpha, eps_beta=self.eps_beta,
                           prior_score=self.prior_score, **more)


def schedule(t, eps_alpha: float, eps_beta: float):
    """Coefficients of the forward diffusion at pseudo-time ``t`` (float or tensor).

    Returns
    -------
    alpha : ``1 - (1 - eps_alpha) t``, the mean scale of ``Z_t | Z_0``.
    beta2 : ``eps_beta + (1 - eps_beta) t``, the variance of ``Z_t | Z_0``.
    b : drift coefficient ``d log(alpha) / dt = -(1 - eps_alpha) / alpha``.
    sigma2 : squared diffusion ``d(beta2)/dt - 2 b beta2 = (1 - eps_beta) + 2 (1 - eps_alpha) beta2 / alpha``.
    """
    alpha = 1.0 - (1.0 - eps_alpha) * t
    beta2 = eps_beta + (1.0 - eps_beta) * t
    b = -(1.0 - eps_alpha) / alpha
    sigma2 = (1.0 - eps_beta) + 2.0 * (1.0 - eps_alpha) * beta2 / alpha
    return alpha, beta2, b, sigma2


# --------------------------------------------------------------------------------------------------------------
# Prior scores
# --------------------------------------------------------------------------------------------------------------
def paired_prior_score(z: torch.Tensor, prior: torch.Tensor, alpha: float, beta2: float,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """``-(z_i - alpha x_i) / beta2`` for ``z, prior (N, d)`` -> ``(N, d)`` (written into ``out`` if given)."""
    return torch.mul(prior, alpha, out=out).sub_(z).div_(beta2) if out is not None else \
        prior.mul(alpha).sub_(z).div_(beta2)


def _auto_chunk(n: int, d: int, j: int) -> int:
    return max(1, min(n, (1 << 23) // max(d + j, 1)))


def mixture_mean(z: torch.Tensor, members: torch.Tensor, alpha: float, beta2: float, chunk: int = 0,
                 log_weight: torch.Tensor | None = None, values: torch.Tensor | None = None) -> torch.Tensor:
    """Posterior-weighted member average ``sum_j w_ij v_j`` at ``z (N, d)`` -> ``(N, d)``.

    ``w_ij = softmax_j(log_weight_j - |z_i - alpha x_j|^2 / (2 beta2))`` are the responsibilities of the
    components ``N(alpha x_j, beta2 I)`` of the diffused empirical distribution of ``members (J, d)`` for the
    point ``z_i``; ``values (J, d)`` default to the members themselves (then the result is ``E[x | z]``, the
    denoiser of the mixture, from which both the EnSF mixture score and the EnFF marginal velocity are built).
    The term ``|z_i|^2`` is the same for every ``j`` and cancels in the softmax, so the logits are
    ``(alpha z'_i . x'_j - alpha^2 |x'_j|^2 / 2) / beta2`` with ``z' = z - alpha c``, ``x' = x - c`` centred on
    the members' mean ``c``, formed in float64 (no cancellation trouble in float32 at d ~ 1e6) by one
    ``addmm``; softmax subtracts the row maximum (logsumexp-stable). Memory: the ``(N, d)`` output, ``(J, d)``
    float64 members and per-chunk ``(c, d)`` / ``(c, J)`` temporaries.
    """
    n, d = z.shape
    j = members.shape[0]
    wide = torch.float64 if z.dtype in (torch.float16, torch.bfloat16, torch.float32) else z.dtype
    center = members.mean(0)
    xc = (members - center).to(wide)                      # (J, d)
    bias = xc.pow(2).sum(1).mul_(-0.5 * alpha * alpha / beta2)   # (J,)
    if log_weight is not None:
        bias = bias + log_weight.to(bias.device, wide)
    center_w = center.to(wide)
    vals = members if values is None else values
    c = chunk or _auto_chunk(n, d, j)
    out = torch.empty_like(z)
    for s in range(0, n, c):
        zc = z[s:s + c].to(wide, copy=True).sub_(center_w, alpha=alpha)  # (c, d), never a view of z
        logits = torch.addmm(bias, zc, xc.T, alpha=alpha / beta2)  # (c, J)
        w = torch.softmax(logits, dim=1).to(z.dtype)
        out[s:s + c] = w @ vals                           # (c, d): sum_j w_ij v_j
    return out


def mixture_prior_score(z: torch.Tensor, members: torch.Tensor, alpha: float, beta2: float,
                        chunk: int = 0, log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Score of the diffused empirical distribution ``(1/J) sum_j N(alpha x_j, beta2 I)`` at ``z (N, d)``.

    ``members (J, d)``; the score is ``-(z_i - alpha sum_j w_ij x_j) / beta2`` with the responsibilities
    ``w_ij`` of :func:`mixture_mean`. ``log_weight (J,)`` adds unnormalised log mixture weights (the score of
    ``sum_j exp(log_weight_j) N(alpha x_j, beta2 I)``).
    """
    return mixture_mean(z, members, alpha, beta2, chunk, log_weight).mul_(alpha).sub_(z).div_(beta2)


# --------------------------------------------------------------------------------------------------------------
# Likelihood helpers
# --------------------------------------------------------------------------------------------------------------
def gaussian_identity_grad(y: torch.Tensor, std: torch.Tensor | float) -> LoglikGrad:
    """``z -> -(z - y) / std^2``: the likelihood score of ``y = z + N(0, std^2 I)``, ``y (d,)``, ``std`` a scalar
    or ``(d,)`` (the latent methods' Gaussian identity likelihood)."""
    var = std.pow(2) if isinstance(std, torch.Tensor) else float(std) ** 2

    def grad(z: torch.Tensor) -> torch.Tensor:
        v = var.to(z.device, z.dtype) if isinstance(var, torch.Tensor) else var
        return (y.to(z.device, z.dtype) - z).div_(v)

    return grad


# --------------------------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------------------------
def working_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself when it lives on ``device``, else a generator on ``device`` seeded from it.

    Deterministic under ``generator``: the same generator state gives the same device stream, and drawing
    per-step noise on the device avoids a CPU draw plus a host-to-device copy of ``K N d`` numbers.
    """
    device = torch.device(device)
    gdev = generator.device
    if gdev.type == device.type and (device.type == "cpu" or gdev.index == (device.index or 0)):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return torch.Generator(device=device).manual_seed(seed)


def reverse_step(z: torch.Tensor, prior: torch.Tensor, tau: float, dtau: float, loglik_grad: LoglikGrad | None,
                 config: ScoreConfig, noise: torch.Tensor, work: torch.Tensor | None = None,
                 log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE from ``tau`` to ``tau - dtau``, in place on ``z``.

    ``z <- z - dtau (b z - sigma^2 S(z, tau)) + sqrt(dtau) sigma noise`` with ``S = S_prior + h(tau) grad log p``.

    Parameters
    ----------
    z : ``(N, d)`` particles at ``tau`` (overwritten and returned).
    prior : ``(N, d)`` forecast members (paired) or ``(J, d)`` members (mixture).
    loglik_grad : ``z (N, d) -> (N, d)`` likelihood score; not called when ``h(tau) = 0``.
    noise : ``(N, d)`` standard normal draws.
    work : optional ``(N, d)`` buffer for the paired score (saves one allocation per step).
    log_weight : ``(J,)`` log-likelihoods of the members (``damping='reweight'``).
    """
    alpha, beta2, b, sigma2 = schedule(tau, config.eps_alpha, config.eps_beta)
    if config.prior_score == "paired":
        score = paired_prior_score(z, prior, alpha, beta2, out=work)
    else:
        score = mixture_prior_score(z, prior, alpha, beta2, config.chunk,
                                    log_weight if config.damping == "reweight" else None)
    h = (1.0 - tau) if config.damping == "linear" else 0.0
    if h != 0.0 and loglik_grad is not None:
        score.add_(loglik_grad(z), alpha=h)
    if config.clip > 0:
        score.clamp_(-config.clip, config.clip)
    z.mul_(1.0 - dtau * b).add_(score, alpha=dtau * sigma2).add_(noise, alpha=math.sqrt(dtau * sigma2))
    return z


def ensf_update(prior: torch.Tensor, loglik_grad: LoglikGrad | None, config: ScoreConfig,
                generator: torch.Generator, member_loglik: torch.Tensor | None = None) -> torch.Tensor:
    """Sample the analysis ensemble with the EnSF reverse SDE.

    Parameters
    ----------
    prior : ``(N, d)`` forecast ensemble ``x_j``; device and dtype of every computation follow it.
    loglik_grad : ``z (N, d) -> grad_z log p(y | z) (N, d)``, evaluated at the diffusion state (None = prior only).
    config : the sampler's hyperparameters.
    generator : source of all randomness (``Z_1``, per-step noise, mixture subsets); a CPU generator used for a
        GPU ensemble seeds a device generator (see :func:`working_generator`).
    member_loglik : ``(N,)`` ``log p(y | x_j)`` of the forecast members; required by ``damping='reweight'``.

    Returns
    -------
    ``(N, d)`` analysis ensemble ``Z_0``, a new tensor. Steps run from ``tau_0 = 1`` with coefficients at
    ``tau_k = 1 - k / K``, ``k = 0 .. K-1`` (``tau = 0`` itself, where ``beta2 = eps_beta`` may vanish, is never
    evaluated). No Python loop over members: every step is a handful of batched ``(N, d)`` operations.
    """
    if prior.dim() != 2:
        raise ValueError(f"ensf_update expects a flat (N, d) ensemble, got shape {tuple(prior.shape)}")
    n, d = prior.shape
    if config.damping == "reweight" and (member_loglik is None or member_loglik.shape != (n,)):
        raise ValueError(f"damping='reweight' needs member_loglik of shape ({n},), the members' log-likelihoods")
    g = working_generator(generator, prior.device)
    z = torch.randn(n, d, generator=g, device=prior.device, dtype=prior.dtype)
    if config.restandardize and n > 1:
        z.sub_(z.mean(0)).div_(z.std(0, unbiased=False).clamp_min(torch.finfo(z.dtype).tiny))
    use_subset = config.prior_score == "mixture" and 0 < config.mixture_batch < n
    noise = torch.empty_like(z)
    work = torch.empty_like(z) if config.prior_score == "paired" else None
    K = config.n_steps
    dtau = 1.0 / K
    for k in range(K):
        tau = 1.0 - k * dtau
        members, lw = prior, member_loglik
        if use_subset:
            idx = torch.randperm(n, generator=g, device=g.device)[:config.mixture_batch].to(prior.device)
            members = prior[idx]
            lw = member_loglik[idx] if member_loglik is not None else None
        noise.normal_(generator=g)
        reverse_step(z, members, tau, dtau, loglik_grad, config, noise, work, lw)
    return z


def param_box(problem, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, width)`` of a problem's parameter box on ``like``'s device and dtype (a zero width counts as 1), for
    mapping parameters to the unit box the score filters update them in."""
    lo, hi = problem.param_bounds
    width = hi - lo
    width = torch.where(width > 0, width, torch.ones_like(width))
    return lo.to(like.device, like.dtype), width.to(like.device, like.dtype)
