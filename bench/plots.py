"""Figures of a run: seaborn on matplotlib, written as PNG files for the static HTML report.

Every function here takes tidy tables (the rows of one problem, see :mod:`bench.report`), writes zero or more
PNG files into ``img_dir`` and returns a list of :class:`Figure` records (file name and caption). A function
whose data are absent returns an empty list, so the report simply leaves that section out.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot), so importing this module never
changes the user's matplotlib backend and no figure is left open; the PNG canvas is Agg.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.patches
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D

#: The three axes of the benchmark grid, with the labels used on plots.
GRID_AXES: dict[str, str] = {"p_n_ens": "ensemble size N", "p_coverage": "observation coverage",
                             "p_noise": "observation noise"}
SHORT = {"p_n_ens": "N", "p_coverage": "coverage", "p_noise": "noise", "p_seed": "seed"}
DPI = 90


@dataclasses.dataclass(frozen=True)
class Figure:
    """One written figure: ``file`` is relative to the image folder; ``caption`` is plain text."""

    file: str
    caption: str
    alt: str = ""


def _style() -> dict:
    """rc parameters for every figure (applied with ``matplotlib.rc_context``, never globally)."""
    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.85))
    rc.update({"figure.dpi": DPI, "savefig.dpi": DPI, "axes.titlesize": 10, "legend.fontsize": 8})
    return rc


def method_palette(methods: Sequence[str]) -> dict[str, dict]:
    """Per full method name on a page: ``{"color", "linestyle", "marker", "label"}``.

    The colour is fixed by the method's registry name (:func:`bench.labels.method_colour`: the same in every
    figure, page and README image, colour-blind safe); variants of one method differ by line style and marker;
    ``label`` is the page's short label (:func:`bench.labels.short_labels`).
    """
    from bench.labels import method_styles, short_labels
    styles = method_styles(methods)
    labels = short_labels(styles)
    return {m: {**st, "label": labels[m]} for m, st in styles.items()}


def _style_of(palette: dict, m: str) -> dict:
    st = palette.get(m)
    if st is None:  # a method the page's palette does not know: its fixed colour, default style
        from bench.labels import method_colour
        return {"color": method_colour(m), "linestyle": "-", "marker": "o", "label": m}
    return st


def _line_kw(palette: dict, m: str) -> dict:
    st = _style_of(palette, m)
    return {"color": st["color"], "linestyle": st["linestyle"]}


def _band_quantiles(n_seeds: int) -> tuple[float, float, str]:
    """(low, high, words) of the uncertainty band over seeds: the full range for up to 10 seeds, else the
    10-90 % percentile interval. Both stay inside the data, so they are valid on log axes (unlike mean ± std,
    which can dip below zero)."""
    if n_seeds <= 10:
        return 0.0, 1.0, f"range over the {n_seeds} seeds" if n_seeds > 1 else "single seed"
    return 0.1, 0.9, f"10-90 % percentile interval over {n_seeds} seeds"


def _mean_band(d: pd.DataFrame, x: str, y: str, n_seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x values, mean over seeds, and the band's lower and upper edges (see :func:`_band_quantiles`)."""
    lo_q, hi_q, _ = _band_quantiles(n_seeds)
    g = d.groupby(x)[y]
    mean = g.mean()
    lo, hi = g.quantile(lo_q), g.quantile(hi_q)
    return mean.index.to_numpy(dtype=float), mean.to_numpy(float), lo.to_numpy(float), hi.to_numpy(float)


def _tidy_log_axis(ax, axis: str = "y") -> None:
    """Readable ticks on a log axis: decades when the range spans them, else a few plain numbers; never the
    crowded minor-tick labels matplotlib shows on short log ranges."""
    from matplotlib import ticker
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if not (lo > 0 and hi > lo):
        return
    decades = math.log10(hi / lo)
    if decades >= 2.5:
        a.set_major_locator(ticker.LogLocator(base=10, numticks=6))
        a.set_major_formatter(ticker.LogFormatterSciNotation())
    else:
        subs = (1.0, 3.0) if decades >= 1.5 else (1.0, 2.0, 5.0) if decades >= 0.6 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
        a.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=12))
        a.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    a.set_minor_formatter(ticker.NullFormatter())


def _varies(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].nunique(dropna=True) > 1


def _values(df: pd.DataFrame, col: str | None) -> list:
    if col is None:
        return [None]
    return sorted(df[col].dropna().unique().tolist())


