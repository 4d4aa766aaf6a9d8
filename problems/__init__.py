"""Problems (PDEs and the Lorenz-96 check): a registry of name -> Problem class.

``problems.get("lorenz96", dim=40)`` builds a configured problem; ``problems.names()`` lists them. A
researcher's own problem joins through the ``assimbench.problems`` entry-point group, a YAML ``plugins:`` list,
or :func:`register`.
"""
from __future__ import annotations

from assimbench.registry import Registry
from problems.base import Dataset, Observer, ObserverConfig, Problem, bind_observer

_REGISTRY = Registry("problem", "assimbench.problems", "problems", {
    "lorenz96": "problems.lorenz96:Lorenz96",
    "linear_gauss": "problems.linear:LinearGauss",
    "shallow_water": "problems.shallow_water:ShallowWater",
    "kolmogorov": "problems.kolmogorov:Kolmogorov",
})


def get(name: str, **params) -> Problem:
    """Configured problem ``name``; unknown names or keys raise ConfigError listing the valid ones."""
    return _REGISTRY.get(name, **params)


def names() -> list[str]:
    return _REGISTRY.names()


def cls(name: str) -> type[Problem]:
    return _REGISTRY.cls(name)


def register(cls_: type[Problem], name: str | None = None) -> type[Problem]:
    return _REGISTRY.register(cls_, name)


__all__ = ["Dataset", "Observer", "ObserverConfig", "Problem", "bind_observer", "get", "names", "cls", "register"]
