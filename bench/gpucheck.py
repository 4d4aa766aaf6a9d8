"""`bench gpu-check`: run the CUDA path of every method and problem, and the default preset's PDE block, on the
GPU and on the CPU, and print one CPU / GPU table.

Two parts, each a plain grid run twice (``--device cpu`` and ``--device cuda``) into ``OUT/<part>-cpu`` and
``OUT/<part>-cuda`` (``<part>-dryrun`` without a GPU; ordinary run folders:
``bench show``, ``bench report`` and ``bench compare`` read them):

``coverage``
    the smoke preset (every method on Lorenz-96, shallow water and Kolmogorov at tiny sizes, one seed), plus a
    block at the class's tiny ``conformance_params`` for any registered problem or method the smoke preset
    leaves out, so every method x problem goes through its CUDA code once.
``pde``
    the default preset's PDE block (shallow water and Kolmogorov at 64 x 64, N = 20, every method), with
    ``--seeds`` seeds (default 1).

The table gives, per cell, the status on each device, the analysis rRMSE on each (the two differ by float
round-off, amplified by chaotic dynamics over the cycles; a large gap points at a device bug), the median online
time per cycle on each and the speed-up CPU / GPU. Cells that fail on one device only are listed first.

Without a CUDA device the command stops before any work with exit code 2 and says so. ``device="cpu"`` (the
``--device cpu`` option) runs the same logic with the CPU standing in for the GPU, which is how the test suite
checks it.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from assimbench.errors import ConfigError

PDE_PROBLEMS = ("shallow_water", "kolmogorov")


def require_gpu(device: str) -> None:
    """ConfigError with a clear message unless ``device`` (``cuda`` / ``cuda:N``) is usable, or ``cpu``."""
    import torch
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise ConfigError(f"gpu-check --device {device!r}: valid: cuda, cuda:N (or cpu to dry-run the check)")
    if not torch.cuda.is_available():
        raise ConfigError(f"no CUDA GPU is present: torch {torch.__version__} (CUDA build: "
                          f"{torch.version.cuda or 'none'}) sees no CUDA device, so there is nothing to check. "
                          f"On a GPU machine install a CUDA build of torch and rerun `bench gpu-check`")
    idx = int(device.split(":")[1]) if ":" in device else 0
    if idx >= torch.cuda.device_count():
        raise ConfigError(f"gpu-check --device {device}: only {torch.cuda.device_count()} CUDA device(s) here")


def coverage_config() -> dict:
    """The smoke preset with one seed, plus tiny blocks for registered problems / methods it leaves out."""
    import methods
    import problems
    from bench.config import load_preset

    config = copy.deepcopy(load_preset("smoke"))
    config["seeds"] = 1
    exps = config.get("experiments") or [config]
    seen_p = {p for e in exps for p in (e.get("problems") or {})}
    seen_m = {m for e in exps for m in (e.get("methods") or {})}
    tiny_methods = {m: dict(getattr(methods.cls(m), "conformance_params", {})) for m in methods.names()}
    for p in problems.names():
        if p not in seen_p:
            cls = problems.cls(p)
            exps.append({"problems": {p: dict(cls.conformance_params)},
                         "observers": dict(getattr(cls, "conformance_observer", {"coverage": 0.5})),
                         "methods": tiny_methods, "spinup": 0})
    missing = [m for m in methods.names() if m not in seen_m]
    if missing:
        ps = {p: dict(problems.cls(p).conformance_params) for p in problems.names()}
        exps.append({"problems": ps, "observers": {"coverage": 0.5},
                     "methods": {m: tiny_methods[m] for m in missing}, "spinup": 0})
    config["experiments"] = exps
    return config


def pde_config(seeds: int = 1) -> dict:
    """The default preset's PDE block (its experiments on shallow water / Kolmogorov), ``seeds`` seeds."""
    from bench.config import load_preset

    config = copy.deepcopy(load_preset("default"))
    top = {k: v for k, v in config.items() if k != "experiments"}
    blocks = [b for b in config.get("experiments", []) if set(b.get("problems") or {}) & set(PDE_PROBLEMS)]
    if not blocks:
        raise ConfigError("the default preset has no shallow_water / kolmogorov block to check")
    return {**top, "seeds": seeds, "experiments": blocks}


def _median_ms(cyc: pd.DataFrame, cell_id: str, col: str = "t_cycle") -> float:
    if cyc.empty or col not in cyc.columns:
        return float("nan")
    g = cyc[cyc["cell_id"] == cell_id]
    if "warmup" in g.columns:
        g = g[~g["warmup"].fillna(False).astype(bool)]
    elif "cycle" in g.columns:
        g = g[g["cycle"] > 1]
    v = pd.to_numeric(g[col], errors="coerce").dropna()
    return 1e3 * float(v.median()) if len(v) else float("nan")


