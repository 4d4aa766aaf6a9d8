"""The artifact cache of the learned methods: trained networks on disk, their checksums and their data check.

A trained network set is an *artifact*: a folder ``<hash>/`` holding

- ``config.json``: ``kind``, ``method``, ``problem`` (label), ``data`` (the dataset key and, for observation
  encoders, the observer layout), ``train`` (the training hyperparameters), ``networks`` (``name -> constructor
  kwargs``: enough to rebuild every network), ``summary`` (test errors, training times) and provenance;
- ``weights.pt``: ``name -> state_dict``, float32;
- ``curve.csv``: the learning curve (one row per evaluation: stage, epoch, training seconds, losses, validation
  and test errors);
- ``log.txt``: the training log;
- ``SHA256SUMS``: the SHA-256 of every other file (``sha256sum -c SHA256SUMS`` verifies it by hand).

``config.json`` also records ``data_checksum``, the content checksum of the dataset the networks were trained
and scored on (:attr:`problems.base.Dataset.checksum`). Loading verifies the files (a corrupt cached artifact is
removed and retrained, a corrupt shipped one refused) and compares ``data_checksum`` with the data at hand; on a
difference the networks are re-scored on these data (:func:`check_data`).

``<hash>`` is :func:`assimbench.naming.content_hash` of ``(kind, method, data config, training config)``; the data
config is ``problem.data_key()`` plus, for encoders of observations, the observer layout and fields (never the
noise); the training config is a :class:`HashedConfig`'s ``identity()``. Lookup order (:func:`load_or_train`): the
artifacts shipped with the package (``methods/artifacts/<hash>``), then ``<cache_dir>/models/<hash>``, else train
and save to the cache. When a shipped artifact exists for the same method, kind and problem label under another
hash, a warning says that the hash no longer matches (and which settings differ) and that the network is trained
anew.

The training loop is :mod:`methods.train_loop`; the trainers sit beside their networks
(:mod:`methods.ldnet_train`, :mod:`methods.vae_train`); the CLI's entry point, ``bench train``, is
:func:`bench.train.train_method`.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from assimbench.naming import content_hash
from methods.train_loop import SnapshotRun, TrainLog
from problems.base import Dataset, Observer, default_cache_dir

log = logging.getLogger("assimbench.training")

#: artifacts shipped with the package (committed; a few MB in all)
SHIPPED_DIR = Path(__file__).resolve().parent / "artifacts"
ARTIFACT_FORMAT = 1
#: per-file checksums of an artifact folder, in ``sha256sum``'s format
SUMS_FILE = "SHA256SUMS"
#: re-scored test errors within this relative distance of the recorded ones: the data are equivalent
RESCORE_RTOL = 1e-3


# --------------------------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Artifact:
    """A loaded (or freshly trained) artifact: its folder, hash, config and weights."""

    key: str
    path: Path | None
    config: dict
    weights: dict[str, dict[str, torch.Tensor]]
    source: Literal["shipped", "cache", "trained"]
    curve: list[dict] = field(default_factory=list)
    #: ``file -> sha256`` from ``SHA256SUMS`` (empty: an artifact written before checksums existed)
    sums: dict[str, str] = field(default_factory=dict)
    #: how the test errors in ``config['summary']`` relate to the data at hand (see :func:`check_data`)
    data_note: str = ""


class ArtifactError(RuntimeError):
    """A shipped artifact whose files do not match their checksums: refused, never used."""


def artifact_hash(kind: str, method: str, data: dict, train: dict) -> str:
    """Content hash of an artifact's identity."""
    return content_hash(kind, method, data, train, ARTIFACT_FORMAT, n=16)


def cache_folder(cache_dir: Path | str | None) -> Path:
    """The cache folder: ``cache_dir`` where given, else the default (``$ASSIMBENCH_CACHE`` or ~/.cache)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def checkpoint_dir(kind: str, method: str, data: dict, train: dict, cache_dir: Path | str | None) -> Path:
    """Where the training of the artifact ``(kind, method, data, train)`` checkpoints and resumes from
    (``<cache>/checkpoints/<hash>``): an interrupted ``bench train`` continues where it stopped, and a run of
    ``scripts/ldnet_ablation.py --for-recipe`` hands its finished training to the recipe's artifact."""
    return cache_folder(cache_dir) / "checkpoints" / artifact_hash(kind, method, data, train)


