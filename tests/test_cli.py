"""The real CLI end to end, in subprocesses: smoke run, resume, bad inputs (exit 2, no traceback), show."""
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

REQUIRED = {"rmse_f", "rmse_a", "rrmse_a", "rrmse_member_a", "spread_a", "crps_a", "param_rmse_a", "time_fit_s",
            "time_forecast_s", "time_analysis_s", "time_reconstruct_s", "time_online_s", "time_per_cycle_s",
            "peak_mem_mb", "status", "error", "p_problem", "p_method", "p_n_ens", "p_coverage", "p_noise", "p_seed",
            "p_device", "git_sha", "torch_version", "device_name", "dtype", "threads", "host", "date"}

TINY = """
n_ens: [6]
seeds: 2
spinup: 1
problems:
  lorenz96:
    {dim: 12, n_cycles: 6, n_traj: 5, spinup_time: 2.0,
     observer: {coverage: [1.0, 0.5], noise: 1.0, noise_type: absolute}}
methods:
  EnKF: {inflation: [1.0, 1.05]}
  FreeRun: {}
"""


def run(cmd, env_cache, **kw):
    env = {**os.environ, "ASSIMBENCH_CACHE": str(env_cache)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def test_smoke_preset_end_to_end(bench_cmd, tmp_path, cache_dir):
    out = tmp_path / "smoke"
    r = run(bench_cmd + ["run", "--preset", "smoke", "--out", str(out), "--no-report", "--quiet"], cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert REQUIRED <= set(df.columns), sorted(REQUIRED - set(df.columns))
    assert (df.status == "ok").all(), df[df.status != "ok"][["p_method", "error"]]
    assert not df.duplicated([c for c in df.columns if c.startswith("p_")]).any()
    cyc = pd.read_parquet(out / "cycles.parquet")
    assert set(cyc.cell_id) == set(df.cell_id)
    # the assimilating methods beat the free run on Lorenz-96 with full observations
    l96 = df[df.p_problem_name == "lorenz96"]
    enkf = l96[(l96.p_method_name == "EnKF") & (l96.p_coverage == 1.0)].rmse_a.min()
    free = l96[l96.p_method_name == "FreeRun"].rmse_a.mean()
    assert enkf < 0.5 * free


def test_identical_data_for_every_method(bench_cmd, tmp_path, tiny_yaml, cache_dir):
    """Seeds derive from (problem, observer, seed): FreeRun's forecast errors do not depend on the method grid."""
    out = tmp_path / "o"
    r = run(bench_cmd + ["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"], cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    cyc = pd.read_parquet(out / "cycles.parquet")
    first = cyc[cyc.cycle == 1]
    # at cycle 1 every method's forecast is the same prior ensemble pushed once through the model
    spread = first.groupby(["p_seed", "p_coverage"]).rmse_f.agg(lambda s: s.max() - s.min())
    assert (spread < 1e-9).all()


def test_resume_after_kill_runs_every_cell_once(bench_cmd, tmp_path, tiny_yaml, cache_dir):
    out = tmp_path / "r"
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir)}
    ref = run(bench_cmd + ["run", str(tiny_yaml), "--out", str(tmp_path / "ref"), "--no-report", "--quiet"], cache_dir)
    assert ref.returncode == 0, ref.stderr[-1500:]
    p = subprocess.Popen(bench_cmd + ["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "cells").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(list((out / "cells").glob("*.json")))
    r = run(bench_cmd + ["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"], cache_dir)
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"{n_before} already done" in r.stderr or n_before == 0
    a = pd.read_parquet(out / "results.parquet")
    b = pd.read_parquet(tmp_path / "ref" / "results.parquet")
    assert len(a) == len(b) == 12
    assert not a.cell_id.duplicated().any()
    m = a.merge(b, on="cell_id", suffixes=("", "_ref"))
    assert (m.rmse_a - m.rmse_a_ref).abs().max() < 1e-12  # deterministic: identical metrics after a resume


def test_rerun_is_a_no_op(bench_cmd, tmp_path, tiny_yaml, cache_dir):
    out = tmp_path / "n"
    cmd = bench_cmd + ["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"]
    assert run(cmd, cache_dir).returncode == 0
    r = run(bench_cmd + ["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"], cache_dir)
    assert "12 already done" in r.stderr
    assert len(pd.read_parquet(out / "results.parquet")) == 12


BAD = {
    "unknown preset": (["--preset", "nope"], "unknown preset 'nope'.*smoke"),
    "unknown problem": ("problems: {lorenz69: {}}\nmethods: {EnKF: {}}\n", "unknown problem 'lorenz69'.*lorenz96"),
    "unknown method": ("problems: {lorenz96: {}}\nmethods: {EnFK: {}}\n", "unknown method 'EnFK'.*EnKF"),
    "misspelled key": ("problems: {lorenz96: {}}\nmethods: {EnKF: {inflaton: [1.02]}}\n", "inflaton.*inflation"),
    "wrong type": ("problems: {lorenz96: {dim: forty}}\nmethods: {EnKF: {}}\n", "dim='forty' should be an integer"),
    "impossible value": ("problems: {lorenz96: {dim: 2}}\nmethods: {EnKF: {}}\n", "dim=2 must be >= 4"),
    "impossible coverage": ("problems: {lorenz96: {}}\nobservers: {coverage: 0.001}\nmethods: {EnKF: {}}\n",
                            "rounds to no observed point"),
    "top-level typo": ("problem: {lorenz96: {}}\nmethods: {EnKF: {}}\n", "unknown key 'problem'"),
    "unreadable yaml": ("problems: [unclosed\n", "not valid YAML"),
    "not a mapping": ("- a\n- b\n", "must be a YAML mapping"),
    "bad n_ens": ("problems: {lorenz96: {}}\nmethods: {EnKF: {}}\nn_ens: [0]\n", "n_ens"),
    "missing file": (["/nonexistent/x.yaml"], "does not exist"),
    "bad device": (["--preset", "smoke", "--device", "tpu"], "device 'tpu' is not supported"),
    "bad jobs": (["--preset", "smoke", "--jobs", "0"], "--jobs 0"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_exits_2_with_a_message(case, bench_cmd, tmp_path, cache_dir):
    arg, pattern = BAD[case]
    if isinstance(arg, str):
        p = tmp_path / "bad.yaml"
        p.write_text(arg)
        arg = [str(p)]
    r = run(bench_cmd + ["run", *arg, "--out", str(tmp_path / "o"), "--quiet"], cache_dir)
    assert r.returncode == 2, (r.returncode, r.stderr[-800:])
    assert "Traceback" not in r.stderr
    import re
    assert re.search(pattern, r.stderr, re.S), r.stderr


def test_cuda_without_gpu_is_a_clear_error(bench_cmd, tmp_path, cache_dir):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run(bench_cmd + ["run", "--preset", "smoke", "--device", "cuda", "--out", str(tmp_path / "o")], cache_dir)
    assert r.returncode == 2 and "CUDA is not available" in r.stderr and "Traceback" not in r.stderr


def test_show_and_list(bench_cmd, tmp_path, tiny_yaml, cache_dir):
    out = tmp_path / "s"
    cmd = bench_cmd + ["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"]
    assert run(cmd, cache_dir).returncode == 0
    r = run(bench_cmd + ["show", str(out)], cache_dir)
    assert r.returncode == 0 and "EnKF" in r.stdout and "FreeRun" in r.stdout
    r = run(bench_cmd + ["show", str(tmp_path)], cache_dir)
    assert r.returncode == 2 and ("not a results folder" in r.stderr or "not a run directory" in r.stderr)
    r = run(bench_cmd + ["list"], cache_dir)
    assert r.returncode == 0
    for word in ("lorenz96", "EnKF", "FreeRun", "smoke", "default", "inflation="):
        assert word in r.stdout
