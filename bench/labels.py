"""Short method labels and the fixed method colours shared by the terminal, the report and the README figures.

A parametrized name such as ``EnKF[inflation=1.06,loc_radius=4,variant=stochastic]`` is exact but long. On one
page (a table, a figure, a report page) a method is shown by its *short label*: the method's name plus only
the parameters whose values differ between the names of that method on the page; a legend table on the page
maps each label back to the full name.

Colours are keyed by the method's registry name (the part before ``[``), never by the order of the methods on a
page, so EnKF has the same colour in every figure, page and README image. The palette is Okabe and Ito's
colour-blind-safe set; baselines are greys. Variants of one method on a page share its colour and differ by
line style and marker (:func:`method_styles`).
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

#: Okabe-Ito colours (colour-blind safe), by the method's registry name.
METHOD_COLOURS: dict[str, str] = {
    "EnKF": "#0072B2",         # blue
    "EnSF": "#D55E00",         # vermillion
    "Latent-EnSF": "#CC79A7",  # reddish purple
    "LD-EnSF": "#009E73",      # bluish green
    "EnFF": "#E69F00",         # orange
    "FreeRun": "#6E6E6E",      # grey: a baseline
    "Climatology": "#A0A0A0",
    "Persistence": "#3C3C3C",
}
#: Colours for methods not listed above (plugins), chosen by a stable hash of the name.
SPARE_COLOURS: tuple[str, ...] = ("#56B4E9", "#000000", "#8C6D31", "#F0E442")
#: Line styles and markers that tell apart the variants of one method on a page.
LINE_STYLES: tuple = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")


def split_name(name: str) -> tuple[str, dict[str, str]]:
    """``"EnKF[inflation=1.05,fields=(u,v)]"`` -> ``("EnKF", {"inflation": "1.05", "fields": "(u,v)"})``.

    Commas inside parentheses or brackets belong to the value. A name without ``[...]`` has no parameters.
    """
    name = str(name)
    base, sep, rest = name.partition("[")
    if not sep or not rest.endswith("]"):
        return name, {}
    parts, depth, cur = [], 0, ""
    for ch in rest[:-1]:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    params = {}
    for p in parts:
        k, _, v = p.partition("=")
        params[k] = v
    return base, params


def family(name: str) -> str:
    """The method's registry name: the part of a parametrized name before ``[``."""
    return str(name).partition("[")[0]


def short_labels(names: Iterable[str]) -> dict[str, str]:
    """Full parametrized name -> short label, unique among ``names``.

    A method that appears once on the page is shown by its registry name alone. Several variants of one
    method keep the fewest parameters that tell them apart: parameters that every variant names come first,
    then those with the most distinct values (a parameter absent from a name has its default and is not
    shown). Where no such choice is unique, the full name is kept.
    """
    names = list(dict.fromkeys(str(n) for n in names))
    by_family: dict[str, list[str]] = {}
    for n in names:
        by_family.setdefault(family(n), []).append(n)
    out: dict[str, str] = {}
    for fam, members in by_family.items():
        if len(members) == 1:
            out[members[0]] = fam
            continue
        parsed = {m: split_name(m)[1] for m in members}
        keys = sorted({k for p in parsed.values() for k in p})
        differ = [k for k in keys if len({p.get(k) for p in parsed.values()}) > 1]
        differ.sort(key=lambda k: (-sum(k in p for p in parsed.values()), -len({p.get(k) for p in parsed.values()})))
        chosen: list[str] = []
        for k in differ:
            chosen.append(k)
            if len({tuple(p.get(c) for c in chosen) for p in parsed.values()}) == len(members):
                break
        for m in members:
            items = [f"{k}={parsed[m][k]}" for k in sorted(chosen) if k in parsed[m]]
            out[m] = f"{fam}[{','.join(items)}]" if items else fam
    labels = list(out.values())
    for m, lab in list(out.items()):
        if labels.count(lab) > 1:
            out[m] = m
    return out


def method_colour(name: str) -> str:
    """The fixed colour (hex) of a method, from its registry name; the same on every page and figure."""
    fam = family(name)
    if fam in METHOD_COLOURS:
        return METHOD_COLOURS[fam]
    return SPARE_COLOURS[zlib.crc32(fam.encode()) % len(SPARE_COLOURS)]


def method_styles(names: Sequence[str]) -> dict[str, dict]:
    """Per full name: ``{"color", "linestyle", "marker"}``; variants of one method differ by style and marker.

    The variants of a method are ordered by name, so a page's styles depend only on the names it shows.
    """
    names = sorted(dict.fromkeys(str(n) for n in names))
    seen: dict[str, int] = {}
    out = {}
    for n in names:
        k = seen.get(family(n), 0)
        seen[family(n)] = k + 1
        out[n] = {"color": method_colour(n), "linestyle": LINE_STYLES[k % len(LINE_STYLES)],
                  "marker": MARKERS[k % len(MARKERS)]}
    return out
