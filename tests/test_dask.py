"""Scale-out on dask.distributed: same numbers as the sequential run, crash safety, GPU resources, clear errors.

The cluster tests start a real LocalCluster of 2 worker processes on 127.0.0.1 (skipped without dask).
"""
from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from bench import cli, store
from bench.config import expand
from assimbench.errors import ConfigError
from bench.executors import CONNECT_TIMEOUT_S, DaskExecutor, LocalPoolExecutor, SequentialExecutor, make_executor
from bench.sweep import run_grid

distributed = pytest.importorskip("distributed")

TINY = {
    "n_ens": [6], "seeds": 2, "spinup": 1,
    "problems": {"lorenz96": {"dim": 12, "n_cycles": 6, "n_traj": 5, "spinup_time": 2.0,
                              "observer": {"coverage": [1.0, 0.5], "noise": 1.0, "noise_type": "absolute"}}},
    "methods": {"EnKF": {"inflation": [1.0, 1.05]}, "FreeRun": {}},
}
METRICS = ["rmse_f", "rmse_a", "rrmse_f", "rrmse_a", "rrmse_member_a", "spread_a", "crps_a"]


def _env(cache_dir):
    return {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir)}


def _bench(args, cache_dir, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          env=_env(cache_dir), timeout=timeout)


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """The tiny grid run sequentially through the CLI (results and cycles)."""
    out = tmp_path_factory.mktemp("ref") / "seq"
    p = out.parent / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    r = _bench(["run", str(p), "--out", str(out), "--no-report", "--quiet"], cache_dir)
    assert r.returncode == 0, r.stderr[-1500:]
    return out


def _assert_same_metrics(out: Path, ref: Path) -> None:
    a = pd.read_parquet(out / "results.parquet")
    b = pd.read_parquet(ref / "results.parquet")
    assert len(a) == len(b) == 12 and not a.cell_id.duplicated().any()
    assert (a.status == "ok").all(), a[a.status != "ok"].error.tolist()
    m = a.merge(b, on="cell_id", suffixes=("", "_ref"))
    assert len(m) == 12
    for col in METRICS:
        assert (m[col] - m[col + "_ref"]).abs().max() < 1e-12, col
    ca = pd.read_parquet(out / "cycles.parquet").sort_values(["cell_id", "cycle"]).reset_index(drop=True)
    cb = pd.read_parquet(ref / "cycles.parquet").sort_values(["cell_id", "cycle"]).reset_index(drop=True)
    assert len(ca) == len(cb)
    assert (ca.rmse_a - cb.rmse_a).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------------- real cluster
def test_dask_local_cluster_matches_sequential(tmp_path, tiny_yaml, reference, cache_dir):
    out = tmp_path / "dask"
    r = _bench(["run", str(tiny_yaml), "--out", str(out), "--executor", "dask", "--workers", "2", "--no-report",
                "--quiet"], cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dask LocalCluster (2 worker processes" in r.stderr
    _assert_same_metrics(out, reference)
    assert not list((out / "cells").glob(".*.tmp*"))


def test_sigkill_during_a_dask_run_then_resume(tmp_path, tiny_yaml, reference, cache_dir):
    """Kill the client and its local workers part-way; the rerun finishes every cell exactly once."""
    out = tmp_path / "k"
    p = subprocess.Popen([sys.executable, "-m", "bench", "run", str(tiny_yaml), "--out", str(out), "--executor",
                          "dask", "--workers", "2", "--no-report", "--quiet"], env=_env(cache_dir),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "cells").glob("*.json"))) < 3 and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(list((out / "cells").glob("*.json")))
    r = _bench(["run", str(tiny_yaml), "--out", str(out), "--no-report", "--quiet"], cache_dir)  # resume locally
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"{n_before} already done" in r.stderr
    _assert_same_metrics(out, reference)


PLUGIN = '''
"""Test plugin: a free run whose first attempt kills the worker process running it (SIGKILL mid-cell)."""
import os
import signal
from dataclasses import dataclass
from typing import ClassVar

import methods
from methods.baseline import FreeRun


@dataclass
class KillOnce(FreeRun):
    name: ClassVar[str] = "TestKillOnce"
    marker: str = ""

    def analysis(self, state, y):
        if self.marker and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-cell, before any cell file is written
        return state


methods.register(KillOnce)
'''


def test_worker_killed_mid_cell_is_rerun_on_dask(tmp_path, cache_dir, monkeypatch):
    """A worker dies mid-cell: no partial file, Dask reruns the cell elsewhere, the row equals FreeRun's."""
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "assimbench_test_killonce.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(plug))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plug), os.environ.get("PYTHONPATH", "")]))
    marker = tmp_path / "killed-once"
    cfg = {**copy.deepcopy(TINY), "seeds": 1, "plugins": ["assimbench_test_killonce"],
           "problems": {"lorenz96": {**TINY["problems"]["lorenz96"], "observer": {"coverage": 1.0, "noise": 1.0,
                                                                                "noise_type": "absolute"}}},
           "methods": {"TestKillOnce": {"marker": str(marker)}, "FreeRun": {}}}
    grid = expand(cfg)
    out = tmp_path / "w"
    with DaskExecutor(workers=2) as ex:
        counts = run_grid(grid.cells, out, cache_dir=cache_dir, progress=False, executor=ex, plugins=grid.plugins)
    assert marker.exists()  # the first attempt really died
    assert counts["ok"] == 2 and counts["failed"] == 0
    assert not list((out / "cells").glob(".*.tmp*"))
    df = pd.read_parquet(out / "results.parquet").set_index("p_method_name")
    assert len(df) == 2
    for col in METRICS:  # same data, same start, no analysis: identical to the free run
        assert abs(df.loc["TestKillOnce", col] - df.loc["FreeRun", col]) < 1e-12


