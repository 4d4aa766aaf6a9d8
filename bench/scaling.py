"""Time per cycle against the state dimension, and the log-log slope of each method's curve.

A grid that sweeps a problem's size (Lorenz-96's ``dim``, a PDE's grid ``n``) gives every method one timing
point per state dimension ``d`` (the results' ``state_dim``: the number of entries of the state, all fields).
The slope of ``log t`` against ``log d`` is the cost's empirical exponent: about 1 for work linear in ``d``, 0
for a cost that does not grow with the grid, 2 for work that grows with its square. Fixed overheads flatten the
small-``d`` end of every curve, so a straight line through all the points can understate the exponent the large
states reach; :func:`scaling_table` reports the fit over all points and over the largest ones.

A point is the median over the cell's timed cycles (the runner's timing protocol: warm-up excluded) of the online
time ``t_online`` (forecast + analysis + reconstruction), in wall-clock or CPU time (``t_online_cpu``), the
per-cycle samples of every seed at that ``d`` pooled. Each slope comes with two 95 % intervals:

- ``fit``: from the points' scatter about the line (Student t with ``n - 2`` degrees of freedom; needs three
  points). It is wide when the curve is not a straight line on log-log axes;
- ``timing``: a bootstrap over the per-cycle samples (each point's median recomputed from samples drawn with
  replacement, the line refitted), i.e. what the timing noise alone allows.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Setting columns that stay fixed along one curve (besides problem family and method).
CURVE_KEYS: tuple[str, ...] = ("p_n_ens", "p_coverage", "p_noise", "p_obs_operator", "p_obs_obs_every", "p_device")
#: Time bases: results-column stem of the per-cycle samples.
BASES = {"wall": "t_online", "cpu": "t_online_cpu"}
#: Points of the "largest dimensions" fit.
TAIL_POINTS = 3

# two-sided 95 % quantiles of Student's t, by degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)


def t975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with ``dof`` degrees of freedom (normal-corrected beyond 15)."""
    if dof < 1:
        return math.nan
    return _T975[dof - 1] if dof <= len(_T975) else 1.960 + 2.4 / dof


@dataclass(frozen=True)
class SlopeFit:
    """A least-squares line through ``(log10 d, log10 median time)``.

    ``slope`` is the exponent, ``intercept`` the log10 time at ``d = 1``; ``fit_lo``/``fit_hi`` the 95 % interval
    from the points' scatter (NaN below three points), ``boot_lo``/``boot_hi`` the 95 % bootstrap interval over
    the per-cycle samples; ``n_points`` the dimensions fitted.
    """

    slope: float
    intercept: float
    fit_lo: float
    fit_hi: float
    boot_lo: float
    boot_hi: float
    n_points: int


def fit_slope(dims: Sequence[float], samples: Sequence[Sequence[float]], *, n_boot: int = 2000,
              seed: int = 0) -> SlopeFit:
    """Fit ``log10(median time) = intercept + slope * log10(d)`` over the dimensions ``dims``.

    Parameters
    ----------
    dims : state dimensions, at least two distinct ones.
    samples : per dimension, the per-cycle times (seconds); non-positive and non-finite values are dropped.
    n_boot : bootstrap replicates of the timing interval.
    seed : seed of the bootstrap (the result is deterministic).
    """
    x, clean = [], []
    for d, s in zip(dims, samples):
        v = np.asarray(s, dtype=float)
        v = v[np.isfinite(v) & (v > 0)]
        if len(v) and d > 0:
            x.append(math.log10(float(d)))
            clean.append(v)
    x = np.asarray(x)
    n = len(x)
    nan = math.nan
    if n < 2 or np.ptp(x) == 0:
        return SlopeFit(nan, nan, nan, nan, nan, nan, n)
    y = np.log10([np.median(v) for v in clean])
    xm = x - x.mean()
    sxx = float(xm @ xm)
    slope = float(xm @ (y - y.mean()) / sxx)
    intercept = float(y.mean() - slope * x.mean())
    fit_lo = fit_hi = nan
    if n >= 3:
        resid = y - (intercept + slope * x)
        se = math.sqrt(float(resid @ resid) / (n - 2) / sxx)
        fit_lo, fit_hi = slope - t975(n - 2) * se, slope + t975(n - 2) * se
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, n))
    for j, v in enumerate(clean):  # each point's median from samples drawn with replacement
        boot[:, j] = np.median(v[rng.integers(0, len(v), size=(n_boot, len(v)))], axis=1)
    yb = np.log10(boot)
    slopes = (yb - yb.mean(axis=1, keepdims=True)) @ xm / sxx
    boot_lo, boot_hi = (float(q) for q in np.percentile(slopes, [2.5, 97.5]))
    return SlopeFit(slope, intercept, fit_lo, fit_hi, boot_lo, boot_hi, n)


def _curve_keys(res: pd.DataFrame) -> list[str]:
    return [k for k in CURVE_KEYS if k in res.columns]


