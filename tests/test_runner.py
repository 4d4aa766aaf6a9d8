"""bench/runner.py: one prepared cell for every caller, identical data for every method, failures as rows."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import methods
from assimbench.errors import Diverged
from bench.config import Cell, freeze
from bench.runner import METRICS, TIMINGS, param_columns, prepare, run_cell
from methods.base import Method

L96 = freeze({"dim": 12, "n_cycles": 6, "n_traj": 5})
OBS = freeze({"coverage": 0.5, "noise": 1.0, "noise_type": "absolute"})


def cell(method="EnKF", n_ens=6, seed=1, problem_params=L96, observer=OBS, **kw) -> Cell:
    return Cell("lorenz96", problem_params, observer, method, (), n_ens, seed, **kw)


def test_every_method_gets_the_same_truth_observations_and_start(cache_dir):
    a, b = prepare(cell("EnKF"), cache_dir), prepare(cell("FreeRun"), cache_dir)
    assert torch.equal(a.truth, b.truth) and torch.equal(a.observations, b.observations)
    assert all(torch.equal(x, y) for x, y in zip(a.initial, b.initial))
    assert a.observations.shape == (6, 6) and a.truth.shape == (7, 12) and a.initial[0].shape == (6, 12)


def test_observations_depend_on_the_seed_not_on_the_ensemble_size(cache_dir):
    small, large = prepare(cell(n_ens=4), cache_dir), prepare(cell(n_ens=8), cache_dir)
    assert torch.equal(small.observations, large.observations)
    other = prepare(cell(seed=2), cache_dir)
    assert not torch.equal(small.observations, other.observations)


def test_the_prepared_cell_follows_the_cell_dtype(cache_dir):
    p = prepare(cell(dtype="float64"), cache_dir)
    assert p.truth.dtype == p.observations.dtype == p.initial[0].dtype == torch.float64
    assert p.truth_params.dtype == torch.float64


def test_a_run_has_every_column_and_one_row_per_cycle(cache_dir):
    res = run_cell(cell(spinup=2), cache_dir=cache_dir)
    assert res.status == "ok", res.row["error"]
    assert set(METRICS) | set(TIMINGS) <= set(res.row)
    assert [c["cycle"] for c in res.cycles] == [1, 2, 3, 4, 5, 6]
    assert [c["spinup"] for c in res.cycles] == [True, True, False, False, False, False]
    assert all(c["p_method"] == "EnKF" and c["cell_id"] == res.row["cell_id"] for c in res.cycles)
    assert res.snapshots == {} and res.latent == {}  # a 1-D problem has no field snapshots
    # calibration: N + 1 rank counts per cycle (one per state entry), summed over the scored cycles
    assert all(len(c["rank_hist_a"]) == 7 and sum(c["rank_hist_a"]) == 12 for c in res.cycles)
    assert res.row["rank_hist_a"] == [sum(c["rank_hist_a"][k] for c in res.cycles[2:]) for k in range(7)]
    assert 0 < res.row["spread_error_a"] < 10 and all(c["spread_error_a"] > 0 for c in res.cycles)


def test_a_skipped_cell_is_a_row_with_its_reason(cache_dir):
    res = run_cell(cell("Latent-EnSF"), cache_dir=cache_dir)
    assert res.status == "skipped" and "(C, n, n)" in res.row["error"]
    assert res.cycles == [] and res.row["p_method"].startswith("Latent-EnSF") and res.row["p_coverage"] == 0.5


def test_a_cell_that_fails_before_the_observer_still_has_its_parameters(cache_dir):
    """The observer cannot be bound (no observed point): the row takes coverage from the cell and the noise from
    the Observer's own default."""
    res = run_cell(cell(observer=freeze({"coverage": 0.01})), cache_dir=cache_dir)
    assert res.status == "failed" and "rounds to no observed point" in res.row["error"]
    assert res.row["p_coverage"] == 0.01 and res.row["p_noise"] == 0.1
    assert res.row["p_problem"] == "lorenz96[dim=12,n_cycles=6,n_traj=5]"  # the problem was built: its label


def test_param_columns_from_the_cell_alone_match_the_bound_ones(cache_dir):
    """One builder: the columns known from the cell alone (a killed worker's row) agree with a bound cell's."""
    c = cell(observer=freeze({"coverage": 0.5}))
    alone = param_columns(c)
    assert alone["p_problem"] == "lorenz96" and alone["p_coverage"] == 0.5 and alone["p_noise"] == 0.1
    p = prepare(c, cache_dir)
    bound = param_columns(c, p.problem, p.observer, p.method)
    same = [k for k in alone if k not in ("p_problem", "p_method")]
    assert [str(bound[k]) for k in same] == [str(alone[k]) for k in same]  # str: NaN == NaN
    assert bound["p_problem"] == p.problem.label and bound["p_method"] == "EnKF"
    assert bound["p_obs_layout"] == "lattice" and "p_obs_coverage" not in bound


@dataclass
class DivergesAtThree(Method):
    """A filter whose third analysis diverges (the runner's divergence path)."""

    name: ClassVar[str] = "DivergesAtThree"
    calls: int = 0

    def analysis(self, state, y):
        self.calls += 1
        if self.calls == 3:
            raise Diverged("the ensemble collapsed")
        return state


def test_a_divergence_keeps_the_cycles_before_it(cache_dir):
    methods.register(DivergesAtThree)
    res = run_cell(cell("DivergesAtThree"), cache_dir=cache_dir)
    assert res.status == "failed" and res.row["error"] == "diverged at cycle 3: the ensemble collapsed"
    assert res.row["n_cycles"] == 2 and [c["cycle"] for c in res.cycles] == [1, 2]
    assert math.isnan(res.row["rrmse_a"])


def test_an_error_is_raised_on_request(cache_dir):
    with pytest.raises(ValueError, match="spinup=6 leaves no cycle"):
        run_cell(cell(spinup=6), cache_dir=cache_dir, raise_errors=True)
    assert run_cell(cell(spinup=6), cache_dir=cache_dir).status == "failed"


def test_a_cycle_without_an_observation_keeps_the_forecast_and_the_observed_ones_see_the_same_data(cache_dir):
    """obs_every: 2 -- the method's analysis runs at cycles 2, 4, 6 only, on the observations an every-cycle run
    sees at those cycles; at cycles 1, 3, 5 the analysis ensemble is the forecast; every cycle has its metrics."""
    every = prepare(cell(), cache_dir)
    sparse = prepare(cell(observer=freeze({**dict(OBS), "obs_every": 2})), cache_dir)
    seen = []
    analysis = sparse.method.analysis

    def spy(state, y):
        seen.append(y)
        return analysis(state, y)

    sparse.method.analysis = spy
    rows: list[dict] = []
    out = sparse.assimilate(rows)
    assert [r["observed"] for r in rows] == [False, True] * 3
    assert len(seen) == 3 and all(torch.equal(y, every.observations[t - 1]) for y, t in zip(seen, (2, 4, 6)))
    for r in rows:
        assert math.isfinite(r["rrmse_a"]) and math.isfinite(r["rrmse_f"])
        if not r["observed"]:
            assert r["rmse_a"] == r["rmse_f"] and r["rrmse_a"] == r["rrmse_f"]
    assert any(r["rmse_a"] != r["rmse_f"] for r in rows if r["observed"])
    # the analysis timing is over the observed cycles but the first (4 and 6); the metric means pool every cycle
    assert math.isfinite(out.timings["time_analysis_s"])
    assert out.means["rrmse_a"] == pytest.approx(sum(r["rrmse_a"] for r in rows) / 6)
