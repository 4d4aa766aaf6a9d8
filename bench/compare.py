"""Compare two runs cell by cell, and flag only changes that stand out of the noise.

``compare(A, B)`` matches the cells of two run folders on their ``p_*`` parameter columns (provenance such as
git sha, host, threads or date is never part of the key) and puts them side by side. B is the candidate.

Time is judged per phase (forecast, analysis, reconstruct and the whole cycle) on the per-cycle samples of
``cycles.parquet`` (the warm-up cycle left out). A phase of a cell is **slower** when all three hold:

- the effect is large enough: the ratio of medians B / A exceeds ``1 + min_effect``;
- it is statistically clear: a two-sided Mann-Whitney U test of the two samples gives ``p < alpha``
  (normal approximation with tie correction; with three samples a side it can never reach 0.01, so tiny runs
  are not judged on time at all);
- the phase is long enough to time: its median in A or B is at least ``floor_s`` (sub-millisecond phases are
  dominated by timer and scheduler noise and never flag).

A cell without per-cycle samples (a run folder without ``cycles.parquet``) is judged on the ratio of
``time_per_cycle_s`` alone, with the same ``min_effect`` and ``floor_s``.

Accuracy is judged against the spread over seeds: cells that differ only in ``p_seed`` form a group, and the
group is **less accurate** when the mean ``rrmse_a`` over its seeds grew by more than ``threshold`` relatively
*and* by more than ``seed_z`` standard errors of that mean difference (Welch: ``sqrt(s_A^2 / n_A +
s_B^2 / n_B)`` with ``s`` the standard deviation over seeds). A change that a different seed would also have
made is not a regression. A group with one seed is judged on the relative threshold alone. Every cell of a
flagged group is flagged.

A cell **newly failed** when it was ``ok`` in A and ``failed`` in B. ``regression`` is any of the three.

``pair`` matches cells that differ in one chosen parameter: ``pair="inflation"`` leaves the parameter (and the
labels that spell it, such as ``p_method``) out of the match key, so ``EnKF[inflation=1.05]`` in A meets
``EnKF[inflation=1.1]`` in B; ``pair="inflation=1.05,1.1"`` also picks value 1.05 from A and 1.1 from B, which
compares two settings inside one run folder (give it as both A and B).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from assimbench.errors import ConfigError
from bench.store import load_cycles, load_results

TIME_COLUMNS: tuple[str, ...] = ("time_online_s", "time_per_cycle_s")
#: phase -> per-cycle sample column in cycles.parquet
PHASES: dict[str, str] = {"forecast": "t_forecast", "analysis": "t_analysis", "reconstruct": "t_reconstruct",
                          "cycle": "t_cycle"}
ACCURACY_COLUMN = "rrmse_a"
#: Parameter columns that describe what a cell computes; everything else is metric or provenance.
_NOT_KEYS = {"p_problem_name", "p_method_name"}  # implied by p_problem / p_method
#: label columns that spell the parameters of a family (``EnKF[inflation=1.05]``)
_LABELS = {"p_method_": ("p_method",), "p_problem_": ("p_problem",), "p_obs_": ("p_observer",)}


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


def _cycles(source: str | Path | pd.DataFrame, cycles: pd.DataFrame | None) -> pd.DataFrame:
    if cycles is not None:
        return cycles
    return pd.DataFrame() if isinstance(source, pd.DataFrame) else load_cycles(source)


# ------------------------------------------------------------------------------------------------------------
def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie-corrected); NaN if undefined.

    All-equal samples give p = 1 (no evidence of a shift).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return float("nan")
    x = np.concatenate([a, b])
    ranks = pd.Series(x).rank(method="average").to_numpy()
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    n = n1 + n2
    _, counts = np.unique(x, return_counts=True)
    tie = (counts**3 - counts).sum() / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12 * ((n + 1) - tie)
    if var <= 0:
        return 1.0
    z = (abs(u1 - n1 * n2 / 2) - 0.5) / math.sqrt(var)  # continuity correction
    return float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))


def _samples(cyc: pd.DataFrame) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """cell_id -> basis ("wall", "cpu") -> phase -> per-cycle samples (the warm-up cycle left out).

    Timing repeats (several rows of one cycle, see ``timing_repeats``) are all samples.
    """
    if cyc.empty or "cell_id" not in cyc.columns:
        return {}
    if "warmup" in cyc.columns:
        cyc = cyc[~cyc["warmup"].fillna(False).astype(bool)]
    elif "cycle" in cyc.columns:
        cyc = cyc[cyc["cycle"] > 1]
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for cid, g in cyc.groupby("cell_id", sort=False):
        d: dict[str, dict[str, np.ndarray]] = {"wall": {}, "cpu": {}}
        for ph, col in PHASES.items():
            for basis, c in (("wall", col), ("cpu", f"{col}_cpu")):
                if c in g.columns:
                    v = pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=float)
                    if np.isfinite(v).any():
                        d[basis][ph] = v
        out[str(cid)] = d
    return out


def _resolve_pair(pair: str, a: pd.DataFrame, b: pd.DataFrame) -> tuple[str, list[str], tuple[str, str] | None]:
    """``"name"`` or ``"name=valA,valB"`` -> (column, columns left out of the key, values or None)."""
    name, _, values = pair.partition("=")
    name = name.strip()
    cols = [c for c in a.columns if c.startswith("p_") and c in b.columns]
    cands = [name] if name.startswith("p_") else [f"p_{name}", f"p_method_{name}", f"p_problem_{name}",
                                                   f"p_obs_{name}"]
    found = [c for c in cands if c in cols]
    if not found:
        valid = sorted({c.removeprefix("p_").removeprefix("method_").removeprefix("problem_").removeprefix("obs_")
                        for c in cols if c not in _NOT_KEYS})
        raise ConfigError(f"--pair {name!r}: no such parameter in both runs; valid: {', '.join(valid)}")
    col = found[0]
    left_out = [col]
    for prefix, labels in _LABELS.items():
        if col.startswith(prefix):
            left_out += list(labels)
    if col in ("p_coverage", "p_noise"):
        left_out.append("p_observer")
    if col == "p_method":
        left_out += [c for c in cols if c.startswith("p_method_")]
    if col == "p_problem":
        left_out += [c for c in cols if c.startswith("p_problem_")]
    picked = None
    if values:
        parts = values.split(",")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ConfigError(f"--pair {pair!r}: give NAME or NAME=VALUE_A,VALUE_B (two values)")
        picked = (parts[0].strip(), parts[1].strip())
    return col, left_out, picked


def _pick_value(df: pd.DataFrame, col: str, value: str, side: str) -> pd.DataFrame:
    canon_value = _canon(_maybe_number(value))
    keep = df[col].map(_canon) == canon_value
    if not keep.any():
        have = sorted(set(df[col].map(_canon)))
        raise ConfigError(f"--pair: run {side} has no cell with {col.removeprefix('p_')} = {value}; "
                          f"it has: {', '.join(have)}")
    return df[keep]


def _maybe_number(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s


# ------------------------------------------------------------------------------------------------------------
def compare(dir_a: str | Path | pd.DataFrame, dir_b: str | Path | pd.DataFrame, threshold: float = 0.1, *,
            min_effect: float = 0.5, alpha: float = 0.01, floor_s: float = 0.005, seed_z: float = 2.0,
            time_basis: str = "auto", pair: str | None = None, ignore: tuple[str, ...] | list[str] = (),
            cycles_a: pd.DataFrame | None = None, cycles_b: pd.DataFrame | None = None) -> pd.DataFrame:
    """Cells of run A and run B side by side, with ratios, test results and a ``regression`` flag.

    Parameters
    ----------
    dir_a, dir_b : path or DataFrame
        Run folders (or results tables, then ``cycles_a`` / ``cycles_b`` give the per-cycle tables); A is the
        reference, B the candidate.
    threshold : float
        Relative accuracy tolerance: the mean ``rrmse_a`` over seeds must grow by more than this fraction
        (and by more than ``seed_z`` standard errors) to flag.
    min_effect : float
        Smallest slowdown judged: a phase flags only when median B / median A > ``1 + min_effect``.
    alpha : float
        Significance level of the Mann-Whitney test on the per-cycle samples.
    floor_s : float
        Phases whose median is below this (seconds) in both runs are not judged.
    seed_z : float
        How many standard errors of the seed-mean difference an accuracy change must exceed.
    time_basis : {"auto", "cpu", "wall"}
        Which per-cycle samples are tested: ``cpu`` (process CPU time, ``t_*_cpu``), ``wall`` (``t_*``), or
        ``auto``: CPU time for CPU cells where both runs recorded it, wall time otherwise.
    pair : str, optional
        ``NAME`` or ``NAME=VALUE_A,VALUE_B``: match cells that differ in this one parameter (see module doc).
    ignore : sequence of str
        ``p_*`` columns left out of the match key. When each run used a single device and the two differ
        (a CPU run against a GPU run), ``p_device`` is left out automatically.

    Returns
    -------
    DataFrame
        One row per cell present in either run: the key columns (values from A, else B); ``match`` in
        {"both", "only_a", "only_b"}; ``status_A``/``status_B``; ``rrmse_a_A``/``_B``, ``rrmse_a_diff``
        (B - A), ``rrmse_a_rel`` (B / A - 1); with ``pair``, the columns left out of the key as ``c_A``, ``c_B``;
        for each timing column ``c`` of the results table ``c_A``, ``c_B``
        and ``c_ratio``; for each phase ``ph``: ``ph_ratio`` (ratio of per-cycle medians), ``ph_p`` (test
        p-value) and ``ph_judged`` (above the floor with samples on both sides); ``slow_phases`` (text);
        ``time_basis`` (``cpu``, ``wall``, or ``mean`` where no samples were found);
        booleans ``slower``, ``less_accurate``, ``newly_failed`` and ``regression``. ``df.attrs`` holds the
        settings, ``key`` (the matched columns) and ``ignored``.
    """
    for nm, v, lo in (("threshold", threshold, 0.0), ("min_effect", min_effect, 0.0), ("floor_s", floor_s, 0.0),
                      ("seed_z", seed_z, 0.0)):
        if not (isinstance(v, (int, float)) and v >= lo and math.isfinite(v)):
            raise ConfigError(f"{nm} must be a finite number >= {lo:g}, got {v!r}")
    if time_basis not in ("auto", "cpu", "wall"):
        raise ConfigError(f"time basis {time_basis!r}: choose auto, cpu or wall")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha!r}")
    a, b = _results(dir_a), _results(dir_b)
    ca, cb = _cycles(dir_a, cycles_a), _cycles(dir_b, cycles_b)
    ignored = list(ignore)
    if pair:
        col, left_out, picked = _resolve_pair(pair, a, b)
        if picked:
            a = _pick_value(a, col, picked[0], "A").copy()
            b = _pick_value(b, col, picked[1], "B").copy()
        ignored += [c for c in left_out if c not in ignored]
    if ("p_device" in a.columns and "p_device" in b.columns and a["p_device"].nunique() == 1
            and b["p_device"].nunique() == 1 and a["p_device"].iloc[0] != b["p_device"].iloc[0]
            and "p_device" not in ignored):
        ignored.append("p_device")
    # a label left out (p_method) still leaves the family (p_method_name) in the key
    not_keys = {c for c in _NOT_KEYS if c.removesuffix("_name") not in ignored or c in ignored}
    key = [c for c in a.columns if c.startswith("p_") and c in b.columns and c not in not_keys
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
            raise ConfigError(f"run {name} has {dup} cells with the same parameters; cannot match them one to one"
                              + (" (is --pair naming a parameter that is not the only difference?)" if pair else ""))
    values = ["status", ACCURACY_COLUMN, *TIME_COLUMNS, "cell_id"]
    if pair:  # what differs, side by side
        values += [c for c in ignored if c in a.columns and c in b.columns and c.startswith("p_")]
    pick = lambda df: df[kcols + key + [c for c in values if c in df.columns]]  # noqa: E731
    m = pick(a).merge(pick(b), on=kcols, how="outer", suffixes=("_A", "_B"), indicator=True)
    cols: dict[str, Any] = {}
    for c in key:  # key values from A where present, else from B
        cols[c] = m[f"{c}_A"].where(m["_merge"] != "right_only", m[f"{c}_B"])
    cols["match"] = m["_merge"].map({"both": "both", "left_only": "only_a", "right_only": "only_b"}).astype(str)
    for c in values:
        for s in ("A", "B"):
            cols[f"{c}_{s}"] = m[f"{c}_{s}"] if f"{c}_{s}" in m.columns else np.nan
    out = pd.DataFrame(cols, index=m.index)
    both = (out["match"] == "both").to_numpy()
    ok_both = both & (out["status_A"] == "ok").to_numpy() & (out["status_B"] == "ok").to_numpy()

    # ---- time: per-phase tests over the per-cycle samples
    sa, sb = _samples(ca), _samples(cb)
    new: dict[str, Any] = {}
    for t in TIME_COLUMNS:
        new[f"{t}_ratio"] = (pd.to_numeric(out[f"{t}_B"], errors="coerce")
                             / pd.to_numeric(out[f"{t}_A"], errors="coerce"))
    slower = np.zeros(len(out), dtype=bool)
    slow_text = [""] * len(out)
    ratio_cols = {ph: np.full(len(out), np.nan) for ph in PHASES}
    p_cols = {ph: np.full(len(out), np.nan) for ph in PHASES}
    judged_cols = {ph: np.zeros(len(out), dtype=bool) for ph in PHASES}
    basis_col = [""] * len(out)
    devices = out["p_device"].astype(str).to_numpy() if "p_device" in out else np.full(len(out), "cpu")
    for i in np.flatnonzero(ok_both):
        da, db = sa.get(str(out["cell_id_A"].iat[i]), {}), sb.get(str(out["cell_id_B"].iat[i]), {})
        basis = time_basis
        if basis == "auto":  # CPU time is immune to other processes on a shared CPU; a GPU needs wall time
            basis = "cpu" if (da.get("cpu") and db.get("cpu") and devices[i].startswith("cpu")) else "wall"
        xa, xb = da.get(basis), db.get(basis)
        basis_col[i] = basis if (xa and xb) else "mean"
        flagged = []
        if xa and xb:
            for ph in PHASES:
                if ph not in xa or ph not in xb:
                    continue
                va, vb = xa[ph][np.isfinite(xa[ph])], xb[ph][np.isfinite(xb[ph])]
                if not len(va) or not len(vb):
                    continue
                ma, mb = float(np.median(va)), float(np.median(vb))
                ratio = mb / ma if ma > 0 else (math.inf if mb > 0 else 1.0)
                p = mann_whitney_p(va, vb)
                judged = max(ma, mb) >= floor_s
                ratio_cols[ph][i], p_cols[ph][i], judged_cols[ph][i] = ratio, p, judged
                if judged and ratio > 1 + min_effect and p < alpha:
                    flagged.append(f"{ph} {ratio:.2f}x")
        else:  # no samples: the mean cycle time alone, without a test
            ta = float(pd.to_numeric(pd.Series([out["time_per_cycle_s_A"].iat[i]]), errors="coerce").iat[0])
            tb = float(pd.to_numeric(pd.Series([out["time_per_cycle_s_B"].iat[i]]), errors="coerce").iat[0])
            if max(ta, tb) >= floor_s and tb > ta * (1 + min_effect):
                flagged.append(f"cycle {tb / ta:.2f}x (no samples)")
        slower[i] = bool(flagged)
        slow_text[i] = ", ".join(flagged)
    for ph in PHASES:
        new[f"{ph}_ratio"], new[f"{ph}_p"], new[f"{ph}_judged"] = ratio_cols[ph], p_cols[ph], judged_cols[ph]
    new["slow_phases"] = slow_text
    new["time_basis"] = basis_col

    # ---- accuracy: against the spread over seeds
    ra = pd.to_numeric(out[f"{ACCURACY_COLUMN}_A"], errors="coerce")
    rb = pd.to_numeric(out[f"{ACCURACY_COLUMN}_B"], errors="coerce")
    new[f"{ACCURACY_COLUMN}_diff"] = rb - ra
    new[f"{ACCURACY_COLUMN}_rel"] = rb / ra - 1.0
    less = np.zeros(len(out), dtype=bool)
    se_col = np.full(len(out), np.nan)  # standard error of the seed-mean difference of the cell's group
    gkey = [c for c in key if c != "p_seed"]
    gid = out[gkey].apply(lambda r: "|".join(_canon(v) for v in r), axis=1) if gkey else pd.Series("", out.index)
    for _, idx in gid[ok_both].groupby(gid[ok_both]).groups.items():
        va, vb = ra.loc[idx].to_numpy(dtype=float), rb.loc[idx].to_numpy(dtype=float)
        fa, fb = va[np.isfinite(va)], vb[np.isfinite(vb)]
        if np.any(np.isfinite(va) & ~np.isfinite(vb)):  # finite in A, not in B
            less[out.index.get_indexer(idx)] = True
            continue
        if not len(fa) or not len(fb):
            continue
        diff = fb.mean() - fa.mean()
        several = len(fa) > 1 and len(fb) > 1
        se = math.sqrt(fa.var(ddof=1) / len(fa) + fb.var(ddof=1) / len(fb)) if several else float("nan")
        se_col[out.index.get_indexer(idx)] = se
        if diff > threshold * abs(fa.mean()) and (not several or diff > seed_z * se):
            less[out.index.get_indexer(idx)] = True
    # time, across seeds: a code change slows every truth of a setting, interference on a shared machine hits
    # single cells (the per-cycle test cannot see that drift), so a setting with several seeds is slower only
    # when every one of its seeds is; its cells still list their slower phases
    judged_any = np.zeros(len(out), dtype=bool)
    for ph in PHASES:
        judged_any |= np.asarray(judged_cols[ph], dtype=bool)
    mask = np.asarray(ok_both, dtype=bool) & judged_any
    for _, idx in gid[mask].groupby(gid[mask]).groups.items():
        pos = out.index.get_indexer(idx)
        if len(pos) > 1 and not slower[pos].all():
            slower[pos] = False
    newly_failed = ((out["status_A"] == "ok") & (out["status_B"] == "failed")).to_numpy()
    new["rrmse_a_se"] = se_col
    new["slower"] = slower & both
    new["less_accurate"] = less & both
    new["newly_failed"] = newly_failed & both
    new["regression"] = new["slower"] | new["less_accurate"] | new["newly_failed"]
    out = pd.concat([out, pd.DataFrame(new, index=out.index)], axis=1)
    out = out.sort_values(key, kind="stable", na_position="last").reset_index(drop=True)
    out.attrs.update(time_basis=time_basis, threshold=float(threshold), min_effect=float(min_effect),
                     alpha=float(alpha), floor_s=float(floor_s), seed_z=float(seed_z),
                     pair=pair or "", key=key, ignored=ignored)
    return out


# ------------------------------------------------------------------------------------------------------------
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


def _val(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:g}" if isinstance(v, float) else str(v)


def format_compare(df: pd.DataFrame, only_regressions: bool = False) -> str:
    """A plain-text report of :func:`compare`: one headline, then a table (``!!`` marks regressions)."""
    head, table = compare_table(df, only_regressions)
    return head if table.empty else head + "\n" + table.to_string(index=False)


def compare_table(df: pd.DataFrame, only_regressions: bool = False) -> tuple[str, pd.DataFrame]:
    """The headline of a :func:`compare` result and its table of strings (empty when no row is shown)."""
    at = df.attrs
    both = df[df["match"] == "both"]
    n_reg = int(df["regression"].sum())
    head = (f"{len(both)} matched cells, {n_reg} regression(s) (slower: {int(df['slower'].sum())}, "
            f"less accurate: {int(df['less_accurate'].sum())}, newly failed: {int(df['newly_failed'].sum())})")
    extra = []
    for tag, label in (("only_a", "only in A"), ("only_b", "only in B")):
        n = int((df["match"] == tag).sum())
        if n:
            extra.append(f"{n} {label}")
    if extra:
        head += "; " + ", ".join(extra)
    if at.get("ignored"):
        head += f"; not matched on: {', '.join(at['ignored'])}"
    if "min_effect" in at:
        n_judged = int(sum(both[f"{ph}_judged"].sum() for ph in PHASES if f"{ph}_judged" in both))
        head += (f"\ntime: a phase is slower when median B/A > {1 + at['min_effect']:.2f} and Mann-Whitney "
                 f"p < {at['alpha']:g} (per-cycle samples, phases under {1e3 * at['floor_s']:g} ms not judged; "
                 f"{n_judged} phase(s) judged); accuracy: seed-mean rRMSE up > {at['threshold']:g} relative and "
                 f"> {at['seed_z']:g} standard errors over seeds")
    df = df.copy()
    for c in ("p_problem", "p_method"):  # left out of the key by --pair: show A's label
        if c not in df.columns and f"{c}_A" in df.columns:
            df[c] = df[f"{c}_A"]
    rows = df[df["regression"]] if only_regressions else df[df["match"] == "both"]
    if rows.empty:
        return head, pd.DataFrame()
    shown = [c for c in ("p_problem", "p_method", "p_n_ens", "p_coverage", "p_noise", "p_seed", "p_device")
             if c in df.columns and (c in ("p_problem", "p_method") or df[c].nunique(dropna=False) > 1)]
    table = pd.DataFrame({
        **{c.removeprefix("p_"): rows[c].map(_val) for c in shown},
        **({f"{at['ignored'][0].removeprefix('p_')} A/B": rows[f"{at['ignored'][0]}_A"].map(_val) + "/"
            + rows[f"{at['ignored'][0]}_B"].map(_val)}
           if at.get("pair") and f"{at['ignored'][0]}_A" in rows else {}),
        "status A/B": rows["status_A"].astype(str) + "/" + rows["status_B"].astype(str),
        "rRMSE A": rows[f"{ACCURACY_COLUMN}_A"].map(_num),
        "rRMSE B": rows[f"{ACCURACY_COLUMN}_B"].map(_num),
        "rRMSE B-A": rows[f"{ACCURACY_COLUMN}_diff"].map(_num),
        "cycle B/A": (rows["cycle_ratio"].where(rows["cycle_ratio"].notna(), rows["time_per_cycle_s_ratio"])
                      if "cycle_ratio" in rows else rows["time_per_cycle_s_ratio"]).map(_ratio),
        "p": rows["cycle_p"].map(lambda v: "–" if not np.isfinite(v) else f"{v:.2g}") if "cycle_p" in rows else "–",
        "slower phases": rows["slow_phases"] if "slow_phases" in rows else "",
        "": np.where(rows["regression"], "!!", ""),
    })
    return head, table
