"""Compare two runs cell by cell: speed ratios, accuracy differences and regression flags.

``compare(A, B)`` matches the cells of two run directories on their ``p_*`` parameter columns (provenance such
as git sha, host or date is never part of the key) and puts them side by side. B is the candidate: a cell is a
``regression`` when B is slower than A by more than ``threshold`` (ratio of ``time_online_s`` or
``time_per_cycle_s`` above ``1 + threshold``), less accurate by more than ``threshold`` relatively
(``rrmse_a`` of B above ``(1 + threshold)`` times that of A), or failed where A was ok.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from assimbench.errors import ConfigError
from bench.store import load_results

TIME_COLUMNS: tuple[str, ...] = ("time_online_s", "time_per_cycle_s")
ACCURACY_COLUMN = "rrmse_a"
#: Parameter columns that describe what a cell computes; everything else is metric or provenance.
_NOT_KEYS = {"p_problem_name", "p_method_name"}  # implied by p_problem / p_method


def _canon(v: Any) -> str:
    """A type-stable text form of a parameter value so that 1, 1.0 and 1.0000000000001 match, NaN = None."""
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "∅"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return f"{float(v):.10g}"
    return str(v)


def _results(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    return source.copy() if isinstance(source, pd.DataFrame) else load_results(source)


def compare(dir_a: str | Path | pd.DataFrame, dir_b: str | Path | pd.DataFrame, threshold: float = 0.1, *,
            ignore: tuple[str, ...] | list[str] = (), min_time_s: float = 0.0) -> pd.DataFrame:
    """Cells of run A and run B side by side, with ratios, differences and a ``regression`` flag.

    Parameters
    ----------
    dir_a, dir_b : path or DataFrame
        Run directories (or results tables); A is the reference, B the candidate.
    threshold : float
        Relative tolerance: 0.1 flags B when it is >10% slower or has a >10% larger analysis rRMSE.
    ignore : sequence of str
        ``p_*`` columns left out of the match key. When each run used a single device and the two differ
        (a CPU run against a GPU run), ``p_device`` is left out automatically.
    min_time_s : float
        Timings where both A and B are below this (seconds) are too small to judge and never flag slowness.

    Returns
    -------
    DataFrame
        One row per cell present in either run: the key columns (values from A, else B); ``match`` in
        {"both", "only_a", "only_b"}; ``status_A``/``status_B``; for ``rrmse_a`` and each timing ``c``:
        ``c_A``, ``c_B``; ``rrmse_a_diff`` (B - A) and ``rrmse_a_rel`` (B / A - 1); ``<time>_ratio`` (B / A);
        booleans ``slower``, ``less_accurate``, ``newly_failed`` and ``regression``. ``df.attrs`` holds
        ``threshold``, ``key`` (the matched columns) and ``ignored``.
    """
    if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
        raise ConfigError(f"threshold must be a finite number >= 0, got {threshold!r}")
    a, b = _results(dir_a), _results(dir_b)
    ignored = list(ignore)
    if ("p_device" in a.columns and "p_device" in b.columns and a["p_device"].nunique() == 1
            and b["p_device"].nunique() == 1 and a["p_device"].iloc[0] != b["p_device"].iloc[0]):
        ignored.append("p_device")
    key = [c for c in a.columns if c.startswith("p_") and c in b.columns and c not in _NOT_KEYS
           and c not in ignored]
    if not key:
        raise ConfigError("the two runs share no p_* parameter columns: nothing to match cells on")
    for df in (a, b):
        for c in key:
            df[f"_k_{c}"] = df[c].map(_canon)
    kcols = [f"_k_{c}" for c in key]
    for name, df in (("A", a), ("B", b)):
        dup = df.duplicated(kcols).sum()
        if dup:
            raise ConfigError(f"run {name} has {dup} cells with the same parameters; cannot match them one to one")
    values = ["status", ACCURACY_COLUMN, *TIME_COLUMNS, "cell_id"]
    pick = lambda df: df[kcols + key + [c for c in values if c in df.columns]]  # noqa: E731
    m = pick(a).merge(pick(b), on=kcols, how="outer", suffixes=("_A", "_B"), indicator=True)
    out = pd.DataFrame(index=m.index)
    for c in key:  # key values from A where present, else from B
        out[c] = m[f"{c}_A"].where(m["_merge"] != "right_only", m[f"{c}_B"])
    out["match"] = m["_merge"].map({"both": "both", "left_only": "only_a", "right_only": "only_b"}).astype(str)
    for c in values:
        for s in ("A", "B"):
            out[f"{c}_{s}"] = m[f"{c}_{s}"] if f"{c}_{s}" in m.columns else np.nan
    ra = pd.to_numeric(out[f"{ACCURACY_COLUMN}_A"], errors="coerce")
    rb = pd.to_numeric(out[f"{ACCURACY_COLUMN}_B"], errors="coerce")
    out[f"{ACCURACY_COLUMN}_diff"] = rb - ra
    out[f"{ACCURACY_COLUMN}_rel"] = rb / ra - 1.0
    both = (out["match"] == "both").to_numpy()
    slower = np.zeros(len(out), dtype=bool)
    for t in TIME_COLUMNS:
        ta = pd.to_numeric(out[f"{t}_A"], errors="coerce")
        tb = pd.to_numeric(out[f"{t}_B"], errors="coerce")
        out[f"{t}_ratio"] = tb / ta
        judged = (ta >= min_time_s) | (tb >= min_time_s)
        slower |= ((out[f"{t}_ratio"] > 1.0 + threshold) & judged).to_numpy()
    less = (rb > ra * (1.0 + threshold)).to_numpy() | (np.isfinite(ra) & ~np.isfinite(rb)).to_numpy()
    newly_failed = ((out["status_A"] == "ok") & (out["status_B"] == "failed")).to_numpy()
    out["slower"] = slower & both
    out["less_accurate"] = less & both
    out["newly_failed"] = newly_failed & both
    out["regression"] = out["slower"] | out["less_accurate"] | out["newly_failed"]
    out = out.sort_values(key, kind="stable", na_position="last").reset_index(drop=True)
    out.attrs.update(threshold=float(threshold), key=key, ignored=ignored)
    return out


def _ratio(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return f"{x:.2f}x" if math.isfinite(x) else "–"


def _num(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return f"{x:.4g}" if math.isfinite(x) else "–"


def format_compare(df: pd.DataFrame, only_regressions: bool = False) -> str:
    """A terminal report of :func:`compare`: one headline, then a table (``!!`` marks regressions)."""
    thr = df.attrs.get("threshold", float("nan"))
    both = df[df["match"] == "both"]
    n_reg = int(df["regression"].sum())
    head = (f"{len(both)} matched cells, {n_reg} regression(s) at threshold {thr:g} "
            f"(slower: {int(df['slower'].sum())}, less accurate: {int(df['less_accurate'].sum())}, "
            f"newly failed: {int(df['newly_failed'].sum())})")
    extra = []
    for tag, label in (("only_a", "only in A"), ("only_b", "only in B")):
        n = int((df["match"] == tag).sum())
        if n:
            extra.append(f"{n} {label}")
    if extra:
        head += "; " + ", ".join(extra)
    if df.attrs.get("ignored"):
        head += f"; not matched on: {', '.join(df.attrs['ignored'])}"
    rows = df[df["regression"]] if only_regressions else both
    if rows.empty:
        return head
    shown = [c for c in ("p_problem", "p_method", "p_n_ens", "p_coverage", "p_noise", "p_seed", "p_device")
             if c in df.columns and (c in ("p_problem", "p_method") or df[c].nunique(dropna=False) > 1)]
    table = pd.DataFrame({
        **{c.removeprefix("p_"): rows[c].map(lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v))
                                             else (f"{v:g}" if isinstance(v, float) else str(v))) for c in shown},
        "status A/B": rows["status_A"].astype(str) + "/" + rows["status_B"].astype(str),
        "rRMSE A": rows[f"{ACCURACY_COLUMN}_A"].map(_num),
        "rRMSE B": rows[f"{ACCURACY_COLUMN}_B"].map(_num),
        "rRMSE B-A": rows[f"{ACCURACY_COLUMN}_diff"].map(_num),
        "online B/A": rows["time_online_s_ratio"].map(_ratio),
        "cycle B/A": rows["time_per_cycle_s_ratio"].map(_ratio),
        "": np.where(rows["regression"], "!!", ""),
    })
    return head + "\n" + table.to_string(index=False)
