"""The coupled VAE of Latent-EnSF (Si & Chen, ICLR 2025): a state encoder, an observation encoder and one shared
decoder.

All networks work in normalised units (the caller z-scores states per field with the training statistics and
observations per observed channel with the statistics stored in the network config):

- ``StateEncoder`` ``E_x``: ``(N, C, n, n) -> (mu, logvar)``, each ``(N, c_lat, h, h)``; a stack of stride-2
  convolutions (``k = round(log2(n / h))`` of them) with a residual 3 x 3 conv after each, then an adaptive
  average pool to exactly ``h x h`` (so sizes that are not a power-of-two multiple of ``h`` work too) and a 1 x 1
  head.
- ``VAEObsEncoder`` ``E_y``: ``(N, m) -> (mu, logvar)`` of the same shape. ``conv``: the point-major observation
  vector is reshaped to its lattice image ``(C_obs, h_obs, w_obs)``, passed through "same" 3 x 3 convs, resized
  bilinearly to ``h x h`` and through more convs; ``mlp``: a plain MLP on the flat vector (any layout).
- ``Decoder`` ``D``: ``(N, c_lat, h, h) -> (N, C, n, n)``; 3 x 3 convs with ``k`` bilinear x2 upsamplings, a final
  bilinear resize to ``n x n`` when ``h 2^k != n``, and a 3 x 3 output conv.

``state_arch='pod'`` replaces ``E_x`` and ``D`` by a linear, whitened POD map (:class:`PODStateMap`): the latent
components are the coefficients of the leading ``c_lat h_lat^2`` POD modes of the training snapshots, each in units
of its training RMS, the decoder sums the modes (one matrix product); only the observation encoder (``mlp``) and
the posterior widths are trained. Its state path is the projection onto the modes: on a CPU budget it is far
more accurate at the same latent size than the convolutional networks (a probabilistic-PCA VAE).

Periodic problems (Kolmogorov) use circular padding in every convolution. The VAE is built from a
:class:`VAEConfig`; its plain-dict form (:meth:`CoupledVAE.config` -> :meth:`CoupledVAE.from_config`) is what the
artifact cache stores next to the float32 weights; all weights are initialised from an explicit
``torch.Generator`` (no global seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from methods.pod import pod_basis


def _init_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Kaiming-uniform weights (LeakyReLU 0.2 gain) and zero biases for every conv / linear in ``module``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=0.2, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
    return module


def _init_head_(head: nn.Module, c_lat: int, logvar0: float = -6.0) -> None:
    """Start the posterior narrow: the log-variance half of a head gets small weights and bias ``logvar0``
    (a wide initial posterior lets the decoder learn to ignore the latent: posterior collapse)."""
    with torch.no_grad():
        w, b = head.weight, head.bias
        if w.dim() == 2:  # MLP output (2 c_lat h h) laid out as (2 c_lat, h, h): the second half is logvar
            half = w.shape[0] // 2
            w[half:].mul_(0.01)
            b[half:].fill_(logvar0)
        else:
            w[c_lat:].mul_(0.01)
            b[c_lat:].fill_(logvar0)


def _conv(cin: int, cout: int, k: int, stride: int, periodic: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2,
                     padding_mode="circular" if periodic else "zeros")


class ResConv(nn.Module):
    """``h <- h + act(conv3x3(act(conv3x3(h))))`` at constant channels and size."""

    def __init__(self, ch: int, periodic: bool):
        super().__init__()
        self.c1 = _conv(ch, ch, 3, 1, periodic)
        self.c2 = _conv(ch, ch, 3, 1, periodic)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.leaky_relu(self.c2(F.leaky_relu(self.c1(h), 0.2)), 0.2)


def n_stages(n: int, h: int) -> int:
    """Number of x2 resolution changes between an ``n``-cell grid and an ``h``-cell latent map."""
    return max(0, round(math.log2(n / h))) if n > h else 0


class StateEncoder(nn.Module):
    """``E_x``: ``(N, C, n, n)`` normalised state -> ``mu, logvar`` each ``(N, c_lat, h, h)``.

    The first x2 reduction is a lossless pixel-unshuffle (``(4C, n/2, n/2)``) followed by a 3 x 3 conv to
    ``width`` channels; each further stage is a stride-2 3 x 3 conv doubling the channels (capped at
    ``8 width``) plus a residual block. No convolution runs at the full resolution (the CPU budget).
    """

    def __init__(self, n_fields: int, n: int, c_lat: int, h_lat: int, width: int, periodic: bool):
        super().__init__()
        k = n_stages(n, h_lat)
        self.h_lat = h_lat
        self.unshuffle = k >= 1 and n % 2 == 0
        cin = 4 * n_fields if self.unshuffle else n_fields
        layers: list[nn.Module] = [_conv(cin, width, 3, 1, periodic), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1 if self.unshuffle else 0, k):
            out = width * min(2 ** i, 8)
            layers += [_conv(ch, out, 3, 2, periodic), nn.LeakyReLU(0.2), ResConv(out, periodic)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, 2 * c_lat, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.unshuffle:
            x = F.pixel_unshuffle(x, 2)
        h = self.body(x)
        if h.shape[-2:] != (self.h_lat, self.h_lat):
            h = F.adaptive_avg_pool2d(h, self.h_lat)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar


class VAEObsEncoder(nn.Module):
    """``E_y``: ``(N, m)`` normalised observations -> ``mu, logvar`` each ``(N, c_lat, h, h)``.

    ``arch='conv'`` needs the lattice shape ``(c_obs, h_obs, w_obs)`` with ``m = h_obs w_obs c_obs`` (point-major,
    channel-minor, as :class:`problems.base.Observer` flattens them); ``arch='mlp'`` works for any layout.
    """

    def __init__(self, m: int, c_lat: int, h_lat: int, width: int, arch: Literal["conv", "mlp"],
                 lattice: tuple[int, int, int] | None, periodic: bool):
        super().__init__()
        self.arch, self.c_lat, self.h_lat = arch, c_lat, h_lat
        if arch == "conv":
            if lattice is None or math.prod(lattice) != m:
                raise ValueError(f"conv observation encoder needs a lattice (C, h, w) with C h w = m = {m}, "
                                 f"got {lattice}")
            self.lattice = tuple(lattice)
            c_obs = lattice[0]
            self.pre = nn.Sequential(_conv(c_obs, 2 * width, 3, 1, periodic), nn.LeakyReLU(0.2),
                                     ResConv(2 * width, periodic))
            self.post = nn.Sequential(_conv(2 * width, 2 * width, 3, 1, periodic), nn.LeakyReLU(0.2),
                                      ResConv(2 * width, periodic), ResConv(2 * width, periodic))
            self.head = nn.Conv2d(2 * width, 2 * c_lat, 1)
        elif arch == "mlp":
            hid = 16 * width
            self.mlp = nn.Sequential(nn.Linear(m, hid), nn.LeakyReLU(0.2), nn.Linear(hid, hid), nn.LeakyReLU(0.2),
                                     nn.Linear(hid, 2 * c_lat * h_lat * h_lat))
        else:
            raise ValueError(f"unknown observation encoder arch {arch!r}; valid: conv, mlp")

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N = y.shape[0]
        if self.arch == "mlp":
            out = self.mlp(y).reshape(N, 2 * self.c_lat, self.h_lat, self.h_lat)
        else:
            c, ho, wo = self.lattice
            img = y.reshape(N, ho, wo, c).permute(0, 3, 1, 2)
            h = self.pre(img)
            h = F.interpolate(h, size=(self.h_lat, self.h_lat), mode="bilinear", align_corners=False)
            out = self.head(self.post(h))
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """``D``: ``(N, c_lat, h, h)`` latent -> ``(N, C, n, n)`` normalised state.

    A 3 x 3 conv and a residual block at ``h``; then per x2 stage a bilinear upsampling, a 3 x 3 conv halving
    the channels and (below ``n/2``) a residual block; the last x2 is a 3 x 3 conv to ``4C`` channels and a
    pixel shuffle (no convolution at the full resolution), followed by a bilinear resize when ``h 2^k != n``.
    """

    def __init__(self, n_fields: int, n: int, c_lat: int, h_lat: int, width: int, periodic: bool):
        super().__init__()
        k = n_stages(n, h_lat)
        self.n = n
        self.shuffle = k >= 1
        ch = width * min(2 ** max(k - 1, 0), 8)
        self.inp = nn.Sequential(_conv(c_lat, ch, 3, 1, periodic), nn.LeakyReLU(0.2), ResConv(ch, periodic))
        ups: list[nn.Module] = []
        for i in range(k - 1):
            out = width * min(2 ** (k - i - 2), 8)
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    _conv(ch, out, 3, 1, periodic), nn.LeakyReLU(0.2)]
            if i < k - 2:
                ups.append(ResConv(out, periodic))
            ch = out
        self.ups = nn.Sequential(*ups)
        self.out = _conv(ch, 4 * n_fields if self.shuffle else n_fields, 3, 1, periodic)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.out(self.ups(self.inp(z)))
        if self.shuffle:
            h = F.pixel_shuffle(h, 2)
        if h.shape[-2:] != (self.n, self.n):
            h = F.interpolate(h, size=(self.n, self.n), mode="bilinear", align_corners=False)
        return h


class PODStateMap(nn.Module):
    """A linear, whitened POD state path: ``E_x(x) = Phi^T (x - m) / s`` and ``D(z) = m + Phi (s z)``.

    ``Phi`` holds the leading ``K = c_lat h_lat^2`` POD modes of the (normalised) training snapshots (orthonormal
    columns over all grid points and fields), ``m`` their mean and ``s`` each mode's RMS training coefficient, all
    set by :meth:`fit_basis` and stored as buffers. The latent map ``(c_lat, h_lat, h_lat)`` is the coefficient
    vector reshaped (mode ``k`` at flat index ``k``): it has no spatial meaning. The encoder's log-variance is one
    trained value per mode (``logvar``), the same for every state. ``D(E_x(x))`` is the projection of ``x`` onto
    the modes, so the state path's error is the modes' projection residual.
    """

    def __init__(self, n_fields: int, n: int, c_lat: int, h_lat: int, logvar0: float = -6.0):
        super().__init__()
        self.shape = (n_fields, n, n)
        self.lat = (c_lat, h_lat, h_lat)
        K, D = c_lat * h_lat * h_lat, n_fields * n * n
        self.register_buffer("modes", torch.zeros(K, D))
        self.register_buffer("mean", torch.zeros(D))
        self.register_buffer("scale", torch.ones(K))
        self.logvar = nn.Parameter(torch.full((K,), float(logvar0)))

    @torch.no_grad()
    def fit_basis(self, X: torch.Tensor) -> float:
        """Mean, modes and coefficient RMS from normalised snapshots ``X (N, C, n, n)`` (float64 eigenproblem of
        the snapshot Gram matrix); returns the fraction of the centred energy of ``X`` the modes miss."""
        mu, U, coeffs, missed = pod_basis(X.reshape(X.shape[0], -1), self.modes.shape[0])
        rms = coeffs.pow(2).mean(0).sqrt()
        self.modes.copy_(U.T.float())
        self.mean.copy_(mu.float())
        self.scale.copy_(torch.where(rms > 1e-12, rms, torch.ones_like(rms)).float())
        return missed

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = (x.reshape(x.shape[0], -1) - self.mean.to(x.dtype)) @ self.modes.T.to(x.dtype)
        mu = (c / self.scale.to(x.dtype)).reshape(x.shape[0], *self.lat)
        return mu, self.logvar.to(x.dtype).reshape(1, *self.lat).expand_as(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        c = z.reshape(z.shape[0], -1) * self.scale.to(z.dtype)
        return (c @ self.modes.to(z.dtype) + self.mean.to(z.dtype)).reshape(z.shape[0], *self.shape)


@dataclass(frozen=True)
class VAEConfig:
    """Everything that builds a :class:`CoupledVAE`.

    Parameters
    ----------
    n_fields, n : state shape ``(n_fields, n, n)``.
    m : observation length.
    c_lat, h_lat : latent shape ``(c_lat, h_lat, h_lat)``.
    width : base channel count (encoder/decoder channels ``width * 2^stage``, capped at ``8 width``).
    obs_arch : ``conv`` (lattice layouts) or ``mlp``.
    lattice : ``(c_obs, h_obs, w_obs)`` of a lattice observer (``conv`` only).
    periodic : circular padding.
    obs_mean, obs_std : ``(m,)`` normalisation of raw observations (``y_n = (y - mean) / std``).
    seed : initialisation seed.
    state_arch : ``conv`` (the convolutional ``E_x`` and ``D``) or ``pod`` (:class:`PODStateMap`; needs
        ``obs_arch='mlp'``; the basis is set by :meth:`CoupledVAE.fit_basis`).

    :meth:`as_dict` is the artifact's ``networks`` entry; ``VAEConfig(**entry)`` rebuilds it.
    """

    n_fields: int
    n: int
    m: int
    c_lat: int
    h_lat: int
    width: int
    obs_arch: Literal["conv", "mlp"]
    lattice: list[int] | None
    periodic: bool
    obs_mean: list[float]
    obs_std: list[float]
    seed: int = 0
    state_arch: Literal["conv", "pod"] = "conv"

    def as_dict(self) -> dict:
        """The plain-dict form stored in an artifact's ``networks``."""
        return dict(n_fields=self.n_fields, n=self.n, m=self.m, c_lat=self.c_lat, h_lat=self.h_lat,
                    width=self.width, obs_arch=self.obs_arch,
                    lattice=list(self.lattice) if self.lattice is not None else None, periodic=self.periodic,
                    obs_mean=[float(v) for v in self.obs_mean], obs_std=[float(v) for v in self.obs_std],
                    seed=self.seed, state_arch=self.state_arch)


