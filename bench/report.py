"""Tables and the static HTML report of a run directory.

A run directory ``DIR`` (laid out by :mod:`bench.store`) holds ``results.parquet`` (one row per
cell), ``cycles.parquet`` (one row per cell and cycle), ``run.json`` (config and provenance), and optionally
``snapshots/<cell_id>.npz`` (gridded fields) and ``extras/<cell_id>.json`` / ``extras/<cell_id>.latent.npz``
(latent methods). This module reads only those files.

Public entry points
-------------------
``summary_table(DIR or results DataFrame)``
    mean ± std over seeds of the metrics per (problem, method, N, coverage, noise[, device]), counts of ok,
    failed and skipped cells, and the best method per setting (lowest mean analysis rRMSE). Used by
    ``bench show`` and by the report.
``build_report(DIR)``
    writes ``DIR/report/``: ``index.html`` (grid, provenance, summary tables, failed and skipped cells), one
    page per problem with figures (``img/*.png``), ``summary.md`` (Markdown tables for papers),
    ``summary.csv`` and ``results.csv``. Everything is relative links and PNG files: the site opens offline
    from disk, with no JavaScript and nothing fetched from the network.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from assimbench.errors import ConfigError
from bench import store
from bench.store import load_cycles, load_results, load_run_info, resolve_run_dir

#: Columns that define one setting of the summary (seeds are averaged over); the observation operator and the
#: observation interval keep an arctan or time-sparse block apart from the identity, every-cycle one.
SETTING_KEYS: tuple[str, ...] = ("p_problem", "p_n_ens", "p_coverage", "p_noise", "p_obs_operator", "p_obs_obs_every",
                                 "p_device", "p_method")
#: Metrics summarised as mean and std over seeds (ok cells only).
SUMMARY_METRICS: tuple[str, ...] = (
    "rrmse_a", "rrmse_f", "rrmse_member_a", "spread_a", "spread_error_a", "crps_a", "param_rmse_a", "rmse_a",
    "rmse_f",
    "rrmse_between", "rmse_between", "time_online_s", "time_per_cycle_s", "time_forecast_s", "time_analysis_s",
    "time_reconstruct_s", "time_fit_s", "peak_mem_mb", "obs_coverage",
    # timing uncertainty (median and interquartile range over cycles) and what produced it
    "time_online_med_s", "time_online_iqr_s", "cpu_per_wall", "threads", "jobs",
)
PROVENANCE_COLUMNS: tuple[str, ...] = ("git_sha", "git_dirty", "torch_version", "device_name", "cpu_model", "dtype",
                                       "threads", "host", "date")
_FRIENDLY = {"p_problem": "problem", "p_method": "method", "p_n_ens": "n_ens", "p_coverage": "coverage",
             "p_noise": "noise", "p_obs_operator": "operator", "p_obs_obs_every": "obs_every", "p_device": "device"}


# ==============================================================================================================
# loading


def _as_results(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    return source if isinstance(source, pd.DataFrame) else load_results(source)


# ==============================================================================================================
# summary table


def summary_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (problem, N, coverage, noise, device, method).

    Parameters
    ----------
    source : path or DataFrame
        A run directory (or its ``results.parquet``), or the results table itself.

    Returns
    -------
    DataFrame
        One row per setting, sorted by problem, N, coverage, noise, device, method. Columns: ``problem``,
        ``n_ens``, ``coverage``, ``noise``, ``device``, ``method`` (whichever exist in the results);
        ``n_cells``, ``n_ok``, ``n_failed``, ``n_skipped``; ``<metric>_mean`` and ``<metric>_std`` (sample
        std, ddof=1, NaN for a single seed) for each metric of :data:`SUMMARY_METRICS` present, over ok cells
        only; ``best``: True for the method with the lowest ``rrmse_a_mean`` among the methods of the same
        (problem, N, coverage, noise, device), when at least two methods have a value.
    """
    df = _as_results(source)
    keys = [k for k in SETTING_KEYS if k in df.columns]
    if "p_problem" not in keys or "p_method" not in keys:
        raise ConfigError("results table lacks the p_problem / p_method columns")
    status = df["status"].astype(str) if "status" in df.columns else pd.Series("ok", index=df.index)
    metrics = [m for m in SUMMARY_METRICS if m in df.columns]
    ok = (status == "ok").to_numpy()
    work = df[keys].copy()
    for m in metrics:  # failed/skipped cells never enter the averages
        work[m] = pd.to_numeric(df[m], errors="coerce").where(ok)
    work["n_cells"] = 1
    work["n_ok"] = ok.astype(int)
    work["n_failed"] = (status == "failed").to_numpy().astype(int)
    work["n_skipped"] = (status == "skipped").to_numpy().astype(int)
    g = work.groupby(keys, dropna=False, sort=True)
    out = g[["n_cells", "n_ok", "n_failed", "n_skipped"]].sum()
    if metrics:
        stats = g[metrics].agg(["mean", "std"])
        stats.columns = [f"{m}_{s}" for m, s in stats.columns]
        out = out.join(stats)
    if "p_tuned" in df.columns:  # settings chosen by `bench tune` (a tuned preset's `tuned:` list)
        out = out.join(df.assign(_t=df["p_tuned"].fillna(False).astype(bool)).groupby(keys, dropna=False)["_t"]
                       .any().rename("tuned"))
    out = out.reset_index()
    if "param_unit" in df.columns:  # the unit each problem declares for its parameter error
        units = df.dropna(subset=["param_unit"]).groupby("p_problem")["param_unit"].first()
        out["param_unit"] = out["p_problem"].map(units)
    others = [k for k in keys if k != "p_method"]
    if "rrmse_a_mean" in out.columns:
        finite = out["rrmse_a_mean"].where(np.isfinite(out["rrmse_a_mean"]))
        grp = finite.groupby([out[k] for k in others], dropna=False)
        lowest, n_valid = grp.transform("min"), grp.transform("count")
        out["best"] = (finite == lowest) & (n_valid >= 2)
    else:
        out["best"] = False
    out = out.rename(columns=_FRIENDLY)
    out.attrs["timing_note"] = timing_note(df)
    return out


