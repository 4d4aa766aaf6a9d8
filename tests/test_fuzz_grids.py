"""Property: `bench run` on any grid ends in exactly one of two ways, never a crash, a hang or a half-written folder.

Hypothesis generates small grids, most of them broken (impossible numbers, empty sweeps, unknown names, wrong
types, duplicate keys, ensembles too large for the memory), and runs the real CLI in this process on each:

- exit 2, one line on stderr, no traceback, and no results written; or
- exit 0 (or 1 when every cell failed) and a complete table: one ``ok`` / ``failed`` / ``skipped`` row per cell
  of the grid, each cell exactly once.

The default test draws a bounded number of examples on tiny problems; the ``slow`` variant draws many more.
"""
from __future__ import annotations

import contextlib
import io
import signal
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench import cli
from bench.config import expand, parse_yaml

NAN, INF = float("nan"), float("inf")
#: a hang guard per example (a valid example runs in well under a second on an idle machine)
EXAMPLE_LIMIT_S = 120


@st.composite
def grids(draw) -> dict:
    """A small grid; each key is absent, good or (with about 10 % probability) broken, so most grids are broken
    somewhere and enough of them run. Costly defaults (n_cycles = 1000) are never left to the default."""

    def pick(good: list, broken: list, p_broken: int = 10):
        # the simplest draw (0, which hypothesis favours and shrinks towards) is the good, present value
        return draw(st.sampled_from(broken if draw(st.integers(0, 99)) >= 100 - p_broken else good))

    def put(d: dict, key: str, good: list, broken: list, p_broken: int = 10, p_absent: int = 0) -> None:
        if draw(st.integers(0, 99)) < 100 - p_absent:
            d[key] = pick(good, broken, p_broken)

    observer: dict = {"noise_type": "absolute"}
    put(observer, "coverage", [1.0, 0.5], [0, -0.5, 1.5, NAN, []], p_absent=30)
    put(observer, "noise", [1.0, 0.5], [-1.0, INF, "loud"])
    put(observer, "noise_type", ["absolute"], ["additive", "bogus", 3], p_absent=10)
    put(observer, "layout", ["lattice", "random"], ["hexagonal"], p_absent=50)
    problem: dict = {"observer": observer}
    put(problem, "dim", [4, 6, 8], [-1, 0, 3, 10**13, "eight", None, 2.5, True], p_absent=10)
    put(problem, "n_cycles", [2, 3], [-1, 0, 2.5, "3", 10**15])
    put(problem, "n_traj", [5, 6], [0, 1, 3, -5], p_absent=20)
    put(problem, "dt", [0.05, 0.02], [NAN, INF, -0.1, 0.0], p_absent=40)
    put(problem, "forcing", [8.0, 4], [NAN, -INF, "F"], p_absent=40)
    put(problem, "spinup_time", [0.2, 0.5], [-1.0, NAN, INF])
    cfg: dict = {"problems": pick([{"lorenz96": problem}], [{}, {"lorentz96": {}}, [], None])}
    names = pick([["EnKF"], ["FreeRun"], ["EnKF", "FreeRun"]], [[], ["NoSuchFilter"], ["EnKF", "NoSuchFilter"]])
    meths: dict = {}
    for n in names:
        params: dict = {}
        if n == "EnKF":
            put(params, "inflation", [1.0, 1.05, [1.0, 1.1]], [0.0, -1.0, NAN, [], "high"], p_absent=40)
            put(params, "variant", ["sqrt", "stochastic"], ["cholesky", []], p_absent=50)
            put(params, "inflaton", [], [1.0], p_broken=100, p_absent=95)  # a misspelled key
        meths[n] = params
    cfg["methods"] = meths
    put(cfg, "n_ens", [[4], [2, 4], 3], [[], [0], [1], 0, [10**12], "many", [2.5]], p_absent=20)
    put(cfg, "seeds", [1, 2, [0, 3]], [0, [], -1, [1.5], 10**9, "all"], p_absent=30)
    put(cfg, "spinup", [0, 1], [-1, 2, 3, 50, [0, 1]], p_absent=40)
    put(cfg, "dtype", ["float64", "float32"], ["float16", 64], p_absent=60)
    put(cfg, "device", ["cpu"], ["tpu", ""], p_absent=60)
    put(cfg, "score_between", [0], [-1, 1.5], p_absent=70)
    put(cfg, "colour", [], ["blue"], p_broken=100, p_absent=95)  # an unknown top-level key
    return cfg


