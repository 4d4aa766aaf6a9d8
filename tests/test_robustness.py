"""Crash safety, numerical failure as data, and bad input (fuzzed configs, foreign results folders).

- a corrupt, partial or foreign-format cell file is detected and the cell recomputed (identical row);
- a writer killed mid-file leaves only a hidden tmp file, which the next run removes;
- a second `bench run` on a locked folder stops with exit 2 and a clear message;
- a filter that returns NaN/Inf or explodes is recorded as ``failed`` "diverged at cycle k", its earlier cycles kept;
- :func:`bench.config.expand` never raises anything but ConfigError on a mutated config (hypothesis);
- an older results folder gives exit 2 with `bench show` / `bench report` and is rebuilt by `bench run`.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar
from types import SimpleNamespace
from unittest import mock

import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import assimbench.registry
import methods
from bench import store
from bench.config import Cell, Grid, expand
from assimbench.errors import ConfigError
from bench.sweep import run_grid
from methods.base import EnsembleState, Method

TINY = {
    "n_ens": [6], "seeds": 2, "spinup": 1,
    "problems": {"lorenz96": {"dim": 12, "n_cycles": 6, "n_traj": 5, "spinup_time": 2.0,
                              "observer": {"coverage": [1.0, 0.5], "noise": 1.0, "noise_type": "absolute"}}},
    "methods": {"EnKF": {"inflation": [1.0, 1.05]}, "FreeRun": {}},
}
METRIC_COLS = ["rmse_f", "rmse_a", "rrmse_a", "spread_a", "crps_a"]


def _cli(args, cache_dir, **kw):
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture
def tiny_cells():
    return expand(copy.deepcopy(TINY)).cells


# ---------------------------------------------------------------------------------------------------- crash safety
def test_corrupt_partial_and_foreign_cell_files_are_rerun(tmp_path, tiny_cells, cache_dir):
    out = tmp_path / "r"
    counts = run_grid(tiny_cells, out, cache_dir=cache_dir, progress=False)
    assert counts["ok"] == 12
    ref = pd.read_parquet(out / "results.parquet").set_index("cell_id")
    files = sorted((out / "cells").glob("*.json"))
    corrupt, partial, foreign = files[0], files[1], files[2]
    # a flipped digit inside the payload: valid JSON, wrong checksum
    outer = json.loads(corrupt.read_text())
    outer["body"] = outer["body"].replace('"rmse_a": ', '"rmse_a": 1', 1)
    corrupt.write_text(json.dumps(outer))
    assert store.read_cell(corrupt) is None
    # a writer killed half-way (as a non-atomic writer would leave it)
    partial.write_bytes(partial.read_bytes()[: len(partial.read_bytes()) // 2])
    # a cell file from another format version
    outer = json.loads(foreign.read_text())
    outer["format"] = store.FORMAT_VERSION + 1
    foreign.write_text(json.dumps(outer))
    # a hidden tmp file of a worker that died mid-write
    stale = out / "cells" / f".{files[3].name}.tmp99999"
    stale.write_text('{"format": 1, "chec')
    counts = run_grid(tiny_cells, out, cache_dir=cache_dir, progress=False)
    assert counts["cached"] == 9 and counts["ok"] == 3
    assert not stale.exists()
    new = pd.read_parquet(out / "results.parquet").set_index("cell_id")
    assert len(new) == 12 and not new.index.duplicated().any()
    rerun = [f.stem for f in (corrupt, partial, foreign)]
    for cid in rerun:  # recomputed, not read: same metrics, fresh timings
        for col in METRIC_COLS:
            assert new.loc[cid, col] == pytest.approx(ref.loc[cid, col], abs=1e-12, nan_ok=True)
    for f in (corrupt, partial, foreign):
        assert store.read_cell(f) is not None


def test_worker_killed_before_rename_leaves_no_cell_file(tmp_path, tiny_cells, cache_dir, monkeypatch):
    """The atomic write: a process dying between writing the tmp file and the rename publishes nothing."""
    out = tmp_path / "k"
    cell = tiny_cells[0]

    def dying_replace(src, dst):
        raise SystemExit("worker killed")  # stands for SIGKILL between write and rename

    monkeypatch.setattr(store.os, "replace", dying_replace)
    with pytest.raises(SystemExit):
        from bench.executors import run_and_write
        run_and_write(cell, out, cache_dir, False)
    monkeypatch.undo()
    assert store.finished_cells(out) == {}
    assert list((out / "cells").glob(".*.tmp*"))  # only the hidden tmp file is left
    counts = run_grid([cell], out, cache_dir=cache_dir, progress=False)
    assert counts == {"total": 1, "cached": 0, "ok": 1, "failed": 0, "skipped": 0}
    assert not list((out / "cells").glob(".*.tmp*"))


def test_second_run_on_a_locked_folder_exits_2(tmp_path, tiny_yaml, cache_dir):
    out = tmp_path / "l"
    with store.RunLock(out):
        r = _cli(["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"], cache_dir)
    assert r.returncode == 2, r.stderr[-1000:]
    assert "another `bench run`" in r.stderr and f"pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
    assert not list((out / "cells").glob("*.json"))
    with store.RunLock(out):  # released by the failed run too
        pass


def test_two_concurrent_runs_never_both_compute(tmp_path, tiny_yaml, cache_dir):
    out = tmp_path / "c"
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir)}
    cmd = [sys.executable, "-m", "bench", "run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    res = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(rc for rc, _ in res)
    # either the runs overlapped (one refused with exit 2) or one finished before the other took the lock
    assert codes in ([0, 2], [0, 0]), res
    if codes == [0, 2]:
        assert any("another `bench run`" in err for rc, err in res if rc == 2)
    else:
        assert any("12 already done" in err for _, err in res)
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 12 and not df.cell_id.duplicated().any()


# ------------------------------------------------------------------------------------------- numerical failure
@dataclass
class NaNAtCycle(Method):
    """Test plugin: the free run, except that the analysis at cycle ``at`` returns NaN (or a huge value)."""

    name: ClassVar[str] = "TestNaNAtCycle"
    at: int = 3
    blow_up: bool = False

    def init(self, x0, params, generator):
        self.t = 0
        return EnsembleState(x0, params)

    def analysis(self, state, y):
        self.t += 1
        if self.t == self.at:
            x = state.x * 1e12 if self.blow_up else torch.full_like(state.x, float("nan"))
            return EnsembleState(x, state.params)
        return state


methods.register(NaNAtCycle)


@pytest.mark.parametrize("blow_up", [False, True], ids=["nan", "out-of-range"])
def test_divergence_is_a_failed_row_with_the_earlier_cycles(tmp_path, cache_dir, blow_up):
    cfg = copy.deepcopy(TINY)
    cfg["seeds"] = 1
    cfg["methods"] = {"TestNaNAtCycle": {"blow_up": blow_up}, "FreeRun": {}}
    cells = expand(cfg).cells
    out = tmp_path / "d"
    counts = run_grid(cells, out, cache_dir=cache_dir, progress=False)
    assert counts["failed"] == 2 and counts["ok"] == 2  # two coverages x (diverging method, FreeRun)
    df = pd.read_parquet(out / "results.parquet")
    bad = df[df.p_method_name == "TestNaNAtCycle"]
    assert (bad.status == "failed").all()
    word = "left the plausible range" if blow_up else "non-finite"
    assert bad.error.str.startswith("diverged at cycle 3").all() and bad.error.str.contains(word).all()
    assert (bad.n_cycles == 2).all() and bad.rmse_a.isna().all()  # no metric average from a diverged run
    cyc = pd.read_parquet(out / "cycles.parquet")
    kept = cyc[cyc.cell_id.isin(bad.cell_id)]
    assert sorted(kept.cycle.unique()) == [1, 2] and kept.rmse_a.notna().all()
    # the cycles before the divergence are those of the free run (same data, same start)
    free = cyc[cyc.cell_id.isin(df[df.p_method_name == "FreeRun"].cell_id) & (cyc.cycle <= 2)]
    a = kept.sort_values(["p_coverage", "cycle"]).rmse_a.to_numpy()
    b = free.sort_values(["p_coverage", "cycle"]).rmse_a.to_numpy()
    assert a == pytest.approx(b, abs=1e-12)
    assert (df[df.p_method_name == "FreeRun"].status == "ok").all()  # the sweep went on


def test_gpu_and_cpu_rows_of_a_cell_sit_side_by_side(tmp_path, cache_dir):
    """The same cell on cpu and cuda: distinct cell ids, distinct p_device, separate summary rows."""
    from bench.report import summary_table
    cfg = {**copy.deepcopy(TINY), "seeds": 1, "methods": {"FreeRun": {}}}
    cpu = expand(cfg).cells[0]
    gpu = Cell(**{**cpu.__dict__, "device": "cuda"})
    assert gpu.cell_id != cpu.cell_id and gpu.to_dict()["device"] == "cuda"
    out = tmp_path / "g"
    run_grid([cpu], out, cache_dir=cache_dir, progress=False)
    payload = store.read_cell(out / "cells" / f"{cpu.cell_id}.json")
    # a row as a GPU run writes it (no GPU needed to check the bookkeeping)
    payload["cell"]["device"] = "cuda"
    payload["row"].update(cell_id=gpu.cell_id, p_device="cuda", rmse_a=payload["row"]["rmse_a"] + 1e-3)
    store.write_cell(out, gpu.cell_id, payload)
    df, _ = store.consolidate(out)
    assert sorted(df.p_device) == ["cpu", "cuda"]
    tab = summary_table(out)
    assert len(tab) == 2 and sorted(tab["device"] if "device" in tab else tab["p_device"]) == ["cpu", "cuda"]


# ---------------------------------------------------------------------------------------------- config fuzzing
VOCAB = sorted({"name", "description", "plugins", "experiments", "problems", "observers", "methods", "n_ens",
                "seeds", "spinup", "device", "dtype", "lorenz96", "linear_gauss", "EnKF", "FreeRun", "observer",
                "coverage", "noise", "noise_type", "layout", "stride", "fields", "operator", "inflation", "variant",
                "loc_radius", "variant, inflation", "dim", "n_cycles", "n_traj", "spinup_time", "forcing", "dt",
                "steps_per_obs", "sqrt", "stochastic", "absolute", "additive", "float32", "float64", "cpu", "cuda",
                "cuda:0", "lattice", "random", ""})
SCALARS = (st.none() | st.booleans() | st.integers(-5, 200) | st.sampled_from([0, -1, 10**20, 2**63, -(2**63)])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6) | st.sampled_from(VOCAB))
KEYS = st.sampled_from(VOCAB) | st.text(max_size=6) | st.integers(-3, 3) | st.none() | st.booleans()
JUNK = st.recursive(SCALARS, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(KEYS, ch, max_size=3),
                    max_leaves=8)
BASES = [
    TINY,
    {"name": "x", "seeds": [0, 3], "spinup": 2, "device": "cpu", "dtype": "float64",
     "observers": {"coverage": [1.0, 0.5], "noise": 0.5, "noise_type": "absolute"},
     "experiments": [
         {"problems": {"lorenz96": {"dim": [8, 12], "n_cycles": 5}},
          "methods": {"EnKF": [{"variant": "sqrt"}, {"variant, inflation": [["stochastic", 1.02]]}]}},
         {"problems": {"linear_gauss": {}}, "methods": {"FreeRun": {}}, "n_ens": 4}]},
]


def _paths(obj, prefix=()):
    """Every (path to a container, key in it) of a nested dict/list config."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((prefix, k))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((prefix, i))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _at(obj, path):
    for k in path:
        obj = obj[k]
    return obj


