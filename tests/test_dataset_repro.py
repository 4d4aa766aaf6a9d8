"""The data a fresh machine builds are the data the committed statistics describe.

A small Kolmogorov and shallow-water dataset (the default 64 x 64 grids, 5 trajectories, 10 cycles) is regenerated
and its summary statistics (per split: mean, std, max |x|, the RMS at every snapshot time, the parameter mean;
the training field mean and std) are compared with ``tests/data/dataset_stats.json``.

Tolerance: relative 1e-7 (absolute 1e-9 for values near zero). Measured on the Kolmogorov configuration: a
relative perturbation of 1e-13 of the initial field moves these statistics by at most 1e-9 (the flow amplifies
it about 1e4-fold over the spin-up and 10 cycles), so rounding differences between machines, FFT libraries and
thread counts (relative 1e-16) stay near 1e-12, five orders below the tolerance. Real generator changes move
them far more: a time step 10 % shorter (cfl 0.45) by 2e-5, the initial amplitude changed by one part in a
million by 1.5e-6, the spin-up 0.2 longer by 6e-3. :func:`test_a_changed_generator_is_caught` checks the
smallest of these.

When a generator is changed on purpose, bump the problem's ``generator_version`` (it is part of the dataset
key, so caches and artifacts of the old data are not mixed with the new) and rewrite the file with
``python tests/test_dataset_repro.py``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import problems
from problems import base

STATS = Path(__file__).parent / "data" / "dataset_stats.json"
CONFIGS = {"kolmogorov": dict(n_traj=5, n_cycles=10), "shallow_water": dict(n_traj=5, n_cycles=10)}
RTOL, ATOL = 1e-7, 1e-9


def _stats(problem) -> dict:
    blob = base._generate(problem, progress=False)
    out = base.dataset_stats(blob)
    out["field_mean"] = blob["field_mean"].tolist()
    out["field_std"] = blob["field_std"].tolist()
    return out


def _flatten(d, prefix="") -> dict[str, float]:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = float(d)
    return out


def _mismatches(got: dict, want: dict) -> list[str]:
    g, w = _flatten(got), _flatten(want)
    if set(g) != set(w):
        return [f"different statistics: {sorted(set(g) ^ set(w))[:5]}"]
    return [f"{k}: {g[k]!r} != {w[k]!r}" for k in w
            if not math.isclose(g[k], w[k], rel_tol=RTOL, abs_tol=ATOL)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_regenerated_data_match_committed_statistics(name):
    want = json.loads(STATS.read_text())[name]
    problem = problems.get(name, **CONFIGS[name])
    assert want["key"] == problem.data_key()
    bad = _mismatches(_stats(problem), want["stats"])
    assert not bad, (f"{name}: regenerated data differ from the committed statistics ({len(bad)} values, e.g. "
                     f"{bad[:3]}); if the generator was changed on purpose, bump "
                     f"{type(problem).__name__}.generator_version and run `python tests/test_dataset_repro.py`")


def test_a_changed_generator_is_caught():
    """The initial field's amplitude changed by one part in a million: the comparison fails."""
    want = json.loads(STATS.read_text())["kolmogorov"]["stats"]
    problem = problems.get("kolmogorov", **CONFIGS["kolmogorov"])
    changed = dataclasses.replace(problem, ic_max_velocity=problem.ic_max_velocity * (1 + 1e-6))
    assert _mismatches(_stats(changed), want)


def test_generator_version_is_part_of_the_key(monkeypatch):
    from problems.kolmogorov import Kolmogorov
    pb = problems.get("kolmogorov")
    # version 1 keeps the keys the shipped networks were trained under
    assert pb.data_key() == "kolmogorov-8818cf78e696"
    assert problems.get("shallow_water").data_key() == "shallow_water-875a48596dbb"
    monkeypatch.setattr(Kolmogorov, "generator_version", 2)
    assert pb.data_key() != "kolmogorov-8818cf78e696"
    assert pb.data_key().startswith("kolmogorov-")


def test_dataset_records_its_checksum_and_statistics(tmp_path):
    pb = problems.get("kolmogorov", n=16, n_cycles=3, n_traj=5, spinup_time=0.4, data_seed=7)
    base._MEMO.pop(pb.data_key(), None)
    ds = pb.dataset(cache_dir=tmp_path, progress=False)
    assert ds.checksum == base.tensor_checksum({k: getattr(ds, k) for k in base.DATASET_TENSORS})
    assert ds.meta["generator_version"] == 1 and ds.meta["key"] == pb.data_key()
    assert len(ds.meta["stats"]["test"]["rms_t"]) == 4
    base._MEMO.pop(pb.data_key(), None)
    again = pb.dataset(cache_dir=tmp_path, progress=False)  # from the file, verified
    assert again.checksum == ds.checksum and torch.equal(again.test, ds.test)
    base._MEMO.pop(pb.data_key(), None)


def _write() -> None:
    torch.set_num_threads(1)
    out = {}
    for name, cfg in sorted(CONFIGS.items()):
        pb = problems.get(name, **cfg)
        out[name] = dict(config=cfg, key=pb.data_key(), stats=_stats(pb))
    STATS.parent.mkdir(exist_ok=True)
    STATS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {STATS}", file=sys.stderr)


if __name__ == "__main__":
    _write()
