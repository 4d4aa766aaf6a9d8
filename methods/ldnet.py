"""Latent-dynamics networks (LDNet: Regazzoni et al., Nat. Commun. 15, 1834, 2024; as modified by LD-EnSF) and the
causal LSTM observation encoder (:class:`LSTMEncoder`).

All networks work in normalised units:

- fields: z-score per field with the training statistics (``Dataset.normalize``);
- coordinates: each axis mapped affinely to [-1, 1] (``coord_lo``/``coord_hi`` are stored in the config);
- parameters: the prior box ``problem.param_bounds`` mapped to [-1, 1];
- time: one latent Euler step of size ``dt_lat`` per observation interval.

The dynamics network ``F`` advances the latent state, ``s_t = s_{t-1} + dt_lat F(s_{t-1}, u)``, from
``s_{-1} = 0``, so the first stored snapshot is ``s_0 = dt_lat F(0, u)`` (the parameters encode the initial
condition). The reconstruction network ``R(s, xi)`` maps a latent state and a point ``xi`` to the field values
there; it is a pointwise (grid-free) network, so a state can be decoded at any set of points.

Each network is built from a config dataclass (:class:`LDNetConfig`, :class:`LSTMEncoderConfig`); its plain-dict
form (``config()``, rebuilt by ``from_config``) is what the artifact cache stores next to the float32 weights.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from methods.pod import pod_basis
from problems.base import Dataset, Problem

Act = Literal["relu", "tanh", "gelu", "silu"]


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}[name]()


def glorot_(layer: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """Glorot-normal weights and zero biases (the LD-EnSF / DeepXDE initialisation)."""
    with torch.no_grad():
        nn.init.xavier_normal_(layer.weight, generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


class MLP(nn.Module):
    """Plain MLP ``in_dim -> depth x width -> out_dim`` (the dynamics network ``F``)."""

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int, act: Act, generator: torch.Generator):
        super().__init__()
        dims = [in_dim] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [glorot_(nn.Linear(a, b), generator), _act(act)]
        layers.append(glorot_(nn.Linear(dims[-1], out_dim), generator))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FourierFeatures(nn.Module):
    """``xi (..., k) -> [sin(2 pi xi B^T), cos(2 pi xi B^T)] (..., 2m)``, ``B (m, k)`` (trainable by default).

    ``B`` is drawn N(0, scale^2) from ``generator``; the paper trains it [REV], the released code freezes it.
    """

    def __init__(self, in_dim: int, n_features: int, scale: float, trainable: bool, generator: torch.Generator):
        super().__init__()
        B = scale * torch.randn(n_features, in_dim, generator=generator)
        self.B = nn.Parameter(B, requires_grad=trainable)

    def forward(self, xi: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * xi @ self.B.T
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class ResMLP(nn.Module):
    """The reconstruction network ``R(s, xi)``: a residual MLP applied pointwise.

    Structure for depth ``D`` and width ``W`` (LD-EnSF's ResNN): an input layer + act; ``(D-1)//2`` residual
    blocks ``h <- act(L2(act(L1 h)) + h)``; one more Linear + act when ``D-1`` is odd; a linear output layer.
    With ``film`` every hidden layer's pre-activation is also modulated by the latent state,
    ``a <- a (1 + g_k(s)) + b_k(s)`` (FiLM; not in the paper: an option for faster training).
    The input layer acting on ``[s, gamma(xi)]`` is split into ``W_s s + W_x gamma(xi) + b`` (the same map), so
    the latent part is computed once per snapshot and broadcast over its points.
    """

    def __init__(self, latent_dim: int, coord_dim: int, out_dim: int, width: int, depth: int, act: Act,
                 n_fourier: int, fourier_scale: float, train_fourier: bool, generator: torch.Generator,
                 film: bool = False, latent_fourier: int = 0, latent_fourier_scale: float = 1.0):
        super().__init__()
        self.fourier = FourierFeatures(coord_dim, n_fourier, fourier_scale, train_fourier, generator) \
            if n_fourier > 0 else None
        feat_dim = 2 * n_fourier if n_fourier > 0 else coord_dim
        # trainable Fourier features of the latent state beside it, feeding the input layer and the FiLM maps
        self.latent_fourier = FourierFeatures(latent_dim, latent_fourier, latent_fourier_scale, True, generator) \
            if latent_fourier > 0 and latent_dim > 0 else None
        if self.latent_fourier is not None:
            latent_dim = latent_dim + 2 * latent_fourier
        # one Glorot draw for the whole input layer, then split (same init as the concatenated layer)
        full = glorot_(nn.Linear(latent_dim + feat_dim, width), generator)
        self.in_s = nn.Linear(latent_dim, width)
        self.in_x = nn.Linear(feat_dim, width, bias=False)
        with torch.no_grad():
            self.in_s.weight.copy_(full.weight[:, :latent_dim])
            self.in_s.bias.copy_(full.bias)
            self.in_x.weight.copy_(full.weight[:, latent_dim:])
        self.act = _act(act)
        n_blocks = (depth - 1) // 2
        self.blocks = nn.ModuleList(
            nn.ModuleList([glorot_(nn.Linear(width, width), generator), glorot_(nn.Linear(width, width), generator)])
            for _ in range(n_blocks))
        self.extra = glorot_(nn.Linear(width, width), generator) if (depth - 1) % 2 == 1 else None
        self.out = glorot_(nn.Linear(width, out_dim), generator)
        # FiLM: per hidden layer a scale and shift from the latent state, zero at initialisation (so training
        # starts from the plain network); computed once per snapshot and broadcast over its points
        n_mod = n_blocks + (1 if self.extra is not None else 0)
        self.film = nn.ModuleList(nn.Linear(latent_dim, 2 * width) for _ in range(n_mod)) \
            if film and latent_dim > 0 else None
        if self.film is not None:
            with torch.no_grad():
                for lin in self.film:
                    lin.weight.zero_()
                    lin.bias.zero_()

    def features(self, xi: torch.Tensor) -> torch.Tensor:
        return self.fourier(xi) if self.fourier is not None else xi

    def _act_(self, x: torch.Tensor) -> torch.Tensor:
        """The activation applied in place (out of place for GELU, which has no in-place form)."""
        if isinstance(self.act, nn.ReLU):
            return x.clamp_min_(0)
        if isinstance(self.act, nn.Tanh):
            return x.tanh_()
        if isinstance(self.act, nn.SiLU):
            return nn.functional.silu(x, inplace=True)
        return self.act(x)

    def _decode_grid(self, s: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without autograd for ``s (B, d)`` (latent features included) on the points
        ``xi (n, k)``: the same operations in the same order, with the ``(B n, W)`` hidden states updated in
        place and every layer one matrix product over all members and points. Decoding an ensemble on a grid is
        bound by the elementwise work on those states, which the general path does out of place (about twice
        the time on a CPU)."""
        B, n, W = s.shape[0], xi.shape[0], self.in_s.out_features
        h = self._act_(self.in_s(s).unsqueeze(1) + self.in_x(self.features(xi)))  # (B, n, W)
        mods = [m(s).unsqueeze(1).chunk(2, dim=-1) for m in self.film] if self.film is not None else None
        h = h.view(B * n, W)

        def modulated(layer: nn.Linear, k: int) -> torch.Tensor:
            a = torch.addmm(layer.bias, h, layer.weight.t())
            if mods is not None:
                a3 = a.view(B, n, W)
                a3.mul_(1 + mods[k][0]).add_(mods[k][1])
            return self._act_(a)

        for k, (l1, l2) in enumerate(self.blocks):
            a = modulated(l1, k)
            h = self._act_(torch.addmm(l2.bias, a, l2.weight.t()).add_(h))
        if self.extra is not None:
            h = modulated(self.extra, len(self.blocks))
        return torch.addmm(self.out.bias, h, self.out.weight.t()).view(B, n, -1)

    def forward(self, s: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """``s (..., d_s)`` and ``xi (..., n, k)`` (broadcastable batch dims) -> ``(..., n, out_dim)``."""
        if self.latent_fourier is not None:
            s = torch.cat([s, self.latent_fourier(s)], dim=-1)
        if not torch.is_grad_enabled() and s.dim() == 2 and xi.dim() == 2:
            return self._decode_grid(s, xi)
        h = self.act(self.in_s(s).unsqueeze(-2) + self.in_x(self.features(xi)))
        mods = [m(s).unsqueeze(-2).chunk(2, dim=-1) for m in self.film] if self.film is not None else None
        for k, (l1, l2) in enumerate(self.blocks):
            a = l1(h)
            if mods is not None:
                a = a * (1 + mods[k][0]) + mods[k][1]
            h = self.act(l2(self.act(a)) + h)
        if self.extra is not None:
            a = self.extra(h)
            if mods is not None:
                a = a * (1 + mods[-1][0]) + mods[-1][1]
            h = self.act(a)
        return self.out(h)


class SeparableDecoder(nn.Module):
    """A separable (DeepONet-style) alternative for ``R``: ``R_c(s, xi) = sum_k b_kc(s) t_k(xi) + c_c``.

    ``b`` is an MLP of the latent state, ``t`` a residual MLP of the (Fourier-featured) coordinates. Decoding a
    batch of snapshots on the full grid is one matrix product after one trunk evaluation of the grid, which
    makes full-grid training steps cheap on a CPU. Still a continuous function of ``xi``.
    """

    def __init__(self, latent_dim: int, coord_dim: int, out_dim: int, width: int, depth: int, act: Act,
                 n_fourier: int, fourier_scale: float, train_fourier: bool, n_basis: int,
                 generator: torch.Generator):
        super().__init__()
        self.out_dim, self.n_basis = out_dim, n_basis
        self.trunk = ResMLP(0, coord_dim, n_basis, width, depth, act, n_fourier, fourier_scale, train_fourier,
                            generator)
        self.branch = MLP(latent_dim, n_basis * out_dim, width, max(depth // 2, 1), act, generator)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def basis(self, xi: torch.Tensor) -> torch.Tensor:
        """``xi (..., n, k) -> (..., n, n_basis)``."""
        empty = xi.new_zeros(xi.shape[:-2] + (0,))
        return self.trunk(empty, xi) / math.sqrt(self.n_basis)

    def forward(self, s: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        b = self.branch(s).unflatten(-1, (self.n_basis, self.out_dim))   # (..., K, C)
        t = self.basis(xi)                                               # (..., n, K)
        return t @ b + self.bias


class RegisteredDecoder(nn.Module):
    """A registered (moving-frame) alternative for ``R``: fields as a sum over ``K`` learned moving frames.

    ``R(s, xi) = (1/K) sum_k g(s, xi - c_k(s), e_k)`` where the frame origins ``c_k(s)`` (``K`` points per
    snapshot) are predicted from the latent state by a small MLP, ``e_k`` is a learned per-frame code, and ``g``
    is one FiLM residual MLP (shared by the frames) over the relative coordinates ``d_k = xi - c_k``, their length
    ``|d_k|``, Fourier features of both, and the absolute coordinates. A field that translates with a parameter
    (a bump, a wave front, their mirror images at walls) is then a fixed function of the relative coordinates, so
    the network need not interpolate a translation between the training samples; superposing frames represents
    reflections (the linear sum of image sources). Frame origins start on a lattice spanning
    ``[-spread, spread]^k`` (normalised coordinates) and move freely.
    """

    def __init__(self, latent_dim: int, coord_dim: int, out_dim: int, width: int, depth: int, act: Act,
                 n_fourier: int, fourier_scale: float, train_fourier: bool, n_shifts: int,
                 generator: torch.Generator, spread: float = 1.5):
        super().__init__()
        self.n_shifts, self.coord_dim = n_shifts, coord_dim
        self.shift = MLP(latent_dim, n_shifts * coord_dim, width, 2, "tanh", generator)
        side = max(1, math.ceil(n_shifts ** (1.0 / coord_dim)))
        axis = torch.linspace(-spread, spread, side) if side > 1 else torch.zeros(1)
        lattice = torch.cartesian_prod(*([axis] * coord_dim)).reshape(-1, coord_dim)[:n_shifts]
        with torch.no_grad():  # start at the lattice, small latent dependence
            self.shift.net[-1].weight.mul_(0.1)
            self.shift.net[-1].bias.copy_(lattice.reshape(-1))
        # g's input: d_k, |d_k|, xi (absolute) -> Fourier features of (d_k, |d_k|) + the raw values
        self.rel = ResMLP(latent_dim, coord_dim + 1, out_dim, width, depth, act, n_fourier, fourier_scale,
                          train_fourier, generator, film=True)
        self.raw = nn.Linear(2 * coord_dim + 1, width, bias=False)
        with torch.no_grad():
            nn.init.xavier_normal_(self.raw.weight, generator=generator)
        self.code = nn.Parameter(0.1 * torch.randn(n_shifts, width, generator=generator))

    def centres(self, s: torch.Tensor) -> torch.Tensor:
        """Frame origins ``(..., K, k)`` of latent states ``s (..., d_s)`` (normalised coordinates)."""
        return self.shift(s).unflatten(-1, (self.n_shifts, self.coord_dim))

    def forward(self, s: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """``s (..., d_s)`` and ``xi (..., n, k)`` -> ``(..., n, out_dim)``."""
        c = self.centres(s)                                                     # (..., K, k)
        d = xi.unsqueeze(-3) - c.unsqueeze(-2)                                  # (..., K, n, k)
        r = (d.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
        rel = torch.cat([d, r], dim=-1)                                         # (..., K, n, k+1)
        raw = torch.cat([rel, xi.unsqueeze(-3).expand(d.shape)], dim=-1)
        net = self.rel
        s_k = s.unsqueeze(-2)                                                   # (..., 1, d_s)
        a0 = net.in_s(s_k).unsqueeze(-2) + net.in_x(net.features(rel)) + self.raw(raw) \
            + self.code.unsqueeze(-2)
        h = net.act(a0)
        mods = [m(s_k).unsqueeze(-2).chunk(2, dim=-1) for m in net.film]
        for k, (l1, l2) in enumerate(net.blocks):
            a = l1(h) * (1 + mods[k][0]) + mods[k][1]
            h = net.act(l2(net.act(a)) + h)
        if net.extra is not None:
            h = net.act(net.extra(h) * (1 + mods[-1][0]) + mods[-1][1])
        return net.out(h).mean(-3)  # the mean, not the sum: K coherent frames would start K times too large


class PODDecoder(nn.Module):
    """A POD head for ``R`` on a regular grid: ``R(s, xi) = m(xi) + sum_k c_k(s) phi_k(xi)``.

    ``phi_k`` are the leading ``n_modes`` POD modes (orthonormal over the grid's points and fields) and ``m`` the
    mean of the training snapshots, both computed from the training split by :meth:`fit_basis` and stored as
    buffers (saved with the weights); ``c`` is an MLP of the latent state. Decoding a batch of snapshots on the
    full grid is one matrix product, and a training step needs no point sampling: with orthonormal modes the
    squared error of the coefficients equals the squared error of the fields in the modes' span (the rest, the
    projection residual, is a constant). Values between the grid points are bilinear interpolants of the modes;
    at the grid points they are the modes' exact values.

    ``grid_shape`` is the point layout, ``(ny, nx)`` with the point index ``i nx + j`` (rows first, as the
    problems' ``coords()``); a 1-D problem is ``(1, n)``. Normalised coordinates ``-1`` and ``1`` are the first
    and last grid point of each axis.
    """

    def __init__(self, latent_dim: int, coord_dim: int, out_dim: int, width: int, depth: int, act: Act,
                 n_modes: int, grid_shape: list[int], generator: torch.Generator, n_fourier: int = 0,
                 fourier_scale: float = 1.0):
        super().__init__()
        if coord_dim not in (1, 2) or len(grid_shape) != 2:
            raise ValueError(f"the POD decoder needs a 1-D or 2-D regular grid, got coord_dim={coord_dim}, "
                             f"grid_shape={grid_shape}")
        self.out_dim, self.n_modes, self.coord_dim = out_dim, n_modes, coord_dim
        self.grid_shape = (int(grid_shape[0]), int(grid_shape[1]))
        #: trainable Fourier features of the latent state beside the state itself (None = the state alone): an
        #: MLP of a few smooth inputs fits slowly varying maps first (spectral bias); the features let it follow
        #: coefficients that change quickly along the latent trajectories
        self.fourier = FourierFeatures(latent_dim, n_fourier, fourier_scale, True, generator) \
            if n_fourier > 0 else None
        self.coef = MLP(latent_dim + 2 * n_fourier, n_modes, width, depth, act, generator)
        ny, nx = self.grid_shape
        self.register_buffer("modes", torch.zeros(n_modes, out_dim, ny, nx))
        self.register_buffer("mean", torch.zeros(out_dim, ny, nx))
        #: RMS of each mode's training coefficient: the MLP predicts coefficients in these units
        self.register_buffer("scale", torch.ones(n_modes))
        #: 1 when the first coordinate varies along the first grid axis (points listed x-major), else 0
        self.register_buffer("x_major", torch.zeros((), dtype=torch.uint8))
        self._cache: tuple | None = None

    @torch.no_grad()
    def fit_basis(self, Z: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Set the mean and modes from snapshots ``Z (m, P, C)`` (normalised, point-major) on the grid points
        ``xi (P, k)`` (normalised coordinates, a regular grid spanning [-1, 1] per axis); returns the coefficients
        of ``Z`` ``(m, n_modes)`` and the fraction of the centred energy the modes miss."""
        m, P, C = Z.shape
        ny, nx = self.grid_shape
        grid = xi.reshape(ny, nx, -1).to(torch.float64)
        if self.coord_dim == 2 and ny > 1 and nx > 1:
            along_rows = (grid[1, 0, 0] - grid[0, 0, 0]).abs() > (grid[0, 1, 0] - grid[0, 0, 0]).abs()
            self.x_major.fill_(int(along_rows))
            image = grid.transpose(0, 1) if along_rows else grid                # (.., .., (x, y)) image order
            expect = torch.stack(torch.meshgrid(torch.linspace(-1, 1, image.shape[1], dtype=torch.float64),
                                                torch.linspace(-1, 1, image.shape[0], dtype=torch.float64),
                                                indexing="xy"), -1)
        else:
            expect = torch.linspace(-1, 1, P, dtype=torch.float64).reshape(ny, nx, 1)
            image = grid
        if not torch.allclose(image, expect, atol=1e-5):
            raise ValueError("the POD decoder needs the points of a regular grid spanning [-1, 1] per axis")
        mu, U, coeffs, missed = pod_basis(Z.reshape(m, P * C), self.n_modes)  # U: (P C, K), orthonormal
        rms = coeffs.pow(2).mean(0).sqrt()
        self.scale.copy_(torch.where(rms > 0, rms, torch.ones_like(rms)).float())
        self.mean.copy_(mu.reshape(P, C).T.reshape(C, ny, nx).float())
        self.modes.copy_(U.T.reshape(self.n_modes, P, C).transpose(1, 2).reshape(self.n_modes, C, ny, nx).float())
        self._cache = None
        return coeffs.float(), missed

    def predict(self, s: torch.Tensor) -> torch.Tensor:
        """The modes' coefficients of latent states ``s (..., d_s)``: ``(..., n_modes)``."""
        if self.fourier is not None:
            s = torch.cat([s, self.fourier(s)], dim=-1)
        return self.coef(s) * self.scale.to(s.dtype)

    def coefficients(self, Z: torch.Tensor) -> torch.Tensor:
        """Coefficients of full-grid snapshots ``Z (..., P, C)`` on the modes: ``(..., n_modes)``."""
        C = self.out_dim
        mu = self.mean.reshape(C, -1).T.to(Z.dtype)                         # (P, C)
        phi = self.modes.reshape(self.n_modes, C, -1).transpose(1, 2).to(Z.dtype)  # (K, P, C)
        return torch.einsum("...pc,kpc->...k", Z - mu, phi)

    def _at(self, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (n, C), modes (n, C, K))`` at normalised points ``xi (n, k)`` (bilinear; exact on the grid)."""
        key = (xi.data_ptr(), tuple(xi.shape), xi._version, xi.device, xi.dtype, self.modes._version)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        g = xi.reshape(1, 1, -1, xi.shape[-1]).to(self.modes.dtype)
        if self.coord_dim == 1:                                              # x only; the single row is y = 0
            g = torch.cat([g, torch.zeros_like(g)], dim=-1)
        C, K = self.out_dim, self.n_modes
        stack = torch.cat([self.mean.unsqueeze(0), self.modes]).reshape(1, (K + 1) * C, *self.grid_shape)
        if int(self.x_major):  # image rows must follow y: the grid's first axis is x here
            stack = stack.transpose(-1, -2)
        val = nn.functional.grid_sample(stack, g, mode="bilinear", align_corners=True)  # (1, (K+1) C, 1, n)
        val = val.reshape(K + 1, C, -1).permute(2, 1, 0)                     # (n, C, K + 1)
        out = (val[..., 0].contiguous(), val[..., 1:].contiguous())
        self._cache = (key, *out)
        return out

    def forward(self, s: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """``s (..., d_s)`` and ``xi (n, k)`` -> ``(..., n, out_dim)``; a batched ``xi (..., n, k)`` (sampled
        points per snapshot) is decoded point by point."""
        c = self.predict(s)                                                  # (..., K)
        if xi.dim() == 2:
            mu, phi = self._at(xi)
            return mu.to(c.dtype) + torch.einsum("...k,nck->...nc", c, phi.to(c.dtype))
        mu, phi = self._at(xi.reshape(-1, xi.shape[-1]))
        mu = mu.reshape(*xi.shape[:-1], self.out_dim)
        phi = phi.reshape(*xi.shape[:-1], self.out_dim, self.n_modes)
        return mu.to(c.dtype) + torch.einsum("...k,...nck->...nc", c, phi.to(c.dtype))


@dataclass(frozen=True)
class LDNetConfig:
    """Everything that builds an :class:`LDNet` (sizes, architecture, initialisation seed, output map).

    Parameters
    ----------
    latent_dim : d_s, the latent state size.
    n_params : d_u, the number of (normalised) parameters fed to ``F`` at every step.
    n_fields : C, outputs of ``R`` per point.
    coord_dim : k, spatial dimension of the points.
    dt_lat : latent Euler step per observation interval.
    coord_lo, coord_hi : per-axis physical coordinate range mapped to [-1, 1].
    dyn_width, dyn_depth : the dynamics MLP ``F``.
    rec_arch : the reconstruction network ``R``: ``resmlp`` (:class:`ResMLP`), ``separable``
        (:class:`SeparableDecoder`), ``registered`` (:class:`RegisteredDecoder`) or ``pod`` (:class:`PODDecoder`).
    rec_width, rec_depth, n_basis, n_shifts : sizes of ``R`` (``n_basis``: separable, ``n_shifts``: registered).
    n_fourier, fourier_scale, train_fourier : Fourier features of the coordinates (0 = raw coordinates).
    act : activation; seed : initialisation seed; film : FiLM conditioning of a ``resmlp`` ``R``.
    out_scale, out_shift : output map per field (z-score units = raw * scale + shift), None = identity.
    rec_params : ``R`` decodes ``(s, u)`` instead of ``s``.
    grid_shape : the point layout of a ``pod`` ``R`` (:class:`PODDecoder`), required there.
    rec_fourier, rec_fourier_scale : trainable Fourier features of the latent input of a ``pod`` or ``resmlp``
        ``R`` (0 = the latent state alone).

    :meth:`as_dict` is the artifact's ``networks`` entry (plain JSON values; the later-added keys ``film``,
    ``n_shifts``, ``rec_params``, ``out_scale``/``out_shift`` only where they matter, so the entries of networks
    made before them read the same); ``LDNetConfig(**entry)`` rebuilds it.
    """

    latent_dim: int
    n_params: int
    n_fields: int
    coord_dim: int
    dt_lat: float
    coord_lo: list[float]
    coord_hi: list[float]
    dyn_width: int = 64
    dyn_depth: int = 4
    rec_arch: Literal["resmlp", "separable", "registered", "pod"] = "resmlp"
    rec_width: int = 64
    rec_depth: int = 4
    n_fourier: int = 0
    fourier_scale: float = 1.0
    train_fourier: bool = True
    n_basis: int = 64
    act: Act = "relu"
    seed: int = 0
    film: bool = False
    n_shifts: int = 0
    out_scale: list[float] | None = None
    out_shift: list[float] | None = None
    rec_params: bool = False
    grid_shape: list[int] | None = None
    rec_fourier: int = 0
    rec_fourier_scale: float = 1.0

    def as_dict(self) -> dict:
        """The plain-dict form stored in an artifact's ``networks``."""
        d = dict(latent_dim=self.latent_dim, n_params=self.n_params, n_fields=self.n_fields,
                 coord_dim=self.coord_dim, dt_lat=float(self.dt_lat), coord_lo=[float(v) for v in self.coord_lo],
                 coord_hi=[float(v) for v in self.coord_hi], dyn_width=self.dyn_width, dyn_depth=self.dyn_depth,
                 rec_arch=self.rec_arch, rec_width=self.rec_width, rec_depth=self.rec_depth,
                 n_fourier=self.n_fourier, fourier_scale=float(self.fourier_scale),
                 train_fourier=self.train_fourier, n_basis=self.n_basis, act=self.act, seed=self.seed)
        if self.film:  # only when on: configs of networks without it stay as they were
            d["film"] = True
        if self.rec_arch == "registered":
            d["n_shifts"] = self.n_shifts
        if self.rec_params:
            d["rec_params"] = True
        if self.rec_arch == "pod":
            d["grid_shape"] = [int(v) for v in self.grid_shape]
        if self.rec_fourier > 0 and self.rec_arch in ("pod", "resmlp"):
            d["rec_fourier"] = self.rec_fourier
            d["rec_fourier_scale"] = float(self.rec_fourier_scale)
        if self.out_scale is not None or self.out_shift is not None:
            d["out_scale"] = [float(v) for v in (self.out_scale if self.out_scale is not None
                                                 else [1.0] * self.n_fields)]
            d["out_shift"] = [float(v) for v in (self.out_shift if self.out_shift is not None
                                                 else [0.0] * self.n_fields)]
        return d


class LDNet(nn.Module):
    """Latent dynamics ``F`` + reconstruction ``R`` (LD-EnSF's modified LDNet), in normalised units, built from
    an :class:`LDNetConfig`."""

    def __init__(self, cfg: LDNetConfig):
        super().__init__()
        self.cfg = cfg
        latent_dim, n_params, n_fields, coord_dim = cfg.latent_dim, cfg.n_params, cfg.n_fields, cfg.coord_dim
        self.rec_params = bool(cfg.rec_params)
        rec_in = latent_dim + (n_params if cfg.rec_params else 0)  # R sees (s, u) when rec_params
        g = torch.Generator().manual_seed(cfg.seed)
        self.latent_dim, self.n_params, self.dt_lat = latent_dim, n_params, float(cfg.dt_lat)
        self.dyn = MLP(latent_dim + n_params, latent_dim, cfg.dyn_width, cfg.dyn_depth, cfg.act, g)
        features = dict(n_fourier=cfg.n_fourier, fourier_scale=cfg.fourier_scale, train_fourier=cfg.train_fourier)
        if cfg.rec_arch == "resmlp":
            self.rec: nn.Module = ResMLP(rec_in, coord_dim, n_fields, cfg.rec_width, cfg.rec_depth, cfg.act,
                                         **features, generator=g, film=cfg.film, latent_fourier=cfg.rec_fourier,
                                         latent_fourier_scale=cfg.rec_fourier_scale)
        elif cfg.rec_arch == "pod":
            if cfg.grid_shape is None:
                raise ValueError("rec_arch='pod' needs the grid_shape of the problem's points")
            self.rec = PODDecoder(rec_in, coord_dim, n_fields, cfg.rec_width, cfg.rec_depth, cfg.act, cfg.n_basis,
                                  list(cfg.grid_shape), g, n_fourier=cfg.rec_fourier,
                                  fourier_scale=cfg.rec_fourier_scale)
        elif cfg.rec_arch == "registered":
            self.rec = RegisteredDecoder(rec_in, coord_dim, n_fields, cfg.rec_width, cfg.rec_depth, cfg.act,
                                         **features, n_shifts=max(1, cfg.n_shifts), generator=g)
        else:
            self.rec = SeparableDecoder(rec_in, coord_dim, n_fields, cfg.rec_width, cfg.rec_depth, cfg.act,
                                        **features, n_basis=cfg.n_basis, generator=g)
        # output map (z-score units = raw * out_scale + out_shift); not in the state dict, the config holds it
        self.register_buffer("out_scale", torch.ones(n_fields), persistent=False)
        self.register_buffer("out_shift", torch.zeros(n_fields), persistent=False)
        if cfg.out_scale is not None or cfg.out_shift is not None:
            self.set_output_map(cfg.out_scale if cfg.out_scale is not None else [1.0] * n_fields,
                                cfg.out_shift if cfg.out_shift is not None else [0.0] * n_fields)
        self.register_buffer("coord_lo", torch.tensor(cfg.coord_lo, dtype=torch.float32))
        self.register_buffer("coord_hi", torch.tensor(cfg.coord_hi, dtype=torch.float32))

    # ---- config ----------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """The artifact's ``networks`` entry (:meth:`LDNetConfig.as_dict`)."""
        return self.cfg.as_dict()

    def set_output_map(self, scale: list[float], shift: list[float]) -> None:
        """Outputs in z-score units are ``R_raw * scale + shift`` per field (e.g. a min-max normalisation the
        network was trained in); recorded in the config."""
        with torch.no_grad():
            self.out_scale.copy_(torch.tensor(scale, dtype=torch.float32))
            self.out_shift.copy_(torch.tensor(shift, dtype=torch.float32))
        self.cfg = dataclasses.replace(self.cfg, out_scale=[float(v) for v in scale],
                                       out_shift=[float(v) for v in shift])

    @classmethod
    def from_config(cls, cfg: dict) -> "LDNet":
        """Rebuild from an artifact's ``networks`` entry."""
        return cls(LDNetConfig(**cfg))

    # ---- dynamics --------------------------------------------------------------------------------------------
    def velocity(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``F(s, u)``: ``s (..., d_s)``, ``u (..., d_u)`` -> ``(..., d_s)``."""
        return self.dyn(torch.cat([s, u], dim=-1))

    def step(self, s: torch.Tensor, u: torch.Tensor, frac: float = 1.0) -> torch.Tensor:
        """One forward-Euler latent step (of ``frac`` observation intervals)."""
        return s + frac * self.dt_lat * self.velocity(s, u)

    def initial(self, u: torch.Tensor) -> torch.Tensor:
        """``s_0 = dt_lat F(0, u)`` (from ``s_{-1} = 0``), ``u (..., d_u) -> (..., d_s)``."""
        return self.step(u.new_zeros(u.shape[:-1] + (self.latent_dim,)), u)

    def rollout(self, u: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Latent trajectories ``s_0 .. s_T``: ``u (B, d_u) -> (B, n_steps + 1, d_s)``."""
        s = self.initial(u)
        out = [s]
        for _ in range(n_steps):
            s = self.step(s, u)
            out.append(s)
        return torch.stack(out, dim=1)

    # ---- reconstruction --------------------------------------------------------------------------------------
    def normalize_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """Physical ``(..., k)`` coordinates -> [-1, 1] per axis."""
        lo = self.coord_lo.to(coords.device, coords.dtype)
        hi = self.coord_hi.to(coords.device, coords.dtype)
        return 2 * (coords - lo) / (hi - lo).clamp_min(1e-30) - 1

    def rec_input(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """What ``R`` conditions on: ``s``, or ``(s, u)`` for a network built with ``rec_params`` (``u (B, d_u)``
        broadcast over any extra leading dimension of ``s``, e.g. time)."""
        if not self.rec_params:
            return s
        if u is None:
            raise ValueError("this LDNet decodes (s, u): pass the normalised parameters u")
        u = u.to(s.dtype)
        while u.dim() < s.dim():
            u = u.unsqueeze(-2)
        return torch.cat([s, u.expand(*s.shape[:-1], u.shape[-1])], dim=-1)

    def reconstruct(self, s: torch.Tensor, xi: torch.Tensor, chunk: int = 0, u: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """``R(s, xi)`` in normalised units: ``s (B, d_s)``, normalised ``xi (n, k)`` -> ``(B, n, C)``.

        ``chunk > 0`` decodes at most ``chunk`` points per call (bounded memory). A network built with
        ``rec_params`` decodes ``(s, u)``: ``u (B, d_u)`` (normalised parameters, broadcast over any extra
        leading dimension of ``s``, e.g. time) is then required.
        """
        s = self.rec_input(s, u)
        if chunk <= 0 or xi.shape[-2] <= chunk:
            z = self.rec(s, xi)
        else:
            z = torch.cat([self.rec(s, xi[..., i:i + chunk, :]) for i in range(0, xi.shape[-2], chunk)], dim=-2)
        if self.cfg.out_scale is not None:
            z = z * self.out_scale.to(z.dtype) + self.out_shift.to(z.dtype)
        return z

    def decode(self, s: torch.Tensor, coords: torch.Tensor, chunk: int = 0, u: torch.Tensor | None = None
               ) -> torch.Tensor:
        """``R`` at physical points: ``s (B, d_s)``, ``coords (n, k)`` -> normalised fields ``(B, n, C)``."""
        return self.reconstruct(s, self.normalize_coords(coords), chunk, u)


@dataclass(frozen=True)
class LSTMEncoderConfig:
    """Everything that builds an :class:`LSTMEncoder`: ``n_obs`` inputs, ``out_dim = d_s + d_u`` outputs, the LSTM
    width ``hidden`` and the initialisation ``seed``. ``dataclasses.asdict`` of it is the artifact's ``networks``
    entry; ``LSTMEncoderConfig(**entry)`` rebuilds it."""

    n_obs: int
    out_dim: int
    hidden: int = 128
    seed: int = 0


class LSTMEncoder(nn.Module):
    """Causal LSTM observation encoder ``E: y_{1:t} -> (s_t, u)``: single-layer ``nn.LSTM`` then
    ``Linear(hidden -> d_s + d_u)``.

    The input is the raw observation vector (physical units, after the operator); it is normalised inside with
    per-entry ``y_mean``/``y_std`` buffers computed from the clean training observations (stored with the
    weights, not in the config).
    """

    def __init__(self, cfg: LSTMEncoderConfig, y_mean: list[float] | None = None, y_std: list[float] | None = None):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        self.lstm = nn.LSTM(cfg.n_obs, cfg.hidden, batch_first=True)
        bound = 1.0 / math.sqrt(cfg.hidden)
        with torch.no_grad():
            for p in self.lstm.parameters():  # PyTorch's LSTM init, from our generator
                nn.init.uniform_(p, -bound, bound, generator=g)
        self.head = glorot_(nn.Linear(cfg.hidden, cfg.out_dim), g)
        self.register_buffer("y_mean", torch.zeros(cfg.n_obs) if y_mean is None else torch.tensor(y_mean))
        self.register_buffer("y_std", torch.ones(cfg.n_obs) if y_std is None else torch.tensor(y_std))

    def config(self) -> dict:
        """The artifact's ``networks`` entry."""
        return dataclasses.asdict(self.cfg)

    @classmethod
    def from_config(cls, cfg: dict) -> "LSTMEncoder":
        """Rebuild from an artifact's ``networks`` entry (the normalisation comes with the weights)."""
        return cls(LSTMEncoderConfig(**cfg))

    def forward(self, y: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``y (B, T, m)`` physical observations -> ``(B, T, d_s + d_u)`` and the LSTM state ``(h, c)``.

        Passing the returned state back with the next observation continues the sequence (one step per cycle).
        """
        yn = (y - self.y_mean.to(y.dtype)) / self.y_std.to(y.dtype)
        h, state = self.lstm(yn, state)
        return self.head(h), state


# --------------------------------------------------------------------------------------------------------------
# Normalised units and the point-major layout
# --------------------------------------------------------------------------------------------------------------
def param_normalizer(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) float64 of the parameter box; ``u_n = 2 (u - lo)/(hi - lo) - 1``."""
    lo, hi = problem.param_bounds
    return lo.to(torch.float64), hi.to(torch.float64)


def normalize_params(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    lo, hi = lo.to(u.device, u.dtype), hi.to(u.device, u.dtype)
    return 2 * (u - lo) / (hi - lo) - 1


def denormalize_params(un: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    lo, hi = lo.to(un.device, un.dtype), hi.to(un.device, un.dtype)
    return lo + (un + 1) * (hi - lo) / 2


def to_points(problem: Problem, dataset: Dataset, snaps: torch.Tensor) -> torch.Tensor:
    """Normalised, point-major view: ``(n, T+1, *state_shape)`` physical -> ``(n, T+1, n_points, C)``."""
    nd = len(problem.state_shape)
    z = dataset.normalize(snaps.to(torch.float32), nd)
    n, T1 = z.shape[:2]
    if nd == 1:
        return z.reshape(n, T1, -1, 1).contiguous()
    return z.reshape(n, T1, problem.n_fields, -1).transpose(-1, -2).contiguous()


def from_points(problem: Problem, z: torch.Tensor) -> torch.Tensor:
    """Inverse layout of :func:`to_points`: ``(..., n_points, C) -> (..., *state_shape)`` (still normalised)."""
    lead = z.shape[:-2]
    if len(problem.state_shape) == 1:
        return z.reshape(*lead, *problem.state_shape)
    return z.transpose(-1, -2).reshape(*lead, *problem.state_shape)