def _fmt_num(x: Any, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–" if x is None else str(x)
    if not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(digits, len(str(int(abs(x)))))}g}"
    return f"{x:.{digits - 1}e}"


def _fmt_time(s: Any) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(s):
        return "–"
    if s == 0:
        return "0"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 600:
        return f"{s:.3g} s"
    return f"{s / 60:.3g} min"


def _pm(mean: Any, std: Any) -> str:
    m = _fmt_num(mean)
    try:
        ok = math.isfinite(float(std))
    except (TypeError, ValueError):
        ok = False
    return f"{m} ± {_fmt_num(std, 2)}" if ok and m != "–" else m


def _online_text(r: pd.Series, ms: bool = False) -> str:
    """Online time per cycle: the median over cycles with its interquartile range (means over seeds), or the
    mean for runs made before the runner kept per-cycle spreads; ``ms``: bare numbers in milliseconds."""
    fmt = (lambda x: _fmt_num(_scaled(x, 1e3))) if ms else _fmt_time
    med, iqr = r.get("time_online_med_s_mean"), r.get("time_online_iqr_s_mean")
    try:
        if math.isfinite(float(med)):
            return f"{fmt(med)} ({fmt(iqr)})" if math.isfinite(float(iqr)) else fmt(med)
    except (TypeError, ValueError):
        pass
    return fmt(r.get("time_online_s_mean"))


def timing_note(results: pd.DataFrame) -> str:
    """One line on how the timings were made: threads and jobs per cell, CPU / wall, repeats."""
    if results.empty:
        return ""
    ok = results[results["status"] == "ok"] if "status" in results.columns else results
    num = lambda c: pd.to_numeric(ok[c], errors="coerce") if c in ok.columns else pd.Series(dtype=float)  # noqa: E731
    parts = []
    for col, what in (("threads", "thread{} per cell"), ("jobs", "cell{} side by side")):
        vals = sorted({int(v) for v in num(col).dropna()})
        if vals:
            parts.append(f"{'/'.join(map(str, vals))} " + what.format("" if vals == [1] else "s"))
    if num("cpu_per_wall").notna().any():
        parts.append(f"CPU / wall {float(num('cpu_per_wall').median()):.2f} (median over cells; well below the "
                     "threads: the cells waited for a core)")
    if num("timing_repeats").fillna(0).max() > 0:
        parts.append(f"{int(num('timing_repeats').max())} timing repeats")
    if not parts or not num("time_online_med_s").notna().any():
        return ""
    return ("timing: median over the cycles after the warm-up (interquartile range), mean over seeds; "
            + "; ".join(parts))


def _val(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(v) else f"{v:g}"
    return "–" if v is None else str(v)


def _method_text(r: pd.Series) -> str:
    """The method's name, marked when `bench tune` chose its parameters."""
    return str(r["method"]) + (" (tuned)" if r.get("tuned") is True or r.get("tuned") == 1 else "")


#: Units of the metrics, shown in table headers. rRMSE is relative (a ratio); spread and CRPS are in the
#: physical units of the state; the parameter error is in the unit its problem declares (``param_unit``).
UNITS = {"rrmse": "rel.", "spread_a": "state", "crps_a": "state"}


#: Setting values too ordinary to state in a table's title.
_PLAIN = {"operator": ("identity", "nan", "None", "<NA>"), "obs_every": ("1", "nan", "None", "<NA>")}


def _setting_axes(summary: pd.DataFrame) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(varying, constant) setting columns of some summary rows, as (column, short header)."""
    axes = [("n_ens", "N"), ("coverage", "coverage"), ("noise", "noise"), ("operator", "operator"),
            ("obs_every", "obs every"), ("device", "device")]
    varying, constant = [], []
    for c, h in axes:
        if c not in summary.columns:
            continue
        if summary[c].nunique(dropna=False) > 1:
            varying.append((c, h))
        elif str(summary[c].iloc[0]) not in _PLAIN.get(c, ()):  # identity operator, every cycle: not worth a word
            constant.append((c, h))
    return varying, constant


def _param_unit(rows: pd.DataFrame) -> str:
    if "param_unit" not in rows.columns:
        return ""
    units = sorted({str(u) for u in rows["param_unit"].dropna() if str(u)})
    return ", ".join(units)


def _summary_table_columns(rows: pd.DataFrame) -> list[tuple[str, str, Callable[[pd.Series], str]]]:
    """(key, header with unit, formatter) of the metric columns of ``bench show``, most important first."""
    has = lambda c: c in rows.columns and rows[c].notna().any()  # noqa: E731
    cols: list[tuple[str, str, Callable[[pd.Series], str]]] = [
        ("rrmse_a", f"rRMSE_a [{UNITS['rrmse']}]", lambda r: _pm(r.get("rrmse_a_mean"), r.get("rrmse_a_std")))]
    if has("rrmse_between_mean"):
        cols.append(("rrmse_between", f"between [{UNITS['rrmse']}]", lambda r: _fmt_num(r.get("rrmse_between_mean"))))
    if has("param_rmse_a_mean"):
        unit = _param_unit(rows)
        cols.append(("param_rmse_a", f"param RMSE [{unit}]" if unit else "param RMSE",
                     lambda r: _fmt_num(r.get("param_rmse_a_mean"))))
    cols.append(("time_online_s", "online [ms/cyc]", lambda r: _online_text(r, ms=True)))
    cols.append(("spread_a", f"spread_a [{UNITS['spread_a']}]", lambda r: _fmt_num(r.get("spread_a_mean"))))
    cols.append(("crps_a", f"CRPS_a [{UNITS['crps_a']}]", lambda r: _fmt_num(r.get("crps_a_mean"))))
    cols.append(("time_fit_s", "fit [s]", lambda r: _fmt_num(r.get("time_fit_s_mean"))))
    return cols


def _rich_table(rows: pd.DataFrame, labels: dict[str, str], keep: int):
    """The rich table of one problem's summary rows with the first ``keep`` metric columns."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    varying, constant = _setting_axes(rows)
    title = Text(str(rows["problem"].iloc[0]), style="bold")
    if constant:
        title.append("  " + " · ".join(f"{h}={_val(rows[c].iloc[0])}" for c, h in constant), style="dim")
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, padding=(0, 1),
              collapse_padding=True, show_edge=False)
    t.add_column("", no_wrap=True, width=1)
    for _, h in varying:
        t.add_column(Text(h), justify="right", no_wrap=True)
    t.add_column("method", justify="left", overflow="fold", min_width=8)
    t.add_column(Text("ok/fail/skip"), justify="right", no_wrap=True)
    cols = _summary_table_columns(rows)[:keep]
    for _, h, _ in cols:
        t.add_column(Text(h), justify="right", no_wrap=True)
    for _, r in rows.iterrows():
        best = bool(r.get("best"))
        cells = ["*" if best else ""] + [_val(r[c]) for c, _ in varying] + [
            labels[str(r["method"])] + (" (tuned)" if _method_text(r).endswith(" (tuned)") else ""),
            f"{r['n_ok']}/{r['n_failed']}/{r['n_skipped']}"] + [f(r) for _, _, f in cols]
        t.add_row(*(Text(c) for c in cells), style="bold" if best else None)
    return t


