"""User-facing errors.

Anything a user can get wrong (an unknown name, a misspelled key, an impossible value, a missing GPU) raises
:class:`ConfigError`. The CLI turns it into a one-paragraph message and exit code 2, never a traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad input from the user: the message names the problem and the valid choices."""


class Diverged(RuntimeError):
    """A filter produced NaN/Inf or left the plausible range; the runner records it as ``failed``."""


def unknown(kind: str, name: str, valid: Iterable[str], where: str = "") -> ConfigError:
    """Build the error for an unknown ``name`` among ``valid`` choices, with a close-match hint."""
    valid = sorted(valid)
    hint = difflib.get_close_matches(str(name), valid, n=1)
    msg = f"unknown {kind} {name!r}{' in ' + where if where else ''}; valid: {', '.join(valid) or '(none)'}"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    return ConfigError(msg)