GRIDS = grids()


def _yaml_text(cfg: dict, duplicate: bool) -> str:
    text = yaml.safe_dump(cfg, sort_keys=False)
    if duplicate:  # a key given twice (the second block would silently replace the first)
        text += "methods:\n  FreeRun: {}\n" if "methods" in cfg else "problems:\n  lorenz96: {}\n"
    return text


def _timeout(*_):
    raise TimeoutError(f"an example ran past {EXAMPLE_LIMIT_S} s (a hang)")


def check_grid(cfg: dict, duplicate: bool, cache: Path) -> str:
    """Run the CLI on ``cfg``; assert one of the two outcomes; return which ("refused" or "ran")."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "grid.yaml"
        path.write_text(_yaml_text(cfg, duplicate))
        out = tmp / "out"
        err, std = io.StringIO(), io.StringIO()
        old = signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(EXAMPLE_LIMIT_S)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
                rc = cli.main(["run", str(path), "--out", str(out), "--cache", str(cache), "--quiet", "--no-report"])
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        err = err.getvalue()
        assert "Traceback" not in err, err[-3000:]
        if rc == 2:
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("bench run: error: "), lines
            assert not out.exists()  # refused before anything was written
            return "refused"
        assert rc in (0, 1), (rc, err[-3000:])
        assert not duplicate
        cells = expand(parse_yaml(path.read_text())).cells
        df = pd.read_parquet(out / "results.parquet")
        assert sorted(df.cell_id) == sorted(c.cell_id for c in cells)  # complete, each cell once
        assert set(df.status) <= {"ok", "failed", "skipped"}
        assert (rc == 1) == bool((df.status == "failed").all())
        assert not list(out.rglob(".*.tmp*"))  # no half-written file
        return "ran"


def fuzz_settings(n: int):
    """Hypothesis settings for the grid property: ``n`` examples, no deadline, no example database."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


DUPLICATE = st.sampled_from([False, False, False, True])


@fuzz_settings(40)
@given(cfg=GRIDS, duplicate=DUPLICATE)
def test_any_grid_is_refused_in_one_line_or_runs_completely(cfg, duplicate, fuzz_cache):
    event(check_grid(cfg, duplicate, fuzz_cache))


@pytest.mark.slow
@fuzz_settings(400)
@given(cfg=GRIDS, duplicate=DUPLICATE)
def test_any_grid_many_examples(cfg, duplicate, fuzz_cache):
    event(check_grid(cfg, duplicate, fuzz_cache))


@pytest.fixture(scope="module")
def fuzz_cache(tmp_path_factory) -> Path:
    """A cache of its own: the fuzzer's tiny datasets never enter the shared one."""
    return tmp_path_factory.mktemp("fuzz-cache")


def test_the_generator_reaches_both_outcomes(fuzz_cache):
    """The strategy is not all-broken: a valid grid runs, a broken one is refused."""
    good = {"problems": {"lorenz96": {"dim": 6, "n_cycles": 2, "n_traj": 5, "spinup_time": 0.2,
                                      "observer": {"noise": 1.0, "noise_type": "absolute"}}},
            "methods": {"EnKF": {}, "FreeRun": {}}, "n_ens": [4], "seeds": 1}
    assert check_grid(good, False, fuzz_cache) == "ran"
    assert check_grid({**good, "seeds": []}, False, fuzz_cache) == "refused"
    assert check_grid(good, True, fuzz_cache) == "refused"