def summary_renderables(summary: pd.DataFrame, width: int = 120) -> list:
    """The summary as rich renderables: per problem, a table and the legend of its method labels.

    The best method of each setting is marked ``*`` in a column of its own (so the marker lines up) and its
    row is bold; methods are shown by their short labels (:func:`bench.labels.short_labels`) with a legend
    below the table mapping each shortened label to its full parametrized name. Setting values that are the
    same on every row go into the title. When the table is wider than ``width``, the least important metric
    columns (fit time, CRPS, spread, ...) are left out, and a note says which.
    """
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    from bench.labels import short_labels

    probe = Console(width=width, file=__import__("io").StringIO(), color_system=None)
    out: list = []
    dropped: set[str] = set()
    for _, rows in summary.groupby("problem", sort=True):
        labels = short_labels(rows["method"].astype(str))
        all_cols = _summary_table_columns(rows)
        keep = len(all_cols)
        label_w = max(len(x) for x in labels.values())
        while True:
            t = _rich_table(rows, labels, keep)
            # the natural width, less what folding long method labels down to 24 characters saves
            natural = Measurement.get(probe, probe.options.update_width(10_000), t).maximum
            if keep <= 1 or natural - max(0, label_w - 24) <= width:
                break
            keep -= 1
        dropped |= {h for _, h, _ in all_cols[keep:]}
        out.append(t)
        legend = {lab: full for full, lab in labels.items() if lab != full}
        if legend:
            lt = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
            lt.add_column("label", style="dim", no_wrap=True)
            lt.add_column("full name", overflow="fold")
            for lab, full in sorted(legend.items()):
                lt.add_row(Text(f"  {lab} ="), Text(full))
            out.append(lt)
        out.append(Text(""))
    out.append(Text("* lowest mean analysis rRMSE of its setting; mean ± std over seeds; rel.: relative to the "
                    "truth's RMS; state: the physical units of the state; _a: analysis; between: rRMSE between "
                    "observation times", style="dim"))
    if summary.attrs.get("timing_note"):
        out.append(Text(summary.attrs["timing_note"], style="dim"))
    if dropped:
        out.append(Text(f"left out for the width ({width} columns; widen the terminal or set COLUMNS): "
                        + ", ".join(sorted(dropped)), style="dim"))
    return out


def _scaled(x: Any, factor: float) -> Any:
    try:
        return float(x) * factor
    except (TypeError, ValueError):
        return x


def format_summary(summary: pd.DataFrame, width: int | None = None) -> str:
    """The summary as plain text for the terminal (``bench show``), at most ``width`` columns wide.

    ``width`` defaults to the terminal's (``$COLUMNS`` where set, else 120 when the output is not a terminal).
    One table per problem; ``*`` marks the best method of each setting.
    """
    import shutil

    if summary.empty:
        return "(no cells)"
    width = width or shutil.get_terminal_size((120, 24)).columns
    return plain_text(summary_renderables(summary, width), width)


