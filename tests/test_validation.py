"""Bad input stops before anything is computed; results folders keep one grid; exit codes.

- every value that cannot run (no cycle, too few trajectories, spinup past the end, NaN/inf numbers, an ensemble
  too small for the method or too large for the memory, an empty sweep) is exit 2 with one line, no traceback,
  and no results folder written;
- YAML: a key given twice is refused with both line numbers; ``1e-1`` is a number;
- an unusable --out / --cache, a plugin that fails on import (any exception, a syntax error): exit 2;
- `bench show` / `bench report` on a folder without finished cells: exit 2, nothing written;
- a folder holds one grid: another grid is refused (naming --force and a fresh folder), --force replaces it, a
  refused run on a busy folder leaves its grid.yaml alone; stale temporary files are removed;
- a run where every cell failed exits 1.
"""
from __future__ import annotations

import copy
import math
import signal
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import methods
from assimbench.errors import ConfigError
from bench import cli, store
from bench.config import Cell, expand, parse_yaml
from methods.baseline import FreeRun
from problems.base import lattice_stride

L96 = {"dim": 8, "n_cycles": 3, "n_traj": 5, "spinup_time": 0.5,
       "observer": {"noise": 1.0, "noise_type": "absolute"}}
GRID = {"n_ens": [4], "seeds": 2, "problems": {"lorenz96": L96}, "methods": {"EnKF": {}, "FreeRun": {}}}


def _with(base: dict, **changes) -> dict:
    cfg = copy.deepcopy(base)
    for path, value in changes.items():
        node = cfg
        *parents, last = path.split("__")
        for k in parents:
            node = node[k]
        node[last] = value
    return cfg


def _run(capsys, args: list[str]) -> tuple[int, str]:
    rc = cli.main(args)
    return rc, capsys.readouterr().err


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bench "), lines
    for n in needles:
        assert n in lines[0], lines[0]


BAD = {
    "no cycles": (_with(GRID, problems__lorenz96__n_cycles=0), "n_cycles=0 must be >= 1"),
    "too few trajectories": (_with(GRID, problems__lorenz96__n_traj=3), "n_traj=3 is too small"),
    "spinup past the end": (_with(GRID, spinup=3), "spinup=3 leaves no cycle"),
    "NaN dt": (_with(GRID, problems__lorenz96__dt=float("nan")), "dt=nan must be a finite number"),
    "infinite forcing": (_with(GRID, problems__lorenz96__forcing=float("inf")), "forcing=inf"),
    "negative spinup_time": (_with(GRID, problems__lorenz96__spinup_time=-1.0), "spinup_time=-1.0"),
    "one member for EnKF": (_with(GRID, n_ens=[1, 4]), "at least 2 members (n_ens=1)"),
    "ensemble too large": (_with(GRID, n_ens=[10**11]), "n_ens=100000000000"),
    "state too large": (_with(GRID, problems__lorenz96__dim=10**12), "needs about"),
    "seeds: 0": (_with(GRID, seeds=0), "seeds=0"),
    "seeds: []": (_with(GRID, seeds=[]), "seeds=[]"),
    "n_ens: []": (_with(GRID, n_ens=[]), "n_ens=[]"),
    "empty sweep": (_with(GRID, methods={"EnKF": {"inflation": []}}), "inflation: [] sweeps over no value"),
    "obs_every: 0": (_with(GRID, problems__lorenz96__observer__obs_every=0), "obs_every=0 must be an integer >= 1"),
    "obs_every past the end": (_with(GRID, problems__lorenz96__observer__obs_every=4),
                               "obs_every=4 leaves no observed cycle"),
    "unknown operator": (_with(GRID, problems__lorenz96__observer__operator="square"),
                         "operator='square' is not allowed; valid: identity, arctan"),
    "operator the method cannot use": (_with(GRID, methods={"TestLinearOnly": {}},
                                             problems__lorenz96__observer__operator="arctan"),
                                       "cannot assimilate observations with operator=arctan; valid for "
                                       "TestLinearOnly: identity"),
}


