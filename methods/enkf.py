"""Ensemble Kalman filters in full space: square-root (ETKF) and stochastic (perturbed observations).

Both variants are written in ensemble space. With ``N`` members, anomalies ``A (N, D)`` of the (inflated)
forecast, observed anomalies normalised by the observation-error std,
``S = (Y - mean Y) / (sigma sqrt(N - 1))`` of shape ``(N, m)``, and the normalised innovation
``d = (y - mean Y) / sigma``, the analysis of every variant is a linear combination of the forecast members::

    x_a[i] = mean x + sum_k G[i, k] A[k],          G: (N, N)

- square root (ETKF): ``C = I + S S^T``, ``w = C^{-1} S d``, ``T = C^{-1/2}`` (symmetric square root, which keeps
  the mean: ``T 1 = 1``), ``G = T + 1 w^T / sqrt(N - 1)``;
- stochastic: ``D[i] = (y - Y[i]) / sigma + eps[i]`` with ``eps ~ N(0, I)`` centred over the ensemble (and
  rescaled to unit sample variance), ``G = I + (C^{-1} S D^T)^T / sqrt(N - 1)``; this is
  ``x_i += P_xy (P_yy + R)^{-1} (y + e_i - H(x_i))`` written with the Woodbury identity.

Only ``N x N`` systems are ever factorised, so a large number of observations ``m`` (or ``m > N``, or ``N > m``)
costs ``O(N^2 m)`` and never forms an ``m x m`` or ``D x D`` matrix. For a linear observation operator the
ETKF analysis mean and sample covariance equal the Kalman update of the forecast sample mean and covariance.

Localisation (``loc_radius > 0``) is the LETKF's R-localisation: every grid point gets its own ``G`` from the
observations near it, each observation's precision ``1/sigma^2`` multiplied by the Gaspari-Cohn taper of its
grid distance. ``loc_radius`` is the Gaspari-Cohn *half-width* ``c``: the taper is 1 at distance 0, 0.208 at
``c`` and exactly 0 from ``2c`` on (support ``2c``); it approximates a Gaussian ``exp(-r^2 / (2 L^2))`` with
``L = c / sqrt(10/3)``. All fields at a grid point share the point's ``G``. Grid points are processed in
batched chunks, never one at a time: when the stencil of grid offsets within ``2c`` has fewer entries than
there are observed points, the local observations are gathered through that stencil (Lorenz-96 at d = 10^6,
dense observation networks); otherwise the taper against every observed point is evaluated per chunk (sparse
2-D observation lattices). Memory is ``O(N D)`` plus one chunk.

Parameters (``state.params``, ``(N, P)``) have no location: with ``joint=True`` they are augmented to the state
and updated with the global (untapered) ``G`` from all observations.

References: the EnKF, Evensen (1994), J. Geophys. Res. 99(C5), 10143; perturbed observations, Burgers, van
Leeuwen & Evensen (1998), Mon. Weather Rev. 126, 1719; the ETKF, Bishop, Etherton & Majumdar (2001), Mon.
Weather Rev. 129, 420; the LETKF, Hunt, Kostelich & Szunyogh (2007), Physica D 230, 112; the taper, Gaspari &
Cohn (1999), Q. J. R. Meteorol. Soc. 125, 723.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from assimbench.errors import ConfigError
from methods.base import EnsembleState, Method, Tunable


def gaspari_cohn(r: torch.Tensor, half_width: float) -> torch.Tensor:
    """Gaspari-Cohn (1999) fifth-order compactly supported taper, eq. (4.10).

    Parameters
    ----------
    r : distances (any shape, grid units, >= 0).
    half_width : ``c`` (grid units, > 0); the taper vanishes for ``r >= 2c``.

    Returns
    -------
    Taper values in [0, 1], same shape, dtype and device as ``r``.
    """
    z = r.abs() / half_width
    inner = ((((-0.25 * z + 0.5) * z + 0.625) * z - 5.0 / 3.0) * z) * z + 1.0
    zs = z.clamp_min(1e-12)  # the outer branch is only used for z >= 1; avoid 1/0 where it is masked out
    outer = ((((z / 12.0 - 0.5) * z + 0.625) * z + 5.0 / 3.0) * z - 5.0) * z + 4.0 - 2.0 / (3.0 * zs)
    out = torch.where(z <= 1.0, inner, torch.where(z < 2.0, outer, torch.zeros_like(z)))
    return out.clamp_min(0.0)


@dataclass
class _LocalGeometry:
    """Precomputed localisation geometry of one (problem, observer, radius) on one device."""

    mode: Literal["stencil", "dense"]
    grid: torch.Tensor  # (n_points, k) float64 grid coordinates
    obs_grid: torch.Tensor  # (m_p, k) float64 coordinates of the observed points
    # stencil mode only
    offsets: torch.Tensor | None = None  # (K, k) int64 grid offsets with a non-zero taper
    taper: torch.Tensor | None = None  # (K,) float64 taper of each offset
    slot: torch.Tensor | None = None  # (n_points,) int64 observed-point number of a grid point, -1 if none
    extent: torch.Tensor | None = None  # (k,) int64 grid shape
    strides: torch.Tensor | None = None  # (k,) int64 row-major strides


@dataclass
class EnKF(Method):
    """Ensemble Kalman filter: ETKF (``sqrt``) or perturbed-observation (``stochastic``), optionally local.

    Parameters
    ----------
    variant : ``sqrt`` (ETKF with the symmetric square root of the ensemble-space transform) or ``stochastic``
        (perturbed observations, centred over the ensemble).
    inflation : multiplicative inflation of the forecast anomalies (state, and parameters when ``joint``),
        applied before the analysis; 1 = none.
    rotate : apply a random mean-preserving orthogonal rotation to the analysis anomalies (drawn from the
        method's generator, the same rotation at every grid point).
    loc_radius : Gaspari-Cohn half-width ``c`` in grid units (support ``2c``); 0 = global analysis.
    joint : update the parameters (augmented state) with the global gain; False carries them unchanged.

    Notes
    -----
    The state keeps its device and dtype; the ensemble-space algebra (``N x N`` or ``J x J`` systems, the
    normalised observation anomalies) runs in float64 on the state's device. Randomness (observation
    perturbations, rotations) comes from ``self.generator`` (set in ``init``), drawn on the CPU.
    Tuned on Lorenz-96 (d = 40, F = 8, dt = 0.05, all variables observed, R = I, 1000 cycles): see the preset.
    """

    name: ClassVar[str] = "EnKF"
    #: working-set size of one chunk of grid points, in float64 elements (memory vs Python overhead)
    chunk_elems: ClassVar[int] = 1 << 23
    tunable: ClassVar[dict[str, Tunable]] = {
        "inflation": Tunable(1.0, 1.3, doc="forecast-anomaly factor"),
        "loc_radius": Tunable(1.0, 64.0, log=True, doc="Gaspari-Cohn half-width, grid units (0 = global is "
                                                       "not searched; a half-width beyond the domain is global)"),
    }

    variant: Literal["sqrt", "stochastic"] = "sqrt"
    inflation: float = 1.0
    rotate: bool = False
    loc_radius: float = 0.0
    joint: bool = True

    def __post_init__(self):
        if self.variant not in ("sqrt", "stochastic"):
            raise ConfigError(f"EnKF variant={self.variant!r} is not allowed; valid: sqrt, stochastic")
        if not (math.isfinite(self.inflation) and self.inflation > 0):
            raise ConfigError(f"EnKF inflation={self.inflation} must be a finite number > 0 (1 = no inflation)")
        if not (math.isfinite(self.loc_radius) and self.loc_radius >= 0):
            raise ConfigError(f"EnKF loc_radius={self.loc_radius} must be a finite number >= 0 (0 = global)")
        self._geom: dict[str, _LocalGeometry] = {}

    def bind(self, ctx) -> None:
        super().bind(ctx)
        self._geom = {}  # localisation geometry belongs to one (problem, observer)

    # ---- the analysis ----------------------------------------------------------------------------------------
    def analysis(self, state: EnsembleState, y: torch.Tensor) -> EnsembleState:
        """Update ``state.x (N, *state_shape)`` and ``state.params (N, P)`` with the observation ``y (m,)``."""
        pb, obs = self.ctx.problem, self.ctx.observer
        x = state.x
        N = x.shape[0]
        if N < 2:
            raise ConfigError(f"EnKF needs an ensemble of at least 2 members, got N={N}")
        dev, wdt = x.device, torch.float64  # ensemble-space algebra in float64; the state keeps its dtype
        sq = math.sqrt(N - 1)

        xbar = x.mean(0, keepdim=True)
        x_f = xbar + self.inflation * (x - xbar)
        A = (x_f - xbar).reshape(N, pb.n_fields, pb.n_points)  # (N, C, P), channel-major like observer.index
        params = state.params
        update_params = self.joint and params is not None and params.numel() > 0
        if update_params:
            pbar = params.mean(0, keepdim=True)
            Ap = self.inflation * (params - pbar)

        yv = y.reshape(-1).to(device=dev, dtype=wdt)
        Y = obs.observe(x_f).to(wdt)  # (N, m): nonlinear operators the standard ensemble way
        sigma = obs.noise_std(yv).to(device=dev, dtype=wdt)
        ybar = Y.mean(0)
        S = (Y - ybar) / (sigma * sq)  # (N, m)
        if self.variant == "sqrt":
            D = ((yv - ybar) / sigma)[:, None]  # (m, 1): normalised innovation
        else:
            eps = torch.randn(N, yv.numel(), generator=self.generator, dtype=wdt).to(dev)
            eps = (eps - eps.mean(0)) * math.sqrt(N / (N - 1))
            D = ((yv - Y) / sigma + eps).T  # (m, N): perturbed normalised innovations
        Q = self._rotation(N, dev) if self.rotate else None

        glob = None
        if self.loc_radius == 0 or update_params:
            glob = self._global_weights(S, D, Q)
        if self.loc_radius == 0:
            x_a = xbar + self._apply(glob, A.reshape(N, -1)).reshape(x.shape)
        else:
            x_a = self._local_analysis(xbar, A, S, D, Q).reshape(x.shape)

        p_a = params
        if update_params:
            p_a = pbar + self._apply(glob, Ap)
        return EnsembleState(x_a, p_a)

    def _global_weights(self, S: torch.Tensor, D: torch.Tensor, Q: torch.Tensor | None):
        """Global member weights, either ``(G, None, None)`` with ``G (N, N)`` or, when there are fewer
        observations than members (``m < N``), the factors ``(None, L1, L2)`` of ``G = I + L1 L2^T`` (``(N, k)``,
        ``k <= m + 1``), so that a large ensemble never forms or factorises an ``N x N`` matrix."""
        N, m = S.shape
        if m >= N:
            C = torch.eye(N, dtype=S.dtype, device=S.device) + S @ S.T
            return self._transform(C[None], (S @ D)[None], Q)[0], None, None
        if Q is not None:  # a rotation is an N x N matrix anyway; factorise on the small side
            return self._transform_lowrank(S[None], (S @ D)[None], Q)[0], None, None
        sq = math.sqrt(N - 1)
        IM = torch.eye(m, dtype=S.dtype, device=S.device) + S.T @ S  # (m, m)
        if self.variant == "sqrt":
            s, E = torch.linalg.eigh(IM)  # s >= 1
            F = S @ E
            r1 = s.sqrt()
            w = F @ ((E.T @ D) / s[:, None])  # (N, 1) = S (I + S^T S)^{-1} d = C^{-1} S d
            L1 = torch.cat([F * (-1.0 / (r1 * (1.0 + r1))), torch.ones(N, 1, dtype=S.dtype, device=S.device)], 1)
            L2 = torch.cat([F, w / sq], 1)
        else:
            L1 = torch.cholesky_solve(D, torch.linalg.cholesky(IM)).T  # (N, m) = D^T (I + S^T S)^{-1}
            L2 = S / sq
        return None, L1, L2

    @staticmethod
    def _apply(glob, A: torch.Tensor) -> torch.Tensor:
        """``G @ A`` for the weights of :meth:`_global_weights`; ``A (N, D)`` anomalies, in ``A``'s dtype."""
        G, L1, L2 = glob
        if G is not None:
            return G.to(A.dtype) @ A
        return A + L1.to(A.dtype) @ (L2.T.to(A.dtype) @ A)

    def _transform(self, C: torch.Tensor, rhs: torch.Tensor, Q: torch.Tensor | None) -> torch.Tensor:
        """Member weights ``G (B, N, N)`` from ``C = I + S W S^T (B, N, N)`` and ``rhs = S W D (B, N, 1 | N)``."""
        B, N, _ = C.shape
        sq = math.sqrt(N - 1)
        if self.variant == "sqrt":
            lam, V = torch.linalg.eigh(C)  # lam >= 1: C is the identity plus a positive semi-definite matrix
            T = (V * lam.rsqrt()[:, None, :]) @ V.transpose(1, 2)
            w = V @ ((V.transpose(1, 2) @ rhs) / lam[:, :, None])  # (B, N, 1) = C^{-1} S W d
            G = T + w.transpose(1, 2) / sq
        else:
            L = torch.linalg.cholesky(C)
            W = torch.cholesky_solve(rhs, L)  # (B, N, N): column i is the weight of member i's increment
            G = torch.eye(N, dtype=C.dtype, device=C.device) + W.transpose(1, 2) / sq
        return G if Q is None else Q @ G

    def _transform_lowrank(self, U: torch.Tensor, rhs: torch.Tensor, Q: torch.Tensor | None) -> torch.Tensor:
        """As :meth:`_transform` with ``C = I + U U^T``, ``U (B, N, J)``, J < N: factorise ``J x J`` only.

        With ``U^T U = E diag(s) E^T`` and ``F = U E``: ``C^{-1} = I - F diag(1/(1+s)) F^T`` and
        ``C^{-1/2} = I + F diag(g(s)) F^T``, ``g(s) = ((1+s)^{-1/2} - 1)/s = -1/(sqrt(1+s)(1+sqrt(1+s)))``
        (finite at s = 0).
        """
        B, N, J = U.shape
        sq = math.sqrt(N - 1)
        eye = torch.eye(N, dtype=U.dtype, device=U.device)
        M = U.transpose(1, 2) @ U  # (B, J, J)
        if self.variant == "sqrt":
            s, E = torch.linalg.eigh(M)
            s = s.clamp_min(0.0)
            F = U @ E  # (B, N, J)
            r1 = (1.0 + s).sqrt()
            T = eye + (F * (-1.0 / (r1 * (1.0 + r1)))[:, None, :]) @ F.transpose(1, 2)
            w = rhs - F @ ((F.transpose(1, 2) @ rhs) / (1.0 + s)[:, :, None])  # (B, N, 1)
            G = T + w.transpose(1, 2) / sq
        else:
            L = torch.linalg.cholesky(torch.eye(J, dtype=U.dtype, device=U.device) + M)
            W = rhs - U @ torch.cholesky_solve(U.transpose(1, 2) @ rhs, L)  # (B, N, N)
            G = eye + W.transpose(1, 2) / sq
        return G if Q is None else Q @ G

    def _rotation(self, N: int, device) -> torch.Tensor:
        """Random orthogonal ``(N, N)`` with ``Q 1 = 1`` (mean-preserving), Haar on the complement of ``1``."""
        Z = torch.randn(N - 1, N - 1, generator=self.generator, dtype=torch.float64)
        O, Rr = torch.linalg.qr(Z)
        O = O * torch.where(torch.diagonal(Rr) < 0, -1.0, 1.0)[None, :]  # sign fix: Haar-distributed
        # orthonormal basis U (N, N-1) of the complement of the ones vector (QR of a Helmert-like matrix)
        M = torch.eye(N, dtype=torch.float64)[:, 1:] - 1.0 / N
        U, _ = torch.linalg.qr(M)
        Qr = torch.full((N, N), 1.0 / N, dtype=torch.float64) + U @ O @ U.T
        return Qr.to(device)

    # ---- localisation ----------------------------------------------------------------------------------------
    def _geometry(self, device) -> _LocalGeometry:
        key = str(device)
        if key in self._geom:
            return self._geom[key]
        pb, obs = self.ctx.problem, self.ctx.observer
        c = float(self.loc_radius)
        support = 2.0 * c
        grid = pb.grid_index().to(torch.float64)
        points = obs.points.to(torch.long)
        obs_grid = grid[points]
        shape = torch.tensor(pb.spatial_shape, dtype=torch.long)
        k = len(pb.spatial_shape)
        Rint = int(math.floor(support))
        box = (2 * Rint + 1) ** k
        fits = not pb.periodic or bool((2 * Rint + 1 <= shape).all())  # no wrap-around duplicates
        geom = None
        if fits and box <= len(points):
            axes = [torch.arange(-Rint, Rint + 1) for _ in range(k)]
            off = torch.stack([a.reshape(-1) for a in torch.meshgrid(*axes, indexing="ij")], 1)  # (box, k)
            dist = pb.grid_distance(torch.zeros(1, k, dtype=torch.float64), off.to(torch.float64))[0]
            taper = gaspari_cohn(dist, c)
            keep = taper > 0
            slot = torch.full((pb.n_points,), -1, dtype=torch.long)
            slot[points] = torch.arange(len(points))
            strides = torch.ones(k, dtype=torch.long)
            for i in range(k - 2, -1, -1):
                strides[i] = strides[i + 1] * shape[i + 1]
            geom = _LocalGeometry("stencil", grid.to(device), obs_grid.to(device), off[keep].to(device),
                                  taper[keep].to(device), slot.to(device), shape.to(device), strides.to(device))
        if geom is None:
            geom = _LocalGeometry("dense", grid.to(device), obs_grid.to(device))
        self._geom[key] = geom
        return geom

    def _local_analysis(self, xbar: torch.Tensor, A: torch.Tensor, S: torch.Tensor, D: torch.Tensor,
                        Q: torch.Tensor | None) -> torch.Tensor:
        """LETKF-style analysis of every grid point, in chunks. ``A (N, C, P)`` -> analysis ``(N, C, P)``."""
        obs = self.ctx.observer
        N, Cf, P = A.shape
        dev, wdt = A.device, torch.float64
        geom = self._geometry(dev)
        nf = len(obs.obs_fields)
        mp = geom.obs_grid.shape[0]
        r = D.shape[1]
        St = S.T.reshape(mp, nf, N)  # per observed point, per field, per member
        Dt = D.reshape(mp, nf, r)
        xbar = xbar.reshape(1, Cf, P)
        out = torch.empty_like(A)
        eye = torch.eye(N, dtype=wdt, device=dev)
        c = float(self.loc_radius)
        per_point_common = 6 * N * N + 2 * N * Cf
        if geom.mode == "stencil":
            K = geom.offsets.shape[0]
            per_point = per_point_common + K * nf * (2 * N + r + 2) + 4 * K
        else:
            per_point = per_point_common + mp * (geom.grid.shape[1] + 3)
        B = max(1, min(P, self.chunk_elems // per_point))
        for p0 in range(0, P, B):
            p1 = min(P, p0 + B)
            if geom.mode == "stencil":
                U, rhs = self._stencil_blocks(geom, p0, p1, St, Dt)
                if U.shape[2] < N:  # fewer local observations than members: factorise on the observation side
                    G = self._transform_lowrank(U, rhs, Q)
                else:
                    G = self._transform(eye + U @ U.transpose(1, 2), rhs, Q)
            else:
                C, rhs = self._dense_blocks(geom, p0, p1, St, Dt, eye, c)
                G = self._transform(C, rhs, Q)
            G = G.to(A.dtype)  # (b, N, N)
            Ab = A[:, :, p0:p1].permute(2, 0, 1)  # (b, N, C)
            out[:, :, p0:p1] = (G @ Ab).permute(1, 2, 0)
        return xbar + out

    def _stencil_blocks(self, geom: _LocalGeometry, p0: int, p1: int, St, Dt):
        """``U (b, N, J)`` with ``C = I + U U^T`` and ``rhs = U sqrt(W) D (b, N, r)`` of grid points ``p0:p1``,
        from the ``J = K x n_fields`` observations reached through the stencil (weights ``W``, zero if absent)."""
        pb = self.ctx.problem
        N = St.shape[2]
        coords = geom.grid[p0:p1].to(torch.long)  # (b, k)
        nb = coords[:, None, :] + geom.offsets[None]  # (b, K, k)
        if pb.periodic:
            nb = nb.remainder(geom.extent)
            valid = torch.ones(nb.shape[:2], dtype=torch.bool, device=nb.device)
        else:
            valid = ((nb >= 0) & (nb < geom.extent)).all(-1)
            nb = torch.minimum(nb.clamp_min(0), geom.extent - 1)
        slot = geom.slot[(nb * geom.strides).sum(-1)]  # (b, K)
        valid &= slot >= 0
        w = geom.taper[None, :] * valid  # (b, K)
        slot = slot.clamp_min(0)
        b, K = slot.shape
        nf = St.shape[1]
        Sg = St[slot].reshape(b, K * nf, N)  # (b, J, N)
        Dg = Dt[slot].reshape(b, K * nf, -1)  # (b, J, r)
        wJ = w[:, :, None].expand(b, K, nf).reshape(b, K * nf, 1).sqrt()
        U = (Sg * wJ).transpose(1, 2)  # (b, N, J)
        return U, U @ (Dg * wJ)

    def _dense_blocks(self, geom: _LocalGeometry, p0: int, p1: int, St, Dt, eye, c: float):
        """``C`` and ``rhs`` of grid points ``p0:p1`` from the taper against every observed point."""
        pb = self.ctx.problem
        mp, nf, N = St.shape
        r = Dt.shape[2]
        w = gaspari_cohn(pb.grid_distance(geom.grid[p0:p1], geom.obs_grid), c)  # (b, m_p)
        cols = torch.nonzero(w.amax(0) > 0).reshape(-1)
        b = p1 - p0
        C = eye.expand(b, N, N).clone()
        rhs = torch.zeros(b, N, r, dtype=eye.dtype, device=eye.device)
        if cols.numel() == 0:
            return C, rhs
        q_blk = max(1, self.chunk_elems // (2 * N * (N + r) * nf + b))
        for q0 in range(0, cols.numel(), q_blk):
            q = cols[q0:q0 + q_blk]
            Sq, Dq, wq = St[q], Dt[q], w[:, q]  # (Q, nf, N), (Q, nf, r), (b, Q)
            outer = torch.einsum("qfn,qfm->qnm", Sq, Sq).reshape(len(q), N * N)
            cross = torch.einsum("qfn,qfi->qni", Sq, Dq).reshape(len(q), N * r)
            C += (wq @ outer).reshape(b, N, N)
            rhs += (wq @ cross).reshape(b, N, r)
        return C, rhs
