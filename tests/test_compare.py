"""`bench compare` on runs whose timings carry noise: what it flags, what it leaves alone, and its exit code."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from assimbench.errors import ConfigError
from bench.cli import main
from bench.compare import compare, format_compare, mann_whitney_p

METHODS = {"FreeRun": (0.9, 2e-4), "EnKF[inflation=1.05]": (0.2, 0.02), "EnSF": (0.25, 0.05)}  # rRMSE, phase s
N_CYCLES = 30


def make_run(root: Path, seed: int, *, slow: dict[str, float] | None = None, acc: dict[str, float] | None = None,
             inflation: float = 1.05, noise: float = 0.3, seeds: int = 3) -> Path:
    """A run folder whose per-cycle timings are lognormal around a fixed median (relative noise ``noise``)."""
    rng = np.random.default_rng(seed)
    slow, acc = slow or {}, acc or {}
    rows, cyc = [], []
    for method, (r0, t0) in METHODS.items():
        label = method.replace("1.05", f"{inflation:g}")
        for s in range(seeds):
            cid = f"{label}-{s}"
            r = r0 * (1 + 0.05 * s) * acc.get(method, 1.0)
            row = {"cell_id": cid, "p_problem": "lorenz96", "p_method": label, "p_method_name": method.split("[")[0],
                   "p_problem_name": "lorenz96", "p_n_ens": 20, "p_coverage": 1.0, "p_noise": 1.0, "p_seed": s,
                   "p_device": "cpu", "p_method_inflation": inflation if "EnKF" in method else np.nan,
                   "rrmse_a": r, "status": "ok", "git_sha": f"sha{seed}"}
            samples = {}
            for ph, share in (("t_forecast", 0.5), ("t_analysis", 0.4), ("t_reconstruct", 0.1)):
                samples[ph] = t0 * share * slow.get(method, 1.0) * rng.lognormal(0.0, noise, N_CYCLES)
            samples["t_cycle"] = sum(samples.values())
            for c in range(N_CYCLES):
                cyc.append({"cell_id": cid, "cycle": c + 1, **{k: float(v[c]) for k, v in samples.items()},
                            **{f"{k}_cpu": float(v[c]) for k, v in samples.items()}})
            row.update(time_per_cycle_s=float(samples["t_cycle"][1:].mean()),
                       time_online_s=float(samples["t_cycle"][1:].mean()))
            rows.append(row)
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "results.parquet", index=False)
    pd.DataFrame(cyc).to_parquet(root / "cycles.parquet", index=False)
    return root


def test_mann_whitney_matches_the_textbook_value():
    # U = 0 for 3 vs 3: z = (4.5 - 0.5) / sqrt(9 * 7 / 12), two-sided p = erfc(z / sqrt 2)
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(math.erfc(4 / math.sqrt(5.25) / math.sqrt(2)))
    assert mann_whitney_p([1, 1, 1], [1, 1, 1]) == 1.0
    assert mann_whitney_p(np.arange(20), np.arange(20) + 100) < 1e-6


def test_same_code_twice_flags_nothing_despite_noise(tmp_path):
    """Two runs with the same medians and 30 % per-cycle noise: nothing flagged, exit 0 with the flag."""
    a, b = make_run(tmp_path / "a", 0), make_run(tmp_path / "b", 1)
    df = compare(a, b)
    assert (df["match"] == "both").all() and not df["regression"].any()
    assert (df["time_basis"] == "cpu").all()
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == 0


def test_real_slowdown_is_flagged_and_fails(tmp_path, capsys):
    a, b = make_run(tmp_path / "a", 0), make_run(tmp_path / "b", 1, slow={"EnSF": 2.0})
    df = compare(a, b)
    ensf = df["p_method"] == "EnSF"
    assert df.loc[ensf, "slower"].all() and not df.loc[~ensf, "regression"].any()
    assert df.loc[ensf, "cycle_ratio"].between(1.4, 2.8).all()
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    assert "!!" in capsys.readouterr().out
    assert main(["compare", str(a), str(b)]) == 0  # without the flag: a report, exit 0


def test_phases_below_the_floor_are_not_judged(tmp_path):
    """FreeRun's 0.1 ms phases tripled: not judged under the 5 ms floor, judged with a 0.01 ms floor."""
    a, b = make_run(tmp_path / "a", 0), make_run(tmp_path / "b", 1, slow={"FreeRun": 3.0})
    free = lambda df: df["p_method"] == "FreeRun"  # noqa: E731
    df = compare(a, b)
    assert not df["regression"].any() and not df.loc[free(df), "forecast_judged"].any()
    df = compare(a, b, floor_s=1e-5)
    assert df.loc[free(df), "slower"].all()


def test_effect_below_the_minimum_is_not_flagged(tmp_path):
    """A 15 % slowdown is statistically clear with 30 low-noise cycles but smaller than the default minimum effect."""
    a = make_run(tmp_path / "a", 0, noise=0.02)
    b = make_run(tmp_path / "b", 1, noise=0.02, slow={"EnSF": 1.15})
    df = compare(a, b)
    ensf = df["p_method"] == "EnSF"
    assert (df.loc[ensf, "analysis_p"] < 1e-6).all() and not df["regression"].any()
    assert compare(a, b, min_effect=0.1).loc[ensf, "slower"].all()


