"""Rotating shallow water in a closed square basin: the LD-EnSF "tsunami" problem.

Equations (beta-plane, flat bottom, no friction, no forcing; linear momentum, nonlinear continuity)::

    du/dt - f v = -g d(eta)/dx
    dv/dt + f u = -g d(eta)/dy
    d(eta)/dt + d((eta + H) u)/dx + d((eta + H) v)/dy = 0,      f = f0 + beta y

on ``[-L/2, L/2]^2`` with no-normal-flow walls. The initial state is at rest with a Gaussian bump of height
``amplitude`` and standard deviation ``width`` centred at ``(-L/2 + a L, -L/2 + b L)``; the uncertain parameters
``(a, b)`` ("earthquake location") are uniform on ``[0, 0.5]^2``. Defaults follow the paper (L = 1000 km,
H = 100 m, f0 = 1e-4 1/s, beta = 2e-11 1/(m s), g = 9.81 m/s^2, amplitude 1 m, width 50 km, dt_obs = 857.1 s,
51 snapshots, 200 trajectories) except the grid: ``n = 64`` by default (cheap), ``n = 150`` is the paper's.

Grid and public state
---------------------
The public state is ``(N, 3, n, n)`` = ``(u, v, eta)`` *collocated at cell centres* of a uniform ``n x n``
finite-volume grid, ``dx = dy = L / n``; ``state[:, c, i, j]`` has ``i`` the y (row) index and ``j`` the x
(column) index, cell centre ``x_j = -L/2 + (j + 1/2) dx``, ``y_i = -L/2 + (i + 1/2) dy``. ``coords()`` returns
``(x, y)`` in metres in the same row-major flattening (point ``p = i n + j``). The reference code uses a node
grid (``linspace``, ``dx = L/149`` at n = 150); the cell-centred grid is what makes exact mass conservation and
wall fluxes simple. Units: u, v in m/s, eta in m.

Scheme (internal Arakawa C-grid, forward-backward / Stormer-Verlet)
-------------------------------------------------------------------
Inside ``step`` (the module functions :func:`to_staggered`, :func:`integrate`, :func:`to_collocated`) the
velocities live on the faces of the cells: ``u`` on the ``n - 1`` interior x-faces of each
row, ``v`` on the ``n - 1`` interior y-faces of each column; the wall faces carry zero normal velocity (and are
never updated), so no flow crosses the walls by construction. Two operators:

- continuity (flux form): ``eta -= tau [dx-difference of F_x + dy-difference of F_y]`` with face fluxes
  ``F_x = (H + eta_face) u``, ``eta_face`` the centred mean of the two adjacent cells, and zero wall fluxes.
  The flux form telescopes, so ``sum(eta)`` (the mass) is conserved to round-off, whatever the state.
- momentum (uses the current eta): the pressure gradient ``-g grad(eta)`` plus the Coriolis force in an
  alternating explicit order (u with the old v, then v with the new u). With the energy-neutral C-grid pair
  ``u += dt * A(f_v v)``, ``v -= dt * f_v A^T u`` (``A`` the 4-point average from v- to u-points, ``f_v`` the
  Coriolis parameter at v-points) this is a symplectic rotation: neutrally stable for ``|f| dt < 2`` (here
  ``|f| dt ~ 1e-2``), no damping, no growth.

Each observation interval is ``continuity(dt/2), [momentum(dt), continuity(dt)] * (K-1), momentum(dt),
continuity(dt/2)`` with ``K = n_substeps``: the forward-backward scheme in its time-symmetric (Stormer-Verlet)
arrangement, second order in time for the gravity waves, so the energy of the public state stays within
O(dt^2) of its initial value (0.3 % at 64 x 64) instead of the O(dt) oscillation of plain forward-backward. It is
stable when ``c dt sqrt(1/dx^2 + 1/dy^2) <= 1``, i.e. Courant number ``c dt / dx <= 1/sqrt(2)``, is
non-dissipative, and, unlike a collocated (A-grid) centred scheme, has no checkerboard null mode. ``step``
covers ``dt_obs`` with ``n_substeps`` equal sub-steps, the smallest count with ``c dt / dx <= cfl`` where
``c = sqrt(g (H + max(amplitude, 0)))``: 4 at 64 x 64 and 9 at 150 x 150 (the reference FTCS/upwind collocated
scheme, first-order dissipative, takes 40 steps of CFL 0.1 per interval at 150 x 150).

Collocated <-> staggered (exact restart)
----------------------------------------
``step`` must restart from a collocated state (possibly a filter's analysis), so the conversion between centre
and face velocities is a pair of exact inverse maps, not a lossy average: along the wall-normal direction the
velocity is expanded in the sine modes ``sin(m pi s / L)``, ``m = 1..n-1`` (which vanish at both walls). Face
values <-> mode amplitudes is a DST-I, centre values <-> mode amplitudes a DST-II; both are applied as small
precomputed ``n x (n-1)`` matrices along one axis. Consequences:

- faces -> centres -> faces is the identity: the public state of a trajectory is a lossless view of the solver
  state, so restarting costs nothing (``step(step(x))`` and one integration over ``2 dt_obs`` differ only by
  the unmerged continuity half-steps at the interval boundary, an O(dt^2 |eta|/H) effect of the nonlinear flux);
- centres -> faces removes only the wall-normal checkerboard (mode ``m = n``, which the C-grid cannot hold);
  a state that ``step`` produced has no such component, an arbitrary (analysis) state is projected orthogonally;
- both maps preserve the l2 norm on the modes they keep, so kinetic energy measured on the public centred state
  equals the solver's (up to the depth weighting).

``step`` runs under ``torch.no_grad()`` (it updates buffers in place): it is not differentiable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from assimbench.errors import ConfigError
from problems.base import Problem, record_substeps

_MATRIX_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def sine_transfer_matrices(n: int, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact maps between the ``n`` cell-centre values and the ``n - 1`` interior-face values of a wall-bounded axis.

    Returns ``(to_face, to_centre)`` of shapes ``(n - 1, n)`` and ``(n, n - 1)``: ``faces = to_face @ centres``,
    ``centres = to_centre @ faces``, through the sine modes ``m = 1..n-1`` (zero at both walls).
    ``to_face @ to_centre`` is the identity of size ``n - 1``; ``to_centre @ to_face`` is the orthogonal projection
    that removes the checkerboard ``(-1)^j``.
    """
    key = (n, str(device), dtype)
    if key not in _MATRIX_CACHE:
        m = torch.arange(1, n, dtype=torch.float64)
        k = torch.arange(1, n, dtype=torch.float64)          # interior faces at s = k dx
        j = torch.arange(n, dtype=torch.float64) + 0.5      # centres at s = (j + 1/2) dx
        s_face = torch.sin(math.pi * k[:, None] * m[None, :] / n)   # (n-1, n-1), s_face @ s_face = n/2 I
        s_cent = torch.sin(math.pi * j[:, None] * m[None, :] / n)   # (n, n-1),  s_cent^T s_cent = n/2 I
        to_face = (2.0 / n) * s_face @ s_cent.T
        to_centre = (2.0 / n) * s_cent @ s_face
        _MATRIX_CACHE[key] = (to_face.to(device=device, dtype=dtype).contiguous(),
                              to_centre.to(device=device, dtype=dtype).contiguous())
    return _MATRIX_CACHE[key]