def observer_layout(observer: Observer, times: bool = False) -> dict:
    """The parts of an observer that determine *where and what* it observes (not its noise); with ``times`` (a
    network that reads the observation sequence) also *when*: ``obs_every``, recorded only when it is not 1 (so
    the every-cycle layouts keep the hashes they always had)."""
    out = dict(layout=observer.layout, coverage=observer.coverage, stride=observer.stride,
               fields=list(observer.obs_fields), operator=observer.operator,
               layout_seed=observer.layout_seed, n_obs=observer.n_obs)
    if times and observer.obs_every != 1:
        out["obs_every"] = observer.obs_every
    return out


def _read_curve(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _num(v: str) -> Any:
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except (TypeError, ValueError):
        return v


def write_curve(rows: list[dict], path: Path | str) -> None:
    """Write learning-curve rows (dicts, possibly with different keys) as one CSV."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path) -> dict[str, str]:
    """Write ``SHA256SUMS`` (``sha256sum``'s format: ``sha256sum -c SHA256SUMS`` in the folder verifies it) over
    every file of an artifact folder; returns ``file -> sha256``."""
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.name != SUMS_FILE and not p.name.startswith("."))
    sums = {n: file_sha256(folder / n) for n in names}
    tmp = folder / f".{SUMS_FILE}.tmp{os.getpid()}"
    tmp.write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    os.replace(tmp, folder / SUMS_FILE)
    return sums


def verify_checksums(folder: Path) -> tuple[dict[str, str], str]:
    """``(file -> sha256, "")`` when ``SHA256SUMS`` covers ``config.json`` and ``weights.pt`` and every listed
    file matches; ``({}, "")`` when the folder has no ``SHA256SUMS`` (written before checksums existed);
    ``({}, what is wrong)`` otherwise."""
    path = folder / SUMS_FILE
    if not path.exists():
        return {}, ""
    sums = {}
    for line in path.read_text().splitlines():
        h, _, name = line.partition("  ")
        if len(h) != 64 or not name:
            return {}, f"{SUMS_FILE} is garbled"
        sums[name] = h
    for name in ("config.json", "weights.pt"):
        if name not in sums:
            return {}, f"{SUMS_FILE} does not list {name}"
    for name, h in sums.items():
        f = folder / name
        if not f.exists():
            return {}, f"{name} is missing"
        if file_sha256(f) != h:
            return {}, f"{name} does not match its checksum in {SUMS_FILE}"
    return sums, ""


def read_artifact(path: Path, source: Literal["shipped", "cache"]) -> Artifact:
    """Load an artifact folder after verifying its ``SHA256SUMS`` (raises :class:`ArtifactError` when a file does
    not match; an artifact without the file loads unverified, ``sums`` empty, and is re-scored on use)."""
    sums, problem = verify_checksums(path)
    if problem:
        raise ArtifactError(f"{source} artifact {path} is corrupt: {problem}")
    cfg = json.loads((path / "config.json").read_text())
    weights = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    return Artifact(cfg["hash"], path, cfg, weights, source, _read_curve(path / "curve.csv"), sums)


def save_artifact(root: Path, art: Artifact, log_lines: list[str]) -> Path:
    """Write ``art`` atomically to ``root/<hash>`` (a temporary folder renamed into place), with ``SHA256SUMS``."""
    dest = root / art.key
    tmp = root / f".{art.key}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    weights = {name: {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
                      for k, v in sd.items()} for name, sd in art.weights.items()}
    torch.save(weights, tmp / "weights.pt")
    (tmp / "config.json").write_text(json.dumps(art.config, indent=2, sort_keys=True, default=str))
    write_curve(art.curve, tmp / "curve.csv")
    (tmp / "log.txt").write_text("\n".join(log_lines) + "\n")
    art.sums = write_checksums(tmp)
    if dest.exists():  # another worker won the race: keep theirs
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, dest)
    art.path = dest
    return dest


def _rewrite_config(art: Artifact, cfg: dict) -> None:
    """Replace a cached artifact's ``config.json`` (atomically) and refresh its ``SHA256SUMS``."""
    tmp = art.path / f".config.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    os.replace(tmp, art.path / "config.json")
    art.sums = write_checksums(art.path)


def _match_marker(cache_root: Path, art: Artifact, data_checksum: str) -> Path:
    """Where the re-scoring of ``art`` (these weights and recorded errors) on these data is remembered (JSON)."""
    ident = content_hash(art.key, art.sums.get("weights.pt", ""), art.sums.get("config.json", ""), data_checksum,
                         n=32)
    return cache_root / ".rescored" / f"{ident}.json"


_WARNED: set[str] = set()


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg, *args)


def check_data(art: Artifact, dataset: Dataset | None, rescore: Callable[[Artifact], dict] | None,
               cache_root: Path) -> Artifact | None:
    """Make sure ``art``'s test errors describe ``dataset`` (the data at hand); returns the artifact, or None for
    a cached artifact that does not fit these data (it is removed: the caller trains anew).

    Same ``data_checksum`` as the dataset: the recorded errors were measured on these very data. Otherwise (other
    or no recorded checksum, or an artifact without ``SHA256SUMS``) ``rescore(art)`` measures the test errors on
    the data at hand (once: the result is remembered in the cache): within a relative ``RESCORE_RTOL`` of the
    recorded ones the data are equivalent (rounding differences between machines) and nothing is said; else one
    warning line says so, and a shipped artifact is used with the measured errors in ``config['summary']`` (the
    recorded ones under ``summary['recorded']``), while a cached one is removed and trained anew.
    """
    if dataset is None or not dataset.checksum:
        art.data_note = "recorded test errors (no dataset to compare with)"
        return art
    rec, ds_sum = art.config.get("data_checksum"), dataset.checksum
    here = f"{dataset.key}, checksum {ds_sum[:12]}"
    if rec == ds_sum and art.sums:
        art.data_note = f"recorded test errors, measured on these data ({here})"
        return art
    what = (f"was trained on other data (checksum {rec[:12]}) than" if rec
            else "records no checksum of its training data, and its test errors do not reproduce on")
    label = (f"{art.source} {art.config.get('kind')} artifact {art.key} ({art.config.get('method')} on "
             f"{art.config.get('problem')})")
    marker = _match_marker(cache_root, art, ds_sum)
    result = None
    if art.sums and marker.exists():
        try:
            result = json.loads(marker.read_text())
        except (OSError, ValueError):
            result = None
    recorded = dict(art.config.get("summary", {}))
    if result is None:
        if rescore is None:
            _warn_once(f"{art.key}:{ds_sum}", "%s %s and cannot be re-scored on this machine's %s: its recorded "
                       "test errors may not hold for these data", label,
                       f"was trained on other data (checksum {rec[:12]})" if rec else "records no data checksum",
                       here)
            art.data_note = "recorded test errors, possibly of other data"
            return art
        measured = {k: float(v) for k, v in rescore(art).items()}
        common = [k for k in measured if isinstance(recorded.get(k), (int, float))]
        same = bool(common) and all(math.isclose(measured[k], recorded[k], rel_tol=RESCORE_RTOL, abs_tol=1e-6)
                                    for k in common)
        result = dict(measured=measured, same=same)
        if art.sums:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, marker)
    measured = result["measured"]
    if result["same"]:
        if art.source == "cache" and (not rec or not art.sums):  # an older cache entry: record the check
            _rewrite_config(art, dict(art.config, data_checksum=ds_sum))
        art.data_note = f"test errors re-scored on these data ({here}): as recorded"
        return art
    common = [k for k in measured if isinstance(recorded.get(k), (int, float))]
    k = next((k for k in ("test_rrmse_phys", "test_rel") if k in common), common[0] if common else None)
    numbers = (f"test {k} {recorded[k]:.3g} as recorded, {measured[k]:.3g} on the data at hand" if k
               else "its recorded test errors do not say")
    if art.source == "cache":
        log.warning("%s %s this machine's %s: %s; removing it and training anew", label, what, here, numbers)
        shutil.rmtree(art.path, ignore_errors=True)
        return None
    _warn_once(f"{art.key}:{ds_sum}", "%s %s this machine's %s: %s; it is used, with the measured errors "
               "reported (retrain with `bench train` for a network of these data)", label, what, here, numbers)
    art.config = dict(art.config, summary=dict(recorded, **measured,
                                               recorded={k: recorded.get(k) for k in measured}))
    art.data_note = f"test errors re-scored on these data ({here}); the recorded ones were of other data"
    return art


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _warn_stale(kind: str, method: str, problem_label: str, key: str, data: dict, train: dict) -> None:
    """Warn when a shipped artifact matches the method/kind/problem but not the hash."""
    if not SHIPPED_DIR.exists():
        return
    for cfg_path in sorted(SHIPPED_DIR.glob("*/config.json")):
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (cfg.get("kind"), cfg.get("method"), cfg.get("problem")) == (kind, method, problem_label) \
                and cfg.get("hash") != key:
            diff = _dict_diff({"data": cfg.get("data", {}), "train": cfg.get("train", {})},
                              {"data": data, "train": train})
            log.warning("shipped %s artifact for %s on %s (%s) no longer matches: hash %s != %s (%s); training "
                        "anew", kind, method, problem_label, cfg_path.parent.name, cfg.get("hash"), key,
                        "; ".join(diff[:8]) or "format changed")


