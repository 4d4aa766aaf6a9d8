"""Offline training shared by the learned methods: artifact cache, training loop, LDNet and encoder trainers.

Artifact cache
--------------
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
noise). Lookup order (:func:`load_or_train`): the artifacts shipped with the package (``methods/artifacts/<hash>``),
then ``<cache_dir>/models/<hash>``, else train and save to the cache. When a shipped artifact exists for the same
method, kind and problem label under another hash, a warning says that the hash no longer matches (and which
settings differ) and that the network is trained anew.

The CLI's entry point, ``bench train``, is :func:`bench.train.train_method`.
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
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from assimbench.errors import ConfigError
from assimbench.naming import content_hash
from problems.base import Dataset, Observer, Problem, default_cache_dir

if TYPE_CHECKING:
    from methods.ldnet import LDNet, ObsEncoder

log = logging.getLogger("assimbench.training")

#: artifacts shipped with the package (committed; a few MB in all)
SHIPPED_DIR = Path(__file__).resolve().parent / "artifacts"
ARTIFACT_FORMAT = 1
#: per-file checksums of an artifact folder, in ``sha256sum``'s format
SUMS_FILE = "SHA256SUMS"
#: re-scored test errors within this relative distance of the recorded ones: the data are equivalent
RESCORE_RTOL = 1e-3

Schedule = Literal["constant", "cosine", "onecycle", "step"]


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


def observed_cycles(observer: Observer) -> slice:
    """The entries of a per-cycle sequence over ``t = 1 .. T`` that the observer observes (``t = k, 2k, ...``)."""
    return slice(observer.obs_every - 1, None, observer.obs_every)


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


def load_or_train(kind: str, method: str, problem_label: str, data: dict, train: dict,
                  trainer: Callable[["TrainLog"], tuple[dict[str, nn.Module], dict, dict]],
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
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models"
    shipped = SHIPPED_DIR / key
    if (shipped / "config.json").exists():
        return check_data(read_artifact(shipped, "shipped"), dataset, rescore, root)
    cached = root / key
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


# --------------------------------------------------------------------------------------------------------------
# Named training recipes
# --------------------------------------------------------------------------------------------------------------
def recipe_values(recipes: dict, recipe: str, problem_name: str | None) -> dict[str, Any]:
    """The field values of ``recipe`` for ``problem_name`` (its ``"*"`` entries, then the problem's own)."""
    if recipe not in recipes:
        raise ConfigError(f"unknown training recipe {recipe!r}; valid: {', '.join(sorted(recipes))}")
    out = dict(recipes[recipe].get("*", {}))
    if problem_name is not None:
        out.update(recipes[recipe].get(problem_name, {}))
    return out


def resolve_recipe(method, recipes: dict, problem_name: str | None) -> dict[str, Any]:
    """Training values of ``method`` under its ``recipe``: a field the user set (it differs from the class
    default) wins; a field at its class default takes the recipe's value; keys that are not fields of the method
    are returned as given by the recipe (they configure the trainer directly)."""
    vals = recipe_values(recipes, method.recipe, problem_name)
    defaults = {f.name: f.default for f in dataclasses.fields(method) if f.metadata.get("train")}
    out = {k: getattr(method, k) for k in defaults}
    for k, v in vals.items():
        if k not in defaults or getattr(method, k) == defaults[k]:
            out[k] = v
    out["recipe"] = method.recipe
    return out


# --------------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------------
class TrainLog:
    """Learning-curve rows, log lines and the cumulative optimisation time of one training pipeline."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.rows: list[dict] = []
        self.lines: list[str] = []
        self.train_s = 0.0
        self.train_cpu_s = 0.0  # CPU seconds of this process in the optimisation steps (robust to a shared machine)
        self.t0 = time.perf_counter()

    def info(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:8.1f}s] {msg}"
        self.lines.append(line)
        log.info(msg)
        if self.progress:
            from tqdm.auto import tqdm
            tqdm.write(line, file=sys.stderr)

    def record(self, **row: Any) -> None:
        row = dict(train_s=round(self.train_s, 3), train_cpu_s=round(self.train_cpu_s, 3),
                   wall_s=round(time.perf_counter() - self.t0, 3), **row)
        self.rows.append(row)


def lr_lambda(schedule: Schedule, total: int, final_frac: float = 1e-2, warmup: float = 0.02,
              step_gamma: float = 0.6) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimisation step ``i`` of ``total`` (``step``: ten decays by
    ``step_gamma`` spread evenly over the run, i.e. a StepLR every ``total / 10`` steps)."""
    n_warm = max(1, int(warmup * total))

    def f(i: int) -> float:
        if schedule == "constant":
            return 1.0
        if schedule == "step":  # LD-EnSF: StepLR, 10 decays of 0.6 over the run
            return step_gamma ** min(9, int(10 * i / max(total, 1)))
        if schedule == "onecycle":  # 25 % linear warm-up from lr/25, then cosine to lr * final_frac
            w = max(1, int(0.25 * total))
            if i < w:
                return 0.04 + 0.96 * i / w
            p = min(1.0, (i - w) / max(1, total - w))
            return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p))
        # cosine with a short warm-up
        if i < n_warm:
            return (i + 1) / n_warm
        p = min(1.0, (i - n_warm) / max(1, total - n_warm))
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_stage(name: str, modules: dict[str, nn.Module], params: list[nn.Parameter],
              batches: Callable[[int], Iterable[torch.Tensor]], *, epochs: int, steps_per_epoch: int, lr: float,
              schedule: Schedule, evaluate: Callable[[], dict[str, float]], select: str, eval_every: int,
              tlog: TrainLog, weight_decay: float = 0.0, grad_clip: float = 0.0,
              checkpoint: Path | str | None = None, rng: torch.Generator | None = None,
              step_gamma: float = 0.6) -> dict[str, float]:
    """Adam over ``epochs`` epochs of ``batches(epoch)`` (each yields scalar losses), keeping the best weights.

    Every ``eval_every`` epochs (and after the last) ``evaluate()`` is called outside the training clock; its
    ``select`` entry (lower is better) picks the weights restored into ``modules`` at the end. Shows a tqdm bar
    with the running loss, the last validation error and the time estimate; returns the best evaluation.

    ``checkpoint``: a file written after every evaluation (weights, optimiser, schedule, best weights, ``rng``'s
    state, the learning curve and the optimisation time so far); when it exists at the start, training resumes
    from it, so an interrupted run continues and reaches the same weights as an uninterrupted one. Calling again
    with a larger ``epochs`` continues a finished run (the schedule is re-laid over the new total).
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay > 0 \
        else torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, epochs * steps_per_epoch,
                                                             step_gamma=step_gamma))
    best: dict[str, float] = {select: float("inf")}
    best_state: dict[str, dict] = {}
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        for k, m in modules.items():
            m.load_state_dict(st["modules"][k])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        best, best_state, start = st["best"], st["best_state"], st["epoch"]
        if rng is not None:
            rng.set_state(st["rng"])
        tlog.rows, tlog.lines, tlog.train_s = st["rows"], st["lines"], st["train_s"]
        tlog.train_cpu_s = st.get("train_cpu_s", 0.0)
        tlog.info(f"{name}: resumed from {ckpt} at epoch {start} ({tlog.train_s:.0f} s of optimisation)")
    bar = None
    if tlog.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, initial=min(start, epochs), desc=name, unit="ep", leave=False,
                   dynamic_ncols=True)
    ev: dict[str, float] = {}
    for ep in range(start, epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        tot, n = 0.0, 0
        for loss in batches(ep):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            tot += float(loss.detach())
            n += 1
        tlog.train_s += time.perf_counter() - t0
        tlog.train_cpu_s += time.process_time() - c0
        train_loss = tot / max(n, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{name}: training loss became {train_loss} at epoch {ep}; lower the lr")
        if (ep + 1) % eval_every == 0 or ep == epochs - 1:
            with torch.no_grad():
                ev = evaluate()
            tlog.record(stage=name, epoch=ep + 1, lr=opt.param_groups[0]["lr"], train_loss=train_loss, **ev)
            if ev[select] < best[select]:
                best = dict(ev, epoch=ep + 1)
                best_state = {k: {n_: t.detach().clone() for n_, t in m.state_dict().items()}
                              for k, m in modules.items()}
            tlog.lines.append(f"{name} ep {ep + 1}: loss {train_loss:.3e} "
                              + " ".join(f"{k} {v:.4g}" for k, v in ev.items()))
            if ckpt is not None:
                _save_checkpoint(ckpt, dict(
                    modules={k: m.state_dict() for k, m in modules.items()}, opt=opt.state_dict(),
                    sched=sched.state_dict(), best=best, best_state=best_state, epoch=ep + 1,
                    rng=rng.get_state() if rng is not None else None, rows=tlog.rows, lines=tlog.lines,
                    train_s=tlog.train_s, train_cpu_s=tlog.train_cpu_s))
        if bar is not None:
            bar.set_postfix_str(f"loss {train_loss:.2e} {select} {ev.get(select, float('nan')):.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    for k, m in modules.items():
        if k in best_state:
            m.load_state_dict(best_state[k])
    tlog.info(f"{name}: best {select} {best[select]:.4g} at epoch {best.get('epoch')} "
              f"({tlog.train_s:.0f} s of optimisation so far)")
    return best


# --------------------------------------------------------------------------------------------------------------
# LDNet data and metrics
# --------------------------------------------------------------------------------------------------------------
def param_normalizer(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) float64 of the parameter box; ``u_n = 2 (u - lo)/(hi - lo) - 1``."""
    lo, hi = problem.param_bounds
    return lo.to(torch.float64), hi.to(torch.float64)


