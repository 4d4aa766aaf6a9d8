"""The ``paper`` preset: the LD-EnSF paper's setting with the authors' training recipe (meant for a GPU).

The fast tests check what the preset expands to and run one LD-EnSF cell of it at toy size on the CPU, so that
the full-size run on a GPU is only a matter of compute.
"""
from __future__ import annotations

import copy

import pytest
import torch

from bench.config import expand, load_preset


def test_paper_preset_is_the_papers_setting():
    import methods
    import problems
    grid = expand(load_preset("paper"), name="paper")
    pdes = {c.problem for c in grid.cells}
    assert pdes == {"shallow_water", "kolmogorov"}
    for c in grid.cells:
        pb = problems.get(c.problem, **c.pdict)
        assert pb.n == 150 and pb.n_traj == 200 and pb.split_fractions == (0.6, 0.2, 0.2)
        assert c.n_ens == 20 and c.odict["noise"] == 0.1
        # ~100 observed points of 22,500 (0.44 %)
        assert 22500 * c.odict["coverage"] == pytest.approx(99, abs=1)
        m = methods.get(c.method, **c.mdict)
        if c.method in ("LD-EnSF", "Latent-EnSF"):
            assert m.recipe == "paper"
    ld = {c.problem: methods.get(c.method, **c.mdict) for c in grid.cells if c.method == "LD-EnSF"}
    assert ld["shallow_water"].ldnet_config("shallow_water").rec_width == 300
    assert ld["kolmogorov"].ldnet_config("kolmogorov").latent_dim == 9
    assert {c.problem: problems.get(c.problem, **c.pdict).n_cycles for c in grid.cells} == \
        {"shallow_water": 50, "kolmogorov": 39}


def test_paper_preset_runs_at_toy_size(tmp_path):
    """One LD-EnSF cell of the preset, shrunk to a 16 x 16 grid and one epoch, trains the paper's networks and
    assimilates (the row records the recipe)."""
    from bench.runner import run_cell
    torch.set_num_threads(1)
    cfg = copy.deepcopy(load_preset("paper"))
    cfg["problems"] = {"shallow_water": {"n": 16, "n_traj": 10, "n_cycles": 3}}
    cfg["observers"] = {"coverage": 0.1, "noise": 0.1}
    cfg["methods"] = {"LD-EnSF": dict(cfg["methods"]["LD-EnSF"], epochs=1, lstm_epochs=2)}
    cfg["seeds"] = 1
    cfg["spinup"] = 0
    (cell,) = expand(cfg, name="paper-toy").cells
    out = run_cell(cell, cache_dir=tmp_path)
    row = out.row
    assert row["status"] == "ok", row.get("error")
    assert row["p_method_recipe"] == "paper"
    import json
    arts = sorted((tmp_path / "models").glob("*/config.json"))
    ld = [json.loads(p.read_text()) for p in arts if json.loads(p.read_text())["kind"] == "ldnet"]
    assert len(ld) == 1
    train, net = ld[0]["train"], ld[0]["networks"]["ldnet"]
    assert (train["recipe"], train["norm"], train["point_sampling"], train["schedule"]) == \
        ("paper", "minmax", "fixed", "step")
    assert (net["rec_width"], net["rec_depth"], net["dyn_width"], net["dyn_depth"]) == (300, 10, 50, 8)
    assert "out_scale" in net
