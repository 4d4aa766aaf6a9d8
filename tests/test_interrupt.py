"""Interrupting a run: Ctrl-C, SIGTERM and SIGKILL of `bench run` with a process pool and on Dask.

Each test starts the real CLI in its own session (as a terminal would: a Ctrl-C there reaches the whole process
group) on a grid of slow cells, signals it once a few cells are finished, and checks what a user relies on:

- Ctrl-C / SIGTERM: the run stops without computing the queued cells, exits 130 / 143 with one line and no
  traceback, keeps every finished cell, and the same command resumes it (every cell exactly once);
- whatever kills the main process (SIGKILL included), no worker process outlives it (a surviving worker would go
  on writing cells outside the run lock).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

SLOW = '''
"""Test plugin: a free run that sleeps in each analysis and records the pid of the process running it."""
import os
import time
from dataclasses import dataclass
from typing import ClassVar

import methods
from methods.baseline import FreeRun


@dataclass
class Slow(FreeRun):
    name: ClassVar[str] = "TestSlow"
    sleep: float = 0.3
    pid_dir: str = ""

    def analysis(self, state, y):
        if self.pid_dir:
            open(os.path.join(self.pid_dir, str(os.getpid())), "w").close()
        time.sleep(self.sleep)
        return state


methods.register(Slow)
'''
N_CELLS = 12
#: a bound against a hang only (the interrupted runs stop within seconds)
HANG_S = 120


@pytest.fixture
def slow_grid(tmp_path, cache_dir):
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "assimbench_test_slow.py").write_text(textwrap.dedent(SLOW))
    pids = tmp_path / "pids"
    pids.mkdir()
    cfg = {"plugins": ["assimbench_test_slow"], "n_ens": [4], "seeds": N_CELLS,
           "problems": {"lorenz96": {"dim": 8, "n_cycles": 3, "n_traj": 5, "spinup_time": 1.0,
                                     "observer": {"noise": 1.0, "noise_type": "absolute"}}},
           "methods": {"TestSlow": {"sleep": 0.3, "pid_dir": str(pids)}}}
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir),
           "PYTHONPATH": os.pathsep.join([str(plug), os.environ.get("PYTHONPATH", "")])}
    return path, pids, env


def _interactive() -> None:
    """In the child, before exec: Ctrl-C handled as at a terminal. A job started in the background of a
    non-interactive shell (``nohup ... &``, some CI runners) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so the run would (rightly) not react to the signal this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(path, out, env, *flags):
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--out", str(out), "--no-report",
                             "--quiet", *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_interactive)


def _finished(out: Path) -> int:
    return len(list((out / "cells").glob("*.json")))


def _wait_for_cells(p, out: Path, n: int) -> int:
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline and _finished(out) < n and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1][-2000:]
    return _finished(out)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _workers_left(pids: Path, exclude: int) -> list[int]:
    """Worker processes (pids recorded by the plugin) still alive after a grace period (a bound, not a timing)."""
    workers = [int(p.name) for p in pids.iterdir() if int(p.name) != exclude]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    return [w for w in workers if _alive(w)]


def _kill_leftovers(pids: list[int]) -> None:
    for w in pids:
        try:
            os.kill(w, signal.SIGKILL)
        except OSError:
            pass


def _stop(p, sig, group: bool) -> tuple[int, str]:
    (os.killpg if group else os.kill)(p.pid, sig)
    try:
        _, err = p.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        pytest.fail(f"bench run did not stop after {sig!r}: {err[-2000:]}")
    return p.returncode, err


def _assert_one_line_exit(err: str, signame: str) -> None:
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith(f"bench run: interrupted ({signame})") and "resume" in lines[-1], lines
    # the announcement lines (-q keeps the executor's), then the one interrupt line: no warnings, no worker noise
    assert len(lines) <= 3 and all(ln.startswith(("bench run: ", "executor: ")) for ln in lines[:-1]), lines


def _resume_and_check(path, out, env, *flags) -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--out", str(out), "--no-report",
                        "--quiet", *flags], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == N_CELLS and not df.cell_id.duplicated().any() and (df.status == "ok").all()


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), pytest.param(signal.SIGTERM, False,
                                                                           marks=pytest.mark.slow)],
                         ids=["ctrl-c", "sigterm-main"])
def test_interrupted_pool_run_stops_keeps_cells_and_resumes(slow_grid, tmp_path, sig, group):
    path, pids, env = slow_grid
    out = tmp_path / "out"
    p = _start(path, out, env, "--jobs", "2")
    at_signal = _wait_for_cells(p, out, 2)
    rc, err = _stop(p, sig, group)
    left = _workers_left(pids, p.pid)
    _kill_leftovers(left)
    assert rc == 128 + sig, err[-2000:]
    _assert_one_line_exit(err, signal.Signals(sig).name)
    assert not left, f"pool workers outlived the run: {left}"
    # the queued cells were cancelled: at most the two running ones finished after the signal
    after = _finished(out)
    assert at_signal <= after <= at_signal + 2 < N_CELLS
    # resumable: the tables hold the finished cells, the same command runs the rest, each cell once
    assert len(pd.read_parquet(out / "results.parquet")) == after
    _resume_and_check(path, out, env, "--jobs", "2")


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["sigkill", "sigint"])
def test_pool_workers_die_with_the_main_process(slow_grid, tmp_path, sig):
    """Only the main process is signalled (SIGINT sent to it alone used to finish the whole grid)."""
    path, pids, env = slow_grid
    out = tmp_path / "out"
    p = _start(path, out, env, "--jobs", "2")
    _wait_for_cells(p, out, 1)
    rc, err = _stop(p, sig, group=False)
    left = _workers_left(pids, p.pid)
    _kill_leftovers(left)
    assert not left, f"pool workers outlived the run: {left}"
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err[-2000:]
    assert _finished(out) < N_CELLS


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), pytest.param(signal.SIGKILL, False,
                                                                           marks=pytest.mark.slow)],
                         ids=["ctrl-c", "sigkill-main"])
def test_interrupted_dask_run(slow_grid, tmp_path, sig, group):
    pytest.importorskip("distributed")
    path, pids, env = slow_grid
    out = tmp_path / "out"
    p = _start(path, out, env, "--executor", "dask", "--workers", "2")
    _wait_for_cells(p, out, 2)
    rc, err = _stop(p, sig, group)
    left = _workers_left(pids, p.pid)
    _kill_leftovers(left)
    assert not left, f"Dask workers outlived the run: {left}"
    if sig == signal.SIGINT:
        assert rc == 130, err[-2000:]
        _assert_one_line_exit(err, "SIGINT")  # no raw worker tracebacks before the message
    assert _finished(out) < N_CELLS
