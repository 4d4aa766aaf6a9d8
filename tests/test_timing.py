"""The timing protocol: warm-up out, per-phase samples and their spread, CPU time, solver sub-steps, repeats that
leave the metrics alone, threads pinned and recorded, and executors that agree exactly at equal threads."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import problems
from bench.config import expand
from bench.runner import METRICS, run_cell

L96 = {"lorenz96": {"dim": 12, "n_cycles": 8, "n_traj": 5, "spinup_time": 2.0,
                    "observer": {"coverage": 1.0, "noise": 1.0, "noise_type": "absolute"}}}
#: a stochastic EnKF (perturbed observations), EnSF (random reverse SDE) and the free run
METHODS = {"EnKF": {"variant": "stochastic", "inflation": 1.05}, "EnSF": {"n_steps": 20, "normalize": False},
           "FreeRun": {}}


def _cells(**extra):
    return expand({"problems": L96, "methods": METHODS, "n_ens": 6, "seeds": 1, "spinup": 1, **extra}).cells


def test_timing_columns_and_per_cycle_samples(cache_dir):
    cell = _cells()[0]
    res = run_cell(cell, cache_dir=cache_dir, raise_errors=True)
    row, cyc = res.row, pd.DataFrame(res.cycles)
    assert row["status"] == "ok" and row["timed_cycles"] == 7  # 8 cycles, the first one is the warm-up
    assert cyc["warmup"].tolist() == [True] + [False] * 7
    timed = cyc[~cyc["warmup"]]
    for phase in ("forecast", "analysis", "reconstruct", "online"):
        v = timed[f"t_{phase}"]
        assert row[f"time_{phase}_med_s"] == pytest.approx(float(np.median(v)))
        q1, q3 = np.percentile(v, [25, 75])
        assert row[f"time_{phase}_iqr_s"] == pytest.approx(q3 - q1)
        assert row[f"time_{phase}_s"] == pytest.approx(float(v.mean()))
        assert row[f"time_{phase}_cpu_s"] == pytest.approx(float(np.median(timed[f"t_{phase}_cpu"])))
    assert np.allclose(cyc["t_online"], cyc["t_forecast"] + cyc["t_analysis"] + cyc["t_reconstruct"])
    # Lorenz-96 takes a fixed number of RK4 steps per interval; no CFL speed
    steps = problems.get("lorenz96", dim=12, n_cycles=8, n_traj=5, spinup_time=2.0).steps_per_obs
    assert (cyc["forecast_substeps"] == steps).all() and row["forecast_substeps"] == steps
    assert np.isnan(row["forecast_speed"])
    assert row["time_forecast_per_substep_s"] == pytest.approx(float(np.median(timed["t_forecast"] / steps)))
    assert row["cpu_per_wall"] > 0


def test_kolmogorov_forecast_records_its_cfl_substeps(cache_dir):
    cell = expand({"problems": {"kolmogorov": {"n": 16, "n_cycles": 3, "n_traj": 5, "spinup_time": 0.4}},
                   "observers": {"coverage": 0.5}, "methods": {"FreeRun": {}}, "n_ens": 4}).cells[0]
    res = run_cell(cell, cache_dir=cache_dir, raise_errors=True)
    cyc = pd.DataFrame(res.cycles)
    pb = problems.get("kolmogorov", n=16, n_cycles=3, n_traj=5, spinup_time=0.4)
    assert (cyc["forecast_substeps"] >= pb.n_substeps(pb.dt_obs)).all()
    assert (cyc["forecast_speed"] >= pb.max_velocity).all()
    assert res.row["forecast_speed"] == cyc["forecast_speed"].max()


def test_timing_repeats_leave_every_metric_unchanged(cache_dir):
    """Stochastic methods draw from generators: repeats restore them, so the metrics are bit-identical."""
    plain = {c.method: run_cell(c, cache_dir=cache_dir, raise_errors=True) for c in _cells()}
    again = {c.method: run_cell(c, cache_dir=cache_dir, raise_errors=True) for c in _cells(timing_repeats=2)}
    for m in METHODS:
        a, b = plain[m], again[m]
        assert b.row["timing_repeats"] == 2 and a.row["timing_repeats"] == 0
        for k in METRICS:
            assert a.row[k] == b.row[k] or (np.isnan(a.row[k]) and np.isnan(b.row[k])), (m, k)
        assert [r["rrmse_a"] for r in a.cycles] == [r["rrmse_a"] for r in b.cycles]
        assert a.row["p_method"] == b.row["p_method"] and a.row["cell_id"] != b.row["cell_id"]


def test_threads_are_pinned_per_cell_and_recorded(cache_dir):
    before = torch.get_num_threads()
    res = run_cell(_cells()[0], cache_dir=cache_dir, threads=1, jobs=3)
    assert res.row["threads"] == 1 and res.row["jobs"] == 3
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_sequential_pool_and_dask_give_identical_metrics(tmp_path, cache_dir):
    """The same grid (a PDE problem too, where reductions are large) through the three executors at one
    thread per cell: metrics equal to 1e-12, threads and jobs recorded."""
    pytest.importorskip("distributed")
    grid = {"seeds": 2, "n_ens": 6, "spinup": 1, "experiments": [
        {"problems": L96, "methods": METHODS},
        {"problems": {"shallow_water": {"n": 16, "n_cycles": 4, "n_traj": 5}}, "observers": {"coverage": 0.06},
         "methods": {"EnKF": {"inflation": 1.05, "loc_radius": 6.0}, "EnSF": {}}}]}
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump(grid))
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir)}
    runs = {"seq": [], "pool": ["--jobs", "2"], "dask": ["--executor", "dask", "--workers", "2"]}
    tables = {}
    for name, flags in runs.items():
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "bench", "run", str(cfg), "--out", str(out), "--no-report",
                            "--quiet", "--threads", "1", *flags], capture_output=True, text=True, env=env,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        tables[name] = pd.read_parquet(out / "results.parquet").set_index("cell_id").sort_index()
    ref = tables["seq"]
    assert (ref["status"] == "ok").all() and (ref["threads"] == 1).all() and (ref["jobs"] == 1).all()
    for name in ("pool", "dask"):
        t = tables[name]
        assert list(t.index) == list(ref.index) and (t["threads"] == 1).all() and (t["jobs"] == 2).all()
        for col in METRICS:
            diff = (t[col] - ref[col]).abs().max()
            assert not diff > 1e-12, (name, col, diff)


def test_show_and_report_state_the_timing_uncertainty(tmp_path, cache_dir):
    """`bench show` gives the online time as median (IQR) and says how many threads and jobs produced it."""
    from bench.cli import main
    from bench.report import build_report, format_summary, summary_table
    from bench.sweep import run_grid
    from bench.executors import make_executor

    out = tmp_path / "run"
    run_grid(_cells(), out, cache_dir=cache_dir, progress=False, executor=make_executor("local", threads=1))
    text = format_summary(summary_table(out))
    assert "timing: median over the cycles after the warm-up" in text and "1 thread per cell" in text
    res = pd.read_parquet(out / "results.parquet")
    med = res.loc[res["p_method_name"] == "EnSF", "time_online_med_s"].iloc[0]
    assert med > 0 and "(" in text
    page = build_report(out).parent
    assert any("1 thread per cell" in p.read_text() for p in page.glob("*.html"))
    assert main(["show", str(out)]) == 0
