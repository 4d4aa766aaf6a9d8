"""The ``paper`` preset: the LD-EnSF paper's setting with the authors' training recipe (meant for a GPU).

The fast tests check what the preset expands to, that its `expected:` figures name cells and scores it has,
and run its latent methods at toy size on the CPU, so that the full-size run on a GPU is only a matter of compute.
The full check against the published figures trains the paper's networks at 150 x 150: hours on a CPU, so it is
`slow` and skips without CUDA.
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


def _toy(methods_: dict) -> dict:
    """The preset shrunk to a 20 x 20 tsunami, 3 cycles, one truth (the methods' networks trained for one epoch)."""
    cfg = copy.deepcopy(load_preset("paper"))
    cfg["problems"] = {"shallow_water": {"n": 20, "n_traj": 10, "n_cycles": 3}}
    cfg["observers"] = {"coverage": 0.1, "noise": 0.1}
    cfg["methods"] = {name: dict(cfg["methods"][name], **kw) for name, kw in methods_.items()}
    cfg["seeds"] = 1
    cfg["spinup"] = 0
    return cfg


def test_paper_preset_lists_its_expected_figures_with_sources():
    """Every expected entry names a cell of the preset (problem, N, method label) and a source; the Table 1
    entries and the headline rRMSE cover both problems and both latent methods."""
    import methods
    cfg = load_preset("paper")
    assert "arXiv:2411.19305" in cfg["source"]
    labels = {(c.problem, c.n_ens, methods.get(c.method, **c.mdict).label) for c in expand(cfg).cells}
    for exp in cfg["expected"]:
        assert {"problem", "n_ens", "method", "metric", "value", "rel_tol", "source"} <= set(exp), exp
        assert (exp["problem"], exp["n_ens"], exp["method"]) in labels, exp
        assert exp["value"] > 0 and exp["rel_tol"] > 0 and "LD-EnSF paper" in exp["source"]
    got = {(e["problem"], e["metric"]) for e in cfg["expected"]}
    assert got == {(p, m) for p in ("shallow_water", "kolmogorov")
                   for m in ("ldnet.test_rrmse_phys", "vae.test_rrmse_phys", "rrmse_member_a")}


def _assert_records_expected_scores(out, label: str) -> None:
    """``out`` (a toy cell's result) records, finite, every score the preset's `expected:` entries name for
    ``label``, the method's label in the full-size preset (a results column or a training-summary key)."""
    import math
    metrics = {e["metric"] for e in load_preset("paper")["expected"] if e["method"] == label}
    assert metrics
    for metric in metrics:
        value = out.row[metric] if metric in out.row else out.surrogate[metric]
        assert math.isfinite(value), (label, metric)


def test_paper_preset_latent_ensf_runs_at_toy_size(tmp_path):
    """Latent-EnSF of the preset at toy size trains the paper's latent map and records its expected scores."""
    import methods
    from bench.runner import run_cell
    torch.set_num_threads(1)
    (cell,) = expand(_toy({"Latent-EnSF": {"epochs": 1}}), name="paper-toy").cells
    out = run_cell(cell, cache_dir=tmp_path)
    assert out.row["status"] == "ok", out.row.get("error")
    m = methods.get(cell.method, **cell.mdict)
    assert (m.vae_config("shallow_water").c_lat, m.vae_config("shallow_water").h_lat) == (4, 10)
    _assert_records_expected_scores(out, "Latent-EnSF[recipe=paper]")


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="the full-size paper preset trains its networks at 150 x 150: hours on a CPU; needs CUDA")
def test_paper_preset_reproduces_the_published_figures(cache_dir):
    """The full preset's latent-method cells on the GPU: each expected score, averaged over the seeds, within its
    `rel_tol` of the published figure."""
    import numpy as np

    import methods
    from bench.runner import run_cell
    cfg = load_preset("paper")
    cfg["device"] = "cuda"
    cells = expand(cfg).cells
    runs = {}
    for exp in cfg["expected"]:
        match = [c for c in cells if c.problem == exp["problem"] and c.n_ens == exp["n_ens"]
                 and methods.get(c.method, **c.mdict).label == exp["method"]]
        assert match, exp
        values = []
        for c in match:
            if c not in runs:
                runs[c] = run_cell(c, cache_dir=cache_dir)
            out = runs[c]
            assert out.row["status"] == "ok", out.row.get("error")
            values.append(out.row[exp["metric"]] if exp["metric"] in out.row else out.surrogate[exp["metric"]])
        mean = float(np.mean(values))
        assert abs(mean - exp["value"]) <= exp["rel_tol"] * exp["value"], (exp, values)


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
    _assert_records_expected_scores(out, "LD-EnSF[recipe=paper]")