def scaling_points(res: pd.DataFrame, cyc: pd.DataFrame, basis: str = "wall") -> pd.DataFrame:
    """One row per (problem family, setting, method, state dimension) of the ok cells: ``median``, ``q25``,
    ``q75`` (seconds) and ``samples`` (the pooled per-cycle online times of its cells' timed cycles) in the
    ``basis`` clock (``wall`` or ``cpu``). A cell whose cycles are missing contributes its median column
    (``time_online_med_s`` / ``time_online_cpu_s``) as one sample. Empty when ``state_dim`` is absent."""
    col = BASES[basis]
    cols = ["problem", "method", *_curve_keys(res), "state_dim", "median", "q25", "q75", "samples", "cells"]
    if res.empty or "state_dim" not in res.columns:
        return pd.DataFrame(columns=cols)
    ok = res[(res["status"] == "ok") & res["state_dim"].notna()] if "status" in res.columns else res
    if ok.empty:
        return pd.DataFrame(columns=cols)
    per_cell: dict[str, np.ndarray] = {}
    if not cyc.empty and col in cyc.columns and "cell_id" in cyc.columns:
        timed = cyc
        if "warmup" in cyc.columns:
            timed = cyc[~cyc["warmup"].fillna(False).astype(bool)]
        timed = timed[timed["cell_id"].isin(set(ok["cell_id"]))]
        per_cell = {c: g[col].to_numpy(float) for c, g in timed.groupby("cell_id")}
    fallback = "time_online_med_s" if basis == "wall" else "time_online_cpu_s"
    keys = ["p_problem_name" if "p_problem_name" in ok.columns else "p_problem", "p_method", *_curve_keys(ok),
            "state_dim"]
    rows = []
    for k, g in ok.groupby(keys, dropna=False, sort=True):
        parts = [per_cell.get(c) for c in g["cell_id"]] if "cell_id" in g.columns else []
        parts = [p for p in parts if p is not None and len(p)]
        if not parts and fallback in g.columns:
            parts = [g[fallback].to_numpy(float)]
        v = np.concatenate(parts) if parts else np.array([])
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        q25, med, q75 = np.percentile(v, [25, 50, 75])
        rows.append([k[0], k[1], *k[2:-1], int(k[-1]), float(med), float(q25), float(q75), v, len(g)])
    return pd.DataFrame(rows, columns=cols)


def select_curve(points: pd.DataFrame, problem: str, setting: dict) -> pd.DataFrame:
    """The rows of :func:`scaling_points` of one problem family and setting (``{column: value}``)."""
    if points.empty:
        return points
    mask = np.array(points["problem"] == problem, dtype=bool)
    for c, v in setting.items():
        if c in points.columns:
            mask &= np.array(points[c].isna() if pd.isna(v) else points[c] == v, dtype=bool)
    return points[mask]


def _dims_text(dims: Sequence[int]) -> str:
    lo, hi = min(dims), max(dims)
    return f"{_sci(lo)}-{_sci(hi)}"


def _sci(d: float) -> str:
    """40, 3072, 1e5, 4.9e4: short, exact enough for a table."""
    if d < 1e4:
        return f"{d:g}"
    e = int(math.floor(math.log10(d)))
    return f"{float(f'{d / 10 ** e:.2g}'):g}e{e}"


def scaling_table(res: pd.DataFrame, cyc: pd.DataFrame) -> pd.DataFrame:
    """Per problem family, setting and method whose ok cells span two or more state dimensions: the log-log slope
    of the online time per cycle against ``d`` (:func:`fit_slope`), over all points (``slope``, ``fit_lo``,
    ``fit_hi``, ``boot_lo``, ``boot_hi``) and over the :data:`TAIL_POINTS` largest dimensions (``tail_slope``,
    ``tail_boot_lo``, ``tail_boot_hi``), in wall-clock time, and the same in CPU time (``cpu_`` prefix) where the
    cycles recorded it. Also ``dims`` (range), ``n_points``, ``t_min_s`` / ``t_max_s`` (the medians at the
    smallest and largest ``d``). Empty when nothing sweeps the dimension."""
    out = []
    walls = scaling_points(res, cyc, "wall")
    if walls.empty:
        return pd.DataFrame()
    cpus = scaling_points(res, cyc, "cpu")
    keys = ["problem", "method", *[k for k in CURVE_KEYS if k in walls.columns]]
    cpu_groups = {k: g for k, g in cpus.groupby(keys, dropna=False)} if not cpus.empty else {}
    for k, g in walls.groupby(keys, dropna=False, sort=True):
        if g["state_dim"].nunique() < 2:
            continue
        g = g.sort_values("state_dim")
        row = dict(zip(keys, k))
        row.update(dims=_dims_text(g["state_dim"].tolist()), n_points=len(g),
                   t_min_s=float(g["median"].iloc[0]), t_max_s=float(g["median"].iloc[-1]))
        for prefix, pts in (("", g), ("cpu_", cpu_groups.get(k))):
            if pts is None or pts["state_dim"].nunique() < 2:
                continue
            pts = pts.sort_values("state_dim")
            f = fit_slope(pts["state_dim"].tolist(), pts["samples"].tolist())
            row.update({f"{prefix}slope": f.slope, f"{prefix}intercept": f.intercept, f"{prefix}fit_lo": f.fit_lo,
                        f"{prefix}fit_hi": f.fit_hi, f"{prefix}boot_lo": f.boot_lo, f"{prefix}boot_hi": f.boot_hi})
            if len(pts) > TAIL_POINTS:
                tail = pts.iloc[-TAIL_POINTS:]
                t = fit_slope(tail["state_dim"].tolist(), tail["samples"].tolist())
                row.update({f"{prefix}tail_slope": t.slope, f"{prefix}tail_fit_lo": t.fit_lo,
                            f"{prefix}tail_fit_hi": t.fit_hi, f"{prefix}tail_boot_lo": t.boot_lo,
                            f"{prefix}tail_boot_hi": t.boot_hi})
        out.append(row)
    return pd.DataFrame(out)


