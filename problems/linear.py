"""A linear-Gaussian test problem: x_{k+1} = a x_k (+ optional model noise), x_0 ~ N(0, I).

Its filtering posterior is known in closed form (the Kalman filter), which makes it the reference for the
exact-Kalman limit of EnKF and the known-posterior tests of EnSF.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from assimbench.errors import ConfigError
from problems.base import Problem, record_substeps


@dataclass(frozen=True)
class LinearGauss(Problem):
    """``dim`` independent components, each ``x <- decay * x``; initial state N(0, prior_std^2 I)."""

    name: ClassVar[str] = "linear_gauss"
    field_names: ClassVar[tuple[str, ...]] = ("x",)
    periodic: ClassVar[bool] = True
    conformance_params: ClassVar[dict] = {"dim": 6, "n_cycles": 3, "n_traj": 5}

    dim: int = 8
    decay: float = 0.95
    prior_std: float = 1.0
    n_cycles: int = 10
    n_traj: int = 10

    def validate(self) -> None:
        super().validate()  # finite decay and prior_std, n_cycles, n_traj
        if self.dim < 1 or self.prior_std <= 0:
            raise ConfigError(f"linear_gauss needs dim >= 1 and prior_std > 0 (got dim={self.dim}, "
                              f"prior_std={self.prior_std})")

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def dt_obs(self) -> float:
        return 1.0

    def coords(self) -> torch.Tensor:
        return torch.arange(self.dim, dtype=torch.float64)[:, None]

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        return torch.zeros(params.shape[0], self.dim, dtype=torch.float64)

    def sample_initial(self, params: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.prior_std * torch.randn(params.shape[0], self.dim, generator=generator, dtype=torch.float64)

    def step(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        record_substeps(1)
        return self.decay * x
