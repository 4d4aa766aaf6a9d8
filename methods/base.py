"""The Method contract.

A method is a dataclass whose fields are its hyperparameters. The runner owns the cycle and every metric;
methods never see the truth. Per cycle the runner calls, each under its own timer::

    state = method.forecast(state)        # T_d
    state = method.analysis(state, y)     # T_a
    x_hat = method.estimate(state)        # T_r (decoding, for latent methods)

Before the cycle: ``bind(ctx)`` (untimed) then ``fit()`` (timed as ``time_fit_s``), then
``init(x0, params, generator)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from assimbench.errors import ConfigError
from assimbench.naming import param_name, params_of
from problems.base import OPERATORS, Dataset, Observer, Problem


@dataclass
class Context:
    """Everything a method may know about the experiment (never the truth)."""

    problem: Problem
    observer: Observer
    dataset: Dataset | None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    cache_dir: Path | None = None
    progress: bool = False


@dataclass
class EnsembleState:
    """Full-space ensemble: ``x (N, *state_shape)`` and parameters ``params (N, P)``."""

    x: torch.Tensor
    params: torch.Tensor


@dataclass(frozen=True)
class Tunable:
    """A hyperparameter ``bench tune`` may search, with its default search range.

    ``low``/``high`` bound a float field (an integer field with ``integer``), sampled on a log scale when ``log``.
    A method declares its tunables in the class-level ``tunable`` mapping (field name -> Tunable); the range is a
    sensible default for the problems shipped here, and ``bench tune --range name=LOW:HIGH`` overrides it.
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False
    doc: str = ""

    def __post_init__(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"Tunable range [{self.low}, {self.high}] is empty (or not positive on a log scale)")


@dataclass
class Method:
    """Base class of all data-assimilation methods.

    Subclasses define ``name`` and override ``init``, ``forecast``, ``analysis``, ``estimate`` (and ``fit``,
    ``skip``, ``estimate_params`` where they need to). The default ``init``/``forecast``/``estimate`` implement a
    full-space ensemble advanced by the problem's solver, with parameters carried along unchanged.

    Besides its hyperparameters (the dataclass fields), a method holds, none of them parameters:

    - ``ctx``: the :class:`Context` given by ``bind``;
    - ``generator``: the random stream of the online cycle, given by ``init`` (every draw of ``analysis`` comes
      from it, so a cell is reproducible);
    - ``training_summary``: what ``fit`` reports about its training (test errors, times, calibrated values;
      nested dicts of numbers and strings), shown by ``bench train`` and the report's surrogate table;
    - ``artifacts``: the trained network sets ``fit`` used (name -> artifact with ``path`` and ``curve``), which
      ``bench train --ship`` copies into the package.
    """

    name: ClassVar[str] = "method"
    #: hyperparameters for the conformance suite's tiny run (e.g. few training epochs)
    conformance_params: ClassVar[dict] = {}
    #: the smallest ensemble the method can run (checked by :meth:`validate`)
    min_ens: ClassVar[int] = 1
    #: the fields ``bench tune`` may search, with default ranges (none: the method has nothing to tune)
    tunable: ClassVar[dict[str, Tunable]] = {}
    #: the observation operators the method can assimilate (:data:`problems.base.OPERATORS`; e.g. a filter whose
    #: update assumes a linear operator declares ``("identity",)``); checked by :meth:`validate`
    operators: ClassVar[tuple[str, ...]] = tuple(OPERATORS)
    ctx: Context | None = field(default=None, init=False, repr=False, compare=False)
    generator: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)
    training_summary: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    artifacts: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- configuration ---------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """Parametrized name, e.g. ``EnKF[inflation=1.05,variant=sqrt]``."""
        return param_name(self)

    def params_dict(self) -> dict:
        return params_of(self)

    def validate(self, problem: Problem, observer: Observer, n_ens: int) -> None:
        """Raise :class:`ConfigError` when this method cannot run ``n_ens`` members on ``problem`` with
        ``observer``: checked at grid expansion, before anything is computed. Default: the observer's operator is
        one of :attr:`operators` and ``n_ens >= min_ens``. (An unsupported but valid combination is a
        :meth:`skip` reason instead.)"""
        if observer.operator not in self.operators:
            raise ConfigError(f"{self.label} cannot assimilate observations with operator={observer.operator}; "
                              f"valid for {self.name}: {', '.join(self.operators)}")
        if n_ens < self.min_ens:
            raise ConfigError(f"{self.label} needs an ensemble of at least {self.min_ens} members (n_ens={n_ens}); "
                              f"give n_ens >= {self.min_ens}")

    def memory_nbytes(self, problem: Problem, observer: Observer, n_ens: int, itemsize: int) -> int:
        """Estimated peak working memory (bytes) of the online cycle with ``n_ens`` members of ``itemsize``
        bytes: a few ensemble-sized buffers (the solver's stages, forecast, analysis) and the ensemble in
        observation space. Used to refuse a grid that cannot fit before anything is allocated."""
        return 8 * n_ens * (problem.dim + problem.n_params) * itemsize + 4 * n_ens * observer.n_obs * 8

    def skip(self, problem: Problem, observer: Observer) -> str | None:
        """Reason this method cannot run this combination, or None."""
        return None

    def bind(self, ctx: Context) -> None:
        self.ctx = ctx

    def fit(self) -> None:
        """Offline training (learned methods); default: nothing. A learned method seeds its training from its own
        fields (e.g. ``train_seed``), so its trained networks depend on its configuration only."""

    # ---- the cycle -------------------------------------------------------------------------------------------
    def init(self, x0: torch.Tensor, params: torch.Tensor, generator: torch.Generator) -> Any:
        """Initial ensemble state from physical states ``x0 (N, *shape)`` and parameters ``params (N, P)``."""
        self.generator = generator
        return EnsembleState(x0, params)

    def forecast(self, state: Any) -> Any:
        """Advance the ensemble one observation interval."""
        return EnsembleState(self.ctx.problem.step(state.x, state.params), state.params)

    def analysis(self, state: Any, y: torch.Tensor) -> Any:
        """Update with the observation ``y (m,)``."""
        raise NotImplementedError

    def estimate(self, state: Any) -> torch.Tensor:
        """Physical-space ensemble ``(N, *state_shape)``."""
        return state.x

    @torch.no_grad()
    def estimate_between(self, before: Any, after: Any, fracs: list[float]) -> list[torch.Tensor]:
        """Physical ensembles ``(N, *state_shape)`` at fractions ``0 < f < 1`` of the interval from ``before``
        (the analysis at the previous observation) to ``after`` (the forecast at the next one).

        Default for ensembles in physical space: advance ``before`` with the model through the fractions (an
        extra forecast, outside the timers). Methods with a cheaper route (interpolated latents) override it.
        """
        if not isinstance(before, EnsembleState):
            raise ConfigError(f"{self.label} keeps no physical ensemble; it must implement estimate_between to be "
                              "scored between observations (score_between)")
        xs = self.ctx.problem.advance_through(before.x, before.params, fracs)
        return [self.estimate(EnsembleState(x, before.params)) for x in xs]

    def latent(self, state: Any) -> torch.Tensor | None:
        """Latent ensemble ``(N, d_latent)`` for diagnostics (latent trajectories in the report); None when the
        method has no latent space. Called by the runner outside every timer."""
        return None

    def estimate_params(self, state: Any) -> torch.Tensor | None:
        """Parameter ensemble ``(N, P)`` in physical units, or None when the method does not estimate them."""
        return state.params