def test_accuracy_against_the_seed_spread(tmp_path):
    """Seeds spread rRMSE by 5 %: a 12 % rise is within two standard errors with noisy seeds... not here."""
    a = make_run(tmp_path / "a", 0)
    worse = make_run(tmp_path / "w", 1, acc={"EnKF[inflation=1.05]": 1.3})
    df = compare(a, worse)
    enkf = df["p_method"].str.startswith("EnKF")
    assert df.loc[enkf, "less_accurate"].all() and not df.loc[~enkf, "regression"].any()
    # a rise beyond the relative threshold but inside the seed spread is not a regression
    res = pd.read_parquet(a / "results.parquet")
    spread = res.copy()
    spread.loc[spread["p_seed"] == 2, "rrmse_a"] *= 2.0  # large seed-to-seed variation
    res_b = spread.copy()
    res_b["rrmse_a"] *= 1.15
    df = compare(spread, res_b, cycles_a=pd.read_parquet(a / "cycles.parquet"),
                 cycles_b=pd.read_parquet(a / "cycles.parquet"))
    assert not df["less_accurate"].any() and (df["rrmse_a_rel"] > 0.1).all()
    one_seed = compare(spread[spread["p_seed"] == 0], res_b[res_b["p_seed"] == 0])
    assert one_seed["less_accurate"].all()  # one seed: the relative threshold alone


def test_pair_matches_cells_that_differ_in_one_parameter(tmp_path):
    a, b = make_run(tmp_path / "a", 0), make_run(tmp_path / "b", 1, inflation=1.1)
    plain = compare(a, b)
    assert set(plain["match"]) == {"both", "only_a", "only_b"}
    paired = compare(a, b, pair="inflation")
    assert (paired["match"] == "both").all() and len(paired) == len(METHODS) * 3
    assert "p_method" in paired.attrs["ignored"] and "p_method_inflation" in paired.attrs["ignored"]
    assert "not matched on: p_method_inflation, p_method" in format_compare(paired)
    # inside one run folder: pick a value for each side
    both = tmp_path / "both"
    both.mkdir()
    for f in ("results.parquet", "cycles.parquet"):
        pd.concat([pd.read_parquet(a / f), pd.read_parquet(b / f).assign(
            cell_id=lambda d: "b-" + d["cell_id"])]).to_parquet(both / f, index=False)
    inside = compare(both, both, pair="inflation=1.05,1.1")
    assert (inside["match"] == "both").all() and len(inside) == 3
    assert set(inside["p_method_inflation_A"]) == {1.05} and set(inside["p_method_inflation_B"]) == {1.1}


@pytest.mark.parametrize("kwargs, msg", [
    ({"pair": "bogus"}, "no such parameter"), ({"pair": "inflation=1.05"}, "two values"),
    ({"pair": "inflation=1.05,1.3"}, "no cell with"), ({"alpha": 1.5}, "alpha"),
    ({"min_effect": -1}, "min_effect"), ({"time_basis": "gpu"}, "time basis"),
])
def test_bad_settings_are_config_errors(tmp_path, kwargs, msg):
    a = make_run(tmp_path / "a", 0)
    with pytest.raises(ConfigError, match=msg):
        compare(a, a, **kwargs)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    a = make_run(tmp_path / "a", 0)
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert main(["compare", str(a), str(a), "--pair", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "valid:" in err and "inflation" in err


@pytest.mark.parametrize("width", [80, 120])
def test_cli_report_fits_the_terminal_width(tmp_path, width):
    """`bench compare` wraps long names inside their cells instead of widening the table past $COLUMNS."""
    a, b = make_run(tmp_path / "a", 0), make_run(tmp_path / "b", 1, slow={"EnSF": 2.0})
    env = {**os.environ, "COLUMNS": str(width), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "bench", "compare", str(a), str(b), "--fail-on-regression"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the 2x slowdown is a regression
    lines = proc.stdout.splitlines()
    assert "matched cells" in lines[0] and any("!!" in ln for ln in lines)
    assert max(len(ln) for ln in lines) <= width, "\n".join(lines)


def test_one_slow_seed_is_interference_not_a_regression(tmp_path):
    """A stall that hits one truth of a setting is the machine; a code change slows every truth of it."""
    a, b = make_run(tmp_path / "a", 0), make_run(tmp_path / "b", 1)
    cyc = pd.read_parquet(b / "cycles.parquet")
    one = cyc["cell_id"] == "EnSF-1"
    cyc.loc[one, [c for c in cyc.columns if c.startswith("t_")]] *= 3.0
    cyc.to_parquet(b / "cycles.parquet", index=False)
    df = compare(a, b)
    cell = df["cell_id_A"] == "EnSF-1"
    assert df.loc[cell, "slow_phases"].str.contains("analysis").all()  # still listed as a candidate
    assert not df["slower"].any() and not df["regression"].any()