def device_table(cpu_dir: Path, gpu_dir: Path, part: str) -> pd.DataFrame:
    """One row per cell of the part: status, rRMSE and median online time per cycle on each device."""
    from bench.compare import compare
    from bench.store import load_cycles

    df = compare(cpu_dir, gpu_dir, ignore=("p_device",))
    cc, gc = load_cycles(cpu_dir), load_cycles(gpu_dir)
    rows = []
    for _, r in df.iterrows():
        cpu_ms = _median_ms(cc, str(r["cell_id_A"]))
        gpu_ms = _median_ms(gc, str(r["cell_id_B"]))
        ra, rb = float(r["rrmse_a_A"]), float(r["rrmse_a_B"])
        rows.append({"part": part, "problem": str(r["p_problem"]).split("[")[0], "method": r["p_method"],
                     "N": r.get("p_n_ens"), "coverage": r.get("p_coverage"), "seed": r.get("p_seed"),
                     "status_cpu": r["status_A"],
                     "status_gpu": r["status_B"], "rrmse_cpu": ra, "rrmse_gpu": rb,
                     "rrmse_rel_gap": abs(rb - ra) / abs(ra) if ra and math.isfinite(ra) else float("nan"),
                     "cycle_ms_cpu": cpu_ms, "cycle_ms_gpu": gpu_ms,
                     "speedup": cpu_ms / gpu_ms if gpu_ms and math.isfinite(gpu_ms) else float("nan")})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["device_mismatch"] = out["status_cpu"] != out["status_gpu"]
        out = out.sort_values(["device_mismatch", "problem", "method"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)
    return out


def format_table(table: pd.DataFrame, gpu_name: str) -> str:
    if table.empty:
        return "no cells"
    num = lambda v, f: "–" if v is None or not np.isfinite(v) else format(v, f)  # noqa: E731
    show = pd.DataFrame({
        "part": table["part"], "problem": table["problem"], "method": table["method"].map(lambda m: str(m)[:40]),
        "cov": table["coverage"].map(lambda v: num(v, "g")), "seed": table["seed"],
        "status cpu/gpu": table["status_cpu"] + "/" + table["status_gpu"],
        "rRMSE cpu": table["rrmse_cpu"].map(lambda v: num(v, ".4g")),
        "rRMSE gpu": table["rrmse_gpu"].map(lambda v: num(v, ".4g")),
        "gap": table["rrmse_rel_gap"].map(lambda v: num(100 * v, ".2g") + ("%" if np.isfinite(v) else "")),
        "cycle ms cpu": table["cycle_ms_cpu"].map(lambda v: num(v, ".4g")),
        "cycle ms gpu": table["cycle_ms_gpu"].map(lambda v: num(v, ".4g")),
        "cpu/gpu": table["speedup"].map(lambda v: num(v, ".2f") + ("x" if np.isfinite(v) else "")),
        "": np.where(table["device_mismatch"], "!!", ""),
    })
    n_bad = int(table["device_mismatch"].sum())
    ok = table[(table["status_cpu"] == "ok") & (table["status_gpu"] == "ok")]
    head = (f"gpu-check on {gpu_name}: {len(table)} cells, {len(ok)} ok on both devices, {n_bad} with a "
            f"different status on the two devices" + (" (marked !!)" if n_bad else ""))
    if len(ok):
        sp = ok["speedup"].replace([np.inf, -np.inf], np.nan).dropna()
        if len(sp):
            head += f"; median speed-up CPU/GPU {float(sp.median()):.2f}x"
    return head + "\n" + show.to_string(index=False)


def gpu_check(out: Path, device: str = "cuda", *, parts: tuple[str, ...] = ("coverage", "pde"), seeds: int = 1,
              cache_dir: Path | None = None, progress: bool = False, threads: int | None = None,
              log=sys.stderr) -> pd.DataFrame:
    """Run the parts on the CPU and on ``device``; returns the table (and writes ``OUT/gpu_check.csv``).

    ``threads``: torch threads of each cell (default: every core, the executors' rule for one cell at a time).
    """
    import torch

    from bench.config import expand
    from bench.executors import make_executor
    from bench.sweep import run_grid

    require_gpu(device)
    unknown = [p for p in parts if p not in ("coverage", "pde")]
    if unknown or not parts:
        raise ConfigError(f"gpu-check parts {unknown or parts}: valid: coverage, pde")
    if seeds < 1:
        raise ConfigError(f"gpu-check --seeds {seeds}: must be >= 1")
    configs = {"coverage": coverage_config, "pde": lambda: pde_config(seeds)}
    out = Path(out)
    gpu_name = torch.cuda.get_device_name(torch.device(device)) if device != "cpu" else "cpu (dry run: no GPU used)"
    accel_tag = "cuda" if device != "cpu" else "dryrun"
    tables = []
    for part in parts:
        config = configs[part]()
        for dev, tag in (("cpu", "cpu"), (device, accel_tag)):
            grid = expand(config, device=dev, name=f"gpu-check-{part}")
            t0 = time.perf_counter()
            print(f"gpu-check {part}: {len(grid.cells)} cells on {dev} -> {out / f'{part}-{tag}'}", file=log)
            counts = run_grid(grid.cells, out / f"{part}-{tag}", cache_dir=cache_dir, progress=progress,
                              executor=make_executor("local", jobs=1, threads=threads))
            print(f"  {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
                  f"({time.perf_counter() - t0:.0f} s)", file=log)
        tables.append(device_table(out / f"{part}-cpu", out / f"{part}-{accel_tag}", part))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gpu_check.csv", index=False)
    table.attrs["gpu_name"] = gpu_name
    return table