@st.composite
def mutated_configs(draw):
    cfg = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(cfg)
        if not paths:
            break
        parent_path, key = draw(st.sampled_from(paths))
        parent = _at(cfg, parent_path)
        op = draw(st.sampled_from(["replace", "delete", "insert", "wrap", "rename"]))
        if op == "replace":
            parent[key] = draw(JUNK)
        elif op == "delete":
            del parent[key]
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "insert" and isinstance(parent, dict):
            parent[draw(KEYS)] = draw(JUNK)
        elif op == "insert":
            parent.insert(key, draw(JUNK))
        elif op == "rename" and isinstance(parent, dict):
            new = draw(KEYS)
            parent[new] = parent.pop(key)
    return cfg


_real_import = importlib.import_module


def _safe_import(name, package=None):
    """Plugins named by the fuzzer are never really imported (no side effects from arbitrary modules)."""
    if isinstance(name, str) and name and all(part.isidentifier() for part in name.split(".")):
        if name.split(".")[0] not in ("methods", "problems", "bench"):
            raise ModuleNotFoundError(f"No module named {name!r}")
    return _real_import(name, package)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cfg=mutated_configs())
def test_expand_raises_only_config_error_on_mutated_configs(cfg):
    with mock.patch.object(assimbench.registry, "importlib", SimpleNamespace(import_module=_safe_import)):
        try:
            grid = expand(cfg)
        except ConfigError as e:
            assert str(e)
            return
    assert isinstance(grid, Grid)
    for c in grid.cells:
        assert isinstance(c.cell_id, str) and c.n_ens >= 1 and c.seed >= 0


