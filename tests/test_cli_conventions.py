"""CLI conventions as a user meets them: --version, help with defaults, `bench` alone, -q / -v, progress bars
only on a terminal, `bench show` at the terminal width, and the typed results schema of a real run."""
from __future__ import annotations

import os
import re
import subprocess

import pandas as pd
import pytest

from bench.cli import _parser

TINY = """
n_ens: [6]
seeds: 2
spinup: 1
problems:
  lorenz96: {dim: 12, n_cycles: 6, n_traj: 5, observer: {coverage: [1.0, 0.5], noise: 1.0, noise_type: absolute}}
methods:
  EnKF: {"variant, inflation, loc_radius": [[sqrt, 1.04, 0.0], [stochastic, 1.06, 4.0]]}
  FreeRun: {}
"""


def run(cmd, cache, env=None, **kw):
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    import sys
    root = tmp_path_factory.mktemp("conv")
    (root / "tiny.yaml").write_text(TINY)
    r = run([sys.executable, "-m", "bench", "run", str(root / "tiny.yaml"), "--out", str(root / "run"),
             "--no-report"], cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "run", r


def test_version(bench_cmd, cache_dir):
    from bench import __version__
    r = run(bench_cmd + ["--version"], cache_dir)
    assert r.returncode == 0 and __version__ in r.stdout


def test_bench_alone_prints_help(bench_cmd, cache_dir):
    r = run(bench_cmd, cache_dir)
    assert r.returncode == 0, r.stderr
    for word in ("usage: bench", "run", "show", "report", "compare", "--version"):
        assert word in r.stdout
    assert "required" not in r.stderr


def _actions(parser):
    import argparse
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from ((f"{name} {b.dest}", b, sub) for b in sub._actions)
        else:
            yield a.dest, a, parser


def test_every_argument_has_help_and_shows_its_default():
    import argparse
    for name, action, parser in _actions(_parser()):
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"{name} has no help text"
        text = parser._get_formatter()._get_help_string(action)
        if "%(default)" in text:
            text = text % {"default": action.default}
        takes_value = action.nargs != 0 and not isinstance(action, (argparse._StoreTrueAction, argparse._CountAction))
        takes_value = takes_value and (bool(action.option_strings) or action.nargs == "?")  # not a required DIR
        if takes_value:  # the default is shown as a value, or said in words (what happens without the option)
            assert "default" in text, f"{name}: help does not give the default: {text!r}"
            help_string = parser._get_formatter()._get_help_string(action)
            if action.default not in (None, [], ()) and "%(default)" in help_string:
                assert str(action.default) in text


def test_progress_bars_only_on_a_terminal(tiny_run):
    """A run whose stderr is a pipe (a log file, CI) gets status lines but no progress bar."""
    _, r = tiny_run
    assert "bench run: 12 cells" in r.stderr and "cells: 12 ok" in r.stderr
    assert "cell/s" not in r.stderr and "\r" not in r.stderr and "%|" not in r.stderr


def test_quiet_prints_results_only(tiny_run, bench_cmd, cache_dir, tmp_path):
    run_dir, _ = tiny_run
    import shutil
    out = tmp_path / "q"
    shutil.copytree(run_dir, out)
    r = run(bench_cmd + ["run", str(out / "grid.yaml"), "--out", str(out), "--no-report", "-q"], cache_dir)
    assert r.returncode == 0, r.stderr
    assert "bench run:" not in r.stderr
    assert "12 already done" in r.stderr and "executor: " in r.stderr  # the outcome stays
    r = run(bench_cmd + ["show", str(out), "-q", "-v"], cache_dir)
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_show_fits_columns(tiny_run, bench_cmd, cache_dir):
    run_dir, _ = tiny_run
    for width in (120, 80):
        r = run(bench_cmd + ["show", str(run_dir)], cache_dir, env={"COLUMNS": str(width)})
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert max(len(ln) for ln in lines) <= width, max(lines, key=len)
        rows = [ln for ln in lines if re.match(r"^[* ] +(1|0\.5) +EnKF", ln)]
        assert len(rows) == 4 and sum(ln.startswith("*") for ln in rows) == 2
        # the method column starts at the same offset in every row, marked or not
        assert len({ln.index("EnKF") for ln in rows}) == 1
        assert "rRMSE_a [rel.]" in r.stdout and "loc_radius" not in "".join(rows)  # short labels
        assert re.search(r"EnKF\[inflation=1.06\] =\s+EnKF\[inflation=1.06,loc_radius=4,variant=stochastic\]", r.stdout)


def test_results_schema_types(tiny_run):
    """Integers stay integers and booleans booleans, also where only some cells have the parameter."""
    run_dir, _ = tiny_run
    df = pd.read_parquet(run_dir / "results.parquet")
    assert str(df["p_n_ens"].dtype) == "int64" and str(df["p_seed"].dtype) == "int64"
    assert str(df["p_problem_dim"].dtype) == "int64" and str(df["threads"].dtype) == "int64"
    assert str(df["p_method_loc_radius"].dtype) == "float64"
    assert str(df["p_method_rotate"].dtype) in ("boolean", "bool")  # EnKF's flag; missing on FreeRun rows
    assert df.loc[df["p_method_name"] == "FreeRun", "p_method_rotate"].isna().all()
    assert str(df["git_dirty"].dtype) in ("bool", "boolean") and df["cpu_model"].astype(str).str.len().min() > 0
    for c in ("rrmse_a", "param_rmse_a", "rmse_between", "time_online_s"):
        assert str(df[c].dtype) == "float64", (c, df[c].dtype)
    cyc = pd.read_parquet(run_dir / "cycles.parquet")
    assert str(cyc["cycle"].dtype) == "int64" and str(cyc["spinup"].dtype) == "bool"
