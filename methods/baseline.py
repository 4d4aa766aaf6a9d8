"""Baselines: the free-running prior ensemble (no assimilation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from methods.base import EnsembleState, Method


@dataclass
class FreeRun(Method):
    """The prior ensemble advanced by the model, observations ignored: the floor every filter must beat."""

    name: ClassVar[str] = "FreeRun"

    def analysis(self, state: EnsembleState, y) -> EnsembleState:
        return state
