"""bench/config.py: a YAML mapping expands to cells (cross products, tied keys, per-problem observers, blocks).

Bad input is covered from the command line in tests/test_cli.py and by the fuzzer in tests/test_robustness.py;
this file pins what a valid grid expands to.
"""
from __future__ import annotations

import pytest

from assimbench.errors import ConfigError
from bench.config import Cell, expand, freeze

L96 = {"lorenz96": {"dim": 40}}


def test_the_cross_product_of_every_swept_value():
    g = expand({"problems": L96, "observers": {"coverage": [1.0, 0.5], "noise": 1.0, "noise_type": "absolute"},
                "methods": {"EnKF": {"variant": ["sqrt", "stochastic"]}, "FreeRun": {}},
                "n_ens": [10, 20], "seeds": 3})
    assert len(g.cells) == 2 * (2 + 1) * 2 * 3
    assert {c.seed for c in g.cells} == {0, 1, 2} and {c.n_ens for c in g.cells} == {10, 20}
    assert {c.odict["coverage"] for c in g.cells} == {1.0, 0.5}
    assert {dict(c.method_params).get("variant") for c in g.cells if c.method == "EnKF"} == {"sqrt", "stochastic"}
    assert len({c.cell_id for c in g.cells}) == len(g.cells)


def test_comma_joined_keys_tie_values_together():
    g = expand({"problems": L96, "methods": {"EnKF": {"variant, inflation": [["sqrt", 1.02], ["stochastic", 1.1]]}}})
    assert sorted((c.mdict["variant"], c.mdict["inflation"]) for c in g.cells) == \
        [("sqrt", 1.02), ("stochastic", 1.1)]


def test_a_method_given_as_a_list_of_settings():
    g = expand({"problems": L96,
                "methods": {"EnKF": [{"inflation": 1.0}, {"inflation": 1.1, "variant": "stochastic"}]}})
    assert sorted(c.mdict.get("inflation") for c in g.cells) == [1.0, 1.1]


def test_a_list_for_a_number_or_tuple_field_is_one_value_and_a_list_of_lists_a_sweep():
    """``warm_restart: [400, 800]`` (an ``int | tuple`` field) restarts at both points in one cell, not two cells;
    a list of lists sweeps over its members."""
    sw = {"shallow_water": {"n": 16, "n_traj": 6}}
    one = expand({"problems": sw, "methods": {"LD-EnSF": {"epochs": 1600, "warm_restart": [400, 800]}}})
    assert [c.mdict["warm_restart"] for c in one.cells] == [(400, 800)]
    two = expand({"problems": sw, "methods": {"LD-EnSF": {"epochs": 1600, "warm_restart": [[400, 800], [400]]}}})
    assert sorted(c.mdict["warm_restart"] for c in two.cells) == [(400,), (400, 800)]


def test_a_problem_observer_overrides_the_top_level_one():
    g = expand({"problems": {"lorenz96": {"dim": 40, "observer": {"coverage": 0.25}}, "linear_gauss": {}},
                "observers": {"coverage": 1.0, "noise": 0.5},
                "methods": {"FreeRun": {}}})
    by_problem = {c.problem: c.odict for c in g.cells}
    assert by_problem["lorenz96"] == {"coverage": 0.25, "noise": 0.5}
    assert by_problem["linear_gauss"] == {"coverage": 1.0, "noise": 0.5}


def test_experiment_blocks_are_a_union_with_shared_defaults():
    g = expand({"methods": {"FreeRun": {}}, "n_ens": 5,
                "experiments": [{"problems": L96}, {"problems": L96, "n_ens": [5, 7]}]})
    assert sorted(c.n_ens for c in g.cells) == [5, 7]  # the duplicate (lorenz96, N = 5) cell is run once


def test_cell_ids_are_stable():
    """Resuming a run finds its finished cells by these ids: they never change between versions."""
    c = Cell("lorenz96", (("dim", 40),), (("coverage", 0.5),), "EnKF", (("inflation", 1.05),), 20, 3)
    assert c.cell_id == "7fe4783ec3095d6f"
    assert Cell.from_dict(c.to_dict()) == c


def test_freeze_sorts_keys_and_makes_lists_hashable():
    assert freeze({"b": [1, 2], "a": 1}) == (("a", 1), ("b", (1, 2)))


@pytest.mark.parametrize("config, message", [
    ({"problems": L96, "methods": {"EnKF": {}}, "n_ensemble": 4}, "unknown key 'n_ensemble'.*valid: .*n_ens"),
    ({"problems": L96, "methods": {}}, "'methods' is missing or empty"),
    ({"problems": L96, "methods": {"EnKF": {}}, "dtype": "float16"}, "valid: float32, float64"),
    ({"problems": L96, "methods": {"EnKF": {"inflation": "high"}}}, "inflation='high' should be a number"),
], ids=["top-level key", "no methods", "dtype", "parameter type"])
def test_bad_grids_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        expand(config)
