"""Name -> class registries with lazy imports, Python entry points and YAML ``plugins:``.

A registry maps a plain name to ``"module:Class"`` (imported on first use, so heavy dependencies load only
when needed). Third-party packages add entries without editing ours in two ways:

- an entry point in the group ``assimbench.methods`` / ``assimbench.problems`` (``name = "pkg.mod:Class"``);
- a module listed under ``plugins:`` in the YAML; importing it calls :func:`methods.register` /
  :func:`problems.register` (or any class it defines with a ``name`` and the right base joins automatically).
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from assimbench.errors import ConfigError, unknown
from assimbench.naming import build


class Registry:
    def __init__(self, kind: str, group: str, base_path: str, builtin: dict[str, str]):
        self.kind = kind
        self.group = group
        self.base_path = base_path
        self._entries: dict[str, Any] = dict(builtin)
        self._eps_loaded = False

    def _load_entry_points(self) -> None:
        if self._eps_loaded:
            return
        self._eps_loaded = True
        for ep in metadata.entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)

    def register(self, cls: type, name: str | None = None) -> type:
        """Add ``cls`` under ``name`` (default ``cls.name``); usable as a decorator."""
        self._entries[name or cls.name] = cls
        return cls

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def cls(self, name: str) -> type:
        self._load_entry_points()
        if name not in self._entries:
            raise unknown(self.kind, name, self._entries)
        entry = self._entries[name]
        if isinstance(entry, str):
            mod, _, attr = entry.partition(":")
            try:
                entry = getattr(importlib.import_module(mod), attr)
            except ImportError as e:
                raise ConfigError(f"{self.kind} {name!r} cannot be imported ({e}); install what it needs") from None
            except (Exception, SystemExit) as e:  # a broken plugin module (syntax error, any raise at import)
                raise ConfigError(f"{self.kind} {name!r} ({entry}) fails on import: {_one_line(e)}") from None
            self._entries[name] = entry
        return entry

    def get(self, name: str, **params: Any):
        """Configured instance of ``name`` with ``params`` (unknown keys and wrong types raise ConfigError)."""
        return build(self.cls(name), params, self.kind)


def load_plugins(modules: list[str]) -> None:
    """Import each plugin module (it registers its classes on import)."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"plugin module {mod!r} cannot be imported: {e}") from None
        except (Exception, SystemExit) as e:  # a syntax error or anything the module raises while importing
            raise ConfigError(f"plugin module {mod!r} fails on import: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    """``Type: message (file, line n)`` of an import failure, on one line."""
    where = ""
    if isinstance(e, SyntaxError):
        where = f" ({e.filename}, line {e.lineno})"
    else:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})"
    msg = " ".join(str(e).split()) if not isinstance(e, SyntaxError) else (e.msg or "")
    return f"{type(e).__name__}: {msg}{where}"
