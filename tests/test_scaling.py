"""Time per cycle against the state dimension: the slope fit, the slope table, its figure, and the preset at toy
size through the real CLI."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import plots
from bench.config import expand, load_preset
from bench.scaling import fit_slope, scaling_points, scaling_table, slope_text, t975

DIMS = [40, 400, 4000, 40000, 100000]


def synthetic(exponents: dict[str, float], dims=DIMS, n_cycles: int = 30, noise: float = 0.05, seed: int = 0):
    """Results and cycles tables of cells whose per-cycle online time is ``1e-6 d^a`` times log-normal noise."""
    rng = np.random.default_rng(seed)
    res, cyc = [], []
    for method, a in exponents.items():
        for d in dims:
            cid = f"{method}-{d}"
            t = 1e-6 * d ** a * np.exp(noise * rng.standard_normal(n_cycles))
            res.append({"cell_id": cid, "status": "ok", "p_problem": f"lorenz96[dim={d}]", "p_problem_name": "lorenz96",
                        "p_method": method, "p_n_ens": 20, "p_coverage": 1.0, "p_noise": 1.0, "p_device": "cpu",
                        "state_dim": d, "time_online_med_s": float(np.median(t[1:]))})
            for c in range(1, n_cycles + 1):
                cyc.append({"cell_id": cid, "cycle": c, "warmup": c == 1, "t_online": 10 * t[0] if c == 1 else t[c - 1],
                            "t_online_cpu": 0.9 * t[c - 1]})
    return pd.DataFrame(res), pd.DataFrame(cyc)


@pytest.mark.parametrize("a", [0.0, 1.0, 1.37, 2.0])
def test_fit_recovers_a_known_exponent(a):
    rng = np.random.default_rng(1)
    samples = [3e-5 * d ** a * np.exp(0.1 * rng.standard_normal(25)) for d in DIMS]
    f = fit_slope(DIMS, samples)
    assert abs(f.slope - a) < 0.03
    assert f.fit_lo < a < f.fit_hi and f.boot_lo < a < f.boot_hi
    assert f.n_points == len(DIMS)
    assert abs(10 ** f.intercept - 3e-5) / 3e-5 < 0.2


def test_fit_without_noise_is_exact_and_its_intervals_collapse():
    f = fit_slope(DIMS, [[2e-3 * d ** 1.5] * 4 for d in DIMS])
    assert f.slope == pytest.approx(1.5, abs=1e-12)
    assert f.fit_hi - f.fit_lo < 1e-9 and f.boot_hi - f.boot_lo < 1e-9


def test_fit_intervals_widen_with_curvature_and_with_timing_noise():
    bent = fit_slope(DIMS, [[1e-3 + 1e-7 * d] * 5 for d in DIMS])  # overhead, then linear: not one power law
    assert bent.fit_hi - bent.fit_lo > 0.2 and bent.boot_hi - bent.boot_lo < 1e-9
    rng = np.random.default_rng(2)
    noisy = fit_slope(DIMS[:2], [d * np.exp(0.5 * rng.standard_normal(8)) for d in DIMS[:2]])
    assert np.isnan(noisy.fit_lo)  # two points: no scatter about the line to judge
    assert noisy.boot_hi - noisy.boot_lo > 0.1


def test_fit_needs_two_distinct_dimensions():
    assert np.isnan(fit_slope([40], [[1.0, 2.0]]).slope)
    assert np.isnan(fit_slope([40, 40], [[1.0], [2.0]]).slope)
    assert np.isnan(fit_slope([40, 400], [[0.0], [np.nan]]).slope)  # nothing positive to take the log of


def test_t_quantiles():
    assert t975(1) == pytest.approx(12.706) and t975(3) == pytest.approx(3.182)
    assert 1.96 < t975(100) < 2.0 and np.isnan(t975(0))


def test_slope_table_per_method_from_the_per_cycle_samples():
    res, cyc = synthetic({"FreeRun": 1.0, "EnSF": 1.2, "EnKF[loc_radius=6]": 2.0})
    table = scaling_table(res, cyc).set_index("method")
    assert table.loc["EnSF", "slope"] == pytest.approx(1.2, abs=0.03)
    assert table.loc["EnKF[loc_radius=6]", "slope"] == pytest.approx(2.0, abs=0.03)
    assert table.loc["FreeRun", "cpu_slope"] == pytest.approx(1.0, abs=0.03)
    assert table.loc["FreeRun", "tail_slope"] == pytest.approx(1.0, abs=0.05)
    assert (table["n_points"] == len(DIMS)).all() and (table["dims"] == "40-1e5").all()
    # the warm-up cycle (10x slower) is left out of the points
    pts = scaling_points(res, cyc)
    assert pts["samples"].map(len).eq(29).all()
    assert slope_text(table.loc["EnSF"]).startswith("1.2")


def test_nothing_to_fit_without_a_dimension_sweep():
    res, cyc = synthetic({"EnSF": 1.0}, dims=[40])
    assert scaling_table(res, cyc).empty
    assert scaling_table(res.drop(columns="state_dim"), cyc).empty


def test_scaling_figure_renders_without_warnings(tmp_path):
    res, cyc = synthetic({"FreeRun": 1.0, "EnSF": 1.2})
    table = scaling_table(res, cyc)
    pts = {b: scaling_points(res, cyc, b) for b in ("wall", "cpu")}
    palette = plots.method_palette(["FreeRun", "EnSF"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = plots.render(plots.scaling_figure, pts, table, tmp_path, palette, "l96", "lorenz96")
    assert [f.file for f in figs] == ["l96_scaling.png"]
    assert (tmp_path / "l96_scaling.png").stat().st_size > 10_000


def toy_scaling_config() -> dict:
    """The scaling preset at toy size: its methods as they are, two small dimensions per problem, few cycles."""
    cfg = copy.deepcopy(load_preset("scaling"))
    l96 = next(e for e in cfg["experiments"] if "lorenz96" in e["problems"])
    pdes = next(e for e in cfg["experiments"] if "shallow_water" in e["problems"])
    cfg["experiments"] = [l96, pdes]
    l96["problems"]["lorenz96"].update(dim=[40, 80], n_cycles=3, spinup_time=1.0)
    pdes["problems"] = {"shallow_water": {**pdes["problems"]["shallow_water"], "n": [16, 32], "n_cycles": 3}}
    pdes["observers"]["coverage"] = 0.06
    return cfg


def test_the_preset_sweeps_every_method_over_the_promised_dimensions():
    cells = expand(load_preset("scaling")).cells
    methods = {c.problem: set() for c in cells}
    for c in cells:
        methods[c.problem].add(c.method)
    assert methods["lorenz96"] == {"FreeRun", "EnKF", "EnSF", "EnFF"}
    pde = {"FreeRun", "EnKF", "EnSF", "EnFF", "LD-EnSF", "Latent-EnSF"}
    assert methods["shallow_water"] == pde and methods["kolmogorov"] == pde
    dims = {(c.problem, c.pdict.get("dim", c.pdict.get("n"))) for c in cells}
    assert {d for p, d in dims if p == "lorenz96"} >= {40, 100000}
    assert {d for p, d in dims if p != "lorenz96"} == {32, 64, 128, 256}


def test_toy_size_preset_runs_and_prints_its_slopes(tmp_path, cache_dir):
    grid = tmp_path / "toy.yaml"
    grid.write_text(yaml.safe_dump(toy_scaling_config()))
    out = tmp_path / "run"
    env = {"ASSIMBENCH_CACHE": str(cache_dir), "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "bench", "run", str(grid), "--out", str(out), "--threads", "1", "-q"],
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert (df.status == "ok").all(), df[df.status != "ok"][["p_method", "error"]]
    assert set(df.state_dim) == {40, 80, 3 * 16 ** 2, 3 * 32 ** 2}
    assert "time per cycle against the state dimension" in r.stdout
    for m in ("FreeRun", "EnKF", "EnSF", "EnFF", "LD-EnSF", "Latent-EnSF"):
        assert m in r.stdout
    table = scaling_table(df, pd.read_parquet(out / "cycles.parquet"))
    assert len(table) == 4 + 6 and table["slope"].notna().all()
    report = (out / "report" / "index.html").read_text()
    assert "Scaling with the state dimension" in report
    assert {"scaling-lorenz96_scaling.png", "scaling-shallow-water_scaling.png"} <= {
        p.name for p in (out / "report" / "img").iterdir()}
    assert "## Scaling with the state dimension" in (out / "report" / "summary.md").read_text()