def artifact_folders(key: str, cache_dir: Path | str | None) -> tuple[Path, Path]:
    """Where the artifact ``key`` lies, in the order it is looked up: ``(shipped, cached)`` folders."""
    return SHIPPED_DIR / key, cache_folder(cache_dir) / "models" / key


def load_or_train(kind: str, method: str, problem_label: str, data: dict, train: dict,
                  trainer: Callable[[TrainLog], tuple[dict[str, nn.Module], dict, dict]],
                  cache_dir: Path | str | None, progress: bool = True, *, dataset: Dataset | None = None,
                  rescore: Callable[[Artifact], dict] | None = None) -> Artifact:
    """Shipped artifact, else cached, else ``trainer(log) -> (networks, network configs, summary)`` and save.

    ``networks`` maps a name to a module whose ``state_dict`` is stored; ``network configs`` maps the same
    names to constructor kwargs. The returned artifact's ``weights`` are what the caller loads.

    Every artifact's files are verified against its ``SHA256SUMS``: a corrupt cached artifact is removed and
    trained anew (with a warning line), a corrupt shipped one is refused (:class:`ArtifactError`). ``dataset``
    is the data at hand: a new artifact records its checksum (``data_checksum``), and a loaded one whose
    recorded checksum differs is re-scored with ``rescore(artifact) -> test errors`` (see :func:`check_data`).
    """
    key = artifact_hash(kind, method, data, train)
    shipped, cached = artifact_folders(key, cache_dir)
    root = cached.parent
    if (shipped / "config.json").exists():
        return check_data(read_artifact(shipped, "shipped"), dataset, rescore, root)
    if (cached / "config.json").exists():
        try:
            art = read_artifact(cached, "cache")
        except Exception as e:  # a corrupt cache entry is retrained, not trusted
            log.warning("cached %s artifact %s is unusable (%s): removing it and training anew", kind, cached, e)
            shutil.rmtree(cached, ignore_errors=True)
        else:
            checked = check_data(art, dataset, rescore, root)
            if checked is not None:
                return checked
    _warn_stale(kind, method, problem_label, key, data, train)
    tlog = TrainLog(progress=progress)
    tlog.info(f"training {kind} for {method} on {problem_label} (artifact {key})")
    t0 = time.perf_counter()
    nets, net_cfgs, summary = trainer(tlog)
    summary = dict(summary, train_wall_s=time.perf_counter() - t0, train_opt_s=tlog.train_s,
                   train_cpu_s=tlog.train_cpu_s)
    cfg = dict(hash=key, kind=kind, method=method, problem=problem_label, data=data, train=train,
               networks=net_cfgs, summary=summary, format=ARTIFACT_FORMAT, torch=torch.__version__,
               created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               threads=torch.get_num_threads(),
               data_checksum=dataset.checksum if dataset is not None and dataset.checksum else None)
    art = Artifact(key, None, cfg, {n: m.state_dict() for n, m in nets.items()}, "trained", tlog.rows)
    save_artifact(root, art, tlog.lines)
    art.data_note = "test errors measured on these data at training" if cfg["data_checksum"] else \
        "test errors measured at training"
    tlog.info(f"saved {kind} artifact to {art.path}")
    return art




