"""bench/store.py: the one owner of a run folder's layout, its atomic cell files and its one results loader."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from assimbench.errors import ConfigError
from bench import store
from bench.runner import CellResult


def _result(cell_id: str, status: str = "ok", **arrays) -> CellResult:
    row = {"cell_id": cell_id, "p_problem": "lorenz96", "p_method": "EnKF", "status": status, "rrmse_a": 0.25}
    return CellResult({"problem": "lorenz96"}, row, [{"cell_id": cell_id, "cycle": 1, "rrmse_a": 0.25}], **arrays)


def test_a_result_lands_where_the_store_says(tmp_path):
    snaps = {"cycles": np.array([1, 2]), "truth": np.zeros((2, 1, 4, 4)), "mean": np.ones((2, 1, 4, 4))}
    latent = {"cycles": np.arange(1, 3), "analysis": np.zeros((2, 5, 3))}
    store.write_result(tmp_path, _result("abc", snapshots=snaps, latent=latent, surrogate={"ldnet.test": 0.3}))
    assert store.cell_path(tmp_path, "abc").is_file()
    assert store.load_npz(store.snapshot_path(tmp_path, "abc"))["mean"].shape == (2, 1, 4, 4)
    assert store.load_npz(store.latent_path(tmp_path, "abc"))["analysis"].shape == (2, 5, 3)
    assert json.loads(store.surrogate_path(tmp_path, "abc").read_text()) == {"surrogate": {"ldnet.test": 0.3}}
    payload = store.finished_cells(tmp_path)["abc"]
    assert payload["row"]["rrmse_a"] == 0.25 and payload["cycles"][0]["cycle"] == 1


def test_a_result_without_arrays_writes_only_its_cell_file(tmp_path):
    store.write_result(tmp_path, _result("abc"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == \
        ["cells/abc.json"]


def test_a_corrupt_cell_file_is_dropped_and_rerun(tmp_path):
    store.write_result(tmp_path, _result("good"))
    store.write_result(tmp_path, _result("bad"))
    path = store.cell_path(tmp_path, "bad")
    path.write_text(path.read_text().replace("0.25", "0.35"))  # the checksum no longer matches
    assert list(store.finished_cells(tmp_path)) == ["good"]
    assert not path.exists()


def test_a_missing_metric_is_missing_in_the_table(tmp_path):
    """A NaN metric (a skipped cell's) is stored as JSON null and read back as a missing value."""
    res = _result("x")
    res.row.update(rrmse_a=float("nan"))
    store.write_result(tmp_path, res)
    assert store.finished_cells(tmp_path)["x"]["row"]["rrmse_a"] is None
    df, _ = store.consolidate(tmp_path)
    assert pd.isna(df.loc[0, "rrmse_a"])


def test_one_loader_for_every_reader(tmp_path):
    store.write_result(tmp_path, _result("a"))
    store.write_result(tmp_path, _result("b", status="failed"))
    df = store.load_results(tmp_path)  # no results.parquet yet: consolidated from cells/
    assert sorted(df.cell_id) == ["a", "b"] and store.results_path(tmp_path).is_file()
    assert len(store.load_results(store.results_path(tmp_path))) == 2  # the file itself names its folder
    assert len(store.load_cycles(tmp_path)) == 2
    assert store.load_run_info(tmp_path) == {}
    store.run_info_path(tmp_path).write_text(json.dumps({"name": "r"}))
    assert store.load_run_info(tmp_path) == {"name": "r"}


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "is not a results folder .*no results.parquet and no cells/"),
    (lambda d: (pd.DataFrame({"method": ["EnKF"]}).to_parquet(d / "results.parquet"), d)[1],
     r"older or foreign version \(missing columns \['p_method', 'p_problem', 'status'\]\)"),
    (lambda d: ((d / "results.parquet").write_text("not parquet"), d)[1], "cannot be read as Parquet"),
], ids=["missing", "empty", "old schema", "garbage"])
def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message):
        store.load_results(make(tmp_path))


def test_stale_temporary_files_are_removed(tmp_path):
    stale = [tmp_path / "cells" / ".x.json.tmp1", tmp_path / "extras" / ".x.json.tmp2",
             tmp_path / "snapshots" / ".x.npz.tmp3", tmp_path / ".results.parquet.tmp4"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_text("")
    store.remove_stale_tmp(tmp_path)
    assert not any(p.exists() for p in stale)


def test_the_lock_keeps_a_second_writer_out(tmp_path):
    with store.RunLock(tmp_path):
        with pytest.raises(ConfigError, match="another `bench run`"):
            with store.RunLock(tmp_path):
                pass
    with store.RunLock(tmp_path):  # released
        pass


def test_rank_histograms_round_trip_through_the_tables(tmp_path):
    """The rank histogram's N + 1 counts survive cell file -> Parquet -> reader as integers, per cell and per
    cycle; a cell without one (failed) reads back as missing, and the spread / error ratio as a float."""
    ok = _result("a")
    ok.row.update(rank_hist_a=[3, 0, 5, 2], spread_error_a=0.8)
    ok.cycles[0].update(rank_hist_a=[1, 0, 2, 1], spread_error_a=0.7)
    store.write_result(tmp_path, ok)
    store.write_result(tmp_path, _result("b", status="failed"))
    store.consolidate(tmp_path)
    df = store.load_results(tmp_path).set_index("cell_id")
    assert list(df.loc["a", "rank_hist_a"]) == [3, 0, 5, 2]
    assert np.asarray(df.loc["a", "rank_hist_a"]).dtype == np.int64
    assert df.loc["b", "rank_hist_a"] is None
    assert df["spread_error_a"].dtype == np.float64 and pd.isna(df.loc["b", "spread_error_a"])
    cyc = store.load_cycles(tmp_path)
    assert list(cyc.loc[cyc["cell_id"] == "a", "rank_hist_a"].iloc[0]) == [1, 0, 2, 1]
    assert store.column_type("rank_hist_a", pd.Series([None, [1, 2]], dtype=object)) == "int_list"