def to_staggered(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Public ``(N, 3, n, n)`` -> ``(U (N, n, n+1), V (N, n+1, n), eta (N, n, n))`` with zero wall faces."""
    N, n = x.shape[0], x.shape[-1]
    to_face, _ = sine_transfer_matrices(n, x.device, x.dtype)
    U = x.new_zeros(N, n, n + 1)
    V = x.new_zeros(N, n + 1, n)
    U[:, :, 1:-1] = x[:, 0] @ to_face.T
    V[:, 1:-1, :] = to_face @ x[:, 1]
    eta = x[:, 2].clone()
    return U, V, eta


def to_collocated(U: torch.Tensor, V: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_staggered` (exact on face fields): ``(N, 3, n, n)``."""
    _, to_centre = sine_transfer_matrices(eta.shape[-1], eta.device, eta.dtype)
    return torch.stack([U[:, :, 1:-1] @ to_centre.T, to_centre @ V[:, 1:-1, :], eta], dim=1)


def coriolis_at_v_faces(n: int, length: float, f0: float, beta: float, device, dtype) -> torch.Tensor:
    """``f = f0 + beta y`` at the ``n + 1`` y-faces of a basin of side ``length``: ``(n+1, 1)``."""
    yf = -length / 2 + torch.arange(n + 1, dtype=torch.float64) * (length / n)
    return (f0 + beta * yf).to(device=device, dtype=dtype)[:, None]


def integrate(U: torch.Tensor, V: torch.Tensor, eta: torch.Tensor, n_steps: int, dt: float, dx: float,
              gravity: float, depth: float, f_v: torch.Tensor | None) -> None:
    """Advance the staggered state ``(U, V, eta)`` (:func:`to_staggered`) in place by ``n_steps`` sub-steps of
    ``dt`` on a grid of spacing ``dx``, with Coriolis parameter ``f_v`` at the y-faces (None: no rotation).

    Stormer-Verlet order: half a continuity step, then ``n_steps`` times (momentum with the current eta, a
    continuity step), the last continuity step being a half one. Interior continuity half-steps are merged.
    """
    g, H = gravity, depth
    rotating = f_v is not None
    f_all, f_int = (f_v, f_v[1:-1]) if rotating else (None, None)
    N, n = eta.shape[0], eta.shape[-1]
    Fx = torch.zeros_like(U)              # fluxes / H (N, n, n+1), walls stay 0
    Fy = torch.zeros_like(V)              # (N, n+1, n)
    hx = eta.new_empty(N, n, n - 1)
    hy = eta.new_empty(N, n - 1, n)
    div = eta.new_empty(N, n, n)
    fV = torch.empty_like(V)
    s_u = eta.new_empty(N, n, n)
    c = dt / dx
    Uin, Vin = U[:, :, 1:-1], V[:, 1:-1, :]

    def continuity(frac: float) -> None:
        # eta -= frac dt div((H + eta_face) u_face); fluxes are stored divided by H,
        # F / H = u (1 + (eta_L + eta_R) / (2 H)), which keeps float32 precision on small eta
        torch.add(eta[:, :, :-1], eta[:, :, 1:], out=hx)
        torch.addcmul(Uin, hx, Uin, value=0.5 / H, out=Fx[:, :, 1:-1])
        torch.add(eta[:, :-1, :], eta[:, 1:, :], out=hy)
        torch.addcmul(Vin, hy, Vin, value=0.5 / H, out=Fy[:, 1:-1, :])
        torch.sub(Fx[:, :, 1:], Fx[:, :, :-1], out=div)
        div.add_(Fy[:, 1:, :]).sub_(Fy[:, :-1, :])
        eta.sub_(div, alpha=frac * c * H)

    def momentum() -> None:
        # u += dt (A(f v) - g d(eta)/dx) with the old v ...
        if rotating:
            torch.mul(V, f_all, out=fV)
            torch.add(fV[:, :-1, :], fV[:, 1:, :], out=s_u)                # (N, n, n) y-pairs
            Uin.add_(s_u[:, :, :-1], alpha=0.25 * dt).add_(s_u[:, :, 1:], alpha=0.25 * dt)
        Uin.sub_(eta[:, :, 1:], alpha=g * c).add_(eta[:, :, :-1], alpha=g * c)
        # ... then v += dt (-f A^T u - g d(eta)/dy) with the new u (symplectic rotation)
        if rotating:
            torch.add(U[:, :, :-1], U[:, :, 1:], out=s_u)                    # (N, n, n) x-pairs
            torch.add(s_u[:, :-1, :], s_u[:, 1:, :], out=hy)
            hy.mul_(f_int)
            Vin.sub_(hy, alpha=0.25 * dt)
        Vin.sub_(eta[:, 1:, :], alpha=g * c).add_(eta[:, :-1, :], alpha=g * c)

    if n_steps < 1:
        return
    continuity(0.5)
    for k in range(n_steps):
        momentum()
        continuity(1.0 if k < n_steps - 1 else 0.5)


@dataclass(frozen=True)
class ShallowWater(Problem):
    """The tsunami problem: 2-D rotating shallow water in a closed basin, Gaussian bump at an uncertain place.

    Parameters
    ----------
    n : grid cells per side (state ``(3, n, n)``); the paper uses 150, the default 64 is a cheap preset.
    length : basin side L in m.
    depth : resting depth H in m.
    f0, beta : Coriolis parameter ``f = f0 + beta y`` (1/s, 1/(m s)).
    gravity : g in m/s^2.
    amplitude, width : bump height (m) and standard deviation (m).
    dt_obs : observation interval in s (the paper's 40 solver steps of 21.428 s); formerly ``obs_interval``,
        which is still accepted.
    cfl : Courant number ``c dt / dx`` bound of the sub-steps (stability needs ``<= 1/sqrt(2)``).
    n_cycles, n_traj, data_seed : see :class:`problems.base.Problem`.
    """

    name: ClassVar[str] = "shallow_water"
    field_names: ClassVar[tuple[str, ...]] = ("u", "v", "eta")
    param_names: ClassVar[tuple[str, ...]] = ("a", "b")
    #: the bump centre (a, b) is a fraction of the basin side L
    param_unit: ClassVar[str] = "fraction of L"
    periodic: ClassVar[bool] = False
    #: a batch of 10 trajectories at 150 x 150 holds ~0.3 GB of float64 snapshots (51 of them) while simulating
    sim_batch: ClassVar[int] = 10
    #: the tiny configuration of the Method x Problem conformance suite
    conformance_params: ClassVar[dict] = {"n": 16, "n_cycles": 3, "n_traj": 5}
    renamed: ClassVar[dict[str, str]] = {"obs_interval": "dt_obs"}

    n: int = 64
    length: float = 1.0e6
    depth: float = 100.0
    f0: float = 1.0e-4
    beta: float = 2.0e-11
    gravity: float = 9.81
    amplitude: float = 1.0
    width: float = 5.0e4
    dt_obs: float = 857.1
    cfl: float = 0.5
    n_cycles: int = 50
    n_traj: int = 200

    def __post_init__(self):
        if self.n < 8:
            raise ConfigError(f"shallow_water n={self.n} must be >= 8 grid cells per side")
        for key in ("length", "depth", "gravity", "width", "dt_obs"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"shallow_water {key}={v} must be a finite number > 0")
        for key in ("f0", "beta", "amplitude"):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"shallow_water {key}={getattr(self, key)} must be finite")
        if self.amplitude <= -self.depth:
            raise ConfigError(f"shallow_water amplitude={self.amplitude} must exceed -depth={-self.depth} "
                              "(the water column would be empty)")
        if not (0.0 < self.cfl <= 1.0 / math.sqrt(2.0)):
            raise ConfigError(f"shallow_water cfl={self.cfl} must lie in (0, {1 / math.sqrt(2):.4f}]: the "
                              "forward-backward C-grid scheme is unstable above 1/sqrt(2)")
        if self.n_cycles < 1:
            raise ConfigError(f"shallow_water n_cycles={self.n_cycles} must be >= 1")
        f_max = abs(self.f0) + abs(self.beta) * self.length / 2
        if f_max * self.dt >= 1.0:
            raise ConfigError(f"shallow_water |f| dt = {f_max * self.dt:.3g} must be < 1 for the Coriolis step; "
                              "lower f0/beta or cfl")

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        return (3, self.n, self.n)

    @property
    def dx(self) -> float:
        """Cell size in m (``L / n``, same in x and y)."""
        return self.length / self.n

    def axis(self) -> torch.Tensor:
        """``(n,)`` float64 cell-centre coordinates along either axis, in m."""
        return -self.length / 2 + (torch.arange(self.n, dtype=torch.float64) + 0.5) * self.dx

    def coords(self) -> torch.Tensor:
        """``(n*n, 2)`` float64 ``(x, y)`` of the cell centres in m, row-major (``p = i n + j``, i = y index)."""
        s = self.axis()
        yy, xx = torch.meshgrid(s, s, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)

    @property
    def param_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(2, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64))

    # ---- time stepping ----------------------------------------------------------------------------------------
    @property
    def wave_speed(self) -> float:
        """Gravity-wave speed bound ``sqrt(g (H + max(amplitude, 0)))`` in m/s used for the CFL sub-steps."""
        return math.sqrt(self.gravity * (self.depth + max(self.amplitude, 0.0)))

    def n_substeps(self, T: float | None = None) -> int:
        """Equal solver sub-steps for time ``T`` (default ``dt_obs``): the smallest count with Courant number
        ``<= cfl`` at the gravity-wave speed."""
        T = self.dt_obs if T is None else T
        return max(1, math.ceil(T * self.wave_speed / (self.cfl * self.dx) - 1e-9))

    @property
    def dt(self) -> float:
        """Solver sub-step in s."""
        return self.dt_obs / self.n_substeps()

    # ---- initial state -----------------------------------------------------------------------------------------
    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        """``(N, 3, n, n)`` float64: at rest, Gaussian bump at ``(-L/2 + a L, -L/2 + b L)`` for ``params (N, 2)``."""
        p = torch.as_tensor(params, dtype=torch.float64)
        if p.dim() != 2 or p.shape[1] != 2:
            raise ValueError(f"shallow_water params must be (N, 2) = (a, b), got {tuple(p.shape)}")
        s = self.axis().to(p.device)
        xc = -self.length / 2 + p[:, 0] * self.length
        yc = -self.length / 2 + p[:, 1] * self.length
        gx = torch.exp(-(s[None, :] - xc[:, None]) ** 2 / (2 * self.width ** 2))   # (N, n) along x (j)
        gy = torch.exp(-(s[None, :] - yc[:, None]) ** 2 / (2 * self.width ** 2))   # (N, n) along y (i)
        x = torch.zeros(p.shape[0], 3, self.n, self.n, dtype=torch.float64, device=p.device)
        x[:, 2] = self.amplitude * gy[:, :, None] * gx[:, None, :]
        return x

    # ---- the solver -------------------------------------------------------------------------------------------
    def coriolis(self, device, dtype) -> torch.Tensor | None:
        """``f = f0 + beta y`` at all y-faces, ``(n+1, 1)``, or None for a non-rotating basin."""
        if self.f0 == 0.0 and self.beta == 0.0:
            return None
        return coriolis_at_v_faces(self.n, self.length, self.f0, self.beta, device, dtype)

    def integrate(self, U: torch.Tensor, V: torch.Tensor, eta: torch.Tensor, n_steps: int,
                  dt: float | None = None) -> None:
        """Advance the staggered state in place by ``n_steps`` sub-steps of ``dt`` (default :attr:`dt`): the
        module's :func:`integrate` with this basin's constants."""
        integrate(U, V, eta, n_steps, self.dt if dt is None else float(dt), self.dx, self.gravity, self.depth,
                  self.coriolis(eta.device, eta.dtype))

    def step(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """Advance ``x (N, 3, n, n)`` by ``dt_obs`` (``n_substeps`` sub-steps); device/dtype of ``x``.

        ``params`` (the bump location) only set the initial state; they are accepted for the common interface.
        """
        return self.advance_fraction(x, params, 1.0)

    def check_subdivision(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"shallow_water: cannot split an interval into {n} parts")

    def advance_fraction(self, x: torch.Tensor, params: torch.Tensor | None, frac: float) -> torch.Tensor:
        """Advance by ``frac * dt_obs`` with the smallest count of equal sub-steps within the CFL bound (for
        ``frac = 1``: ``n_substeps`` sub-steps of :attr:`dt`, i.e. :meth:`step`)."""
        if not 0.0 < frac <= 1.0:
            raise ConfigError(f"shallow_water: frac={frac} must lie in (0, 1]")
        if tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(f"shallow_water state must be (N, {', '.join(map(str, self.state_shape))}), "
                             f"got {tuple(x.shape)}")
        n = max(1, math.ceil(frac * self.n_substeps() - 1e-9))
        record_substeps(n, self.wave_speed)
        with torch.no_grad():
            U, V, eta = to_staggered(x)
            self.integrate(U, V, eta, n, dt=frac * self.dt_obs / n)
            return to_collocated(U, V, eta)

    # ---- diagnostics ------------------------------------------------------------------------------------------
    def mass(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` excess volume ``sum(eta) dx dy`` in m^3."""
        return x[:, 2].sum(dim=(-2, -1)) * self.dx ** 2

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` total energy per unit density ``sum(1/2 (H + eta)(u^2 + v^2) + 1/2 g eta^2) dx dy`` (J/(kg/m^3))."""
        u, v, eta = x[:, 0], x[:, 1], x[:, 2]
        e = 0.5 * (self.depth + eta) * (u ** 2 + v ** 2) + 0.5 * self.gravity * eta ** 2
        return e.sum(dim=(-2, -1)) * self.dx ** 2
