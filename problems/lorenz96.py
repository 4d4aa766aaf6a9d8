"""Lorenz-96: dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, periodic in i; the classic DA check.

Batched RK4 in torch on the input's device and dtype. ``dt_obs = dt * steps_per_obs`` is the observation
interval; the standard twin experiment (Lorenz & Emanuel 1998; Sakov & Oke 2008) uses d = 40, F = 8,
dt = 0.05, one step per observation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from assimbench.errors import ConfigError
from problems.base import Problem, record_substeps


def l96_tendency(x: torch.Tensor, forcing: float | torch.Tensor) -> torch.Tensor:
    """Tendency of ``x (..., d)``: one circular pad, then views (no ``torch.roll`` copies; memory-bound at large d)."""
    xp = torch.cat([x[..., -2:], x, x[..., :1]], dim=-1)    # xp[k + 2] = x[k]
    out = torch.sub(xp[..., 3:], xp[..., :-3])               # x_{i+1} - x_{i-2}
    return out.mul_(xp[..., 1:-2]).sub_(x).add_(forcing)     # * x_{i-1} - x_i + F


def rk4_step(x: torch.Tensor, dt: float, forcing: float | torch.Tensor) -> torch.Tensor:
    k1 = l96_tendency(x, forcing)
    acc = k1.clone()
    k = l96_tendency(torch.add(x, k1, alpha=0.5 * dt), forcing)
    acc.add_(k, alpha=2.0)
    k = l96_tendency(torch.add(x, k, alpha=0.5 * dt), forcing)
    acc.add_(k, alpha=2.0)
    k = l96_tendency(torch.add(x, k, alpha=dt), forcing)
    return torch.add(x, acc.add_(k), alpha=dt / 6.0)


@dataclass(frozen=True)
class Lorenz96(Problem):
    """Lorenz-96 with ``dim`` variables and constant forcing ``forcing``.

    The initial distribution is the climatology: a perturbation of the rest state ``x = F`` integrated for
    ``spinup_time`` model time units onto the attractor. No uncertain parameters (``P = 0``).
    """

    name: ClassVar[str] = "lorenz96"
    field_names: ClassVar[tuple[str, ...]] = ("x",)
    periodic: ClassVar[bool] = True
    conformance_params: ClassVar[dict] = {"dim": 12, "n_cycles": 3, "n_traj": 5, "spinup_time": 2.0}
    sim_batch: ClassVar[int] = 200

    dim: int = 40
    forcing: float = 8.0
    dt: float = 0.05
    steps_per_obs: int = 1
    spinup_time: float = 20.0
    n_cycles: int = 1000
    n_traj: int = 10

    def __post_init__(self):
        if self.dim < 4:
            raise ConfigError(f"lorenz96 dim={self.dim} must be >= 4")
        if self.dt <= 0 or self.steps_per_obs < 1:
            raise ConfigError("lorenz96 needs dt > 0 and steps_per_obs >= 1")

    def validate(self) -> None:
        super().validate()  # finite dt and forcing, n_cycles, n_traj
        if self.spinup_time < 0:
            raise ConfigError(f"lorenz96 spinup_time={self.spinup_time} must be >= 0")

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def dt_obs(self) -> float:
        return self.dt * self.steps_per_obs

    def coords(self) -> torch.Tensor:
        return torch.arange(self.dim, dtype=torch.float64)[:, None]

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        x = torch.full((params.shape[0], self.dim), self.forcing, dtype=torch.float64)
        x[:, 0] += 0.01
        return x

    def sample_initial(self, params: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = params.shape[0]
        x = self.forcing + torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        for _ in range(int(round(self.spinup_time / self.dt))):
            x = rk4_step(x, self.dt, self.forcing)
        return x

    def check_subdivision(self, n: int) -> None:
        if n < 1 or self.steps_per_obs % n:
            valid = [k for k in range(1, self.steps_per_obs + 1) if self.steps_per_obs % k == 0]
            raise ConfigError(f"lorenz96 with steps_per_obs={self.steps_per_obs} cannot be split into {n} equal "
                              f"parts (score_between + 1 must divide steps_per_obs; valid parts: {valid})")

    def advance_fraction(self, x: torch.Tensor, params: torch.Tensor, frac: float) -> torch.Tensor:
        """``round(frac * steps_per_obs)`` RK4 steps (``frac`` must be a whole number of steps)."""
        k = round(frac * self.steps_per_obs)
        if k < 1 or abs(k - frac * self.steps_per_obs) > 1e-9:
            raise ConfigError(f"lorenz96: {frac} of an interval is not a whole number of its "
                              f"{self.steps_per_obs} RK4 steps")
        record_substeps(k)
        for _ in range(k):
            x = rk4_step(x, self.dt, self.forcing)
        return x

    def step(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.advance_fraction(x, params, 1.0)