def normalize_params(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    lo, hi = lo.to(u.device, u.dtype), hi.to(u.device, u.dtype)
    return 2 * (u - lo) / (hi - lo) - 1


def denormalize_params(un: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    lo, hi = lo.to(un.device, un.dtype), hi.to(un.device, un.dtype)
    return lo + (un + 1) * (hi - lo) / 2


def to_points(problem: Problem, dataset: Dataset, snaps: torch.Tensor) -> torch.Tensor:
    """Normalised, point-major view: ``(n, T+1, *state_shape)`` physical -> ``(n, T+1, n_points, C)``."""
    nd = len(problem.state_shape)
    z = dataset.normalize(snaps.to(torch.float32), nd)
    n, T1 = z.shape[:2]
    if nd == 1:
        return z.reshape(n, T1, -1, 1).contiguous()
    return z.reshape(n, T1, problem.n_fields, -1).transpose(-1, -2).contiguous()


def from_points(problem: Problem, z: torch.Tensor) -> torch.Tensor:
    """Inverse layout of :func:`to_points`: ``(..., n_points, C) -> (..., *state_shape)`` (still normalised)."""
    lead = z.shape[:-2]
    if len(problem.state_shape) == 1:
        return z.reshape(*lead, *problem.state_shape)
    return z.transpose(-1, -2).reshape(*lead, *problem.state_shape)


def rel_l2(pred: torch.Tensor, true: torch.Tensor, mean: torch.Tensor | None = None,
           std: torch.Tensor | None = None) -> torch.Tensor:
    """Per-snapshot relative L2 over points and fields ``(..., n, C) -> (...)``.

    With ``mean``/``std`` ``(C,)`` the error is measured in physical units (all fields pooled, as the paper).
    """
    if std is not None:
        s = std.to(pred.device, pred.dtype)
        err = (pred - true) * s
        ref = true * s + mean.to(pred.device, pred.dtype)
    else:
        err, ref = pred - true, true
    return (err.pow(2).sum((-1, -2)) / ref.pow(2).sum((-1, -2)).clamp_min(1e-30)).sqrt()


# --------------------------------------------------------------------------------------------------------------
# LDNet training
# --------------------------------------------------------------------------------------------------------------
class HashedConfig:
    """A training config whose identity (the dict hashed into the artifact key) leaves out the fields added after
    artifacts were shipped (``LATER_FIELDS``) while they are at their defaults, so shipped hashes stay valid."""

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    def identity(self) -> dict:
        """The dict hashed into the artifact key (later-added fields only when they differ from the default)."""
        d = dataclasses.asdict(self)
        for k in self.LATER_FIELDS:
            if d[k] == getattr(type(self), k):
                d.pop(k)
        return d


@dataclass(frozen=True)
class LDNetTrainConfig(HashedConfig):
    """Everything that determines a trained LDNet (architecture + optimisation).

    ``points``: random points per snapshot per step (0 = the full grid); ``batch_traj``: trajectories per step
    (the latent rollout runs over all times of each); ``rec_epochs``: stage-2 epochs retraining ``R`` with ``F``
    frozen; ``lbfgs_iters``: L-BFGS iterations on ``R`` and ``F`` after Adam (full batch of fixed points);
    ``amp``: bfloat16 autocast in the training steps (2-3x faster on CPUs with AMX/AVX512-BF16; evaluation and
    the stored weights stay float32); ``film``: latent FiLM modulation of every hidden layer of ``R`` (see
    :class:`methods.ldnet.ResMLP`); ``point_sampling``: ``uniform`` points per snapshot, or ``signal``: half
    uniform, half drawn with probability proportional to the point's deviation from the field's spatial median
    in that snapshot (follows the wave fronts; the loss is the plain mean over the drawn points), or ``fixed``:
    one random subset of ``points`` grid points drawn once before training and used for every snapshot of every
    step (the LD-EnSF authors' recipe); ``norm``: the units the loss is measured in, ``zscore`` (per field, the
    dataset's normalisation) or ``minmax`` (per field mapped to [-1, 1] by the training split's range; the
    network stores the map, its outputs stay in z-score units); ``step_gamma``: the decay factor of the ``step``
    schedule; ``n_shifts``: frames of the ``registered`` decoder; ``rec_params``: the reconstruction network decodes
    ``(s, u)`` instead of ``s`` (LD-EnSF's analysis state holds both); ``extra_traj``: training trajectories added to
    the dataset's training split (simulated with another data seed); ``recipe``: the name of the recipe these
    values came from (see ``methods.ldensf.RECIPES``), recorded in the identity.
    """

    latent_dim: int = 10
    dt_lat: float = 0.1
    dyn_width: int = 64
    dyn_depth: int = 4
    rec_arch: str = "resmlp"
    rec_width: int = 64
    rec_depth: int = 4
    n_basis: int = 64
    n_fourier: int = 0
    fourier_scale: float = 1.0
    train_fourier: bool = True
    act: str = "relu"
    epochs: int = 100
    batch_traj: int = 8
    points: int = 256
    lr: float = 3e-3
    schedule: str = "cosine"
    weight_decay: float = 0.0
    rec_epochs: int = 0
    rec_lr: float = 1e-3
    lbfgs_iters: int = 0
    amp: bool = False
    eval_every: int = 5
    eval_points: int = 256
    seed: int = 0
    film: bool = False
    point_sampling: str = "uniform"
    n_shifts: int = 0
    rec_params: bool = False
    extra_traj: int = 0
    norm: str = "zscore"
    step_gamma: float = 0.6
    recipe: str = "cpu"

    #: fields added after artifacts were shipped: left out of the identity (hash) while at their defaults
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("film", "point_sampling", "n_shifts", "rec_params", "extra_traj",
                                               "norm", "step_gamma", "recipe")



def extra_training_data(problem: Problem, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` more trajectories ``(snapshots, params)`` from the problem's prior, simulated with another data seed
    (``data_seed + 1``; cached like any dataset). All three splits of that dataset are returned together."""
    more = dataclasses.replace(problem, n_traj=max(int(n), 5), data_seed=problem.data_seed + 1).dataset()
    parts = [more.split(name) for name in ("train", "valid", "test")]
    x = torch.cat([a for a, _ in parts])[:n]
    p = torch.cat([b for _, b in parts])[:n]
    return x, p


def _gather_points(Z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``Z (b, T1, P, C)``, ``idx (b, T1, n)`` -> ``(b, T1, n, C)``."""
    return torch.gather(Z, 2, idx.unsqueeze(-1).expand(*idx.shape, Z.shape[-1]))


def train_ldnet(problem: Problem, dataset: Dataset, cfg: LDNetTrainConfig, tlog: TrainLog,
                device: torch.device | str = "cpu", checkpoint_dir: Path | str | None = None
                ) -> tuple["LDNet", dict]:
    """Train an LDNet on the training split, select by validation, report test errors.

    Returns the network (best validation weights) and a summary with ``test_rrmse_norm`` and
    ``test_rrmse_phys`` (time- and trajectory-averaged per-snapshot relative L2 on the full test grid, in
    normalised and physical units). ``checkpoint_dir``: the Adam stage checkpoints there (``ldnet.pt``) and
    resumes from it (see :func:`run_stage`). ``cfg.extra_traj > 0`` adds that many training trajectories,
    simulated from the same prior with another data seed (the validation and test splits are unchanged).
    """
    from methods.ldnet import LDNet
    g = torch.Generator().manual_seed(cfg.seed)
    coords = problem.coords().to(torch.float64)
    lo_c, hi_c = coords.min(0).values, coords.max(0).values
    net = LDNet(cfg.latent_dim, problem.n_params, problem.n_fields, coords.shape[1], cfg.dt_lat,
                lo_c.tolist(), hi_c.tolist(), cfg.dyn_width, cfg.dyn_depth, cfg.rec_arch, cfg.rec_width,
                cfg.rec_depth, cfg.n_fourier, cfg.fourier_scale, cfg.train_fourier, cfg.n_basis, cfg.act,
                cfg.seed, film=cfg.film, n_shifts=cfg.n_shifts, rec_params=cfg.rec_params).to(device)
    xi = net.normalize_coords(coords.to(device, torch.float32))                     # (P, k)
    p_lo, p_hi = param_normalizer(problem)
    splits = {}
    for name in ("train", "valid", "test"):
        x, p = dataset.split(name)
        splits[name] = (to_points(problem, dataset, x).to(device),
                        normalize_params(p, p_lo, p_hi).to(device, torch.float32))
    if cfg.extra_traj > 0:
        more = extra_training_data(problem, cfg.extra_traj)
        x, p = more
        Ztr, Utr = splits["train"]
        splits["train"] = (torch.cat([Ztr, to_points(problem, dataset, x).to(device)]),
                           torch.cat([Utr, normalize_params(p, p_lo, p_hi).to(device, torch.float32)]))
        del x, p, more
    Ztr, Utr = splits["train"]
    n_tr, T1, P, C = Ztr.shape
    n_pts = P if cfg.points <= 0 or cfg.points >= P else cfg.points
    from assimbench.errors import ConfigError
    if cfg.point_sampling not in ("uniform", "signal", "fixed"):
        raise ConfigError(f"point_sampling={cfg.point_sampling!r}; valid: uniform, signal, fixed")
    if cfg.norm not in ("zscore", "minmax"):
        raise ConfigError(f"norm={cfg.norm!r}; valid: zscore, minmax")
    if cfg.norm == "minmax":  # the network's own output map: z = raw * scale + shift (z-score units)
        zmin = Ztr.amin(dim=(0, 1, 2)).float().cpu()
        zmax = Ztr.amax(dim=(0, 1, 2)).float().cpu()
        net.set_output_map(((zmax - zmin) / 2).clamp_min(1e-12).tolist(), ((zmax + zmin) / 2).tolist())
    out_scale = net.out_scale.to(device)
    fixed_idx = torch.randperm(P, generator=g)[:n_pts].to(device) \
        if cfg.point_sampling == "fixed" and n_pts < P else None
    signal_w = None
    if cfg.point_sampling == "signal" and n_pts < P:  # (n_tr, T1, P) sampling weights, fixed for the run
        dev_ = (Ztr - Ztr.median(dim=2, keepdim=True).values).abs().sum(-1)
        signal_w = (dev_ / dev_.sum(-1, keepdim=True).clamp_min(1e-30)).float().cpu()
    mean, std = dataset.field_mean.to(torch.float32), dataset.field_std.to(torch.float32)
    tlog.info(f"LDNet: {sum(p.numel() for p in net.parameters())} parameters; data {n_tr} x {T1} snapshots x "
              f"{P} points x {C} fields; {n_pts} points per snapshot, {cfg.batch_traj} trajectories per step")

    # fixed evaluation points per snapshot (validation selects, test is the curve)
    ge = torch.Generator().manual_seed(cfg.seed + 7919)
    eval_sets = {}
    n_tr_eval = min(n_tr, max(splits["valid"][0].shape[0], 1))  # a fixed training subset: the train error
    splits["train_eval"] = (Ztr[:n_tr_eval], Utr[:n_tr_eval])
    for name in ("valid", "test", "train_eval"):
        Z, U = splits[name]
        if cfg.eval_points <= 0 or cfg.eval_points >= P:
            eval_sets[name] = (Z, U, None)
        else:
            idx = torch.randint(P, (Z.shape[0], T1, cfg.eval_points), generator=ge).to(device)
            eval_sets[name] = (_gather_points(Z, idx), U, idx)

    def predict(U: torch.Tensor, idx: torch.Tensor | None, bs: int = 8) -> torch.Tensor:
        outs = []
        for i in range(0, U.shape[0], bs):
            s = net.rollout(U[i:i + bs], T1 - 1)                                    # (b, T1, d_s)
            x = xi if idx is None else xi[idx[i:i + bs]]
            outs.append(net.reconstruct(s, x, u=U[i:i + bs]))
        return torch.cat(outs)

    def evaluate() -> dict[str, float]:
        out = {}
        for name, (Z, U, idx) in eval_sets.items():
            pred = predict(U, idx)
            key = "train" if name == "train_eval" else name
            out[f"{key}_rrmse"] = float(rel_l2(pred, Z).mean())
            if name != "valid":
                out[f"{key}_rrmse_phys"] = float(rel_l2(pred, Z, mean, std).mean())
        return out

    def batches(ep: int) -> Iterable[torch.Tensor]:
        perm = torch.randperm(n_tr, generator=g)
        for i in range(0, n_tr, cfg.batch_traj):
            b = perm[i:i + cfg.batch_traj].to(device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.amp):
                s = net.rollout(Utr[b], T1 - 1)
                if n_pts == P:
                    pred, true = net.reconstruct(s, xi, u=Utr[b]), Ztr[b]
                elif fixed_idx is not None:
                    pred, true = net.reconstruct(s, xi[fixed_idx], u=Utr[b]), Ztr[b][:, :, fixed_idx]
                else:
                    idx = torch.randint(P, (len(b), T1, n_pts), generator=g).to(device)
                    if signal_w is not None:  # replace the second half by signal-following draws
                        k = n_pts // 2
                        w = signal_w[b.cpu()].reshape(-1, P)
                        drawn = torch.multinomial(w, k, replacement=True, generator=g)
                        idx[..., n_pts - k:] = drawn.reshape(len(b), T1, k).to(device)
                    pred, true = net.reconstruct(s, xi[idx], u=Utr[b]), _gather_points(Ztr[b], idx)
            yield ((pred.float() - true) / out_scale).pow(2).mean()

    steps = math.ceil(n_tr / cfg.batch_traj)
    best = run_stage("ldnet", {"ldnet": net}, list(p for p in net.parameters() if p.requires_grad), batches,
                     epochs=cfg.epochs, steps_per_epoch=steps, lr=cfg.lr, schedule=cfg.schedule,
                     evaluate=evaluate, select="valid_rrmse", eval_every=cfg.eval_every, tlog=tlog,
                     weight_decay=cfg.weight_decay,
                     checkpoint=Path(checkpoint_dir) / "ldnet.pt" if checkpoint_dir is not None else None, rng=g,
                     step_gamma=cfg.step_gamma)
    if cfg.rec_epochs > 0:  # stage 2: freeze F (and with it the latent trajectories), retrain R
        for p in net.dyn.parameters():
            p.requires_grad_(False)
        best = run_stage("ldnet-rec", {"ldnet": net}, [p for p in net.rec.parameters() if p.requires_grad],
                         batches, epochs=cfg.rec_epochs, steps_per_epoch=steps, lr=cfg.rec_lr,
                         schedule=cfg.schedule, evaluate=evaluate, select="valid_rrmse",
                         eval_every=cfg.eval_every, tlog=tlog, weight_decay=cfg.weight_decay,
                         step_gamma=cfg.step_gamma)
        for p in net.dyn.parameters():
            p.requires_grad_(True)
    if cfg.lbfgs_iters > 0:
        best = _lbfgs(net, Ztr, Utr, xi, n_pts, cfg, g, evaluate, tlog, best)
    net.eval()
    with torch.no_grad():
        Z, U = splits["test"]
        pred = predict(U, None)
        test_norm = float(rel_l2(pred, Z).mean())
        test_phys = float(rel_l2(pred, Z, mean, std).mean())
    tlog.info(f"LDNet test rRMSE (full grid): {test_norm:.4f} normalised, {test_phys:.4f} physical")
    summary = dict(test_rrmse_norm=test_norm, test_rrmse_phys=test_phys, best_epoch=best.get("epoch"),
                   valid_rrmse=best.get("valid_rrmse"), n_weights=sum(p.numel() for p in net.parameters()))
    return net, summary


def _lbfgs(net, Ztr, Utr, xi, n_pts, cfg, g, evaluate, tlog, best):
    """Full-batch L-BFGS on a fixed point subset (LDNets' Adam-then-BFGS recipe)."""
    n_tr, T1, P, _ = Ztr.shape
    idx = torch.randint(P, (n_tr, T1, n_pts), generator=g).to(Ztr.device)
    true = _gather_points(Ztr, idx)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=cfg.lbfgs_iters, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = ((net.reconstruct(net.rollout(Utr, T1 - 1), xi[idx], u=Utr) - true) / net.out_scale).pow(2).mean()
        loss.backward()
        return loss
    t0, c0 = time.perf_counter(), time.process_time()
    loss = float(opt.step(closure))
    tlog.train_s += time.perf_counter() - t0
    tlog.train_cpu_s += time.process_time() - c0
    with torch.no_grad():
        ev = evaluate()
    tlog.record(stage="lbfgs", epoch=cfg.lbfgs_iters, lr=1.0, train_loss=loss, **ev)
    tlog.info(f"L-BFGS {cfg.lbfgs_iters} iterations: loss {loss:.3e}, valid {ev['valid_rrmse']:.4f}")
    return dict(ev, epoch="lbfgs") if ev["valid_rrmse"] < best["valid_rrmse"] else best


@torch.no_grad()
def score_ldnet(net, problem: Problem, dataset: Dataset, device: torch.device | str = "cpu") -> dict[str, float]:
    """An LDNet's test errors on ``dataset``, as :func:`train_ldnet` reports them (full test grid, per-snapshot
    relative L2 averaged): ``test_rrmse_norm`` and ``test_rrmse_phys``."""
    net = net.to(device).eval()
    xi = net.normalize_coords(problem.coords().to(device, torch.float32))
    plo, phi = param_normalizer(problem)
    x, p = dataset.split("test")
    mean, std = dataset.field_mean.to(torch.float32), dataset.field_std.to(torch.float32)
    norm, phys = [], []
    for i in range(0, x.shape[0], 8):
        Z = to_points(problem, dataset, x[i:i + 8]).to(device)
        U = normalize_params(p[i:i + 8], plo, phi).to(device, torch.float32)
        pred = net.reconstruct(net.rollout(U, Z.shape[1] - 1), xi, u=U)
        norm.append(rel_l2(pred, Z))
        phys.append(rel_l2(pred, Z, mean, std))
    return dict(test_rrmse_norm=float(torch.cat(norm).mean()), test_rrmse_phys=float(torch.cat(phys).mean()))


def rescore_ldnet(problem: Problem, dataset: Dataset) -> Callable[[Artifact], dict[str, float]]:
    """``rescore`` for :func:`load_or_train`: the artifact's LDNet scored on ``dataset``."""
    def rescore(art: Artifact) -> dict[str, float]:
        from methods.ldnet import LDNet
        net = LDNet.from_config(art.config["networks"]["ldnet"])
        net.load_state_dict(art.weights["ldnet"])
        return score_ldnet(net, problem, dataset)
    return rescore


# --------------------------------------------------------------------------------------------------------------
# Observation-encoder (LSTM) training
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderTrainConfig:
    """The LSTM encoder's architecture and optimisation (full batch Adam on clean observations)."""

    hidden: int = 128
    epochs: int = 1500
    lr: float = 3e-3
    schedule: str = "cosine"
    train_noise: float = 0.0
    eval_every: int = 50
    seed: int = 0


def clean_observations(problem: Problem, observer: Observer, snaps: torch.Tensor) -> torch.Tensor:
    """``(n, T+1, *state_shape)`` physical -> ``(n, T, m)`` noise-free observations at ``t = 1 .. T``."""
    n, T1 = snaps.shape[:2]
    x = snaps[:, 1:].reshape(n * (T1 - 1), *problem.state_shape).to(torch.float32)
    return observer.observe(x).reshape(n, T1 - 1, -1)


def encoder_targets(net, problem: Problem, params: torch.Tensor, T: int) -> torch.Tensor:
    """Targets ``kappa_t = (s_t, u_n)`` for ``t = 1 .. T``: ``(n, T, d_s + d_u)`` from the LDNet rollout."""
    p_lo, p_hi = param_normalizer(problem)
    dev = next(net.parameters()).device
    un = normalize_params(params, p_lo, p_hi).to(dev, torch.float32)
    with torch.no_grad():
        s = net.rollout(un, T)[:, 1:]
    return torch.cat([s, un[:, None, :].expand(-1, T, -1)], dim=-1)


def train_encoder(net, problem: Problem, observer: Observer, dataset: Dataset, cfg: EncoderTrainConfig,
                  tlog: TrainLog, device: torch.device | str = "cpu") -> tuple["ObsEncoder", dict]:
    """Train the causal LSTM ``y_{1:t} -> (s_t, u_n)`` against the LDNet latents and the true parameters.

    The sequences are the observer's: its operator, and only its observed cycles (``obs_every``), so the LSTM
    steps once per observation as it does online."""
    from methods.ldnet import ObsEncoder
    g = torch.Generator().manual_seed(cfg.seed)
    data = {}
    sel = observed_cycles(observer)
    for name in ("train", "valid", "test"):
        x, p = dataset.split(name)
        Y = clean_observations(problem, observer, x)[:, sel].to(device)
        K = encoder_targets(net, problem, p, x.shape[1] - 1)[:, sel].to(device)
        data[name] = (Y, K)
    Ytr, Ktr = data["train"]
    m = Ytr.shape[-1]
    C_obs = len(observer.channels)
    per_chan = Ytr.reshape(-1, m // C_obs, C_obs)  # point-major, channel-minor
    y_mean = per_chan.mean((0, 1)).repeat(m // C_obs)
    y_std = per_chan.std((0, 1)).clamp_min(1e-8).repeat(m // C_obs)
    enc = ObsEncoder(m, Ktr.shape[-1], cfg.hidden, cfg.seed, y_mean.tolist(), y_std.tolist()).to(device)
    d_s = net.latent_dim
    ystd_noise = y_std.to(device)
    tlog.info(f"encoder: LSTM {m} -> {cfg.hidden} -> {Ktr.shape[-1]}, {Ytr.shape[0]} sequences of {Ytr.shape[1]}")

    def evaluate() -> dict[str, float]:
        out = {}
        for name in ("valid", "test"):
            Y, K = data[name]
            pred, _ = enc(Y)
            e = (pred - K).pow(2)
            out[f"{name}_rel"] = float((e.sum() / K.pow(2).sum()).sqrt())
            out[f"{name}_rel_s"] = float((e[..., :d_s].sum() / K[..., :d_s].pow(2).sum()).sqrt())
            if K.shape[-1] > d_s:
                out[f"{name}_rel_u"] = float((e[..., d_s:].sum() / K[..., d_s:].pow(2).sum()).sqrt())
        return out

    def batches(ep: int) -> Iterable[torch.Tensor]:
        Y = Ytr
        if cfg.train_noise > 0:
            Y = Y + cfg.train_noise * ystd_noise * torch.randn(Y.shape, generator=g).to(device)
        pred, _ = enc(Y)
        yield (pred - Ktr).pow(2).mean()

    best = run_stage("encoder", {"encoder": enc}, list(enc.parameters()), batches, epochs=cfg.epochs,
                     steps_per_epoch=1, lr=cfg.lr, schedule=cfg.schedule, evaluate=evaluate, select="valid_rel",
                     eval_every=cfg.eval_every, tlog=tlog)
    summary = {k: v for k, v in best.items()}
    tlog.info("encoder test: " + " ".join(f"{k} {v:.4g}" for k, v in best.items() if k.startswith("test")))
    return enc, summary


@torch.no_grad()
def score_encoder(enc, net, problem: Problem, observer: Observer, dataset: Dataset) -> dict[str, float]:
    """An observation encoder's test errors on ``dataset`` against the LDNet ``net``'s latents, as
    :func:`train_encoder` reports them: ``test_rel`` (latent and parameters), ``test_rel_s``, ``test_rel_u``."""
    enc.eval()
    x, p = dataset.split("test")
    sel = observed_cycles(observer)
    Y = clean_observations(problem, observer, x)[:, sel]
    K = encoder_targets(net, problem, p, x.shape[1] - 1)[:, sel]
    pred, _ = enc(Y)
    e = (pred - K).pow(2)
    d_s = net.latent_dim
    out = dict(test_rel=float((e.sum() / K.pow(2).sum()).sqrt()),
               test_rel_s=float((e[..., :d_s].sum() / K[..., :d_s].pow(2).sum()).sqrt()))
    if K.shape[-1] > d_s:
        out["test_rel_u"] = float((e[..., d_s:].sum() / K[..., d_s:].pow(2).sum()).sqrt())
    return out


def rescore_encoder(net, problem: Problem, observer: Observer, dataset: Dataset
                    ) -> Callable[[Artifact], dict[str, float]]:
    """``rescore`` for :func:`load_or_train`: the artifact's encoder scored on ``dataset`` against ``net``."""
    def rescore(art: Artifact) -> dict[str, float]:
        from methods.ldnet import ObsEncoder
        enc = ObsEncoder.from_config(art.config["networks"]["encoder"])
        enc.load_state_dict(art.weights["encoder"])
        return score_encoder(enc, net.to("cpu", torch.float32), problem, observer, dataset)
    return rescore