def _select(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for col, val in eq.items():
        if col is not None and val is not None:
            mask &= (df[col] == val).to_numpy()
    return df[mask]


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


def _facet_title(**eq) -> str:
    return " · ".join(f"{SHORT.get(k, k)}={_fmt(v)}" for k, v in eq.items() if k is not None and v is not None)


def _grid(n_rows: int, n_cols: int, w: float = 3.6, h: float = 2.8, **kw) -> tuple[MplFigure, np.ndarray]:
    fig = MplFigure(figsize=(w * n_cols + 1.8, h * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, **kw)
    return fig, axes


def _save(fig: MplFigure, img_dir: Path, name: str) -> str:
    for ax in fig.axes:  # shared axes: labels and tick labels on the outer panels only
        ss = ax.get_subplotspec()
        if ss is not None and ss.get_gridspec().nrows * ss.get_gridspec().ncols > 1 and (
                ax.get_shared_x_axes().get_siblings(ax) != [ax] or ax.get_shared_y_axes().get_siblings(ax) != [ax]):
            ax.label_outer()
    img_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(img_dir / name, format="png")
    return name


def _method_legend(fig: MplFigure, palette: dict, methods: Sequence[str], extra: Sequence = (),
                   marker: bool = False) -> None:
    """The figure's legend of methods by their short labels (the page's legend table gives the full names)."""
    handles = []
    for m in methods:
        st = _style_of(palette, m)
        handles.append(Line2D([], [], color=st["color"], ls=st["linestyle"], lw=2,
                              marker=st["marker"] if marker else None, label=_wrap_name(st["label"], 26)))
    fig.legend(handles=handles + list(extra), loc="outside right upper", frameon=False)


def _log_if_spread(ax, values, axis: str = "y", ratio: float = 20.0) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and v.max() / v.min() > ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        return True
    return False


def _n_seeds(df: pd.DataFrame) -> int:
    return int(df["p_seed"].nunique()) if "p_seed" in df.columns else 1


# --------------------------------------------------------------------------------------------------------------
# rRMSE over cycles


def cycles_figure(cyc: pd.DataFrame, img_dir: Path, palette: dict, tag: str,
                  metric: str = "rrmse_a") -> list[Figure]:
    """rRMSE over assimilation cycles, one line per method (mean over seeds) with a band over seeds (the range
    for up to 10 seeds, else the 10-90 % interval: valid on the log axis used when errors span decades).

    Facets: rows by noise and columns by coverage where they vary; one figure per ensemble size when it
    varies. Spin-up cycles (excluded from averages) are shaded.
    """
    if cyc.empty or metric not in cyc.columns or not cyc[metric].notna().any():
        return []
    row = "p_noise" if _varies(cyc, "p_noise") else None
    col = "p_coverage" if _varies(cyc, "p_coverage") else None
    ens_values = _values(cyc, "p_n_ens") if _varies(cyc, "p_n_ens") else [None]
    n_seeds = _n_seeds(cyc)
    out = []
    for n_ens in ens_values:
        d = _select(cyc, p_n_ens=n_ens)
        rows, cols = _values(d, row), _values(d, col)
        fig, axes = _grid(len(rows), len(cols), sharex=True, sharey=True)
        methods = sorted(d["p_method"].unique())
        log = False
        for i, rv in enumerate(rows):
            for j, cv in enumerate(cols):
                ax = axes[i, j]
                sub = _select(d, **{row or "_": rv, col or "_": cv}) if (row or col) else d
                if sub.empty:
                    ax.set_visible(False)
                    continue
                for m, g in sub.groupby("p_method"):
                    x, mean, lo, hi = _mean_band(g.dropna(subset=[metric]), "cycle", metric, n_seeds)
                    ax.plot(x, mean, lw=1.5, **_line_kw(palette, m))
                    if n_seeds > 1:
                        ax.fill_between(x, lo, hi, color=_style_of(palette, m)["color"], alpha=0.15, lw=0)
                if "spinup" in sub.columns and sub["spinup"].astype(bool).any():
                    last = sub.loc[sub["spinup"].astype(bool), "cycle"].max()
                    ax.axvspan(sub["cycle"].min() - 0.5, last + 0.5, color="0.5", alpha=0.15, lw=0)
                log = _log_if_spread(ax, d[metric]) or log
                ax.set_title(_facet_title(**{row or "_r": rv, col or "_c": cv}), fontsize=9)
                ax.set_xlabel("cycle")
                ax.set_ylabel("rRMSE (analysis)" if metric == "rrmse_a" else metric)
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=6))
        if log:
            for ax in axes.flat:
                if ax.get_visible():
                    _tidy_log_axis(ax, "y")
        extra = [matplotlib.patches.Patch(color="0.5", alpha=0.15, label="spin-up")] \
            if "spinup" in d.columns and d["spinup"].astype(bool).any() else []
        _method_legend(fig, palette, methods, extra)
        if n_ens is not None:
            fig.suptitle(f"N = {n_ens}", fontsize=10)
        name = _save(fig, img_dir, f"{tag}_cycles{'_N' + str(n_ens) if n_ens is not None else ''}.png")
        band = _band_quantiles(n_seeds)[2]
        out.append(Figure(name, f"Analysis rRMSE over cycles{f' (N = {n_ens})' if n_ens is not None else ''}; "
                                f"line: mean over seeds, band: {band}; grey: spin-up.", "rRMSE over cycles"))
    return out


# --------------------------------------------------------------------------------------------------------------
# rRMSE against ensemble size, coverage, noise


def sensitivity_figures(res: pd.DataFrame, img_dir: Path, palette: dict, tag: str,
                        metric: str = "rrmse_a") -> list[Figure]:
    """rRMSE against each grid axis that varies (N, coverage, noise), facets over the other varying axes; bars:
    the band over seeds of :func:`_band_quantiles` (inside the data, so valid on log axes)."""
    ok = res[res["status"] == "ok"] if "status" in res.columns else res
    ok = ok[ok[metric].notna()] if metric in ok.columns else ok.iloc[:0]
    varying = [a for a in GRID_AXES if _varies(ok, a)]
    n_seeds = _n_seeds(ok)
    out = []
    for x in varying:
        others = [a for a in varying if a != x]
        row = others[1] if len(others) > 1 else None
        col = others[0] if others else None
        rows, cols = _values(ok, row), _values(ok, col)
        fig, axes = _grid(len(rows), len(cols), w=3.4, h=2.7, sharex=True, sharey=True)
        methods = sorted(ok["p_method"].unique())
        xs = ok[x].astype(float)
        logx = bool((xs > 0).all() and xs.max() / xs.min() >= 8)
        logy = False
        for i, rv in enumerate(rows):
            for j, cv in enumerate(cols):
                ax = axes[i, j]
                sub = _select(ok, **{row or "_": rv, col or "_": cv}) if (row or col) else ok
                if sub.empty:
                    ax.set_visible(False)
                    continue
                for m, g in sub.groupby("p_method"):
                    st = _style_of(palette, m)
                    xv, mean, lo, hi = _mean_band(g, x, metric, n_seeds)
                    yerr = np.vstack([mean - lo, hi - mean]) if n_seeds > 1 else None
                    ax.errorbar(xv, mean, yerr=yerr, color=st["color"], ls=st["linestyle"], marker=st["marker"],
                                markersize=5, lw=1.3, capsize=2)
                if logx:
                    ax.set_xscale("log", base=2 if x == "p_n_ens" else 10)
                logy = _log_if_spread(ax, ok[metric]) or logy
                ax.set_title(_facet_title(**{row or "_r": rv, col or "_c": cv}), fontsize=9)
                ax.set_xlabel(GRID_AXES[x])
                ax.set_ylabel("rRMSE (analysis)")
        for ax in axes.flat:
            if ax.get_visible():
                if logy:
                    _tidy_log_axis(ax, "y")
                if logx:
                    ax.set_xticks(sorted(xs.unique()), [f"{v:g}" for v in sorted(xs.unique())])
                    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        _method_legend(fig, palette, methods, marker=True)
        name = _save(fig, img_dir, f"{tag}_vs_{x[2:]}.png")
        band = _band_quantiles(n_seeds)[2]
        out.append(Figure(name, f"Analysis rRMSE against {GRID_AXES[x]}: mean over seeds"
                                f"{', bars: ' + band if n_seeds > 1 else ''}.", f"rRMSE vs {GRID_AXES[x]}"))
    return out


