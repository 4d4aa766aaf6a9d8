"""Data-assimilation methods: a registry of name -> Method class.

``methods.get("EnKF", inflation=1.05)`` builds a configured method; ``methods.names()`` lists them. A
researcher's own method joins through the ``assimbench.methods`` entry-point group, a YAML ``plugins:`` list,
or :func:`register`.
"""
from __future__ import annotations

from assimbench.registry import Registry
from methods.base import Context, EnsembleState, Method

_REGISTRY = Registry("method", "assimbench.methods", "methods", {
    "FreeRun": "methods.baseline:FreeRun",
    "EnKF": "methods.enkf:EnKF",
    "EnSF": "methods.ensf:EnSF",
    "EnFF": "methods.enff:EnFF",
    "LD-EnSF": "methods.ldensf:LDEnSF",
    "Latent-EnSF": "methods.latent_ensf:LatentEnSF",
})


def get(name: str, **params) -> Method:
    """Configured method ``name``; unknown names or keys raise ConfigError listing the valid ones. The method
    remembers which fields were given (``explicit_fields``): a training field given explicitly wins over its
    recipe's value even when it equals the class default (see :func:`methods.train_loop.resolve_recipe`)."""
    method = _REGISTRY.get(name, **params)
    object.__setattr__(method, "explicit_fields", frozenset(params))
    return method


def names() -> list[str]:
    """Names of every registered method whose module imports."""
    return _REGISTRY.names()


def cls(name: str) -> type[Method]:
    return _REGISTRY.cls(name)


def register(cls_: type[Method], name: str | None = None) -> type[Method]:
    """Register a Method subclass (decorator-friendly)."""
    return _REGISTRY.register(cls_, name)


__all__ = ["Context", "EnsembleState", "Method", "get", "names", "cls", "register"]
