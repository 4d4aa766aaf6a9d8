"""Kolmogorov flow: forced 2-D incompressible Navier-Stokes on the periodic square [0, 2 pi)^2.

Equations (density 1, viscosity ``nu = 1 / Re``)::

    du/dt + (u . grad) u = -grad p + nu lap u + f - drag * u,    div u = 0,
    f = (forcing_amplitude * sin(forcing_wavenumber * y), 0).

The LD-EnSF authors' setting is amplitude 1, wavenumber 4, drag 0.1, ``Re ~ U[500, 1500]``, one
shared initial condition (a filtered random divergence-free field, max speed 3, peak wavenumber 4) spun up to
t = 4, then 40 snapshots 0.2 apart. The paper used jax-cfd's finite-volume solver; this module uses a
pseudo-spectral one (same PDE, spectral accuracy), see :func:`integrate`.

Axis convention
---------------
A state ensemble is ``(N, 2, n, n)``: channel 0 is ``u`` (the x velocity, the one the forcing acts on),
channel 1 is ``v``; ``state[:, c, i, j]`` is the value at ``y_i = 2 pi i / n`` (first grid axis = y) and
``x_j = 2 pi j / n`` (second grid axis = x). The grid is collocated (both components at the same points, the
vertices ``0, dx, ..., 2 pi - dx``). :meth:`Kolmogorov.coords` lists ``(x, y)`` in the same row-major order.

Numerical scheme
----------------
Vorticity ``w = dv/dx - du/dy`` is advanced in Fourier space (``torch.fft.rfft2`` over ``(y, x)``):

    dw/dt = -(nu |k|^2 + drag) w  -  P[(u . grad) w]  -  forcing_amplitude * k_f * cos(k_f y),

with the linear part (viscosity, drag and the constant forcing) integrated exactly and the advection by an
integrating-factor RK4 (Lawson's scheme, 4th order; see :func:`integrate`). ``P`` is the 2/3-rule dealiasing
projection (modes with ``3 |k_x| >= n`` or ``3 |k_y| >= n`` are removed), applied to the nonlinear term and
to the state, so the state stays in the dealiased subspace. The advection is evaluated as
``d_xy (v^2 - u^2) + (d_xx - d_yy)(u v)`` (four transforms per evaluation; equal to ``u . grad w`` up to
rounding, see :func:`_tendency`). The velocity comes from the streamfunction
(``lap psi = -w``, ``u = dpsi/dy``, ``v = -dpsi/dx``) plus the spatial-mean velocity, which the vorticity
does not carry: it decays exactly as ``exp(-drag t)`` and advects the vorticity (Galilean part of
``u . grad w``).

Every ``step`` converts the velocity input to vorticity, i.e. it first projects the input onto the
divergence-free, dealiased fields (a no-op for the solver's own output).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from assimbench.errors import ConfigError
from problems.base import Problem, record_substeps


# --------------------------------------------------------------------------------------------------------------
# Spectral operators (cached per grid, forcing, device and dtype)
# --------------------------------------------------------------------------------------------------------------
class SpectralOps(NamedTuple):
    """Precomputed Fourier-space tensors of an ``n x n`` grid on [0, 2 pi)^2 in a truncated rfft layout
    ``(n, kc)``: rows ``k_y`` in FFT order, columns ``k_x = 0 .. kc - 1`` with ``kc = (n - 1) // 3 + 1`` (the
    columns the 2/3 rule keeps; the rest of the ``n // 2 + 1`` rfft columns are always zero and never stored).

    ``kx``, ``ky``: integer wavenumbers (real dtype); ``k2``: ``|k|^2``; ``mask``: 2/3-rule dealiasing mask
    (real 0/1); ``vel_mult``: ``(2, n, kc)`` complex multipliers taking ``w_hat`` to ``(u, v)``; their ``[0, 0]``
    entries ``(1, -i)`` take a mean velocity ``U + iV`` stored in the (otherwise zero) ``[0, 0]`` vorticity
    coefficient to ``(U + iV, V - iU)``, whose real parts are the means (see :func:`integrate`); ``adv_mult``:
    ``(2, n, kc)`` real multipliers taking the coefficients of ``(v^2 - u^2, u v)`` to the
    dealiased advection tendency (see :func:`_tendency`); ``forcing_hat``: the curl of the forcing, complex
    ``(n, kc)``.
    Coefficients use ``norm="forward"``: the ``[0, 0]`` entry is the spatial mean.
    """

    n: int
    kc: int
    kx: torch.Tensor
    ky: torch.Tensor
    k2: torch.Tensor
    mask: torch.Tensor
    vel_mult: torch.Tensor
    adv_mult: torch.Tensor
    forcing_hat: torch.Tensor


@functools.lru_cache(maxsize=32)
def spectral_ops(n: int, device: str, dtype: torch.dtype, forcing_amplitude: float = 1.0,
                 forcing_wavenumber: int = 4) -> SpectralOps:
    """Operators of the ``n x n`` grid on ``device`` in real ``dtype`` (complex dtype follows); cached."""
    dev = torch.device(device)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    kc = (n - 1) // 3 + 1
    ky1 = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)  # first grid axis = y
    kx1 = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64)[:kc]  # second grid axis = x
    ky, kx = torch.meshgrid(ky1, kx1, indexing="ij")
    k2 = kx**2 + ky**2
    mask = ((3 * kx.abs() < n) & (3 * ky.abs() < n)).to(torch.float64)
    inv_k2 = torch.where(k2 > 0, 1.0 / k2.clamp_min(1.0), torch.zeros_like(k2))
    ikx, iky = 1j * kx, 1j * ky
    # w_hat -> (u, v); u = dpsi/dy, v = -dpsi/dx with psi_hat = w_hat / |k|^2; masked (dealiased)
    vel_mult = torch.stack([iky * inv_k2, -ikx * inv_k2]) * mask
    vel_mult[0, 0, 0], vel_mult[1, 0, 0] = 1.0, -1j
    # curl of f = (A sin(kf y), 0):  -d f_x / dy = -A kf cos(kf y)  ->  -A kf / 2 at ky = +-kf, kx = 0
    forcing_hat = torch.zeros(n, kc, dtype=torch.complex128)
    if forcing_amplitude != 0.0:
        kf = int(forcing_wavenumber)
        forcing_hat[kf % n, 0] += -0.5 * forcing_amplitude * kf
        forcing_hat[(-kf) % n, 0] += -0.5 * forcing_amplitude * kf
    forcing_hat = forcing_hat * mask
    # (v^2 - u^2, u v) coefficients -> -P[(u . grad) w] = -P[d_xy (v^2 - u^2) + (d_xx - d_yy)(u v)]; real
    adv_mult = torch.stack([kx * ky, kx**2 - ky**2]) * mask
    return SpectralOps(n, kc, kx.to(dev, dtype), ky.to(dev, dtype), k2.to(dev, dtype), mask.to(dev, dtype),
                       _y_inner(vel_mult.to(dev, cdtype)), _real_pairs(adv_mult.to(dev, dtype)),
                       forcing_hat.to(dev, cdtype))


def velocity_to_vorticity(x: torch.Tensor, ops: SpectralOps) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (N, 2, n, n)`` velocity -> (``w_hat (N, n, kc)`` dealiased vorticity coefficients, ``mean (N, 2)``)."""
    xh = torch.fft.rfft2(x, norm="forward")[..., :ops.kc]
    w_hat = (1j * ops.kx * xh[:, 1] - 1j * ops.ky * xh[:, 0]) * ops.mask
    return w_hat, xh[:, :, 0, 0].real