def _interval(lo: float, hi: float) -> str:
    return "" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.2f}, {hi:.2f}]"


def slope_text(r: pd.Series | dict, prefix: str = "", tail: bool = False) -> str:
    """``1.02 [0.95, 1.09] t[1.01, 1.03]``: slope, its fit interval and its timing (bootstrap) interval."""
    p = prefix + ("tail_" if tail else "")
    s = r.get(f"{p}slope", math.nan)
    if s is None or not np.isfinite(s):
        return "–"
    fit = _interval(r.get(f"{p}fit_lo", math.nan), r.get(f"{p}fit_hi", math.nan))
    boot = _interval(r.get(f"{p}boot_lo", math.nan), r.get(f"{p}boot_hi", math.nan))
    return f"{s:.2f}" + (f" {fit}" if fit else "") + (f" t{boot}" if boot else "")


#: The note printed under every slope table.
SLOPE_NOTE = ("slope of log(online time per cycle) against log(state dimension d), median over the timed cycles; "
              "[a, b]: 95 % interval from the points' scatter about the line; t[a, b]: 95 % bootstrap interval "
              "over the per-cycle samples (timing noise only); largest: the fit over the "
              f"{TAIL_POINTS} largest d")


def slope_rows(table: pd.DataFrame, labels: dict[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the slope table as text: problem, method, d range, time at the ends, slopes."""
    labels = labels or {}
    has_cpu = "cpu_slope" in table.columns and table["cpu_slope"].notna().any()
    has_tail = "tail_slope" in table.columns and table["tail_slope"].notna().any()
    varying = [k for k in CURVE_KEYS if k in table.columns  # a setting that changes within a problem's curves
               and table.groupby("problem")[k].nunique(dropna=False).max() > 1]
    short = {"p_n_ens": "N", "p_coverage": "coverage", "p_noise": "noise", "p_obs_operator": "operator",
             "p_obs_obs_every": "obs every", "p_device": "device"}
    header = ["problem", *[short[k] for k in varying], "method", "d", "ms/cycle (smallest, largest d)",
              "slope (wall)"]
    if has_tail:
        header.append("slope, largest d (wall)")
    if has_cpu:
        header.append("slope (CPU)")
        if has_tail:
            header.append("slope, largest d (CPU)")
    rows = []
    for _, r in table.iterrows():
        row = [str(r["problem"]), *[f"{r[k]}" for k in varying], labels.get(str(r["method"]), str(r["method"])),
               str(r["dims"]), f"{1e3 * r['t_min_s']:.3g}, {1e3 * r['t_max_s']:.3g}", slope_text(r)]
        if has_tail:
            row.append(slope_text(r, tail=True))
        if has_cpu:
            row.append(slope_text(r, "cpu_"))
            if has_tail:
                row.append(slope_text(r, "cpu_", tail=True))
        rows.append(row)
    return header, rows


def format_slopes(table: pd.DataFrame, width: int | None = None) -> str:
    """The slope table as plain text for the terminal (``bench show``), at most ``width`` columns wide (default:
    the terminal's, ``$COLUMNS`` where set, else 120); ``""`` when the table is empty."""
    import shutil

    from rich import box
    from rich.table import Table
    from rich.text import Text

    from bench.labels import short_labels
    from bench.report import plain_text

    if table.empty:
        return ""
    labels = short_labels(table["method"].astype(str))
    header, rows = slope_rows(table, labels)
    t = Table(box=box.SIMPLE_HEAD, title=Text("time per cycle against the state dimension", style="bold"),
              title_justify="left", pad_edge=False, padding=(0, 1), show_edge=False)
    for h in header:
        t.add_column(Text(h), justify="left" if h in ("problem", "method") else "right", overflow="fold")
    for r in rows:
        t.add_row(*(Text(c) for c in r))
    legend = {lab: full for full, lab in labels.items() if lab != full}
    notes = [Text(f"  {lab} = {full}") for lab, full in sorted(legend.items())] + [Text(SLOPE_NOTE)]
    return plain_text([t, *notes], width or shutil.get_terminal_size((120, 24)).columns)
