"""Accuracy against offline compute: learned methods with their networks taken at training budgets
(``train_fraction``), snapshots of one training run, and the report's figure of the ``offline_compute`` preset.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
import yaml

from bench.config import expand, load_preset
from methods import artifact_cache
from methods.latent_ensf import LatentEnSF
from methods.ldensf import LDEnSF
from methods.ldnet_train import LDNetTrainConfig, train_ldnet
from methods.train_loop import SnapshotRun, TrainLog
from test_ldensf import OrbitBump

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("problem", ["shallow_water", "kolmogorov"])
def test_budget_one_leaves_the_artifact_identities_unchanged(problem):
    """``train_fraction: 1`` is today's network: same label, same training identity, same artifact hash (the shipped
    networks stay valid); a smaller budget is another artifact whose identity records it."""
    for cls, cfg_of, kind in ((LDEnSF, "ldnet_config", "ldnet"), (LatentEnSF, "vae_config", "vae")):
        base, one = cls(), cls(train_fraction=1.0)
        assert one.label == base.label
        ident = getattr(one, cfg_of)(problem).identity()
        assert ident == getattr(base, cfg_of)(problem).identity() and "train_fraction" not in ident
        half = getattr(cls(train_fraction=0.5, epochs=40), cfg_of)(problem).identity()  # one run of 40 epochs
        assert half["train_fraction"] == 0.5 and half["epochs"] == 40
        data = {"dataset": "d"}
        assert artifact_cache.artifact_hash(kind, cls.name, data, ident) != \
            artifact_cache.artifact_hash(kind, cls.name, data, half)
    shipped: dict[tuple[str, str], list[dict]] = {}  # several networks of a kind may ship per problem
    for p in artifact_cache.SHIPPED_DIR.glob("*/config.json"):
        c = json.loads(p.read_text())
        shipped.setdefault((c["kind"], c["problem"].split("[")[0]), []).append(c["train"])
    assert LDEnSF(train_fraction=1.0).ldnet_config(problem).identity() in shipped[("ldnet", problem)]
    assert LatentEnSF(train_fraction=1.0).vae_config(problem).identity() in shipped[("vae", problem)]


BAD_YAML = ("problems: {{shallow_water: {{n: 16, n_cycles: 4, n_traj: 5}}}}\nobservers: {{coverage: 0.06}}\n"
            "methods: {{{method}: {{train_fraction: {value}}}}}\n")


@pytest.mark.parametrize("value", ["0", "1.5", "-0.25", "half", ".nan", "true"])
@pytest.mark.parametrize("method", ["LD-EnSF", "Latent-EnSF"])
def test_bad_budget_is_a_one_line_config_error(method, value):
    from assimbench.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        expand(yaml.safe_load(BAD_YAML.format(method=method, value=value)))
    msg = str(e.value)
    assert "train_fraction" in msg and "\n" not in msg


@pytest.mark.parametrize("method, value", [("LD-EnSF", "1.5"), ("Latent-EnSF", "0")])
def test_bad_budget_exits_2_before_anything_is_computed(method, value, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD_YAML.format(method=method, value=value))
    r = subprocess.run([sys.executable, "-m", "bench", "run", str(cfg), "--out", str(tmp_path / "o"), "-q"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ASSIMBENCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr[-800:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "train_fraction" in lines[0] and "(0, 1]" in lines[0], r.stderr
    assert not (tmp_path / "cache" / "datasets").exists() and not (tmp_path / "o" / "results.parquet").exists()


def test_snapshots_continue_one_run_and_end_where_it_ends(tmp_path):
    """Budgets 1/4, 1/2 and 1 of one run trained as snapshots (each continuing the previous one) give: the whole
    run's network bit for bit, snapshots identical to a budget trained from scratch, and epochs and optimisation
    times that grow with the budget."""
    pb = OrbitBump(n_traj=20)
    ds = pb.dataset(cache_dir=tmp_path, progress=False)
    cfg = LDNetTrainConfig(latent_dim=3, dyn_width=8, dyn_depth=2, rec_width=12, rec_depth=2, epochs=8,
                           batch_traj=4, points=16, eval_every=3, eval_points=16)
    whole, s_whole = train_ldnet(pb, ds, cfg, TrainLog(progress=False))
    run = SnapshotRun(tmp_path / "run")
    summaries, logs = [], []
    for f in (0.25, 0.5, 1.0):
        log = TrainLog(progress=False)
        net, s = train_ldnet(pb, ds, dataclasses.replace(cfg, train_fraction=f), log, snapshot_run=run)
        summaries.append((s, log.train_cpu_s))
        logs.append(log)
        if f == 0.25:
            scratch, s0 = train_ldnet(pb, ds, dataclasses.replace(cfg, train_fraction=f), TrainLog(progress=False))
            assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), scratch.state_dict().values()))
            assert s["test_rrmse_phys"] == s0["test_rrmse_phys"]
    assert [s["epochs_trained"] for s, _ in summaries] == [2, 4, 8]
    assert summaries[0][1] < summaries[1][1] < summaries[2][1]          # cumulative optimisation time
    assert any("resumed" in ln and "epoch 2" in ln for ln in logs[1].lines)
    assert any("resumed" in ln and "epoch 4" in ln for ln in logs[2].lines)
    assert sorted(p.name for p in run.folder.glob("ep*.pt")) == ["ep0000002.pt", "ep0000004.pt"]
    for (k, a), b in zip(whole.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    assert summaries[2][0]["test_rrmse_phys"] == s_whole["test_rrmse_phys"]


def toy_preset(problems: tuple[str, ...]) -> dict:
    """The ``offline_compute`` preset's budget sweeps at toy size (its experiments on ``problems``; the block of
    shipped networks left out): 16 x 16 grids, a few cycles, tiny networks, one seed; budgets and methods
    unchanged."""
    cfg = copy.deepcopy(load_preset("offline_compute"))
    cfg["seeds"], cfg["spinup"] = 1, 1
    cfg["experiments"] = [e for e in cfg["experiments"] if set(e["problems"]) <= set(problems)
                          and any("train_fraction" in kw for kw in e["methods"].values())]
    tiny = {"LD-EnSF": dict(latent_dim=4, dyn_width=16, dyn_depth=2, rec_width=16, rec_depth=2,
                            epochs=8, batch_traj=2, points=64, lstm_hidden=8, lstm_epochs=3),
            "Latent-EnSF": dict(c_lat=2, h_lat=4, width=4, epochs=8, batch=8, n_steps=10)}
    for exp in cfg["experiments"]:
        (name,) = exp["problems"]
        exp["problems"] = {name: dict(n=16, n_cycles=4, n_traj=5, **({"spinup_time": 0.4} if name == "kolmogorov"
                                                                       else {}))}
        exp["observers"] = dict(exp["observers"], coverage=0.06)
        exp["methods"]["EnKF"] = dict(exp["methods"]["EnKF"], loc_radius=6.0)
        for m, kw in tiny.items():
            exp["methods"][m] = dict(kw, train_fraction=exp["methods"][m]["train_fraction"])
    return cfg


def test_preset_sweeps_the_budgets_of_both_learned_methods_on_both_pdes():
    grid = expand(load_preset("offline_compute"), name="offline_compute")
    fr = {}
    for c in grid.cells:
        fr.setdefault((c.problem, c.method), set()).add(c.mdict.get("train_fraction", 1.0))
    for pb in ("shallow_water", "kolmogorov"):
        for m in ("LD-EnSF", "Latent-EnSF"):
            assert len(fr[(pb, m)]) >= 3 and 1.0 in fr[(pb, m)]
        assert (pb, "FreeRun") in fr and (pb, "EnKF") in fr


@pytest.mark.parametrize("problems", [("shallow_water",), pytest.param(("shallow_water", "kolmogorov"),
                                                                         marks=pytest.mark.slow)])
def test_toy_preset_trains_snapshots_and_draws_the_figure(problems, tmp_path):
    """The preset's cells at toy size through the real CLI: every budget is a snapshot of one run (epochs and
    optimisation time grow with the budget), and the report draws the figure on each problem's page without a
    warning."""
    from bench.report import build_report
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(toy_preset(problems)))
    out, cache = tmp_path / "run", tmp_path / "cache"
    r = subprocess.run([sys.executable, "-m", "bench", "run", str(cfg), "--out", str(out), "-q", "--threads", "1"],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "ASSIMBENCH_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    res = pd.read_parquet(out / "results.parquet")
    assert (res["status"] == "ok").all(), res.loc[res["status"] != "ok", "error"].tolist()
    learned = res[res["p_method_train_fraction"].notna()]
    for (pb, m), g in learned.groupby(["p_problem_name", "p_method_name"]):
        rows = []
        for _, row in g.sort_values("p_method_train_fraction").iterrows():
            sur = json.loads((out / "extras" / f"{row['cell_id']}.json").read_text())["surrogate"]
            net = "ldnet" if m == "LD-EnSF" else "vae"
            rows.append((sur[f"{net}.epochs_trained"], sur[f"{net}.train_cpu_s"]))
        assert [e for e, _ in rows] == [1, 2, 4, 8], (pb, m, rows)
        assert all(a[1] < b[1] for a, b in zip(rows, rows[1:])), (pb, m, rows)
    runs = list((cache / "models" / "runs").iterdir())
    assert len(runs) == 2 * len(problems)  # one training run per (problem, learned method)
    assert all(sorted(p.name for p in d.glob("ep*.pt")) == ["ep0000001.pt", "ep0000002.pt", "ep0000004.pt"]
               for d in runs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_report(out, strict=True)
    for slug in (p.replace("_", "-") for p in problems):
        page = next((out / "report").glob(f"{slug}*.html")).read_text()
        assert "Accuracy against offline compute" in page
        assert any((out / "report" / "img").glob(f"{slug}*_offline_compute.png"))
