"""The initial ensemble as a grid option: climatology (unchanged cells and ids) or a perturbed-truth start."""
import math

import pytest

from assimbench.errors import ConfigError
from bench.config import expand, parse_init
from bench.runner import initial_ensemble, run_cell

BASE = {"problems": {"lorenz96": {"dim": 40, "n_cycles": 30, "n_traj": 5}},
        "observers": {"noise": 1.0, "noise_type": "absolute"}, "methods": {"EnKF": {}}, "n_ens": [50], "seeds": 1}


def test_parse_init_forms_and_errors():
    assert parse_init("climatology") == "climatology"
    assert parse_init({"perturbed": 0.0316}) == "perturbed(std=0.0316)"
    assert parse_init("perturbed(std=0.0316)") == "perturbed(std=0.0316)"
    for bad in ("perturbed", {"perturbed": 0}, {"perturbed": -1.0}, {"perturbed": "x"}, {"gaussian": 1.0}, 3):
        with pytest.raises(ConfigError, match="valid: climatology, or {perturbed: s}"):
            parse_init(bad)
    with pytest.raises(ConfigError, match="init="):
        expand({**BASE, "init": "truth"})


def test_climatology_default_keeps_cell_ids():
    (a,) = expand(BASE).cells
    (b,) = expand({**BASE, "init": "climatology"}).cells
    (c,) = expand({**BASE, "init": {"perturbed": 0.1}}).cells
    assert a.cell_id == b.cell_id != c.cell_id
    assert len(expand({**BASE, "init": ["climatology", {"perturbed": 0.1}]}).cells) == 2


def test_perturbed_start_sits_around_the_truth(cache_dir):
    (cell,) = expand({**BASE, "init": {"perturbed": 0.1}}).cells
    import problems
    pb = problems.get(cell.problem, **cell.pdict)
    truth0 = pb.dataset(cache_dir=cache_dir, progress=False).test[0, 0]
    x0, params = initial_ensemble(cell, pb, truth0)
    assert x0.shape == (50, 40) and params.shape == (50, 0)
    dev = x0 - truth0.double()
    # members = truth + s (c + e_i): spread s, and the mean off the truth by the shared offset, |c| ~ sqrt(d) s
    assert float(dev.std(0).mean()) == pytest.approx(0.1, rel=0.1)
    assert 0.3 * math.sqrt(40) * 0.1 < float(dev.mean(0).norm()) < 2.0 * math.sqrt(40) * 0.1
    # the shared offset is a property of (problem, seed): identical for another ensemble size
    (c20,) = expand({**BASE, "n_ens": [20], "init": {"perturbed": 0.1}}).cells
    x20, _ = initial_ensemble(c20, pb, truth0)
    assert float((x20.mean(0) - x0.mean(0)).norm()) < 0.5 * float(dev.mean(0).norm())


def test_perturbed_start_is_recorded_and_the_filter_stays_locked_on(cache_dir):
    (clim,) = expand(BASE).cells
    (pert,) = expand({**BASE, "init": {"perturbed": 0.0316}}).cells
    rc = run_cell(clim, cache_dir=cache_dir)
    rp = run_cell(pert, cache_dir=cache_dir)
    assert rp.row["p_init"] == "perturbed(std=0.0316)" and rp.row["p_init_std"] == 0.0316
    assert rc.row["p_init"] == "climatology" and math.isnan(rc.row["p_init_std"])
    # started 0.03 from the truth, the first forecast is far better than from climatology (spread ~3.6)
    assert rp.cycles[0]["rmse_f"] < 0.2 < 1.0 < rc.cycles[0]["rmse_f"]