def vorticity_to_velocity(w_hat: torch.Tensor, mean: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
    """Inverse of :func:`velocity_to_vorticity`: ``(N, n, kc), (N, 2) -> (N, 2, n, n)`` velocity."""
    uh = w_hat[:, None] * ops.vel_mult
    uh[:, :, 0, 0] = mean.to(uh.dtype)
    return _irfft2(uh, ops.n)


def _irfft2(xh: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of the truncated layout ``(..., n, kc) -> (..., n, n)``: the y pass only on the stored columns."""
    return torch.fft.irfft(torch.fft.ifft(xh, dim=-2, norm="forward"), n=n, dim=-1, norm="forward")


def _y_inner(t: torch.Tensor) -> torch.Tensor:
    """``t (..., n, kc)`` stored with the y axis (second to last) innermost: the layout in which ``torch.fft``
    returns a transform along y. The integrator keeps every coefficient array in it, so its element-wise
    operations run on equally strided operands (mixing layouts makes them several times slower)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _real_pairs(r: torch.Tensor) -> torch.Tensor:
    """Real ``r (..., n, kc)`` -> ``(..., n, kc, 2)`` with ``r`` twice on the last axis, laid out like
    ``view_as_real`` of a :func:`_y_inner` complex array: it multiplies real and imaginary parts of complex
    coefficients in one contiguous real operation."""
    return torch.view_as_real(_y_inner(torch.complex(r, r)))


class _Workspace:
    """Buffers of one :func:`integrate` call, reused by every stage of every sub-step (fresh multi-megabyte
    temporaries per stage cost page faults and zero-fills), and views into them made once (at one member the
    per-call overhead is a large part of a stage). ``spec``: ``(N, 2, n, kc)`` complex velocity coefficients
    (y innermost); ``ypass``: ``(N, 2, n, n // 2 + 1)`` complex, the columns after the inverse y transform,
    whose columns from ``kc`` on stay zero (x innermost, for the x transform); ``prod``: ``(N, 2, n, n)`` real
    quadratic products."""

    def __init__(self, N: int, ops: SpectralOps, cdtype: torch.dtype, rdtype: torch.dtype, device):
        n, kc = ops.n, ops.kc
        self.n, self.kc, self.vel_mult = n, kc, ops.vel_mult
        self.adv_a, self.adv_b = ops.adv_mult.unbind(0)
        self.spec = torch.empty(N, 2, kc, n, dtype=cdtype, device=device).mT
        self.ypass = torch.zeros(N, 2, n, n // 2 + 1, dtype=cdtype, device=device)
        self.ypass_kept = self.ypass[..., :kc]
        self.prod = torch.empty(N, 2, n, n, dtype=rdtype, device=device)
        self.vsq_minus_usq, self.uv = self.prod.unbind(1)


def _tendency(w_hat: torch.Tensor, buf: _Workspace, out: torch.Tensor) -> None:
    """Advection part ``-P[(u . grad) w]`` of the vorticity tendency of ``w_hat (N, n, kc)``, whose ``[0, 0]``
    entry holds the mean velocity ``U + iV`` (see :func:`integrate`), written into ``out``, the real view
    (``torch.view_as_real``) of an ``(N, n, kc)`` complex array.

    Written as ``(u . grad) w = d_xy (v^2 - u^2) + (d_xx - d_yy)(u v)``, an identity for divergence-free ``u``
    with ``w = dv/dx - du/dy`` (Basdevant's formulation). The 2/3 rule makes every retained mode of a grid
    product of two dealiased fields exact, so this equals the ``u w_x + v w_y`` form up to rounding, with two
    inverse and two forward transforms per evaluation instead of four and one.
    """
    torch.mul(w_hat[:, None], buf.vel_mult, out=buf.spec)  # (u, v) coefficients; [0, 0]: (U + iV, V - iU)
    buf.ypass_kept.copy_(torch.fft.ifft(buf.spec, dim=-2, norm="forward"))
    # the x transform keeps the real part of the k_x = 0 coefficient only (documented for torch.fft.irfft): the
    # mean velocity (U, V), with the imaginary parts that came along dropped
    u, v = torch.fft.irfft(buf.ypass, n=buf.n, dim=-1, norm="forward").unbind(1)
    torch.mul(u, v, out=buf.uv)
    torch.mul(v, v, out=buf.vsq_minus_usq).addcmul_(u, u, value=-1.0)
    ph = torch.fft.fft(torch.fft.rfft(buf.prod, dim=-1, norm="forward")[..., :buf.kc], dim=-2, norm="forward")
    p_a, p_b = torch.view_as_real(ph).unbind(1)
    torch.mul(p_a, buf.adv_a, out=out).addcmul_(p_b, buf.adv_b)


def integrate(w_hat: torch.Tensor, mean: torch.Tensor, nu: torch.Tensor, drag: float, T: float, n_sub: int,
              ops: SpectralOps) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance vorticity ``w_hat (N, n, kc)`` and mean velocity ``mean (N, 2)`` by time ``T`` in ``n_sub`` steps.

    With ``L = -(nu |k|^2 + drag)`` per member (``nu (N,)``) and the curl of the forcing ``F``, the vorticity is
    split as ``w = w_s + w'`` with ``w_s = -F / L`` (the laminar state of the linear part), so that
    ``dw'/dt = L w' + A(w_s + w')`` with ``A`` the advection term: the forcing, viscosity and drag are then
    integrated exactly and the laminar Kolmogorov flow is an exact fixed point for any step. ``w'`` is advanced
    by integrating-factor RK4 (Lawson), ``E = exp(L h / 2)``, ``h = T / n_sub``::

        a = A(w);  b = A(E (w + h/2 a));  c = A(E w + h/2 b);  d = A(E^2 w + h E c)
        w <- E^2 (w + h/6 a) + h/3 E (b + c) + h/6 d

    which is 4th order in ``h``. The mean velocity enters ``A`` at each stage time,
    ``mean(t) = mean(0) exp(-drag t)`` (exact): it is carried as ``U + iV`` in the ``[0, 0]`` coefficient of ``w``,
    which the vorticity leaves zero and whose factor ``E`` is ``exp(-drag h / 2)``, so the scheme advances it by
    exactly that law at every stage (the advection term is zero there). Every stage works in preallocated
    buffers, all coefficient arrays y-innermost (:func:`_y_inner`); the real ``E`` multiplies the real view of
    complex coefficients.
    """
    if n_sub < 1:
        raise ValueError(f"n_sub={n_sub} must be >= 1")
    h = T / n_sub
    L = -(nu[:, None, None] * ops.k2 + drag)
    F = ops.forcing_hat
    w_s = _y_inner(torch.where(F != 0, F / torch.where(L != 0, -L, torch.ones_like(L)), torch.zeros_like(F)))
    E = _real_pairs(torch.exp(0.5 * h * L))
    E2 = E * E
    buf = _Workspace(w_hat.shape[0], ops, w_hat.dtype, E.dtype, w_hat.device)
    w = _y_inner(w_hat - w_s)
    w[:, 0, 0] = torch.complex(mean[:, 0], mean[:, 1]).to(w.dtype)
    x, Ews, E2ws, a, b, c, d = (torch.empty_like(w) for _ in range(7))
    rv = torch.view_as_real
    w_r, x_r, Ews_r, E2ws_r, w_s_r, a_r, b_r, c_r, d_r = map(rv, (w, x, Ews, E2ws, w_s, a, b, c, d))
    for _ in range(n_sub):
        _tendency(torch.add(w, w_s, out=x), buf, a_r)
        torch.addcmul(w_s_r, E, w_r, out=Ews_r)  # w_s + E w
        torch.addcmul(Ews_r, E, a_r, value=0.5 * h, out=x_r)  # w_s + E (w + h/2 a)
        _tendency(x, buf, b_r)
        _tendency(torch.add(Ews, b, alpha=0.5 * h, out=x), buf, c_r)
        torch.addcmul(w_s_r, E2, w_r, out=E2ws_r)
        torch.addcmul(E2ws_r, E, c_r, value=h, out=x_r)  # w_s + E^2 w + h E c
        _tendency(x, buf, d_r)
        w.add_(a, alpha=h / 6.0)
        w_r.mul_(E2)
        w_r.addcmul_(b_r.add_(c_r), E, value=h / 3.0)
        w.add_(d, alpha=h / 6.0)
    mean = torch.view_as_real(w[:, 0, 0]).clone()
    w[:, 0, 0] = 0
    return w_s + w, mean


# --------------------------------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kolmogorov(Problem):
    """Kolmogorov flow on an ``n x n`` periodic grid; uncertain parameter the Reynolds number ``Re``.

    Parameters
    ----------
    n : grid points per direction (paper 150).
    dt_obs : observation interval (physical time between snapshots).
    re_min, re_max : prior box of ``Re`` (uniform); ``nu = 1 / Re``.
    forcing_amplitude, forcing_wavenumber : forcing ``(A sin(k_f y), 0)`` on ``u``.
    drag : linear drag coefficient (the ``-drag * u`` term).
    ic_seed : seed of the shared random initial field (``torch.Generator``).
    ic_max_velocity : max speed ``|u|`` of the initial field before spin-up.
    ic_peak_wavenumber : peak of its energy spectrum ``E(k) ~ k^4 exp(-2 (k / k0)^2)``.
    spinup_time : the initial field is integrated this long with each member's ``Re``; dataset t = 0 is
        physical time ``spinup_time``.
    cfl : Courant number ``u_max * h / dx`` of the sub-steps.
    max_velocity : assumed speed bound for the CFL sub-step count; the actual max speed of the input batch is
        used instead when it is larger (so the count depends on the batch only in that case).
    """

    name: ClassVar[str] = "kolmogorov"
    field_names: ClassVar[tuple[str, ...]] = ("u", "v")
    param_names: ClassVar[tuple[str, ...]] = ("Re",)
    #: the Reynolds number is dimensionless; its error is in Reynolds-number units
    param_unit: ClassVar[str] = "Re"
    default_obs_fields: ClassVar[tuple[str, ...] | None] = ("u", "v")
    periodic: ClassVar[bool] = True
    sim_batch: ClassVar[int] = 20
    conformance_params: ClassVar[dict] = {"n": 16, "n_cycles": 3, "n_traj": 5, "spinup_time": 0.4}

    n: int = 64
    dt_obs: float = 0.2
    n_cycles: int = 39
    n_traj: int = 200
    re_min: float = 500.0
    re_max: float = 1500.0
    forcing_amplitude: float = 1.0
    forcing_wavenumber: int = 4
    drag: float = 0.1
    ic_seed: int = 42
    ic_max_velocity: float = 3.0
    ic_peak_wavenumber: float = 4.0
    spinup_time: float = 4.0
    cfl: float = 0.5
    max_velocity: float = 5.0

    def __post_init__(self):
        if self.n < 8:
            raise ConfigError(f"kolmogorov n={self.n} must be >= 8")
        if not (self.dt_obs > 0 and math.isfinite(self.dt_obs)):
            raise ConfigError(f"kolmogorov dt_obs={self.dt_obs} must be a finite number > 0")
        if self.n_cycles < 1:
            raise ConfigError(f"kolmogorov n_cycles={self.n_cycles} must be >= 1")
        if not (0 < self.re_min <= self.re_max < math.inf):
            raise ConfigError(f"kolmogorov needs 0 < re_min <= re_max < inf (got re_min={self.re_min}, "
                              f"re_max={self.re_max})")
        if self.forcing_wavenumber < 0 or 3 * self.forcing_wavenumber >= self.n:
            raise ConfigError(f"kolmogorov forcing_wavenumber={self.forcing_wavenumber} must be >= 0 and resolved "
                              f"after 2/3 dealiasing (3 * k_f < n = {self.n})")
        if not math.isfinite(self.forcing_amplitude):
            raise ConfigError(f"kolmogorov forcing_amplitude={self.forcing_amplitude} must be finite")
        if not (self.drag >= 0 and math.isfinite(self.drag)):
            raise ConfigError(f"kolmogorov drag={self.drag} must be a finite number >= 0")
        if not (self.ic_max_velocity > 0 and math.isfinite(self.ic_max_velocity)):
            raise ConfigError(f"kolmogorov ic_max_velocity={self.ic_max_velocity} must be > 0")
        if not (0 < self.ic_peak_wavenumber and 3 * self.ic_peak_wavenumber < self.n):
            raise ConfigError(f"kolmogorov ic_peak_wavenumber={self.ic_peak_wavenumber} must be > 0 and resolved "
                              f"(3 * k0 < n = {self.n})")
        if not (self.spinup_time >= 0 and math.isfinite(self.spinup_time)):
            raise ConfigError(f"kolmogorov spinup_time={self.spinup_time} must be a finite number >= 0")
        if not (0 < self.cfl <= 1.0):
            raise ConfigError(f"kolmogorov cfl={self.cfl} must lie in (0, 1] (RK4 with spectral advection is "
                              f"unstable beyond about 0.95)")
        if not (self.max_velocity > 0 and math.isfinite(self.max_velocity)):
            raise ConfigError(f"kolmogorov max_velocity={self.max_velocity} must be a finite number > 0")

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        return (2, self.n, self.n)

    @property
    def dx(self) -> float:
        """Grid spacing ``2 pi / n`` (both directions)."""
        return 2 * math.pi / self.n

    def coords(self) -> torch.Tensor:
        """``(n * n, 2)`` float64 ``(x, y)`` of the grid points, row-major over ``(i = y index, j = x index)``."""
        a = torch.arange(self.n, dtype=torch.float64) * self.dx
        y, x = torch.meshgrid(a, a, indexing="ij")
        return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)

    @property
    def param_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor([self.re_min], dtype=torch.float64), torch.tensor([self.re_max], dtype=torch.float64))

    # ---- solver ---------------------------------------------------------------------------------------------
    def ops(self, device, dtype: torch.dtype) -> SpectralOps:
        """Cached spectral operators on ``device`` / ``dtype``."""
        return spectral_ops(self.n, str(torch.device(device)), dtype, float(self.forcing_amplitude),
                            int(self.forcing_wavenumber))

    def n_substeps(self, T: float | None = None, speed: float = 0.0) -> int:
        """Equal sub-steps for time ``T`` (default ``dt_obs``) with Courant number ``<= cfl`` at speed
        ``max(max_velocity, speed)``."""
        T = self.dt_obs if T is None else T
        u = max(self.max_velocity, float(speed))
        return max(1, math.ceil(T * u / (self.cfl * self.dx) - 1e-9))

    def _nu(self, params: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if params.dim() != 2 or params.shape[1] != 1 or params.shape[0] != like.shape[0]:
            raise ValueError(f"kolmogorov params must be (N, 1) Re with N = {like.shape[0]}; got {tuple(params.shape)}")
        return 1.0 / params[:, 0].to(device=like.device, dtype=like.real.dtype)

    def advance(self, x: torch.Tensor, params: torch.Tensor, T: float, n_sub: int | None = None) -> torch.Tensor:
        """Advance velocity ``x (N, 2, n, n)`` by time ``T`` (``n_sub`` equal steps; default from the CFL rule)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(f"kolmogorov state must be (N, {', '.join(map(str, self.state_shape))}); "
                             f"got {tuple(x.shape)}")
        ops = self.ops(x.device, x.dtype)
        nu = self._nu(params, x)
        set_by = float("nan")
        if n_sub is None:
            speed = float(x.pow(2).sum(1).sqrt().max()) if x.numel() else 0.0
            if not math.isfinite(speed):
                speed = 0.0  # non-finite input: the output is non-finite anyway; do not loop forever
            n_sub = self.n_substeps(T, speed)
            set_by = max(self.max_velocity, speed)
        record_substeps(n_sub, set_by)
        w_hat, mean = velocity_to_vorticity(x, ops)
        w_hat, mean = integrate(w_hat, mean, nu, self.drag, T, n_sub, ops)
        return vorticity_to_velocity(w_hat, mean, ops)

    def check_subdivision(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"kolmogorov: cannot split an interval into {n} parts")

    def advance_fraction(self, x: torch.Tensor, params: torch.Tensor, frac: float) -> torch.Tensor:
        """Advance by ``frac * dt_obs`` (sub-steps from the CFL rule)."""
        if not 0.0 < frac <= 1.0:
            raise ConfigError(f"kolmogorov: frac={frac} must lie in (0, 1]")
        return self.advance(x, params, frac * self.dt_obs)

    def step(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Advance ``x (N, 2, n, n)`` by ``dt_obs``; each member with its own ``Re = params[:, 0]``."""
        return self.advance(x, params, self.dt_obs)

    # ---- initial condition ----------------------------------------------------------------------------------
    def initial_field(self, dtype: torch.dtype = torch.float64, device="cpu") -> torch.Tensor:
        """``(2, n, n)`` the shared random field before spin-up: divergence-free, zero mean, energy spectrum
        ``~ k^4 exp(-2 (k / k0)^2)``, max speed ``ic_max_velocity`` on the paper's 150 x 150 grid.

        The random Fourier coefficients are drawn for ``|k_x|, |k_y| <= K = ceil(4 k0)`` in an order that does
        not depend on ``n``, and the speed is normalised on a fixed reference grid (150, or finer if ``K``
        needs it), so every resolution sees the same continuous field (truncated by its dealiasing mask when
        ``3 K >= n``).
        """
        K = int(math.ceil(4 * self.ic_peak_wavenumber))
        g = torch.Generator().manual_seed(self.ic_seed)
        z = torch.randn(2, 2 * K + 1, 2 * K + 1, generator=g, dtype=torch.float64)
        c = torch.complex(z[0], z[1])  # c[ky + K, kx + K]
        c = 0.5 * (c + c.flip(0, 1).conj())  # Hermitian: c(-k) = conj(c(k))
        kk = torch.arange(-K, K + 1, dtype=torch.float64)
        ky, kx = torch.meshgrid(kk, kk, indexing="ij")
        kmag = (kx**2 + ky**2).sqrt()
        # streamfunction amplitude ~ sqrt(E(k) / k^3) for a shell spectrum E(k) ~ k^4 exp(-2 (k/k0)^2)
        amp = torch.where(kmag > 0, kmag.clamp_min(1e-12).sqrt() * torch.exp(-(kmag / self.ic_peak_wavenumber)**2),
                          torch.zeros_like(kmag))
        w_full = c * amp * kmag**2  # vorticity = |k|^2 psi

        def on_grid(m: int) -> torch.Tensor:
            keep = (3 * kx.abs() < m) & (3 * ky.abs() < m) & (kx >= 0)
            w_hat = torch.zeros(m, (m - 1) // 3 + 1, dtype=torch.complex128)
            w_hat[ky[keep].long() % m, kx[keep].long()] = w_full[keep]
            ops = spectral_ops(m, "cpu", torch.float64)
            return vorticity_to_velocity(w_hat[None], torch.zeros(1, 2, dtype=torch.float64), ops)[0]

        n_ref = max(150, 3 * K + 3)
        scale = self.ic_max_velocity / on_grid(n_ref).pow(2).sum(0).sqrt().max()
        return (on_grid(self.n) * scale).to(device=device, dtype=dtype)

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        """``(N, 2, n, n)`` float64: the shared field spun up for ``spinup_time`` with each member's ``Re``."""
        params = torch.as_tensor(params, dtype=torch.float64)
        x = self.initial_field().expand(params.shape[0], *self.state_shape).contiguous()
        if self.spinup_time == 0:
            return x
        # spin up in dt_obs-sized chunks so the CFL count adapts to the flow like in ``step``
        t, chunk = 0.0, self.dt_obs
        while t < self.spinup_time - 1e-12:
            T = min(chunk, self.spinup_time - t)
            x = self.advance(x, params, T)
            t += T
        return x
