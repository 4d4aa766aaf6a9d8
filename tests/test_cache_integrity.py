"""Checksums on every cached and shipped file: a corrupted file is never used silently.

Process tests (the real CLI, a private cache), corrupting files in place (bytes flipped in the middle, size
unchanged, as a bad disk or a stray write would):

- a dataset is rebuilt, with a message naming what was wrong, and the run's results equal those on intact data;
- a cached network is removed and retrained, with a message, and the new one verifies.

In-process: a corrupted shipped network is refused; every shipped artifact verifies; an artifact whose recorded
data checksum differs from the data at hand is re-scored (silently accepted when the errors reproduce, else a
warning and the measured errors; a cached one is retrained); an older artifact without checksums still loads.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

import problems
from bench.store import load_results
from methods import artifact_cache
from methods.base import Context
from methods.latent_ensf import LatentEnSF
from problems import base

RUN_GRID = {
    "n_ens": [6], "seeds": 2, "spinup": 1,
    "problems": {"lorenz96": {"dim": 12, "n_cycles": 6, "n_traj": 5, "spinup_time": 2.0, "data_seed": 913,
                              "observer": {"coverage": 0.5, "noise": 1.0, "noise_type": "absolute"}}},
    "methods": {"EnKF": {}, "FreeRun": {}},
}
VAE = dict(c_lat=2, h_lat=4, width=4, epochs=3, batch=8, n_steps=20)
TRAIN_GRID = {
    "n_ens": [4], "seeds": 1,
    "problems": {"shallow_water": {"n": 16, "n_cycles": 4, "n_traj": 5, "data_seed": 917,
                                   "observer": {"coverage": 0.05}}},
    "methods": {"Latent-EnSF": VAE},
}


def _cli(args, cache_dir):
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def flip_middle(path: Path, n: int = 16) -> None:
    """Invert ``n`` bytes in the middle of ``path`` (of its largest member for a zip-based torch file)."""
    size = path.stat().st_size
    offset = size // 2
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            info = max(z.infolist(), key=lambda i: i.file_size)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(x ^ 0xFF for x in b))
    assert path.stat().st_size == size


def test_corrupted_dataset_is_rebuilt_with_a_message(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(RUN_GRID))
    cache = tmp_path / "cache"
    r1 = _cli(["run", str(grid), "--out", str(tmp_path / "a"), "--no-report", "--quiet"], cache)
    assert r1.returncode == 0, r1.stderr
    (data,) = (cache / "datasets").glob("lorenz96-*.pt")
    flip_middle(data)
    r2 = _cli(["run", str(grid), "--out", str(tmp_path / "b"), "--no-report", "--quiet"], cache)
    assert r2.returncode == 0, r2.stderr
    msgs = [line for line in r2.stderr.splitlines() if data.name in line]
    assert len(msgs) == 1 and "is corrupt" in msgs[0] and "rebuilding it" in msgs[0], r2.stderr
    cols = ["p_method", "p_seed", "rmse_a", "rrmse_a", "crps_a", "status"]
    a = load_results(tmp_path / "a")[cols].sort_values(["p_method", "p_seed"]).reset_index(drop=True)
    b = load_results(tmp_path / "b")[cols].sort_values(["p_method", "p_seed"]).reset_index(drop=True)
    assert (a["status"] == "ok").all()
    pd.testing.assert_frame_equal(a, b)
    # the rebuilt file verifies again: a third run says nothing
    r3 = _cli(["run", str(grid), "--out", str(tmp_path / "c"), "--no-report", "--quiet"], cache)
    assert r3.returncode == 0 and data.name not in r3.stderr


def test_corrupted_cached_network_is_retrained_with_a_message(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(TRAIN_GRID))
    cache = tmp_path / "cache"
    r1 = _cli(["train", str(grid)], cache)
    assert r1.returncode == 0, r1.stderr
    (folder,) = [p for p in (cache / "models").iterdir() if not p.name.startswith(".")]
    assert (folder / artifact_cache.SUMS_FILE).exists()
    first = (folder / "weights.pt").read_bytes()
    flip_middle(folder / "weights.pt")
    r2 = _cli(["train", str(grid)], cache)
    assert r2.returncode == 0, r2.stderr
    msgs = [line for line in r2.stderr.splitlines() if "weights.pt does not match its checksum" in line]
    assert len(msgs) == 1 and "removing it and training anew" in msgs[0], r2.stderr
    sums, problem = artifact_cache.verify_checksums(folder)
    assert sums and not problem
    assert (folder / "weights.pt").read_bytes() == first  # seeded training: the same network again


@pytest.fixture
def tiny(tmp_path):
    pb = problems.get("shallow_water", n=16, n_cycles=4, n_traj=5, data_seed=919)
    base._MEMO.pop(pb.data_key(), None)
    ds = pb.dataset(cache_dir=tmp_path / "cache", progress=False)
    obs = problems.bind_observer(pb, ds, coverage=0.05)
    yield pb, ds, obs, tmp_path / "cache"
    base._MEMO.pop(pb.data_key(), None)


def _fit(tiny, **kw) -> LatentEnSF:
    pb, ds, obs, cache = tiny
    m = LatentEnSF(**{**VAE, **kw})
    m.bind(Context(pb, obs, ds, cache_dir=cache))
    m.fit()
    return m


def _as_shipped(art: artifact_cache.Artifact, tmp_path: Path, monkeypatch) -> Path:
    shipped = tmp_path / "shipped"
    shutil.copytree(art.path, shipped / art.key)
    shutil.rmtree(art.path)
    monkeypatch.setattr(artifact_cache, "SHIPPED_DIR", shipped)
    return shipped / art.key


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))
    artifact_cache.write_checksums(folder)


def test_corrupted_shipped_network_is_refused(tiny, tmp_path, monkeypatch):
    art = _fit(tiny).artifacts["vae"]
    folder = _as_shipped(art, tmp_path, monkeypatch)
    intact = (folder / "weights.pt").read_bytes()
    flip_middle(folder / "weights.pt")
    with pytest.raises(artifact_cache.ArtifactError, match="shipped artifact .* is corrupt: weights.pt does not match"):
        _fit(tiny)
    (folder / "weights.pt").write_bytes(intact)
    assert _fit(tiny).artifacts["vae"].source == "shipped"
    # a config.json edited by hand is caught too
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"vae"', '"vae" '))
    with pytest.raises(artifact_cache.ArtifactError, match="config.json does not match"):
        _fit(tiny)


def test_new_artifact_records_its_data_and_checksums(tiny):
    pb, ds, obs, cache = tiny
    art = _fit(tiny).artifacts["vae"]
    assert art.config["data_checksum"] == ds.checksum
    sums, problem = artifact_cache.verify_checksums(art.path)
    assert not problem and set(sums) == {"config.json", "weights.pt", "curve.csv", "log.txt"}
    again = _fit(tiny).artifacts["vae"]
    assert again.source == "cache" and "measured on these data" in again.data_note


def test_other_data_is_rescored_and_reported(tiny, tmp_path, monkeypatch, caplog):
    pb, ds, obs, cache = tiny
    art = _fit(tiny).artifacts["vae"]
    recorded = art.config["summary"]["test_rrmse_phys"]
    # equivalent data under another checksum (another machine's rounding): re-scored once, silently accepted
    _edit_config(art.path, data_checksum="0" * 64)
    with caplog.at_level(logging.WARNING):
        a2 = _fit(tiny).artifacts["vae"]
    assert a2.source == "cache" and "as recorded" in a2.data_note and not caplog.records
    assert len(list((cache / "models" / ".rescored").glob("*.json"))) == 1
    # a shipped network whose recorded errors do not reproduce: one warning, the measured errors reported
    _edit_config(a2.path, data_checksum="1" * 64,
                 summary=dict(a2.config["summary"], test_rrmse_phys=recorded + 0.2))
    folder = _as_shipped(a2, tmp_path, monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        m = _fit(tiny)
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "was trained on other data" in warns[0] and "on the data at hand" in warns[0]
    s = m.training_summary["vae"]
    assert s["source"] == "shipped" and s["test_rrmse_phys"] == pytest.approx(recorded, rel=1e-3)
    assert s["recorded"]["test_rrmse_phys"] == pytest.approx(recorded + 0.2)
    # the same mismatch in the cache: the network is retrained for these data
    monkeypatch.setattr(artifact_cache, "SHIPPED_DIR", tmp_path / "none")
    shutil.copytree(folder, cache / "models" / folder.name)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        m = _fit(tiny)
    assert m.artifacts["vae"].source == "trained"
    assert any("removing it and training anew" in r.getMessage() for r in caplog.records)


def test_older_artifact_without_checksums_loads(tiny, caplog):
    pb, ds, obs, cache = tiny
    art = _fit(tiny).artifacts["vae"]
    (art.path / artifact_cache.SUMS_FILE).unlink()
    _edit_config(art.path, data_checksum=None)
    (art.path / artifact_cache.SUMS_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        again = _fit(tiny).artifacts["vae"]
    assert again.source == "cache" and not caplog.records and "as recorded" in again.data_note
    # it was checked against these data and now records them, with checksums
    assert json.loads((art.path / "config.json").read_text())["data_checksum"] == ds.checksum
    assert not artifact_cache.verify_checksums(art.path)[1] and (art.path / artifact_cache.SUMS_FILE).exists()


def test_shipped_artifacts_verify():
    folders = sorted(p for p in artifact_cache.SHIPPED_DIR.iterdir() if (p / "config.json").exists())
    assert len(folders) >= 6
    for folder in folders:
        sums, problem = artifact_cache.verify_checksums(folder)
        assert not problem and {"config.json", "weights.pt"} <= set(sums), folder
        cfg = json.loads((folder / "config.json").read_text())
        assert "data_checksum" in cfg and cfg["hash"] == folder.name