@pytest.mark.parametrize("base", range(len(BASES)))
def test_the_fuzzer_bases_are_valid(base):
    assert expand(copy.deepcopy(BASES[base])).cells


# --------------------------------------------------------------------------------------- older results folders
def test_older_results_folder_is_a_clear_error_and_is_rebuilt(tmp_path, tiny_yaml, cache_dir):
    out = tmp_path / "old"
    out.mkdir()
    pd.DataFrame({"method": ["EnKF"], "rmse": [0.3]}).to_parquet(out / "results.parquet")  # an old schema
    for cmd in ("show", "report"):
        r = _cli([cmd, str(out)], cache_dir)
        assert r.returncode == 2, (cmd, r.returncode, r.stderr[-1500:])
        assert "Traceback" not in r.stderr
        # `bench report` checks the schema first; `bench show` names the missing columns
        assert re.search(r"older or foreign version|lacks the p_problem / p_method columns", r.stderr), r.stderr
    (out / "cells").mkdir()
    (out / "cells" / "0123456789abcdef.json").write_text(json.dumps({"format": 0, "row": {"method": "EnKF"}}))
    r = _cli(["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"], cache_dir)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "0 already done" in r.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 12 and (df.status == "ok").all()
    assert not (out / "cells" / "0123456789abcdef.json").exists()
    assert _cli(["show", str(out)], cache_dir).returncode == 0