def snapshot_run(kind: str, method: str, data: dict, cfg: Any, cache_dir: Path | str | None) -> SnapshotRun | None:
    """Where the snapshots of the training run of ``cfg`` (a :class:`HashedConfig` with a ``train_fraction``) keep
    the run's state: ``<cache_dir>/models/runs/<hash of the whole run's artifact>``. None for the whole run
    (``train_fraction`` 1) when no snapshot of it was taken (nothing to continue from)."""
    full = dataclasses.replace(cfg, train_fraction=1.0)
    root = cache_folder(cache_dir) / "models" / "runs"
    run = SnapshotRun(root / artifact_hash(kind, method, data, full.identity()))
    return run if cfg.train_fraction < 1 or run.folder.is_dir() else None


class HashedConfig:
    """A training config whose identity (the dict hashed into the artifact key) leaves out the fields added after
    artifacts were shipped (``LATER_FIELDS``) while they are at their defaults, so shipped hashes stay valid."""

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    def identity(self) -> dict:
        """The dict hashed into the artifact key (later-added fields only when they differ from the default), in the
        form an artifact's ``config.json`` stores it (tuples as lists), so a stored config compares equal to it."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        for k in self.LATER_FIELDS:
            if d[k] == getattr(type(self), k):
                d.pop(k)
        return d

