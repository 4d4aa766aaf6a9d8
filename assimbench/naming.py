"""Parametrized names, typed construction from plain dicts, and content hashes.

Every configured object (problem, observer, method) is a dataclass; its parametrized name
``Name[k=v,...]`` lists the fields that differ from their defaults, keys sorted. The same string is the CLI
selector, the results key, the plot legend and part of cache keys.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
import warnings
from typing import Any

from assimbench.errors import ConfigError, unknown


def public_fields(obj_or_cls) -> list[dataclasses.Field]:
    """Dataclass fields that are user parameters (``init=True`` and not marked ``metadata={'internal': True}``)."""
    return [f for f in dataclasses.fields(obj_or_cls) if f.init and not f.metadata.get("internal", False)]


def params_of(obj) -> dict[str, Any]:
    """All public parameters of a configured object, as plain values."""
    return {f.name: getattr(obj, f.name) for f in public_fields(obj)}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(fmt_value(x) for x in v) + ")"
    return str(v)


def param_name(obj, base: str | None = None) -> str:
    """``Name[k=v,...]`` with the non-default public fields, sorted by key."""
    base = base or getattr(obj, "name", type(obj).__name__)
    items = []
    for f in sorted(public_fields(obj), key=lambda f: f.name):
        v = getattr(obj, f.name)
        if v != _default(f):
            items.append(f"{f.name}={fmt_value(v)}")
    return f"{base}[{','.join(items)}]" if items else base


def content_hash(*objs: Any, n: int = 12) -> str:
    """Stable short hash of plain data (dicts, lists, numbers, strings)."""
    blob = json.dumps(objs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check/convert a YAML value to a dataclass field type; raise ConfigError on mismatch."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(f"{where}: {key}={value!r} has the wrong type (expected {tp})")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {key}={value!r} is not allowed; valid: {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}={value!r} should be a list")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key}={value!r} should be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: {key}={value!r} should be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}={value!r} should be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}={value!r} should be a string")
        return value
    return value


def canonical_key(cls, key: str, where: str) -> str:
    """The current name of parameter ``key`` of ``cls``.

    A class lists renamed parameters in its ``renamed`` mapping (old name -> new name); an old name is still
    accepted, with a FutureWarning that names the new one.
    """
    new = (getattr(cls, "renamed", None) or {}).get(key)
    if new is None:
        return key
    warnings.warn(f"{where}: the parameter {key!r} is now called {new!r}; {key!r} is still accepted but will go",
                  FutureWarning, stacklevel=3)
    return new


def build(cls, params: dict[str, Any], kind: str, **internal: Any):
    """Construct dataclass ``cls`` from user ``params``, checking names and types.

    Unknown keys raise a :class:`ConfigError` listing the valid keys; values are type-checked against the
    field annotations. ``internal`` passes non-user fields (e.g. the problem an observer is bound to).
    """
    fields = {f.name: f for f in public_fields(cls)}
    name = getattr(cls, "name", cls.__name__)
    where = f"{kind} {name}"
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, v in params.items():
        k = canonical_key(cls, key, where)
        if k not in fields:
            raise unknown("key", k, fields, where=f"{where} (its parameters)")
        if k in kwargs:
            old = next(o for o, n in cls.renamed.items() if n == k)
            raise ConfigError(f"{where}: {k!r} is given twice, once under its old name {old!r}; give only {k!r}")
        kwargs[k] = _coerce(v, hints.get(k, Any), k, where)
    try:
        obj = cls(**kwargs, **internal)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return obj