# ------------------------------------------------------------------------------------------- without a cluster
class _FakeFuture:
    def __init__(self, result=None, exc=None):
        self._result, self._exc = result, exc

    def result(self):
        if self._exc is not None:
            raise self._exc
        return self._result


class _FakeClient:
    """Records submissions; runs nothing (stands for a cluster with a GPU worker)."""

    def __init__(self, run_dir: Path, kill: set[str] = frozenset()):
        self.run_dir, self.kill, self.calls = run_dir, kill, []

    def submit(self, fn, cell, *args, **kw):
        self.calls.append((cell, kw))
        if cell.cell_id in self.kill:
            return _FakeFuture(exc=distributed.KilledWorker(f"cell-{cell.cell_id}", "tcp://x", None))
        store.write_cell(self.run_dir, cell.cell_id, {"cell": cell.to_dict(), "row": {"status": "ok"}, "cycles": []})
        return _FakeFuture((cell.cell_id, "ok"))


def test_gpu_cells_require_the_gpu_resource_and_killed_workers_become_failed_rows(tmp_path):
    cells = expand({**copy.deepcopy(TINY), "seeds": 1}).cells
    gpu = [type(c)(**{**c.__dict__, "device": "cuda"}) for c in cells[:2]]
    ex = DaskExecutor(scheduler="tcp://127.0.0.1:1")  # never entered: no connection
    ex.client = _FakeClient(tmp_path, kill={cells[1].cell_id})
    ex.distributed = SimpleNamespace(as_completed=lambda fs: fs, KilledWorker=distributed.KilledWorker)
    got = dict(ex.run(cells + gpu, tmp_path, None, False, ()))
    assert got[cells[1].cell_id] == "failed" and sum(s == "ok" for s in got.values()) == len(cells) + 1
    for cell, kw in ex.client.calls:
        assert kw.get("resources") == ({"GPU": 1} if cell.device.startswith("cuda") else None)
        assert kw["key"] == f"cell-{cell.cell_id}" and kw["pure"] is False
    row = store.read_cell(tmp_path / "cells" / f"{cells[1].cell_id}.json")["row"]
    assert row["status"] == "failed" and row["error"].startswith("KilledWorker")


def test_executor_choice_and_flag_errors(monkeypatch):
    assert isinstance(make_executor(), SequentialExecutor)
    assert isinstance(make_executor("local", jobs=3), LocalPoolExecutor)
    assert isinstance(make_executor(workers=2), DaskExecutor)
    assert isinstance(make_executor(scheduler="tcp://h:8786"), DaskExecutor)
    for kw, msg in [({"kind": "local", "workers": 2}, "--executor dask"), ({"kind": "dask", "jobs": 2}, "--workers"),
                    ({"workers": 2, "scheduler": "tcp://h:1"}, "not both"), ({"workers": 0}, "--workers 0"),
                    ({"kind": "ray"}, "valid: local, dask"), ({"scheduler": " "}, "--scheduler")]:
        with pytest.raises(ConfigError, match=msg):
            make_executor(**kw)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    with pytest.raises(ConfigError, match=r"pip install 'assimbench\[dask\]'"):
        make_executor(workers=2)


def test_cli_without_dask_or_with_bad_flags_exits_2(tiny_yaml, tmp_path, capsys, monkeypatch):
    assert cli.main(["run", str(tiny_yaml), "--out", str(tmp_path / "o"), "--executor", "local", "--workers",
                     "2"]) == 2
    assert "--executor dask" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert cli.main(["run", str(tiny_yaml), "--out", str(tmp_path / "o"), "--executor", "dask"]) == 2
    assert "assimbench[dask]" in capsys.readouterr().err


def test_bad_scheduler_address_is_a_clear_error(tiny_yaml, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = cli.main(["run", str(tiny_yaml), "--out", str(tmp_path / "o"), "--scheduler", f"tcp://127.0.0.1:{port}",
                   "--quiet", "--no-report"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot connect to the Dask scheduler" in err and "Traceback" not in err
    assert f"within {CONNECT_TIMEOUT_S:g} s" in err  # gives up after the connect timeout, not the Dask default
    assert not list((tmp_path / "o").glob("cells/*.json"))
    assert cli.main(["run", str(tiny_yaml), "--out", str(tmp_path / "o"), "--scheduler", "no-port-here",
                     "--quiet"]) == 2
    assert "cannot connect" in capsys.readouterr().err