# --------------------------------------------------------------------------------------------------------------
# cost-accuracy front


def _pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower x and lower y are better), sorted by x."""
    order = np.lexsort((y, x))
    keep, best = [], np.inf
    for i in order:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=int)


def cost_accuracy_figure(res: pd.DataFrame, img_dir: Path, palette: dict, tag: str,
                         time_col: str = "time_online_s", metric: str = "rrmse_a") -> list[Figure]:
    """Accuracy against online time per cycle (log x), one marker per (method, N) mean over seeds.

    Markers of a method are joined in order of ensemble size and grow with it; the dashed black line is the
    cost-accuracy (Pareto) front of each facet.
    """
    ok = res[res["status"] == "ok"] if "status" in res.columns else res
    if time_col not in ok.columns or metric not in ok.columns:
        return []
    keys = ["p_method", "p_n_ens", "p_coverage", "p_noise"]
    keys = [k for k in keys if k in ok.columns]
    agg = ok.groupby(keys, dropna=False)[[time_col, metric]].mean().reset_index()
    agg = agg[np.isfinite(agg[time_col]) & (agg[time_col] > 0) & np.isfinite(agg[metric])]
    if agg.empty:
        return []
    row = "p_noise" if _varies(agg, "p_noise") else None
    col = "p_coverage" if _varies(agg, "p_coverage") else None
    rows, cols = _values(agg, row), _values(agg, col)
    ens = _values(agg, "p_n_ens") if "p_n_ens" in agg.columns else [None]
    sizes = {n: 25 + 75 * k / max(len(ens) - 1, 1) for k, n in enumerate(ens)}
    fig, axes = _grid(len(rows), len(cols), w=3.8, h=3.0, sharex=True, sharey=True)
    methods = sorted(agg["p_method"].unique())
    logy = False
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = axes[i, j]
            sub = _select(agg, **{row or "_": rv, col or "_": cv}) if (row or col) else agg
            if sub.empty:
                ax.set_visible(False)
                continue
            for m, g in sub.groupby("p_method"):
                st = _style_of(palette, m)
                g = g.sort_values("p_n_ens") if "p_n_ens" in g.columns else g
                ax.plot(g[time_col], g[metric], color=st["color"], ls=st["linestyle"], lw=1, alpha=0.7)
                s = [sizes.get(n, 40) for n in g["p_n_ens"]] if "p_n_ens" in g.columns else 40
                ax.scatter(g[time_col], g[metric], s=s, color=st["color"], marker=st["marker"], edgecolor="white",
                           lw=0.5, zorder=3)
            front = _pareto(sub[time_col].to_numpy(float), sub[metric].to_numpy(float))
            if len(front) > 1:
                ax.step(sub[time_col].to_numpy()[front], sub[metric].to_numpy()[front], where="post",
                        color="black", ls="--", lw=0.9, zorder=2)
            ax.set_xscale("log")
            logy = _log_if_spread(ax, agg[metric]) or logy
            ax.set_title(_facet_title(**{row or "_r": rv, col or "_c": cv}), fontsize=9)
            ax.set_xlabel("online time per cycle [s]" if time_col == "time_online_s" else time_col)
            ax.set_ylabel("rRMSE (analysis)")
    for ax in axes.flat:
        if ax.get_visible():
            ax.margins(x=0.15, y=0.1)
            _tidy_log_axis(ax, "x")
            if logy:
                _tidy_log_axis(ax, "y")
    extra = [Line2D([], [], color="black", ls="--", lw=0.9, label="front")]
    if len(ens) > 1:
        extra += [Line2D([], [], ls="", marker="o", color="0.5", markersize=math.sqrt(sizes[n]), label=f"N={n}")
                  for n in ens]
    _method_legend(fig, palette, methods, extra, marker=True)
    name = _save(fig, img_dir, f"{tag}_cost_accuracy.png")
    return [Figure(name, "Cost-accuracy: analysis rRMSE against online wall-clock time per cycle (forecast + "
                         "analysis + reconstruction, log scale), mean over seeds; marker size grows with N; "
                         "dashed: the front of non-dominated settings.", "cost-accuracy front")]


# --------------------------------------------------------------------------------------------------------------
# timing


TIME_PARTS = {"time_forecast_s": "forecast", "time_analysis_s": "analysis", "time_reconstruct_s": "reconstruction"}
#: greys for the parts of a cycle, so that no part is mistaken for a method's colour
TIME_COLOURS = {"time_forecast_s": "#D0D0D0", "time_analysis_s": "#808080", "time_reconstruct_s": "#383838"}


def timing_figures(res: pd.DataFrame, img_dir: Path, tag: str, min_fit_s: float = 0.01,
                   palette: dict | None = None) -> list[Figure]:
    """Stacked bars of the online time per cycle (forecast / analysis / reconstruction) per method and N,
    and a bar chart of the offline fit time where any method takes longer than ``min_fit_s`` seconds.
    Methods are named by the page's short labels (``palette``)."""
    ok = res[res["status"] == "ok"] if "status" in res.columns else res
    palette = palette or method_palette(ok["p_method"].astype(str).unique().tolist())
    label = lambda m: _style_of(palette, m)["label"]  # noqa: E731
    parts = [c for c in TIME_PARTS if c in ok.columns]
    out = []
    if parts and ok[parts].notna().any().any():
        keys = [k for k in ("p_method", "p_n_ens") if k in ok.columns]
        agg = ok.groupby(keys, dropna=False)[parts].mean().fillna(0.0).reset_index()
        ens = _values(agg, "p_n_ens") if _varies(agg, "p_n_ens") else [None]
        methods = sorted(agg["p_method"].unique())
        names = [_wrap_name(label(m), 12) for m in methods]
        longest = max(len(ln) for n in names for ln in n.splitlines())
        fig, axes = _grid(1, len(ens), w=max(2.6, (0.35 + 0.06 * longest) * len(methods) + 0.8), h=3.4,
                          sharey=True)
        colours = TIME_COLOURS
        for j, n in enumerate(ens):
            ax = axes[0, j]
            sub = _select(agg, p_n_ens=n).set_index("p_method").reindex(methods).fillna(0.0)
            bottom = np.zeros(len(methods))
            for c in parts:
                ax.bar(range(len(methods)), sub[c].to_numpy() * 1e3, bottom=bottom, color=colours[c],
                       label=TIME_PARTS[c], width=0.7)
                bottom += sub[c].to_numpy() * 1e3
            ax.set_xticks(range(len(methods)), names, fontsize=7)
            ax.set_title(f"N = {n}" if n is not None else "", fontsize=9)
            ax.set_ylabel("time per cycle [ms]")
            ax.grid(axis="x", visible=False)
        handles = [matplotlib.patches.Patch(color=colours[c], label=TIME_PARTS[c]) for c in parts]
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        name = _save(fig, img_dir, f"{tag}_time_split.png")
        out.append(Figure(name, "Online time per cycle split into forecast (T_d), analysis (T_a) and "
                                "reconstruction/decoding (T_r), mean over seeds, coverages and noise levels.",
                          "time per cycle"))
    if "time_fit_s" in ok.columns and (ok["time_fit_s"].fillna(0) > min_fit_s).any():
        fit = ok.groupby("p_method")["time_fit_s"].agg(["mean", "max"]).fillna(0.0).sort_index()
        labels = [label(m) for m in fit.index]
        longest = max(len(x) for x in labels)
        fig = MplFigure(figsize=(4.2 + 0.065 * longest, 0.32 * len(fit) + 1.3), layout="constrained")
        ax = fig.subplots()
        ax.barh(range(len(fit)), fit["mean"], color=[_style_of(palette, m)["color"] for m in fit.index])
        ax.set_yticks(range(len(fit)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, float(fit["mean"].max()) * 1.3 or 1.0)
        ax.set_xlabel("offline fit time [s], mean over cells")
        ax.grid(axis="y", visible=False)
        for k, v in enumerate(fit["mean"]):
            ax.text(v, k, f" {v:.3g} s", va="center", fontsize=7)
        name = _save(fig, img_dir, f"{tag}_fit_time.png")
        out.append(Figure(name, "Offline fit time (training of surrogates, encoders, latent dynamics) per "
                                "method; 0: nothing to train, or the trained networks came from the cache.",
                          "offline fit time"))
    return out


# --------------------------------------------------------------------------------------------------------------
# snapshots, parameters, latent trajectories


def _wrap_name(name: str, width: int = 18) -> str:
    """Break a long parametrized name after '[' and commas so it fits beside a panel."""
    if len(name) <= width:
        return name
    head, sep, rest = name.partition("[")
    lines, cur = [head + sep], ""
    for part in rest.split(","):
        piece = part if not cur else cur + "," + part
        if len(piece) > width and cur:
            lines.append(cur + ",")
            cur = part
        else:
            cur = piece
    lines.append(cur)
    return "\n".join(x for x in lines if x)


def snapshot_figures(snaps: dict[str, dict[str, np.ndarray]], img_dir: Path, tag: str,
                     max_cycles: int = 3, palette: dict | None = None) -> list[Figure]:
    """Fields of truth, ensemble-mean estimate and error, one row per method, at up to ``max_cycles`` cycles.

    Parameters
    ----------
    snaps : dict
        ``{method: npz-dict}`` for one setting and seed; each holds ``cycles`` (k,), ``truth`` and ``mean``
        (k, C, H, W), ``obs_points`` (m,) flat grid indices, ``field_names`` (C,).

    Colour scales are shared down each column: truth and estimate use the range of the truth, the error a
    symmetric range set by the largest error of any method. Panels are placed by hand (no layout engine),
    which keeps a figure of many small panels fast.
    """
    snaps = {m: s for m, s in snaps.items() if {"cycles", "truth", "mean"} <= set(s)
             and np.ndim(s["truth"]) == 4 and np.shape(s["truth"]) == np.shape(s["mean"])}
    if not snaps:
        return []
    methods = sorted(snaps)
    common = sorted(set.intersection(*(set(np.asarray(s["cycles"]).tolist()) for s in snaps.values())))
    if not common:
        return []
    picks = sorted({common[0], common[len(common) // 2], common[-1]})[-max_cycles:]
    first = snaps[methods[0]]
    n_fields, H, W = first["truth"].shape[1:]
    names = [str(x) for x in first.get("field_names", [f"field {c}" for c in range(n_fields)])]
    # Each column (field x truth/estimate/error) is ONE image: the methods' fields stacked vertically with a
    # blank (NaN) gap. Four artists per column instead of one axes per panel keeps many-method figures fast.
    n_m = len(methods)
    gap_rows = max(1, H // 10)
    stack_h = n_m * H + (n_m - 1) * gap_rows
    pw = 1.55
    ph = float(np.clip(pw * H / W, 0.6, 2.5))  # inches per method block
    gap_in = ph * gap_rows / H
    left, gap, group_gap, top, bottom = 1.45, 0.06, 0.3, 0.55, 0.6
    col_h = n_m * ph + (n_m - 1) * gap_in
    fw = left + n_fields * (3 * pw + 2 * gap) + (n_fields - 1) * group_gap + 0.15
    fh = top + col_h + bottom

    def stack(blocks: list[np.ndarray]) -> np.ndarray:
        out = np.full((stack_h, W), np.nan)
        for i, b in enumerate(blocks):  # flip: each block is drawn with y (row index) growing upwards
            out[i * (H + gap_rows):i * (H + gap_rows) + H] = b[::-1]
        return out

    obs_xy = []
    for i, m in enumerate(methods):
        obs = np.asarray(snaps[m].get("obs_points", np.empty(0)), dtype=np.int64).ravel()
        oy, ox = np.divmod(obs[(obs >= 0) & (obs < H * W)], W)
        obs_xy.append((ox, i * (H + gap_rows) + (H - 1 - oy)))
    ox_all = np.concatenate([x for x, _ in obs_xy]) if obs_xy else np.empty(0)
    oy_all = np.concatenate([y for _, y in obs_xy]) if obs_xy else np.empty(0)
    dot = float(np.clip(300.0 / max(len(ox_all) / n_m, 1), 0.3, 6.0))
    out = []
    for cyc in picks:
        fig = MplFigure(figsize=(fw, fh))
        idx = {m: int(np.flatnonzero(np.asarray(snaps[m]["cycles"]) == cyc)[0]) for m in methods}
        for c in range(n_fields):
            truths = [np.asarray(snaps[m]["truth"][idx[m], c], dtype=float) for m in methods]
            means = [np.asarray(snaps[m]["mean"][idx[m], c], dtype=float) for m in methods]
            errors = [e - t for e, t in zip(means, truths)]
            finite = truths[0][np.isfinite(truths[0])]
            lim = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            err_abs = np.abs(np.concatenate([e.ravel() for e in errors]))
            err_max = float(np.nanmax(err_abs)) if np.isfinite(err_abs).any() else 1.0
            err_max = err_max or 1.0
            x0 = left + c * (3 * pw + 2 * gap + group_gap)
            images = []
            for p, (blocks, label, cmap, (vmin, vmax)) in enumerate((
                    (truths, "truth", "viridis", lim), (means, "estimate", "viridis", lim),
                    (errors, "error", "RdBu_r", (-err_max, err_max)))):
                ax = fig.add_axes(((x0 + p * (pw + gap)) / fw, bottom / fh, pw / fw, col_h / fh))
                cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
                images.append(ax.imshow(stack(blocks), cmap=cm, vmin=vmin, vmax=vmax, origin="upper",
                                        interpolation="nearest", aspect="auto"))
                if p < 2 and ox_all.size:
                    ax.scatter(ox_all, oy_all, s=dot, c="white", edgecolors="black", linewidths=0.3)
                ax.set_xlim(-0.5, W - 0.5)
                ax.set_ylim(stack_h - 0.5, -0.5)
                ax.set_axis_off()
                ax.set_title(f"{names[c]}: {label}", fontsize=8)
            for p, span in ((1, (x0, 2 * pw + gap)), (2, (x0 + 2 * (pw + gap), pw))):
                cax = fig.add_axes((span[0] / fw, 0.25 / fh, span[1] / fw, 0.1 / fh))
                fig.colorbar(images[p], cax=cax, orientation="horizontal")
                cax.tick_params(labelsize=6)
        for i, m in enumerate(methods):
            yc = bottom + col_h - (i * (ph + gap_in) + ph / 2)
            lab = _style_of(palette, m)["label"] if palette else m
            fig.text((left - 0.08) / fw, yc / fh, _wrap_name(lab, 18), fontsize=7, ha="right", va="center")
        fig.suptitle(f"cycle {cyc}", fontsize=10, y=1 - 0.12 / fh)
        name = _save(fig, img_dir, f"{tag}_snapshot_c{cyc}.png")
        out.append(Figure(name, f"Fields at cycle {cyc}: truth, ensemble-mean estimate and error (estimate - "
                                f"truth), one row per method; dots: observed grid points; colour bars below "
                                f"each field (truth and estimate share one).", f"snapshot at cycle {cyc}"))
    return out


def parameter_figure(cyc: pd.DataFrame, img_dir: Path, palette: dict, tag: str, title: str = "",
                     unit: str = "") -> list[Figure]:
    """Ensemble-mean parameter estimate against the true value over cycles, one panel per parameter
    (``unit``: the problem's parameter unit, on the y axis)."""
    names = [c[len("param_mean_"):] for c in cyc.columns
             if c.startswith("param_mean_") and cyc[c].notna().any()]
    if not names:
        return []
    fig, axes = _grid(1, len(names), w=3.6, h=2.8)
    methods = sorted(m for m, g in cyc.groupby("p_method") if g[[f"param_mean_{n}" for n in names]].notna().any().any())
    for j, n in enumerate(names):
        ax = axes[0, j]
        for m in methods:
            g = cyc[cyc["p_method"] == m].sort_values("cycle")
            ax.plot(g["cycle"], g[f"param_mean_{n}"], lw=1.4, **_line_kw(palette, m))
        tcol = f"param_true_{n}"
        if tcol in cyc.columns and cyc[tcol].notna().any():
            g = cyc.dropna(subset=[tcol]).groupby("cycle")[tcol].first()
            ax.plot(g.index, g.to_numpy(), color="black", ls="--", lw=1.2)
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("cycle")
        ax.set_ylabel(f"estimate [{unit}]" if unit else "estimate")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=6))
    _method_legend(fig, palette, methods, [Line2D([], [], color="black", ls="--", label="truth")])
    name = _save(fig, img_dir, f"{tag}_params.png")
    return [Figure(name, "Parameter estimates (ensemble mean) against the true value (dashed) over cycles"
                         f"{' for ' + title if title else ''}.", "parameter estimates")]


def latent_figure(latents: dict[str, dict[str, np.ndarray]], img_dir: Path, tag: str,
                  max_dims: int = 4, palette: dict | None = None) -> list[Figure]:
    """Latent trajectories of latent methods: the first ``max_dims`` coordinates over cycles.

    Each entry of ``latents`` (one per method) is the content of ``extras/<cell_id>.latent.npz``: an optional
    ``cycles`` (T,) axis and any number of arrays shaped (T, d) (one trajectory, e.g. ``truth``) or (T, N, d)
    (an ensemble, drawn as mean ± std over N). Arrays of another shape are ignored.
    """
    panels = {}
    for m, arrs in latents.items():
        series = {}
        for key, a in arrs.items():
            a = np.asarray(a)
            if key == "cycles" or a.dtype.kind not in "fiu" or a.ndim not in (2, 3) or a.shape[0] < 2:
                continue
            series[key] = a.astype(float)
        if series:
            panels[m] = (np.asarray(arrs["cycles"]) if "cycles" in arrs else None, series)
    if not panels:
        return []
    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _grid(nrows, ncols, w=3.8, h=2.8)
    dim_colours = sns.color_palette("deep", max_dims)
    styles = ["-", "--", ":", "-."]
    keys_seen: dict[str, str] = {}
    for k, (m, (t, series)) in enumerate(sorted(panels.items())):
        ax = axes[k // ncols, k % ncols]
        for key, a in sorted(series.items()):
            ls = keys_seen.setdefault(key, styles[len(keys_seen) % len(styles)])
            x = t if t is not None and len(t) == a.shape[0] else np.arange(1, a.shape[0] + 1)
            mu = a.mean(axis=1) if a.ndim == 3 else a
            sd = a.std(axis=1) if a.ndim == 3 else None
            for d in range(min(max_dims, mu.shape[-1])):
                ax.plot(x, mu[:, d], color=dim_colours[d], ls=ls, lw=1.2)
                if sd is not None:
                    ax.fill_between(x, mu[:, d] - sd[:, d], mu[:, d] + sd[:, d], color=dim_colours[d], alpha=0.15)
        ax.set_title(_wrap_name(_style_of(palette, m)["label"] if palette else m, 40), fontsize=9)
        ax.set_xlabel("cycle")
        ax.set_ylabel("latent coordinate")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=6))
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    handles = [Line2D([], [], color=dim_colours[d], lw=1.5, label=f"z[{d}]") for d in range(max_dims)]
    handles += [Line2D([], [], color="0.3", ls=ls, label=key) for key, ls in keys_seen.items()]
    fig.legend(handles=handles, loc="outside right upper", frameon=False)
    name = _save(fig, img_dir, f"{tag}_latent.png")
    return [Figure(name, f"Latent trajectories: the first {max_dims} latent coordinates over cycles "
                         "(ensembles: mean ± std over members).", "latent trajectories")]


# --------------------------------------------------------------------------------------------------------------
# calibration: rank histograms and the spread / error ratio


def _pooled_ranks(rows: pd.DataFrame) -> np.ndarray | None:
    """The rank counts of ``rows`` summed (cells of one ensemble size), or None when none has a histogram."""
    if "rank_hist_a" not in rows.columns:
        return None
    hists = [np.asarray(h, dtype=np.int64) for h in rows["rank_hist_a"] if h is not None and len(h) > 1]
    if not hists or len({len(h) for h in hists}) != 1:
        return None
    return np.sum(hists, axis=0)


def rank_histogram_figure(res: pd.DataFrame, img_dir: Path, palette: dict, tag: str,
                          title: str = "") -> list[Figure]:
    """Rank histograms of the truth within the analysis ensemble, one panel per method (the method's colour).

    ``res``: the ok cells of one setting (one N); each method's histograms are pooled over its cells (seeds),
    state entries and scored cycles, and drawn as relative frequency times ``N + 1``, so a calibrated
    ensemble sits on the dashed line at 1: a U shape is under-dispersion, a dome over-dispersion, a slope
    bias. The panel title carries the pooled spread / error ratio (1 = calibrated).
    """
    if res.empty or "rank_hist_a" not in res.columns:
        return []
    panels = {}
    for m, g in res.groupby("p_method"):
        counts = _pooled_ranks(g)
        if counts is not None and counts.sum() > 0:
            ratio = g["spread_error_a"].astype(float).mean() if "spread_error_a" in g.columns else float("nan")
            panels[m] = (counts, ratio)
    if not panels:
        return []
    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _grid(nrows, ncols, w=3.2, h=2.4, sharey=True)
    for k, m in enumerate(sorted(panels)):
        counts, ratio = panels[m]
        ax = axes[k // ncols, k % ncols]
        freq = counts / counts.sum() * len(counts)
        ax.bar(np.arange(len(counts)), freq, width=1.0, color=_style_of(palette, m)["color"], alpha=0.85,
               edgecolor="white", lw=0.3)
        ax.axhline(1.0, color="black", ls="--", lw=1.0)
        label = _wrap_name(_style_of(palette, m)["label"], 32)
        ax.set_title(f"{label}\nspread / error {ratio:.2f}" if np.isfinite(ratio) else label, fontsize=9)
        ax.set_xlabel(f"rank of the truth (0..{len(counts) - 1})")
        ax.set_ylabel("frequency x (N + 1)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=6))
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    name = _save(fig, img_dir, f"{tag}_rank_hist.png")
    return [Figure(name, "Rank histograms of the truth within the analysis ensemble"
                         f"{' (' + title + ')' if title else ''}, pooled over seeds, state entries and the cycles "
                         "after spin-up; dashed: a calibrated ensemble (flat). U shape: under-dispersed; dome: "
                         "over-dispersed; slope: biased.", "rank histograms")]


def spread_error_figure(res: pd.DataFrame, img_dir: Path, palette: dict, tag: str) -> list[Figure]:
    """Spread / error ratio (1 = calibrated) against the ensemble size, one line per method: mean over seeds,
    bars the band over seeds of :func:`_band_quantiles`; facets over noise (rows) and coverage (columns) where
    they vary."""
    if res.empty or "spread_error_a" not in res.columns or "p_n_ens" not in res.columns \
            or not res["spread_error_a"].notna().any():
        return []
    res = res.dropna(subset=["spread_error_a"])
    row = "p_noise" if _varies(res, "p_noise") else None
    col = "p_coverage" if _varies(res, "p_coverage") else None
    rows, cols = _values(res, row), _values(res, col)
    n_seeds = _n_seeds(res)
    fig, axes = _grid(len(rows), len(cols), w=3.4, h=2.6, sharex=True, sharey=True)
    methods = sorted(res["p_method"].unique())
    ens = sorted(float(v) for v in res["p_n_ens"].unique())
    pos = {v: i for i, v in enumerate(ens)}
    width = 0.7 / max(len(methods), 1)
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = axes[i, j]
            sub = _select(res, **{row or "_": rv, col or "_": cv}) if (row or col) else res
            for k, m in enumerate(methods):
                g = sub[sub["p_method"] == m]
                if g.empty:
                    continue
                xv, mean, lo, hi = _mean_band(g, "p_n_ens", "spread_error_a", n_seeds)
                x = np.array([pos[v] for v in xv], dtype=float)
                x = x - 0.35 + width * (k + 0.5)
                st = _style_of(palette, m)
                ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], color=st["color"], marker=st["marker"],
                            ls=st["linestyle"] if len(x) > 1 else "none", lw=1.3, ms=5, capsize=2)
            ax.axhline(1.0, color="black", ls="--", lw=1.0)
            ax.set_xticks(range(len(ens)), [f"{v:g}" for v in ens])
            ax.set_xlabel("ensemble size N")
            ax.set_ylabel("spread / error")
            ax.set_title(_facet_title(**{row or "_r": rv, col or "_c": cv}), fontsize=9)
    _log_if_spread(axes[0, 0], res["spread_error_a"], ratio=20.0)
    _method_legend(fig, palette, methods, [Line2D([], [], color="black", ls="--", label="calibrated")],
                   marker=True)
    name = _save(fig, img_dir, f"{tag}_spread_error.png")
    band = _band_quantiles(n_seeds)[2]
    return [Figure(name, "Spread / error ratio of the analysis ensemble (sqrt((N+1)/N) spread over the RMSE of the "
                         f"mean, time-averaged mean squares after spin-up); point: mean over seeds, bar: {band}; "
                         "dashed: calibrated (1). Below 1: over-confident.", "spread / error ratio")]


def scaling_figure(points: dict[str, pd.DataFrame], table: pd.DataFrame, img_dir: Path, palette: dict, tag: str,
                   title: str = "") -> list[Figure]:
    """Online time per cycle against the state dimension on log-log axes, one panel per clock (``points``: basis
    -> :func:`bench.scaling.scaling_points` rows of one problem family and setting; ``table``: the matching
    :func:`bench.scaling.scaling_table` rows). Per method: the medians over the timed cycles, bars the
    interquartile range, and the fitted line dashed, with its slope in the legend."""
    from bench.scaling import BASES
    bases = [b for b in BASES if b in points and not points[b].empty]
    if not bases:
        return []
    fig, axes = _grid(1, len(bases), w=4.2, h=3.2, sharex=True, sharey=True)
    methods = sorted(set().union(*(points[b]["method"].astype(str) for b in bases)))
    fits = {str(r["method"]): r for _, r in table.iterrows()} if not table.empty else {}
    for ax, basis in zip(axes[0], bases):
        pts = points[basis]
        prefix = "" if basis == "wall" else "cpu_"
        for m in methods:
            g = pts[pts["method"].astype(str) == m].sort_values("state_dim")
            g = g[g["median"] > 0]
            if g.empty:
                continue
            st = _style_of(palette, m)
            d, med = g["state_dim"].to_numpy(float), g["median"].to_numpy(float)
            err = [np.clip(med - g["q25"].to_numpy(float), 0, None), np.clip(g["q75"].to_numpy(float) - med, 0, None)]
            ax.errorbar(d, med, yerr=err, color=st["color"], marker=st["marker"], ls="none", ms=5, capsize=2)
            r = fits.get(m)
            if r is not None and np.isfinite(r.get(f"{prefix}slope", np.nan)):
                xs = np.array([d.min(), d.max()])
                ax.plot(xs, 10 ** (r[f"{prefix}intercept"] + r[f"{prefix}slope"] * np.log10(xs)), color=st["color"],
                        ls="--", lw=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _tidy_log_axis(ax, "x")
        _tidy_log_axis(ax, "y")
        ax.set_xlabel("state dimension d")
        ax.set_ylabel("online time per cycle [s]")
        ax.set_title(("wall-clock" if basis == "wall" else "CPU time") + (f" · {title}" if title else ""), fontsize=9)
    handles = []
    for m in methods:
        st = _style_of(palette, m)
        r = fits.get(m)
        slopes = [f"{r.get(p + 'slope', np.nan):.2f} {w}" for p, w in (("", "wall"), ("cpu_", "CPU"))
                  if r is not None and np.isfinite(r.get(p + "slope", np.nan))]
        label = _wrap_name(st["label"], 26) + (f" (slope {', '.join(slopes)})" if slopes else "")
        handles.append(Line2D([], [], color=st["color"], ls="--", lw=1.2, marker=st["marker"], label=label))
    fig.legend(handles=handles, loc="outside right upper", frameon=False)
    name = _save(fig, img_dir, f"{tag}_scaling.png")
    return [Figure(name, "Online time per cycle (forecast + analysis + reconstruction) against the state "
                         "dimension, log-log: median over the timed cycles (bar: interquartile range), dashed: "
                         "least-squares line, its slope (wall-clock, CPU time) in the legend. Offline training is not "
                         "in these times.", "time per cycle against the state dimension")]


# --------------------------------------------------------------------------------------------------------------
# accuracy against offline compute


def offline_compute_figure(cells: pd.DataFrame, refs: pd.DataFrame, img_dir: Path, tag: str,
                           setting: str = "") -> list[Figure]:
    """Analysis rRMSE of learned methods whose networks were taken at several training budgets, against the
    surrogate's test rRMSE (left) and the networks' optimisation CPU-minutes (right), both log-log.

    ``cells``: one row per cell: ``curve`` (the method's name without its budget), ``train_fraction``,
    ``rrmse_a``, ``surrogate_rrmse``, ``train_min``, ``p_seed``; each (curve, budget) is one point, the mean over
    seeds with the band of :func:`_band_quantiles`. ``refs``: ``method``, ``rrmse_a``: methods without training
    at the same setting, drawn as horizontal dashed lines. Each curve joins its budgets in order; each point is
    labelled by its budget.
    """
    cells = cells[np.isfinite(cells["rrmse_a"]) & (cells["rrmse_a"] > 0)]
    if cells.empty or cells.groupby("curve")["train_fraction"].nunique().max() < 2:
        return []
    n = _n_seeds(cells)
    lo_q, hi_q, band = _band_quantiles(n)
    g = cells.groupby(["curve", "train_fraction"])
    pts = g[["rrmse_a", "surrogate_rrmse", "train_min"]].mean()
    pts["rrmse_lo"], pts["rrmse_hi"] = g["rrmse_a"].quantile(lo_q), g["rrmse_a"].quantile(hi_q)
    pts = pts.reset_index()
    curves = sorted(pts["curve"].unique())
    ref_names = list(refs["method"]) if len(refs) else []
    pal = method_palette(curves + ref_names)
    fig = MplFigure(figsize=(10.4, 3.9), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("surrogate_rrmse", "surrogate test rRMSE (physical units)"),
              ("train_min", "optimisation CPU-minutes of the networks"))
    for ax, (xcol, xlabel) in zip(axes, panels):
        for c in curves:
            g = pts[pts["curve"] == c].sort_values("train_fraction")
            g = g[np.isfinite(g[xcol]) & (g[xcol] > 0)]
            if g.empty:
                continue
            st = pal[c]
            y = g["rrmse_a"].to_numpy(float)
            err = np.vstack([y - g["rrmse_lo"].to_numpy(float), g["rrmse_hi"].to_numpy(float) - y]).clip(min=0)
            ax.errorbar(g[xcol], y, yerr=err, color=st["color"], ls=st["linestyle"], marker=st["marker"], lw=1.4,
                        ms=5, capsize=2, elinewidth=0.8)
            for x_, y_, f in zip(g[xcol], y, g["train_fraction"]):
                ax.annotate(f"{f:g}", (x_, y_), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=st["color"])
        for _, r in refs.iterrows():
            st = pal[r["method"]]
            ax.axhline(r["rrmse_a"], color=st["color"], ls="--", lw=1.1, zorder=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.margins(x=0.12, y=0.08)
    axes[0].set_ylabel("analysis rRMSE")
    for ax in axes:
        _tidy_log_axis(ax, "x")
        _tidy_log_axis(ax, "y")
    if setting:
        fig.suptitle(setting, fontsize=9)
    handles = [Line2D([], [], color=pal[c]["color"], ls=pal[c]["linestyle"], marker=pal[c]["marker"], lw=1.4,
                      label=_wrap_name(pal[c]["label"], 26)) for c in curves]
    handles += [Line2D([], [], color=pal[m]["color"], ls="--", lw=1.1, label=_wrap_name(pal[m]["label"], 26))
                for m in ref_names]
    fig.legend(handles=handles, loc="outside right upper", frameon=False)
    name = _save(fig, img_dir, f"{tag}_offline_compute.png")
    return [Figure(name, "Accuracy against offline compute: analysis rRMSE of each learned method with its networks "
                         "taken at fractions of one training run (labels; the learning-rate schedule of the whole "
                         "run), against the surrogate's test rRMSE (left) and the optimisation CPU-minutes of every "
                         "network the cell used (right; LD-EnSF: the LDNet up to the snapshot and the LSTM encoder "
                         "trained on it). " + (f"Mean over seeds; bars: {band}. " if n > 1 else "One seed. ")
                         + "Dashed: methods without training at the same setting.",
                   "analysis rRMSE against surrogate error and training minutes")]


def render(fn, *args, **kwargs) -> list[Figure]:
    """Call a figure function under the report's style, closing nothing global (no pyplot is used)."""
    with matplotlib.rc_context(_style()):
        return fn(*args, **kwargs)