@dataclass
class LinearOnly(FreeRun):
    """Test method that declares it assimilates linear observations only."""

    name: ClassVar[str] = "TestLinearOnly"
    operators: ClassVar[tuple[str, ...]] = ("identity",)


methods.register(LinearOnly)


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_values_stop_before_compute(case, tmp_path, capsys, cache_dir):
    cfg, needle = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    rc, err = _run(capsys, ["run", str(path), "--out", str(out), "--cache", str(cache_dir), "--quiet"])
    _assert_one_line_error(rc, err, needle)
    assert not out.exists()  # nothing computed, no folder written


def test_huge_dim_is_refused_without_a_loop_over_the_dimension(tmp_path):
    """The observer lattice search is logarithmic in the grid size (a loop over 10^12 would hang)."""
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("validation of a huge dim hangs"))
    signal.alarm(60)  # a hang guard, not a timing
    try:
        assert lattice_stride((10**12,), 1e-3) == 1000
        with pytest.raises(ConfigError, match="needs about"):
            expand(_with(GRID, problems__lorenz96__dim=10**12))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _brute_stride(shape, coverage):
    target, best, best_err = coverage * math.prod(shape), 1, float("inf")
    for s in range(1, max(shape) + 1):
        err = abs(math.prod(math.ceil(n / s) for n in shape) - target)
        if err < best_err - 1e-9:
            best, best_err = s, err
    return best


@settings(max_examples=300, deadline=None, database=None)
@given(shape=st.lists(st.integers(1, 80), min_size=1, max_size=3).map(tuple),
       coverage=st.floats(1e-4, 1.0) | st.sampled_from([1.0, 0.5, 0.25, 0.0044]))
def test_lattice_stride_equals_the_exhaustive_search(shape, coverage):
    assert lattice_stride(shape, coverage) == _brute_stride(shape, coverage)


