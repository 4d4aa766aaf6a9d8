"""`bench tune`: bad input exits 2 naming the valid choices; a small tuning run searches on validation truths only,
writes a tuned preset that `bench run` takes (marked tuned in the results), and resumes without rerunning cells."""
import re

import pandas as pd
import pytest
import yaml

from bench.cli import main

TINY = """
n_ens: [8]
seeds: 2
spinup: 5
problems:
  lorenz96: {dim: 12, n_cycles: 30, n_traj: 5, spinup_time: 2.0}
observers: {noise: 1.0, noise_type: absolute}
methods:
  EnKF: {variant: sqrt, inflation: 1.3, loc_radius: 3.0}
  FreeRun: {}
"""


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


BAD = {
    "unknown tunable": (["--method", "EnKF", "--params", "inflaton"], r"unknown tunable of EnKF 'inflaton'.*"
                                                                      r"valid: inflation, loc_radius"),
    "unknown range name": (["--method", "EnKF", "--range", "radius=1:2"], r"'radius'.*valid: inflation, loc_radius"),
    "empty range": (["--method", "EnKF", "--range", "inflation=1.2:1.1"],
                    r"inflation=1.2:1.1 is empty.*declared range of inflation is 1:1.3"),
    "malformed range": (["--method", "EnKF", "--range", "inflation=1.1"], r"NAME=LOW:HIGH"),
    "budget below one trial": (["--method", "EnKF", "--budget", "1"], r"--budget 1 is below one trial.*>= 2"),
    "nothing to tune": (["--method", "FreeRun"], r"FreeRun declares no tunable.*EnKF, EnSF"),
    "method not in grid": (["--method", "EnSF"], r"unknown --method 'EnSF'.*valid: EnKF"),
    "unknown metric": (["--metric", "rmse"], r"unknown --metric 'rmse'.*rmse_a"),
    "unknown problem": (["--problem", "kolmogorov"], r"unknown --problem 'kolmogorov'.*lorenz96"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_exits_2_naming_the_choices(case, tiny, tmp_path, capsys):
    rc = main(["tune", str(tiny), *BAD[case][0], "--out", str(tmp_path / "t"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(BAD[case][1], err, re.S), err
    assert not (tmp_path / "t").exists()  # rejected before anything ran


def test_tune_writes_a_runnable_tuned_preset_and_resumes(tiny, tmp_path, cache_dir, capsys):
    out = tmp_path / "t"
    args = ["tune", str(tiny), "--method", "EnKF", "--budget", "6", "--cache", str(cache_dir), "--out", str(out),
            "--quiet"]
    assert main(args) == 0
    doc = yaml.safe_load((out / "tuned.yaml").read_text())
    (rec,) = doc["tuning"]["settings"]
    assert rec["trials"] == 3 and rec["cells"] == 6 and rec["sampler"] == "tpe"
    assert rec["given"] == {"inflation": 1.3, "loc_radius": 3.0}  # the grid's own choice is trial 1
    assert rec["tuning_score"] <= rec["given_score"]
    # every tuning cell ran on a validation truth, never a test truth
    cells = list((out / "cells").glob("*.json"))
    assert len(cells) == 6
    from bench.store import read_cell
    assert {read_cell(p)["cell"]["truth_split"] for p in cells} == {"valid"}
    # the tuned preset keeps the test seeds and the untuned FreeRun, and marks EnKF tuned
    (exp,) = doc["experiments"]
    assert exp["tuned"] == ["EnKF"] and exp["seeds"] == [0, 1] and "FreeRun" in exp["methods"]
    assert exp["methods"]["EnKF"][0] == {"variant": "sqrt", **rec["best"]}
    # resuming with a larger budget only runs the new trials' cells
    before = {p.name: p.stat().st_mtime_ns for p in cells}
    assert main([*args[:5], "10", *args[6:]]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(after) == 10 and all(after[k] == v for k, v in before.items())
    # bench run takes it; the results say which settings were tuned
    run_dir = tmp_path / "r"
    assert main(["run", str(out / "tuned.yaml"), "--out", str(run_dir), "--cache", str(cache_dir), "--quiet",
                 "--no-report"]) == 0
    df = pd.read_parquet(run_dir / "results.parquet")
    assert set(df["p_truth_split"]) == {"test"}
    assert df.groupby("p_method_name")["p_tuned"].all().to_dict() == {"EnKF": True, "FreeRun": False}
    assert "(tuned)" in capsys.readouterr().out


def test_one_parameter_is_a_grid_search(tiny, tmp_path, cache_dir):
    out = tmp_path / "g"
    assert main(["tune", str(tiny), "--method", "EnKF", "--params", "inflation", "--range", "inflation=1.0:1.2",
                 "--budget", "6", "--tune-seeds", "1", "--cache", str(cache_dir), "--out", str(out), "--quiet"]) == 0
    (rec,) = yaml.safe_load((out / "tuned.yaml").read_text())["tuning"]["settings"]
    # the grid's own 1.3 lies outside the searched range: it is scored once beside the grid, from the same budget,
    # and kept when the grid finds nothing better on the tuning truths
    assert rec["sampler"] == "grid" and rec["trials"] == 5 and rec["cells"] == 6
    assert rec["searched"] == {"inflation": [1.0, 1.2]}
    assert rec["given"] == {"inflation": 1.3} and rec["tuning_score"] <= rec["given_score"]
    assert set(rec["best"]) == {"inflation"}
    if rec["kept_given"]:
        assert rec["best"]["inflation"] == 1.3 and rec["tuning_score"] == rec["given_score"]
    else:
        assert 1.0 <= rec["best"]["inflation"] <= 1.2 and rec["tuning_score"] < rec["given_score"]


def test_the_method_default_is_scored_beside_the_search(tmp_path, cache_dir):
    # EnKF left at its defaults (global, inflation 1): loc_radius 0 cannot be proposed on the log range, so the
    # grid's own setting is scored once beside the study, from the same budget, and kept when nothing beats it
    grid = tmp_path / "plain.yaml"
    grid.write_text(TINY.replace("EnKF: {variant: sqrt, inflation: 1.3, loc_radius: 3.0}", "EnKF: {variant: sqrt}"))
    out = tmp_path / "d"
    assert main(["tune", str(grid), "--method", "EnKF", "--budget", "4", "--tune-seeds", "1", "--cache",
                 str(cache_dir), "--out", str(out), "--quiet"]) == 0
    (rec,) = yaml.safe_load((out / "tuned.yaml").read_text())["tuning"]["settings"]
    assert rec["given"] == {} and rec["trials"] == 3 and rec["cells"] == 4
    assert len(list((out / "cells").glob("*.json"))) == 4
    assert rec["given_score"] is not None and rec["tuning_score"] <= rec["given_score"]
    assert rec["best"] == {} if rec["kept_given"] else set(rec["best"]) == {"inflation", "loc_radius"}


def test_a_tuning_folder_holds_one_search(tiny, tmp_path, cache_dir, capsys):
    out = tmp_path / "t"
    first = ["tune", str(tiny), "--method", "EnKF", "--budget", "4", "--cache", str(cache_dir), "--out", str(out),
             "--quiet"]
    assert main(first) == 0
    # a run folder's layout: the grid, the cells, their table (bench show reads it), the command
    assert yaml.safe_load((out / "grid.yaml").read_text())["methods"]["EnKF"]["inflation"] == 1.3
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 4 and set(df["p_truth_split"]) == {"valid"} and set(df["p_seed"]) == {0, 1}
    assert "--budget 4" in __import__("json").loads((out / "run.json").read_text())["command"]
    assert main(["show", str(out), "--quiet"]) == 0
    capsys.readouterr()
    cells = {p.name for p in (out / "cells").glob("*.json")}
    # another search (fewer tuning truths, one parameter): refused before anything runs, naming the ways out
    other = ["tune", str(tiny), "--method", "EnKF", "--params", "inflation", "--budget", "3", "--tune-seeds", "1",
             "--cache", str(cache_dir), "--out", str(out), "--quiet"]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert re.search(r"another grid.*--budget 4.*fresh --out folder.*--force", err, re.S), err
    assert {p.name for p in (out / "cells").glob("*.json")} == cells
    # a bench run into the tuning folder is refused the same way
    assert main(["run", str(tiny), "--out", str(out), "--cache", str(cache_dir), "--quiet", "--no-report"]) == 2
    # --force replaces the search: the old cells it cannot use and the old studies go; the grid's own setting on
    # the first tuning truth is a cell of both searches, so it is kept and not rerun
    assert main([*other, "--force"]) == 0
    left = {p.name for p in (out / "cells").glob("*.json")}
    assert len(left) == 3 and len(left & cells) == 1
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    studies = optuna.get_all_study_summaries(JournalStorage(JournalFileBackend(str(out / "optuna.journal"))))
    assert len(studies) == 1 and studies[0].n_trials == 3
    assert len(pd.read_parquet(out / "results.parquet")) == 3
    # rerunning the same command resumes: nothing new runs
    assert main([*other, "--force"]) == 0
    assert {p.name for p in (out / "cells").glob("*.json")} == left
