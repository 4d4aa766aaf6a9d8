"""Scoring between observations (``score_between``): fractional model steps, the truth inside an interval, the
runner's ``rmse_between`` / ``rrmse_between`` columns and the configuration checks."""
from __future__ import annotations

import math

import pytest
import torch

import methods
import problems
from bench.config import Cell, expand
from assimbench.errors import ConfigError
from bench.runner import _score_between, run_cell
from methods.base import Context, EnsembleState


def test_lorenz96_fractions_compose_to_one_step_exactly():
    pb = problems.get("lorenz96", dim=40, dt=0.01, steps_per_obs=4)
    x = pb.sample_initial(torch.zeros(3, 0), torch.Generator().manual_seed(0))
    half = pb.advance_fraction(pb.advance_fraction(x, None, 0.5), None, 0.5)
    quarter = x
    for _ in range(4):
        quarter = pb.advance_fraction(quarter, None, 0.25)
    assert torch.equal(half, pb.step(x, None))
    assert torch.equal(quarter, pb.step(x, None))


@pytest.mark.parametrize("name,kw,tol", [
    ("shallow_water", {"n": 24, "n_cycles": 2, "n_traj": 5}, 2e-3),
    ("kolmogorov", {"n": 16, "n_cycles": 2, "n_traj": 5, "spinup_time": 0.4}, 2e-3),
])
def test_pde_fractions_agree_with_a_full_step(name, kw, tol):
    """Two half intervals (each with its own CFL sub-steps) reproduce one interval to the schemes' accuracy,
    and half an interval is a genuinely intermediate state (not the start, not the end)."""
    pb = problems.get(name, **kw)
    p = pb.sample_params(2, torch.Generator().manual_seed(3))
    x0 = pb.sample_initial(p, torch.Generator().manual_seed(4))
    x0 = pb.step(x0, p)  # a developed state
    full = pb.step(x0, p)
    mid = pb.advance_fraction(x0, p, 0.5)
    two = pb.advance_fraction(mid, p, 0.5)
    rel = float((two - full).norm() / full.norm())
    assert rel < tol, rel
    d_start, d_end = float((mid - x0).norm()), float((mid - full).norm())
    assert d_start > 10 * rel * float(full.norm()) and d_end > 10 * rel * float(full.norm())


def test_truth_ensemble_scores_zero_between_observations():
    """An ensemble of copies of the truth, advanced by the model, has zero error at every intermediate time."""
    pb = problems.get("lorenz96", dim=40, dt=0.01, steps_per_obs=6)
    obs = problems.bind_observer(pb, None, noise=1.0, noise_type="absolute")
    m = methods.get("FreeRun")
    m.bind(Context(pb, obs, None, dtype=torch.float64))
    x = pb.sample_initial(torch.zeros(1, 0), torch.Generator().manual_seed(0))[0]
    before = EnsembleState(x.expand(5, -1).clone(), torch.zeros(5, 0, dtype=torch.float64))
    out = _score_between(m, before, None, [1 / 3, 2 / 3], x, torch.zeros(0, dtype=torch.float64), pb)
    assert out["rmse_between"] < 1e-12 and out["rrmse_between"] < 1e-12  # float64 rounding of the mean only
    # and a perturbed ensemble scores its (grown) error
    before.x[:, 0] += 0.1
    out = _score_between(m, before, None, [1 / 3, 2 / 3], x, torch.zeros(0, dtype=torch.float64), pb)
    assert out["rmse_between"] > 0.1 / math.sqrt(40) / 2


def test_run_cell_reports_between_scores(cache_dir):
    cell = Cell("lorenz96", (("dim", 40), ("dt", 0.025), ("n_cycles", 12), ("n_traj", 5), ("steps_per_obs", 2)),
                (("noise", 1.0), ("noise_type", "absolute")), "EnKF", (("loc_radius", 0.0),), 10, 0,
                spinup=4, score_between=1)
    out = run_cell(cell, cache_dir=cache_dir, raise_errors=True)
    row = out.row
    assert row["status"] == "ok" and row["p_score_between"] == 1
    assert all(math.isfinite(c["rrmse_between"]) for c in out.cycles)
    # halfway between analysis and forecast: the mid-interval error sits near the two it is between
    assert 0.5 * row["rmse_a"] < row["rmse_between"] < 2.0 * row["rmse_f"]
    plain = Cell(*[getattr(cell, f) for f in ("problem", "problem_params", "observer_params", "method",
                                              "method_params", "n_ens", "seed", "device", "dtype", "spinup")])
    no = run_cell(plain, cache_dir=cache_dir, raise_errors=True)
    assert math.isnan(no.row["rrmse_between"])
    assert no.row["rmse_a"] == row["rmse_a"]  # scoring between observations never touches the filter


def test_cell_ids_without_score_between_are_unchanged():
    a = Cell("lorenz96", (), (), "FreeRun", (), 5, 0)
    assert Cell("lorenz96", (), (), "FreeRun", (), 5, 0, score_between=0).cell_id == a.cell_id
    assert Cell("lorenz96", (), (), "FreeRun", (), 5, 0, score_between=2).cell_id != a.cell_id
    assert Cell.from_dict(a.to_dict()) == a


def test_score_between_configuration_errors():
    base = {"problems": {"lorenz96": {"dim": 40, "steps_per_obs": 10}}, "methods": {"FreeRun": {}}}
    with pytest.raises(ConfigError, match=r"valid parts: \[1, 2, 5, 10\]"):
        expand({**base, "score_between": 3})
    assert expand({**base, "score_between": 4}).cells[0].score_between == 4
    with pytest.raises(ConfigError, match="score_between"):
        expand({**base, "score_between": -1})
    with pytest.raises(ConfigError, match="cannot be scored between observations"):
        expand({"problems": {"linear_gauss": {}}, "methods": {"FreeRun": {}}, "score_between": 1})