# ------------------------------------------------------------------------------------------------------ YAML
def test_duplicate_keys_are_refused_with_their_lines(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("problems:\n  lorenz96: {dim: 8}\nmethods:\n  EnKF: {}\nmethods:\n  FreeRun: {}\n")
    rc, err = _run(capsys, ["run", str(path), "--out", str(tmp_path / "o")])
    _assert_one_line_error(rc, err, "'methods' is given twice", "lines 3 and 5")
    with pytest.raises(ConfigError, match=r"'dim' is given twice .*lines 2 and 2"):
        parse_yaml("problems:\n  lorenz96: {dim: 8, dim: 12}\n")
    with pytest.raises(ConfigError, match=r"'EnKF' is given twice .*lines 2 and 3"):
        parse_yaml("methods:\n  EnKF: {}\n  EnKF: {inflation: 1.1}\n")


def test_exponent_floats_are_numbers():
    cfg = parse_yaml("methods:\n  EnKF: {inflation: 1e-1}\nobservers: {noise: 5E-1, coverage: [1e0, 0.5]}\n"
                     "note: 1e-1x\nversion: '1e-1'\n")
    assert cfg["methods"]["EnKF"]["inflation"] == 0.1 and cfg["observers"]["noise"] == 0.5
    assert cfg["observers"]["coverage"] == [1.0, 0.5]
    assert cfg["note"] == "1e-1x" and cfg["version"] == "1e-1"  # not numbers: left as text
    grid = expand({**copy.deepcopy(GRID), "methods": cfg["methods"], "observers": cfg["observers"]})
    assert {c.mdict["inflation"] for c in grid.cells} == {0.1}
    assert {c.odict["coverage"] for c in grid.cells} == {1.0, 0.5}


# ------------------------------------------------------------------------------------ paths and plugins
def test_unusable_out_and_cache_are_exit_2(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(GRID))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args, needle in [(["--out", str(a_file)], "is not a folder"),
                         (["--out", str(a_file / "sub")], "cannot be created"),
                         (["--out", str(tmp_path / "o"), "--cache", str(a_file)], "--cache"),
                         (["--out", str(tmp_path / "o"), "--cache", str(a_file / "c")], "--cache")]:
        rc, err = _run(capsys, ["run", str(path), "--quiet", *args])
        _assert_one_line_error(rc, err, needle)
    rc, err = _run(capsys, ["train", str(path), "--cache", str(a_file)])
    _assert_one_line_error(rc, err, "--cache")


@pytest.mark.parametrize("source, needle", [
    ("raise RuntimeError('no licence server')\n", "RuntimeError: no licence server"),
    ("import sys\nsys.exit(3)\n", "SystemExit"),
    ("def broken(:\n    pass\n", "SyntaxError"),
    ("x = {}['missing']\n", "KeyError"),
], ids=["raises", "exits", "syntax-error", "key-error"])
@pytest.mark.parametrize("cmd", ["run", "train"])
def test_a_plugin_that_fails_on_import_is_exit_2(cmd, source, needle, tmp_path, capsys, monkeypatch):
    mod = f"assimbench_broken_{abs(hash((cmd, source))) % 10**8}"
    (tmp_path / f"{mod}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**GRID, "plugins": [mod]}))
    extra = ["--out", str(tmp_path / "o"), "--quiet"] if cmd == "run" else []
    rc, err = _run(capsys, [cmd, str(path), *extra])
    _assert_one_line_error(rc, err, f"plugin module {mod!r} fails on import", needle)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------- results folders
@pytest.fixture
def grid_yaml(tmp_path):
    def write(cfg, name="g.yaml"):
        p = tmp_path / name
        p.write_text(yaml.safe_dump(cfg))
        return p
    return write


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("cmd", ["show", "report"])
def test_show_and_report_on_a_folder_without_finished_cells(cmd, tmp_path, capsys):
    out = tmp_path / "r"
    (out / "cells").mkdir(parents=True)
    (out / "grid.yaml").write_text(yaml.safe_dump(GRID))
    before = _listing(out)
    rc, err = _run(capsys, [cmd, str(out)])
    _assert_one_line_error(rc, err, "no finished cell yet")
    assert _listing(out) == before  # nothing written
    store.consolidate(out, [])  # an empty table, as a run of an empty grid left it
    before = _listing(out)
    rc, err = _run(capsys, [cmd, str(out)])
    _assert_one_line_error(rc, err, "no finished cell yet")
    assert _listing(out) == before


def test_a_folder_holds_one_grid(tmp_path, grid_yaml, capsys, cache_dir):
    out = tmp_path / "r"
    a = grid_yaml(_with(GRID, methods={"FreeRun": {}}), "a.yaml")
    b = grid_yaml(_with(GRID, methods={"EnKF": {}}), "b.yaml")
    run = ["--out", str(out), "--cache", str(cache_dir), "--quiet", "--no-report"]
    assert _run(capsys, ["run", str(a), *run])[0] == 0
    grid_a = (out / "grid.yaml").read_text()
    cells_a = sorted(p.name for p in (out / "cells").glob("*.json"))
    # another grid: refused, the folder untouched
    rc, err = _run(capsys, ["run", str(b), *run])
    _assert_one_line_error(rc, err, "another grid", "--force", "fresh --out folder")
    assert (out / "grid.yaml").read_text() == grid_a
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == cells_a
    # the same folder growing (a's cells plus b's) is the same grid extended
    both = grid_yaml(_with(GRID, methods={"FreeRun": {}, "EnKF": {}}), "both.yaml")
    rc, err = _run(capsys, ["run", str(both), *run])
    assert rc == 0 and "2 already done" in err, err[-2000:]
    assert len(pd.read_parquet(out / "results.parquet")) == 4
    # the same grid on another device joins the folder, side by side (a GPU row, as a GPU run writes it)
    cpu = next(p for p in (out / "cells").glob("*.json"))
    payload = store.read_cell(cpu)
    gpu = Cell.from_dict({**payload["cell"], "device": "cuda"})
    payload["cell"]["device"] = "cuda"
    payload["row"].update(cell_id=gpu.cell_id, p_device="cuda")
    store.write_cell(out, gpu.cell_id, payload)
    rc, err = _run(capsys, ["run", str(both), *run])
    assert rc == 0 and "4 already done" in err, err[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 5 and sorted(set(df.p_device)) == ["cpu", "cuda"]
    # --force: the folder now holds b only; a's cells are gone from the files and the tables
    rc, err = _run(capsys, ["run", str(b), *run, "--force"])
    assert rc == 0, err[-2000:]
    df = pd.read_parquet(out / "results.parquet")
    assert set(df.p_method_name) == {"EnKF"} and len(df) == 2 + (gpu.method == "EnKF")
    assert len(list((out / "cells").glob("*.json"))) == len(df)
    assert yaml.safe_load((out / "grid.yaml").read_text())["methods"] == {"EnKF": {}}


def test_a_refused_run_on_a_busy_folder_keeps_its_grid(tmp_path, grid_yaml, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "grid.yaml").write_text("# the running grid\n")
    with store.RunLock(out):
        rc, err = _run(capsys, ["run", str(grid_yaml(GRID)), "--out", str(out), "--quiet"])
    _assert_one_line_error(rc, err, "another `bench run`")
    assert (out / "grid.yaml").read_text() == "# the running grid\n"


def test_stale_temporary_files_are_removed(tmp_path, grid_yaml, capsys, cache_dir):
    out = tmp_path / "r"
    stale = [out / "extras" / ".abc.latent.npz.tmp4242", out / "extras" / ".abc.json.tmp4242",
             out / "snapshots" / ".abc.npz.tmp4242", out / "cells" / ".abc.json.tmp4242"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    rc, err = _run(capsys, ["run", str(grid_yaml(_with(GRID, methods={"FreeRun": {}}))), "--out", str(out),
                            "--cache", str(cache_dir), "--quiet", "--no-report"])
    assert rc == 0, err[-2000:]
    assert not [p for p in stale if p.exists()]


@dataclass
class AlwaysFails(FreeRun):
    """Test method whose analysis raises."""

    name: ClassVar[str] = "TestAlwaysFails"

    def analysis(self, state, y):
        raise RuntimeError("this filter always fails")


methods.register(AlwaysFails)


def test_exit_code_1_when_every_cell_failed(tmp_path, grid_yaml, capsys, cache_dir):
    run = ["--cache", str(cache_dir), "--quiet", "--no-report"]
    rc, err = _run(capsys, ["run", str(grid_yaml(_with(GRID, methods={"TestAlwaysFails": {}}))),
                            "--out", str(tmp_path / "all"), *run])
    assert rc == 1 and "every cell failed" in err and "Traceback" not in err, err[-2000:]
    df = pd.read_parquet(tmp_path / "all" / "results.parquet")
    assert len(df) == 2 and (df.status == "failed").all()
    # some failed, some ok: the failures are data, exit 0
    rc, err = _run(capsys, ["run", str(grid_yaml(_with(GRID, methods={"TestAlwaysFails": {}, "FreeRun": {}}),
                                                 "mixed.yaml")), "--out", str(tmp_path / "mixed"), *run])
    assert rc == 0, err[-2000:]


def test_memory_limit_override(monkeypatch):
    """The estimate is compared with the device's memory (here overridden), before anything is allocated."""
    monkeypatch.setenv("ASSIMBENCH_MEMORY_LIMIT", "1K")
    with pytest.raises(ConfigError, match=r"needs about .* more than the 1 KiB of cpu"):
        expand(copy.deepcopy(GRID))
    monkeypatch.setenv("ASSIMBENCH_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigError, match="ASSIMBENCH_MEMORY_LIMIT='lots' is not a size"):
        expand(copy.deepcopy(GRID))
    monkeypatch.setenv("ASSIMBENCH_MEMORY_LIMIT", "1G")
    assert len(expand(copy.deepcopy(GRID)).cells) == 4
