"""Every preset expands; the Lorenz-96 twin experiment reproduces its documented `expected:` scores."""
import pytest

from bench.config import expand, load_preset, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_preset_expands(name):
    grid = expand(load_preset(name), name=name)
    assert grid.cells, f"preset {name} has no cells"


def test_smoke_and_default_cover_every_problem_family():
    smoke = {c.problem for c in expand(load_preset("smoke")).cells}
    default = {c.problem for c in expand(load_preset("default")).cells}
    assert {"lorenz96", "shallow_water", "kolmogorov"} <= smoke
    assert {"lorenz96", "shallow_water", "kolmogorov"} <= default


@pytest.mark.slow
def test_l96_twin_reaches_the_expected_rmse(cache_dir):
    """Sakov & Oke (2008)-style twin: tuned square-root EnKF ~0.19 at N = 20, as the preset documents."""
    import methods
    from bench.runner import run_cell
    cfg = load_preset("l96_twin")
    cells = expand(cfg).cells
    for exp in cfg["expected"]:
        match = [c for c in cells if c.n_ens == exp["n_ens"] and methods.get(c.method, **c.mdict).label == exp["method"]]
        assert len(match) == 1, exp
        row = run_cell(match[0], cache_dir=cache_dir).row
        assert row["status"] == "ok", row["error"]
        assert abs(row["rmse_a"] - exp["rmse_a"]) < exp["tol"], (exp, row["rmse_a"])