class CoupledVAE(nn.Module):
    """``E_x``, ``E_y`` and the shared ``D`` of Latent-EnSF, plus the observation normalisation, built from a
    :class:`VAEConfig`."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        n_fields, n, c_lat, h_lat, width, periodic = cfg.n_fields, cfg.n, cfg.c_lat, cfg.h_lat, cfg.width, cfg.periodic
        g = torch.Generator().manual_seed(cfg.seed)
        if cfg.state_arch == "pod":
            if cfg.obs_arch != "mlp":
                raise ValueError("the POD state path has no spatial latent map: it needs obs_arch='mlp'")
            self.pod = PODStateMap(n_fields, n, c_lat, h_lat)
        elif cfg.state_arch == "conv":
            self.pod = None
            self.enc_x = _init_(StateEncoder(n_fields, n, c_lat, h_lat, width, periodic), g)
        else:
            raise ValueError(f"unknown state_arch {cfg.state_arch!r}; valid: conv, pod")
        self.enc_y = _init_(VAEObsEncoder(cfg.m, c_lat, h_lat, width, cfg.obs_arch,
                                          tuple(cfg.lattice) if cfg.lattice is not None else None, periodic), g)
        if self.pod is None:
            self.dec = _init_(Decoder(n_fields, n, c_lat, h_lat, width, periodic), g)
            _init_head_(self.enc_x.head, c_lat)
        _init_head_(self.enc_y.head if cfg.obs_arch == "conv" else self.enc_y.mlp[-1], c_lat)
        self.register_buffer("obs_mean", torch.tensor(cfg.obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.tensor(cfg.obs_std, dtype=torch.float32))

    # ---- config ----------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """The artifact's ``networks`` entry (:meth:`VAEConfig.as_dict`)."""
        return self.cfg.as_dict()

    @classmethod
    def from_config(cls, cfg: dict) -> "CoupledVAE":
        """Rebuild from an artifact's ``networks`` entry."""
        return cls(VAEConfig(**cfg))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.cfg.c_lat, self.cfg.h_lat, self.cfg.h_lat)

    @property
    def latent_dim(self) -> int:
        return math.prod(self.latent_shape)

    # ---- maps --------------------------------------------------------------------------------------------------
    def normalize_obs(self, y: torch.Tensor) -> torch.Tensor:
        """Raw observations ``(N, m)`` -> normalised."""
        return (y - self.obs_mean.to(y.dtype)) / self.obs_std.to(y.dtype)

    def fit_basis(self, X: torch.Tensor) -> float:
        """``state_arch='pod'``: set the modes from normalised training snapshots (:meth:`PODStateMap.fit_basis`);
        returns the fraction of their centred energy the modes miss."""
        if self.pod is None:
            raise ValueError("fit_basis needs state_arch='pod'")
        return self.pod.fit_basis(X)

    def encode_x(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised states ``(N, C, n, n)`` -> ``mu, logvar`` each ``(N, c_lat, h, h)``."""
        return self.pod.encode(x) if self.pod is not None else self.enc_x(x)

    def encode_y(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised observations ``(N, m)`` -> ``mu, logvar`` each ``(N, c_lat, h, h)``."""
        return self.enc_y(y)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, c_lat, h, h)`` (or flat ``(N, d_lat)``) -> normalised states ``(N, C, n, n)``."""
        if z.dim() == 2:
            z = z.reshape(z.shape[0], *self.latent_shape)
        return self.pod.decode(z) if self.pod is not None else self.dec(z)


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, e^logvar) || N(0, 1))`` per element (same shape as ``mu``)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def vae_loss(vae: CoupledVAE, x: torch.Tensor, y: torch.Tensor, beta: float, lam: float,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The coupled loss on a batch of normalised states ``x (B, C, n, n)`` and observations ``y (B, m)``.

    ``L = rec_x + rec_y + beta (KL_x + KL_y) + lam Match`` with ``rec_* = mean (x - D(z_*))^2`` (reparameterised
    ``z_* = mu_* + e^{logvar_*/2} eps``), ``KL_*`` the mean per-element KL to ``N(0, 1)`` and
    ``Match = mean (mu_x - mu_y)^2 + mean (logvar_x - logvar_y)^2``. Means (not sums) over elements: with
    ``beta = 1`` this is the sum-reduced loss with the KL down-weighted by ``d_lat / d_state``; the
    default ``beta`` is much smaller (beta-VAE style), so reconstructions stay accurate.
    Returns the loss and its parts (detached).
    """
    mu_x, lv_x = vae.encode_x(x)
    mu_y, lv_y = vae.encode_y(y)
    lv_x, lv_y = lv_x.clamp(-20, 10), lv_y.clamp(-20, 10)
    eps = torch.randn((2, *mu_x.shape), generator=generator).to(x.device, x.dtype)
    z = torch.cat([mu_x + (0.5 * lv_x).exp() * eps[0], mu_y + (0.5 * lv_y).exp() * eps[1]])
    rec = vae.decode(z)
    B = x.shape[0]
    rec_x = (rec[:B] - x).pow(2).mean()
    rec_y = (rec[B:] - x).pow(2).mean()
    kl = kl_normal(mu_x, lv_x).mean() + kl_normal(mu_y, lv_y).mean()
    match = (mu_x - mu_y).pow(2).mean() + (lv_x - lv_y).pow(2).mean()
    loss = rec_x + rec_y + beta * kl + lam * match
    return loss, dict(rec_x=rec_x.detach(), rec_y=rec_y.detach(), kl=kl.detach(), match=match.detach())