def plain_text(renderables, width: int) -> str:
    """rich renderables as plain text at most ``width`` columns wide (no colour; trailing blanks stripped)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, soft_wrap=False,
                      highlight=False, emoji=False)
    for r in renderables:
        console.print(r)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines())


# ==============================================================================================================
# HTML helpers


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1400px;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin-top:1.2em}
.tbl{max-width:100%;overflow-x:auto;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right;vertical-align:top}
th{background:#f3f3f3;white-space:normal;min-width:4em}td.l,th.l{text-align:left}td{white-space:nowrap}
td.l:last-child{white-space:normal;overflow-wrap:anywhere}td.pm{white-space:normal}.nw{white-space:nowrap}
.swatch{display:inline-block;width:2.2em;height:0;vertical-align:middle}
.name{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.95em;overflow-wrap:anywhere}
tr.best td{background:#e3f4e1;font-weight:600}
tr.failed td{background:#fbe7e6}tr.skipped td{background:#f6f3e4}
pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:.8em;max-height:28em;white-space:pre}
details pre{max-width:100%}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em}.muted{color:#777;font-size:.85em}.setting{margin:.3em 0;font-size:.85em;color:#444}
.note{background:#fff6d8;padding:.4em .6em;border-left:3px solid #e0b400;font-size:.85em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _page(title: str, body: str, nav: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n{nav}\n{body}\n"
            f'<p class="muted">Generated by assimbench on {_dt.datetime.now().isoformat(timespec="seconds")}.</p>\n'
            f"</body>\n</html>\n")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], row_classes: Sequence[str] | None = None,
           left: int = 0, raw: bool = False) -> str:
    """An HTML table; the first ``left`` columns are left-aligned; cells are escaped unless ``raw``."""
    cls = lambda j: ' class="l"' if j < left else ""  # noqa: E731

    def cell(j: int, c: str) -> str:
        if raw:
            return f"<td{cls(j)}>{c}</td>"
        if " ± " in c:  # "mean ± std" may break before the ± (never inside a number) to let the table fit
            mean, _, sd = c.partition(" ± ")
            return f'<td class="pm"><span class="nw">{_e(mean)}</span> <span class="nw">± {_e(sd)}</span></td>'
        return f"<td{cls(j)}>{_e(c)}</td>"

    out = ["<table>", "<tr>" + "".join(f"<th{cls(j)}>{_e(h)}</th>" for j, h in enumerate(header)) + "</tr>"]
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(cell(j, c) for j, c in enumerate(row))
        out.append(f"<tr{rc}>{cells}</tr>")
    out.append("</table>")
    return '<div class="tbl">' + "\n".join(out) + "</div>"


def _legend_html(palette: dict) -> str:
    """The page's legend table: each method's colour and line, its short label and its full parametrized name."""
    rows = []
    for full, st in sorted(palette.items(), key=lambda kv: kv[1]["label"].lower()):
        dash = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dashed"}.get(st["linestyle"], "dotted") \
            if isinstance(st["linestyle"], str) else "dotted"
        swatch = (f'<span class="swatch" style="border-top:3px {dash} {st["color"]}" '
                  f'title="{_e(st["color"])}"></span>')
        rows.append([swatch, f"<b>{_e(st['label'])}</b>", f'<span class="name">{_e(full)}</span>'])
    return ("<h2>Methods on this page</h2>\n<p class=\"muted\">Figures and tables name methods by these short "
            "labels; colours are fixed per method on every page.</p>\n"
            + _table(rows, ["", "label", "full parametrized name"], left=3, raw=True))


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")[:60] or "problem"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _summary_columns(summ: pd.DataFrame, labels: dict[str, str] | None = None, constant: Sequence[str] = ()
                     ) -> list[tuple[str, str, Callable[[pd.Series], str]]]:
    """(key, header with unit, formatter) of the summary columns worth showing for these rows; methods by their
    short ``labels`` where given (the page's legend table maps them to the full names); setting columns named
    in ``constant`` are left out (the caller states them once above the table)."""
    labels = labels or {}
    def has(c: str) -> bool:
        return c in summ.columns and summ[c].notna().any()

    cols: list[tuple[str, str, Callable[[pd.Series], str]]] = []
    for c, h in (("n_ens", "N"), ("coverage", "coverage"), ("noise", "noise")):
        if c in summ.columns and c not in constant:
            cols.append((c, h, lambda r, c=c: _val(r[c])))
    for c, h in (("operator", "operator"), ("obs_every", "obs every"), ("device", "device")):
        if c in summ.columns and c not in constant and summ[c].nunique(dropna=False) > 1:
            cols.append((c, h, lambda r, c=c: _val(r[c])))
    cols.append(("method", "method", lambda r: labels.get(str(r["method"]), str(r["method"]))
                 + _method_text(r)[len(str(r["method"])):]))
    cols.append(("cells", "cells ok / failed / skipped",
                 lambda r: f"{r['n_ok']} / {r['n_failed']} / {r['n_skipped']}"))
    rel, st = UNITS["rrmse"], UNITS["spread_a"]
    unit = _param_unit(summ)
    for m, h in (("rrmse_a", f"rRMSE analysis [{rel}]"), ("rrmse_f", f"rRMSE forecast [{rel}]"),
                 ("rrmse_between", f"rRMSE between obs. [{rel}]"), ("rrmse_member_a", f"member rRMSE [{rel}]"),
                 ("spread_a", f"spread [{st}]"), ("spread_error_a", "spread / error"), ("crps_a", f"CRPS [{st}]"),
                 ("param_rmse_a", f"param RMSE [{unit}]" if unit else "param RMSE")):
        if has(f"{m}_mean"):
            cols.append((m, h, lambda r, m=m: _pm(r[f"{m}_mean"], r.get(f"{m}_std"))))
    if has("time_online_s_mean"):
        cols.append(("time_online_s", "online time / cycle: median (IQR)" if has("time_online_med_s_mean")
                     else "online time / cycle", _online_text))
    if has("time_fit_s_mean"):
        cols.append(("time_fit_s", "fit time", lambda r: _fmt_time(r["time_fit_s_mean"])))
    if has("peak_mem_mb_mean"):
        cols.append(("peak_mem_mb", "peak memory [MB]", lambda r: _fmt_num(r["peak_mem_mb_mean"])))
    return cols


def _summary_html(summ: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    """The summary rows as an HTML table; setting values shared by every row are stated once above it."""
    _, constant = _setting_axes(summ)
    constant = [(c, h) for c, h in constant if c != "device" or summ["device"].nunique() == 1]
    cols = _summary_columns(summ, labels, constant=[c for c, _ in constant])
    rows = [[f(r) for _, _, f in cols] for _, r in summ.iterrows()]
    classes = ["best" if r.get("best") else "" for _, r in summ.iterrows()]
    left = [k for k, _, _ in cols].index("method") + 1
    head = ""
    if constant and len(summ):
        head = ('<p class="setting">' + " · ".join(f"{_e(h)} = {_e(_val(summ[c].iloc[0]))}" for c, h in constant)
                + "</p>\n")
    return head + _table(rows, [h for _, h, _ in cols], classes, left=left)


def _summary_markdown(summ: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    cols = _summary_columns(summ, labels)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in summ.iterrows():
        cells = [f(r).replace("|", "\\|") for _, _, f in cols]
        if r.get("best"):
            cells = [f"**{c}**" if k in ("method", "rrmse_a") else c for (k, _, _), c in zip(cols, cells)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ==============================================================================================================
# run facts


def _provenance(res: pd.DataFrame, info: dict) -> dict[str, str]:
    prov = {str(k): v for k, v in (info.get("provenance") or {}).items()}
    for c in PROVENANCE_COLUMNS:
        if c not in prov and c in res.columns:
            vals = sorted({str(v) for v in res[c].dropna().unique()})
            if vals:
                prov[c] = ", ".join(vals[:5]) + (f" (+{len(vals) - 5} more)" if len(vals) > 5 else "")
    for k in ("started", "finished", "command"):
        if info.get(k):
            prov[k] = info[k]
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in prov.items()}


def _grid_rows(res: pd.DataFrame) -> list[list[str]]:
    rows = []
    for c in [c for c in res.columns if c.startswith("p_")]:
        vals = res[c].dropna()
        try:
            uniq = sorted(vals.unique().tolist())
        except TypeError:
            uniq = sorted({str(v) for v in vals})
        if not uniq:
            continue
        shown = ", ".join(_val(v) for v in uniq[:12]) + (f", … ({len(uniq)} values)" if len(uniq) > 12 else "")
        rows.append([c[2:], str(len(uniq)), shown])
    return rows


def _config_text(info: dict) -> str:
    cfg = info.get("config")
    if cfg is None:
        return ""
    try:
        import yaml
        return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
    except Exception:  # any unserialisable object: JSON with str() fallback is always possible
        return json.dumps(cfg, indent=2, default=str)


def _error_digest(err: Any, limit: int = 4000) -> tuple[str, str]:
    """(one-line headline, full text tail) of an error/traceback string."""
    text = "" if err is None or (isinstance(err, float) and math.isnan(err)) else str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = lines[-1].strip() if lines else "(no message)"
    return head[:300], text[-limit:]


def _failures_html(res: pd.DataFrame) -> str:
    if "status" not in res.columns:
        return ""
    failed = res[res["status"] == "failed"]
    skipped = res[res["status"] == "skipped"]
    parts = []
    if len(failed):
        rows, cols = [], ["cell_id", "p_problem", "p_method", "p_n_ens", "p_coverage", "p_noise", "p_seed"]
        cols = [c for c in cols if c in failed.columns]
        for _, r in failed.iterrows():
            head, full = _error_digest(r.get("error"))
            err = f"<details><summary>{_e(head)}</summary><pre>{_e(full)}</pre></details>" if full != head \
                else _e(head)
            rows.append([_e(_val(r[c])) for c in cols] + [err])
        parts.append(f"<h3>Failed cells ({len(failed)})</h3>")
        parts.append(_table(rows, [c.removeprefix("p_") for c in cols] + ["error"], ["failed"] * len(rows),
                            left=len(cols) + 1, raw=True))
    if len(skipped):
        key = [c for c in ("p_problem", "p_method") if c in skipped.columns]
        errs = skipped["error"].map(lambda e: _error_digest(e)[0]) if "error" in skipped.columns else "(no reason)"
        grp = skipped.assign(_reason=errs).groupby(key + ["_reason"], dropna=False).size().reset_index(name="n")
        rows = [[_val(r[c]) for c in key] + [str(r["n"]), r["_reason"]] for _, r in grp.iterrows()]
        parts.append(f"<h3>Skipped cells ({len(skipped)})</h3>")
        parts.append(_table(rows, [c.removeprefix("p_") for c in key] + ["cells", "reason"],
                            ["skipped"] * len(rows), left=len(key) + 2))
    return "\n".join(parts)


# ==============================================================================================================
# per-problem content


def _pick_setting(rows: pd.DataFrame) -> dict[str, Any]:
    """The (N, coverage, noise, seed, device) shared by the most methods among ``rows``: the one shown in
    snapshots and parameter plots. Ties: largest N, coverage nearest the median, lowest noise, lowest seed."""
    keys = [k for k in ("p_n_ens", "p_coverage", "p_noise", "p_seed", "p_device") if k in rows.columns]
    if rows.empty or not keys:
        return {}
    cnt = rows.groupby(keys, dropna=False)["p_method"].nunique().reset_index(name="_n")
    cnt["_neg_n"] = -cnt["_n"]
    order = ["_neg_n"]
    if "p_n_ens" in keys:
        cnt["_neg_N"] = -cnt["p_n_ens"].astype(float)
        order.append("_neg_N")
    if "p_coverage" in keys:
        cnt["_cov"] = (cnt["p_coverage"].astype(float) - rows["p_coverage"].astype(float).median()).abs()
        order.append("_cov")
    order += [k for k in ("p_noise", "p_seed", "p_device") if k in keys]
    best = cnt.sort_values(order, kind="stable").iloc[0]
    return {k: best[k] for k in keys}


def _match(rows: pd.DataFrame, setting: dict[str, Any]) -> pd.DataFrame:
    mask = np.ones(len(rows), dtype=bool)
    for k, v in setting.items():
        col = rows[k]
        mask &= (col.isna() if pd.isna(v) else (col == v)).to_numpy()
    return rows[mask]


def _setting_text(setting: dict[str, Any]) -> str:
    short = {"p_n_ens": "N", "p_coverage": "coverage", "p_noise": "noise", "p_seed": "seed", "p_device": "device"}
    return " · ".join(f"{short.get(k, k)}={_val(v)}" for k, v in setting.items())


def _surrogate_html(res_ok: pd.DataFrame, run_dir: Path) -> str:
    rows = []
    for _, r in res_ok.iterrows():
        path = store.surrogate_path(run_dir, r["cell_id"])
        if not path.is_file():
            continue
        try:
            sur = json.loads(path.read_text()).get("surrogate")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(sur, dict):
            rows.append({"method": r["p_method"], **{k: v for k, v in sur.items() if not isinstance(v, (dict, list))}})
    if not rows:
        return ""
    df = pd.DataFrame(rows)
    num = [c for c in df.columns if c != "method" and pd.api.types.is_numeric_dtype(df[c])]
    txt = [c for c in df.columns if c != "method" and c not in num]
    agg = df.groupby("method").agg(**{"cells": ("method", "size")}, **{c: (c, "mean") for c in num},
                                   **{c: (c, "first") for c in txt}).reset_index()
    header = ["method", "cells"] + num + txt
    body = [[r["method"], str(r["cells"])] + [_fmt_num(r[c], 4) for c in num] + [_val(r[c]) for c in txt]
            for _, r in agg.iterrows()]
    return ("<h2>Surrogates</h2>\n<p>Offline-trained surrogates of the latent methods (from "
            "<code>extras/</code>; numbers are means over the cells that report them).</p>\n"
            + _table(body, header, left=1))


def _surrogate_numbers(run_dir: Path, cell_id: str) -> tuple[float, float]:
    """``(surrogate test rRMSE, optimisation CPU-minutes of every network)`` of a learned cell from its extras:
    the first network reporting ``test_rrmse_phys`` is the surrogate; each network counts its ``train_cpu_s``
    (its ``train_opt_s`` where an older artifact has no CPU time). NaN where a number is missing."""
    try:
        sur = json.loads(store.surrogate_path(run_dir, cell_id).read_text()).get("surrogate") or {}
    except (OSError, ValueError, AttributeError):
        return math.nan, math.nan
    nets = {k.split(".")[0] for k in sur if k.count(".") == 1}
    err = next((sur[f"{n}.test_rrmse_phys"] for n in nets if f"{n}.test_rrmse_phys" in sur), math.nan)
    secs = [sur.get(f"{n}.train_cpu_s", sur.get(f"{n}.train_opt_s")) for n in sorted(nets)]
    secs = [v for v in secs if v is not None]
    return float(err), (sum(secs) / 60 if secs else math.nan)


def offline_compute_data(res_ok: pd.DataFrame, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, str] | None:
    """The points of :func:`bench.plots.offline_compute_figure` from the ok rows of one problem: the learned
    methods run at several training budgets (``train_fraction``), at the setting most of them share (seeds
    pooled), and the methods without training at that setting. None when no method varies its budget."""
    col = "p_method_train_fraction"
    if col not in res_ok.columns:
        return None
    learned = res_ok[res_ok[col].notna()].copy()
    if learned.empty:
        return None
    learned["curve"] = [_without_param(m, "train_fraction") for m in learned["p_method"]]
    if learned.groupby("curve")[col].nunique().max() < 2:
        return None
    setting = {k: v for k, v in _pick_setting(learned).items() if k != "p_seed"}
    learned = _match(learned, setting)
    nums = [_surrogate_numbers(run_dir, c) for c in learned["cell_id"]]
    learned["surrogate_rrmse"] = [a for a, _ in nums]
    learned["train_min"] = [b for _, b in nums]
    learned["train_fraction"] = learned[col].astype(float)
    keep = ["curve", "train_fraction", "rrmse_a", "surrogate_rrmse", "train_min"] + \
        [k for k in ("p_seed",) if k in learned.columns]
    others = _match(res_ok[res_ok[col].isna()], setting)
    refs = others.groupby("p_method")["rrmse_a"].mean().reset_index().rename(columns={"p_method": "method"})
    return learned[keep].reset_index(drop=True), refs, _setting_text(setting)


def _without_param(name: str, key: str) -> str:
    """A parametrized name without one of its parameters (``LD-EnSF[epochs=8,train_fraction=0.5]`` ->
    ``LD-EnSF[epochs=8]``)."""
    from bench.labels import split_name
    base, params = split_name(name)
    params.pop(key, None)
    return f"{base}[{','.join(f'{k}={v}' for k, v in params.items())}]" if params else base


# ==============================================================================================================
# build


class _Builder:
    """Writes one report; collects figure failures as notes (or raises them when ``strict``)."""

    def __init__(self, run_dir: Path, strict: bool):
        self.run_dir, self.strict = run_dir, strict
        self.out = run_dir / "report"
        self.img = self.out / "img"
        self.notes: list[str] = []

    def figures(self, fn, *args, **kwargs) -> list:
        from bench import plots
        try:
            return plots.render(fn, *args, **kwargs)
        except Exception as e:  # a broken figure must not lose the rest of the report
            if self.strict:
                raise
            msg = f"figure {fn.__name__} could not be drawn: {type(e).__name__}: {e}"
            warnings.warn(msg, stacklevel=2)
            self.notes.append(msg)
            return []

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.img.exists():  # figures of an earlier build of this report would be stale
            shutil.rmtree(self.img)
        self.img.mkdir()
        for old in self.out.glob("*.html"):
            old.unlink()


def _figure_html(figs: Sequence) -> str:
    return "\n".join(f'<figure><img src="img/{_e(f.file)}" alt="{_e(f.alt or f.caption)}">'
                     f"<figcaption>{_e(f.caption)}</figcaption></figure>" for f in figs)


def _problem_page(b: _Builder, problem: str, slug: str, res: pd.DataFrame, cyc: pd.DataFrame,
                  summ: pd.DataFrame) -> str:
    from bench import plots

    palette = plots.method_palette(res["p_method"].astype(str).unique().tolist())
    labels = {m: st["label"] for m, st in palette.items()}

    res_ok = res[res["status"] == "ok"] if "status" in res.columns else res
    ok_ids = set(res_ok["cell_id"]) if "cell_id" in res_ok.columns else set()
    if not cyc.empty and "cell_id" in cyc.columns:
        cyc = cyc[cyc["cell_id"].isin(ok_ids)]
    parts = [f"<h1>{_e(problem)}</h1>",
             f'<p class="muted">{len(res)} cells: {len(res_ok)} ok, '
             f'{int((res.get("status") == "failed").sum()) if "status" in res else 0} failed, '
             f'{int((res.get("status") == "skipped").sum()) if "status" in res else 0} skipped. '
             "Highlighted: lowest mean analysis rRMSE of its setting.</p>",
             _legend_html(palette), "<h2>Summary</h2>", _summary_html(summ, labels)]
    if timing_note(res):
        parts.append(f'<p class="muted">{_e(timing_note(res))}.</p>')

    sections: list[tuple[str, list]] = [
        ("rRMSE over cycles", b.figures(plots.cycles_figure, cyc, b.img, palette, slug)),
        ("Sensitivity to the grid", b.figures(plots.sensitivity_figures, res, b.img, palette, slug)),
        ("Cost against accuracy", b.figures(plots.cost_accuracy_figure, res, b.img, palette, slug)),
        ("Time per cycle", b.figures(plots.timing_figures, res, b.img, slug, palette=palette)),
    ]
    # calibration: rank histograms at the setting most methods share (pooled over its seeds), the ratio over N
    with_rank = res_ok[res_ok["rank_hist_a"].notna()] if "rank_hist_a" in res_ok.columns else res_ok.iloc[:0]
    if len(with_rank):
        setting = {k: v for k, v in _pick_setting(with_rank).items() if k != "p_seed"}
        figs = b.figures(plots.rank_histogram_figure, _match(with_rank, setting), b.img, palette, slug,
                         _setting_text(setting))
        figs += b.figures(plots.spread_error_figure, res_ok, b.img, palette, slug)
        sections.append(("Calibration", figs))
    # one setting and seed for the fields, parameters and latent trajectories
    snap = lambda c: store.snapshot_path(b.run_dir, c)  # noqa: E731
    with_snap = res_ok[res_ok["cell_id"].map(lambda c: snap(c).is_file())] if len(res_ok) else res_ok.iloc[:0]
    if len(with_snap):
        setting = _pick_setting(with_snap)
        snaps = {}
        for _, r in _match(with_snap, setting).iterrows():
            z = store.load_npz(snap(r["cell_id"]))
            if z is not None:
                snaps[r["p_method"]] = z
        figs = b.figures(plots.snapshot_figures, snaps, b.img, slug, palette=palette)
        sections.append((f"Fields ({_setting_text(setting)})", figs))
    param_cols = [c for c in cyc.columns if c.startswith("param_mean_")] if not cyc.empty else []
    if param_cols and cyc[param_cols].notna().any().any():
        has_param = cyc[cyc[param_cols].notna().any(axis=1)]
        setting = _pick_setting(res_ok[res_ok["cell_id"].isin(set(has_param["cell_id"]))])
        rows = _match(has_param, setting)
        sections.append((f"Parameter estimates ({_setting_text(setting)})",
                          b.figures(plots.parameter_figure, rows, b.img, palette, slug, _setting_text(setting),
                                    unit=_param_unit(res))))
    offline = offline_compute_data(res_ok, b.run_dir) if len(res_ok) else None
    if offline is not None:
        sections.append(("Accuracy against offline compute",
                         b.figures(plots.offline_compute_figure, offline[0], offline[1], b.img, slug, offline[2])))
    latent_html = ""
    if len(res_ok):
        latent_html = _surrogate_html(res_ok, b.run_dir)
        with_lat = res_ok[res_ok["cell_id"].map(lambda c: store.latent_path(b.run_dir, c).is_file())]
        if len(with_lat):
            setting = _pick_setting(with_lat)
            chosen = _match(with_lat, setting)
            picked = {r["p_method"]: r["cell_id"] for _, r in chosen.iterrows()}
            for m, g in with_lat.groupby("p_method"):  # methods not in that setting: their first cell
                picked.setdefault(m, g.sort_values([c for c in ("p_seed",) if c in g])["cell_id"].iloc[0])
            lat = {m: z for m, c in picked.items()
                   if (z := store.load_npz(store.latent_path(b.run_dir, c))) is not None}
            sections.append((f"Latent trajectories ({_setting_text(setting)})",
                             b.figures(plots.latent_figure, lat, b.img, slug, palette=palette)))
    for title, figs in sections:
        if figs:
            parts.append(f"<h2>{_e(title)}</h2>\n{_figure_html(figs)}")
    if latent_html:
        parts.append(latent_html)
    fails = _failures_html(res)
    if fails:
        parts.append(f'<h2 id="failures">Failed and skipped cells</h2>\n{fails}')
    return "\n".join(parts)


def _scaling_section(b: _Builder, res: pd.DataFrame, cyc: pd.DataFrame, palette: dict, labels: dict[str, str],
                     taken: set[str]) -> tuple[str, list[str]]:
    """The index page's section (HTML) and summary.md's lines on time per cycle against the state dimension: per
    problem family and setting whose cells span several dimensions, a log-log figure and the slope table."""
    from bench import plots
    from bench.scaling import SLOPE_NOTE, scaling_points, scaling_table, select_curve, slope_rows

    table = scaling_table(res, cyc)
    if table.empty:
        return "", []
    points = {basis: scaling_points(res, cyc, basis) for basis in ("wall", "cpu")}
    keys = [k for k in table.columns if k.startswith("p_")]
    html_parts = ["<h2>Scaling with the state dimension</h2>",
                  f'<p class="muted">{_e(SLOPE_NOTE)}. The learned methods\' offline training is not in these '
                  "times (see their fit time in the summary).</p>"]
    md = ["", "## Scaling with the state dimension", ""]
    for k, tab in table.groupby(["problem", *keys], dropna=False, sort=True):
        setting = dict(zip(keys, k[1:]))
        varying = {c: v for c, v in setting.items() if table[c].nunique(dropna=False) > 1}
        title = " · ".join(f"{c.removeprefix('p_').removeprefix('obs_')}={_val(v)}" for c, v in varying.items())
        pts = {basis: select_curve(p, k[0], setting) for basis, p in points.items()}
        slug = _slug(f"scaling-{k[0]}", taken)
        figs = b.figures(plots.scaling_figure, pts, tab, b.img, palette, slug, str(k[0]))
        header, rows = slope_rows(tab.drop(columns=[c for c in keys]), labels)
        html_parts.append(f"<h3>{_e(k[0])}{(' · ' + _e(title)) if title else ''}</h3>")
        html_parts.append(_figure_html(figs))
        html_parts.append(_table(rows, header, left=2))
        md += [f"### {k[0]}{(' (' + title + ')') if title else ''}", "",
               "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        md.append("")
    md.append(SLOPE_NOTE + ".")
    return "\n".join(html_parts), md


def _page_names(df: pd.DataFrame, problem: str, operator: str, every: str) -> pd.Series:
    """The report page of each row: the problem's label, plus the observation operator and interval where they
    are not the plain ones (identity, every cycle), e.g. ``kolmogorov · arctan``."""
    name = df[problem].astype(str)
    if operator in df.columns:
        op = df[operator].astype(str)
        name = name.where(op.isin(_PLAIN["operator"]), name + " · " + op)
    if every in df.columns:
        ev = df[every].astype(str).str.removesuffix(".0")
        name = name.where(ev.isin(_PLAIN["obs_every"]), name + " · obs every " + ev)
    return name


def build_report(run_dir: str | Path, *, strict: bool = False) -> Path:
    """Write the static HTML report of a run directory and return the path of ``report/index.html``.

    Parameters
    ----------
    run_dir : path
        A run directory (see module docstring). Raises :class:`~assimbench.errors.ConfigError` when it has no
        ``results.parquet``.
    strict : bool
        Raise when a figure cannot be drawn (tests). By default the failure is noted on the page and in a
        warning, and the rest of the report is written.

    Returns
    -------
    Path
        ``run_dir/report/index.html``. Next to it: one ``<problem>.html`` page per problem, ``img/*.png``,
        ``summary.md``, ``summary.csv`` (the :func:`summary_table`) and ``results.csv`` (every cell).
    """
    t0 = time.perf_counter()
    run_dir = resolve_run_dir(run_dir)
    res = load_results(run_dir)
    cyc = load_cycles(run_dir)
    info = load_run_info(run_dir)
    b = _Builder(run_dir, strict)
    b.prepare()
    summ = summary_table(res)
    summ.to_csv(b.out / "summary.csv", index=False)
    res.to_csv(b.out / "results.csv", index=False)

    from bench import plots
    palette = plots.method_palette(res["p_method"].astype(str).unique().tolist())  # the index page's labels
    labels = {m: st["label"] for m, st in palette.items()}
    # one page per problem and observation layout: a figure that averages over seeds must never mix cells of
    # another observation operator or interval (the summary tables keep them apart as settings of their own)
    res_page = _page_names(res, "p_problem", "p_obs_operator", "p_obs_obs_every")
    summ_page = _page_names(summ, "problem", "operator", "obs_every")
    problems = list(dict.fromkeys(sorted(res_page)))
    taken: set[str] = {"index", "summary", "results"}
    slugs = {p: _slug(p, taken) for p in problems}
    for p in problems:
        cells = res[res_page == p]
        body = _problem_page(b, p, slugs[p], cells,
                             cyc[cyc["cell_id"].isin(set(cells["cell_id"]))] if "cell_id" in cyc.columns else cyc,
                             summ[summ_page == p])
        nav = '<nav><a href="index.html">← index</a>' + "".join(
            f'<a href="{slugs[q]}.html">{_e(q)}</a>' for q in problems if q != p) + "</nav>"
        (b.out / f"{slugs[p]}.html").write_text(_page(f"{p} · {run_dir.name}", body, nav), encoding="utf-8")

    prov = _provenance(res, info)
    status = res["status"].value_counts().to_dict() if "status" in res.columns else {"ok": len(res)}
    n_ok, n_failed, n_skipped = (int(status.get(k, 0)) for k in ("ok", "failed", "skipped"))
    parts = [f"<h1>assimbench run: {_e(run_dir.name)}</h1>",
             f"<p>{len(res)} cells: <b>{n_ok}</b> ok, <b>{n_failed}</b> failed, <b>{n_skipped}</b> skipped"
             + (' (<a href="#failures">list</a>)' if n_failed + n_skipped else "") + ". "
             "Downloads: <a href=\"summary.md\">summary.md</a>, <a href=\"summary.csv\">summary.csv</a>, "
             "<a href=\"results.csv\">results.csv</a>.</p>",
             "<h2>Problems</h2><ul>" + "".join(
                 f'<li><a href="{slugs[p]}.html">{_e(p)}</a> ({int((res_page == p).sum())} '
                 "cells)</li>" for p in problems) + "</ul>"]
    if b.notes:
        parts.append("".join(f'<p class="note">{_e(n)}</p>' for n in b.notes))
    parts.append(_legend_html(palette))
    parts.append("<h2>Summary</h2><p class=\"muted\">Mean ± std over seeds of the ok cells; highlighted: the "
                 "lowest mean analysis rRMSE among the methods of a setting. rRMSE: relative RMSE of the "
                 "ensemble mean, all fields pooled, physical units, averaged over cycles after spin-up.</p>")
    for p in problems:
        parts.append(f'<h3><a href="{slugs[p]}.html">{_e(p)}</a></h3>')
        parts.append(_summary_html(summ[summ_page == p], labels))
    scaling_html, scaling_md = _scaling_section(b, res, cyc, palette, labels, taken)
    if scaling_html:
        parts.append(scaling_html)
    parts.append("<h2>Grid</h2>" + _table(_grid_rows(res), ["parameter", "n", "values"], left=3))
    cfg = _config_text(info)
    if cfg:
        parts.append(f"<details><summary>expanded grid configuration</summary><pre>{_e(cfg)}</pre></details>")
    parts.append("<h2>Provenance</h2>" + _table([[k, v] for k, v in prov.items()], ["", ""], left=2))
    fails = _failures_html(res)
    if fails:
        parts.append(f'<h2 id="failures">Failed and skipped cells</h2>\n{fails}')
    parts.append(f'<p class="muted">Report built in {time.perf_counter() - t0:.1f} s.</p>')
    index = b.out / "index.html"
    index.write_text(_page(f"assimbench · {run_dir.name}", "\n".join(parts)), encoding="utf-8")

    md = [f"# assimbench run `{run_dir.name}`", ""]
    md.append(f"{len(res)} cells: {n_ok} ok, {n_failed} failed, {n_skipped} skipped. "
              "Mean ± std over seeds; **bold**: lowest mean analysis rRMSE of its setting.")
    prov_line = ", ".join(f"{k}: {v}" for k, v in prov.items() if k in PROVENANCE_COLUMNS)
    if prov_line:
        md += ["", f"Provenance: {prov_line}."]
    for p in problems:
        md += ["", f"## {p}", "", _summary_markdown(summ[summ_page == p], labels)]
    md += scaling_md
    legend = sorted((lab, full) for full, lab in labels.items() if lab != full)
    if legend:
        md += ["", "## Method labels", "", "| label | full parametrized name |", "|---|---|"]
        md += [f"| {lab} | `{full}` |" for lab, full in legend]
    (b.out / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return index
