"""Training of LD-EnSF's networks, beside them (:mod:`methods.ldnet`): the LDNet on the training trajectories and
the causal LSTM observation encoder against its latents, with the scorers that re-measure a stored network's test
errors on the data at hand (the ``rescore`` of :func:`methods.artifact_cache.load_or_train`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from assimbench.errors import ConfigError
from methods.artifact_cache import Artifact, HashedConfig, artifact_folders, artifact_hash, read_artifact
from methods.ldnet import (LDNet, LDNetConfig, LSTMEncoder, LSTMEncoderConfig, normalize_params,
                          param_normalizer, to_points)
from methods.train_loop import (SnapshotRun, TrainLog, checkpoint_epoch, rel_l2, run_stage, snapshot_files,
                                stop_epoch)
from problems.base import Dataset, Observer, Problem


# --------------------------------------------------------------------------------------------------------------
# LDNet
# --------------------------------------------------------------------------------------------------------------
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
    values came from (see ``methods.ldensf.RECIPES``), recorded in the identity; ``train_fraction``: the network
    is taken after this fraction of the ``epochs``-epoch run (its learning-rate schedule unchanged), a snapshot
    along the training curve (1 = the whole run); ``rec_fourier``, ``rec_fourier_scale``: trainable Fourier
    features of the latent input of a ``pod`` or ``resmlp`` head (see :class:`methods.ldnet.PODDecoder`);
    ``warm_restart``: first a run of this many epochs with its own schedule, then the schedule is re-laid over
    ``epochs`` and the run continues from that state (the learning rate jumps back up to where the longer schedule
    has it: a warm restart; 0 = one run of ``epochs``). A list of increasing epochs restarts at each: ``(400,
    800)`` with ``epochs=1600`` runs 400 epochs, continues to 800, then to 1600. It makes a finished run's longer
    continuation a recipe of its own, trained by one call. ``init_from``: the hash of a finished LDNet artifact
    (shipped in ``methods/artifacts`` or in the cache) of the same architecture, trained on the same dataset, whose
    weights start this run (a fine-tune with a fresh optimiser and its own schedule: how a shipped network is
    trained further on a machine that does not hold its training checkpoint); its training time is carried over,
    so the curve and the summary count the time since the parent's first step ("" = a fresh initialisation).
    ``parent``: the same, with the parent given by its training values instead of its hash (overrides of this
    configuration, e.g. ``{"epochs": 1600, "lr": 3e-3}``): the LDNet of those values on the same dataset, which the
    method trains first where no artifact of it exists. It is how a recipe says "train this network, then fine-tune
    it" on any dataset (see :func:`parent_config`).
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
    train_fraction: float = 1.0
    rec_fourier: int = 0
    rec_fourier_scale: float = 1.0
    warm_restart: int | tuple[int, ...] = 0
    init_from: str = ""
    parent: dict | None = None

    #: fields added after artifacts were shipped: left out of the identity (hash) while at their defaults
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("film", "point_sampling", "n_shifts", "rec_params", "extra_traj",
                                               "norm", "step_gamma", "recipe", "train_fraction", "rec_fourier",
                                               "rec_fourier_scale", "warm_restart", "init_from",
                                               "parent")

    def __post_init__(self):
        if self.parent is not None:
            if self.init_from:
                raise ConfigError("give the network a run starts from by init_from (a hash) or by parent (its "
                                  "training values), not both")
            names = {f.name for f in dataclasses.fields(self)} - {"parent", "init_from"}
            if not isinstance(self.parent, dict) or set(self.parent) - names:
                raise ConfigError(f"parent={self.parent!r}: give a mapping of LDNet training values; valid keys: "
                                  f"{', '.join(sorted(names))}")
            object.__setattr__(self, "parent", {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in sorted(self.parent.items())})
        if self.init_from and not re.fullmatch(r"[0-9a-f]{16}", str(self.init_from)):
            raise ConfigError(f"init_from={self.init_from!r} must be the 16-hex-digit hash of an LDNet artifact "
                              "(a folder name of methods/artifacts or of <cache>/models)")
        # one restart point is stored as a number (the hash of a one-restart recipe does not depend on the spelling)
        object.__setattr__(self, "warm_restart", normalise_restarts(self.warm_restart, self.epochs))
        if self.warm_restart and self.train_fraction < 1:
            raise ConfigError(f"train_fraction={self.train_fraction} cannot be taken along the warm restart "
                              f"(warm_restart={self.warm_restart}); give epochs (one run) with it")


def restart_points(warm_restart: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The epochs a warm-restart setting restarts at, in order (``0`` or ``()``: none)."""
    if isinstance(warm_restart, (tuple, list)):
        return tuple(int(k) for k in warm_restart)
    return (int(warm_restart),) if warm_restart else ()


def normalise_restarts(warm_restart, epochs: int | None, what: str = "") -> int | tuple[int, ...]:
    """``warm_restart`` checked against ``epochs`` (increasing points strictly between 0 and ``epochs``, or above
    0 when ``epochs`` is None; a ConfigError prefixed by ``what`` otherwise) and stored as ``0``, one number, or a
    tuple of two or more."""
    points = restart_points(warm_restart)
    top = float("inf") if epochs is None else epochs
    if any(not 0 < k < top for k in points) or any(a >= b for a, b in zip(points, points[1:])):
        shown = points[0] if len(points) == 1 else list(points)
        bound = "be > 0" if epochs is None else f"lie between 0 and epochs={epochs} (exclusive)"
        raise ConfigError(f"{what}warm_restart={shown} must {bound}" + (", increasing" if len(points) > 1 else ""))
    return 0 if not points else points[0] if len(points) == 1 else points


def parent_config(cfg: LDNetTrainConfig) -> LDNetTrainConfig | None:
    """The training configuration of the network ``cfg.parent`` names: ``cfg`` with those values (a whole run, its
    evaluation interval a twentieth of its first run, as in LD-EnSF's recipes); None without a parent."""
    if not cfg.parent:
        return None
    kw = dict(cfg.parent)
    first = restart_points(kw.get("warm_restart", 0)) or (kw.get("epochs", cfg.epochs),)
    kw.setdefault("eval_every", max(1, first[0] // 20))
    kw.setdefault("warm_restart", 0)
    return dataclasses.replace(cfg, parent=None, init_from="", train_fraction=1.0, **kw)


def parent_key(cfg: LDNetTrainConfig, problem: Problem) -> str | None:
    """The artifact hash of the network a run of ``cfg`` on ``problem``'s dataset starts from (None: a fresh one)."""
    if cfg.init_from:
        return cfg.init_from
    pc = parent_config(cfg)
    return None if pc is None else artifact_hash("ldnet", "LD-EnSF", {"dataset": problem.data_key()}, pc.identity())


def parent_artifact(key: str, problem: Problem, cache_dir: Path | str | None = None, hint: str = "") -> Artifact:
    """The LDNet artifact ``key`` an ``init_from`` run starts from (shipped first, then the cache), checked to be an
    LDNet of ``problem`` trained on the dataset ``problem`` builds; a clear :class:`ConfigError` otherwise."""
    folders = artifact_folders(key, cache_dir)
    for folder, source in zip(folders, ("shipped", "cache")):
        if (folder / "config.json").exists():
            art = read_artifact(folder, source)
            break
    else:
        raise ConfigError(f"init_from={key}: no such LDNet artifact (looked in {folders[0].parent} and "
                          f"{folders[1].parent}){hint}")
    if art.config.get("kind") != "ldnet" or art.config.get("data", {}).get("dataset") != problem.data_key():
        raise ConfigError(f"init_from={key} is a {art.config.get('kind')} artifact of "
                          f"{art.config.get('problem')!r} (dataset {art.config.get('data', {}).get('dataset')}), "
                          f"not an LDNet of this {problem.name} dataset ({problem.data_key()})")
    return art


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


#: snapshots (at most) whose POD gives the modes of a ``pod`` reconstruction head (an eigenproblem of this size)
POD_SNAPSHOTS = 6000


def pod_grid_shape(problem: Problem) -> list[int]:
    """The point layout ``(ny, nx)`` of a problem's grid for :class:`methods.ldnet.PODDecoder` (1-D: ``(1, n)``)."""
    shape = list(problem.state_shape[1:]) or list(problem.state_shape)  # drop the field axis of (C, ...) states
    if len(shape) == 1:
        shape = [1, shape[0]]
    if len(shape) != 2:
        raise ConfigError(f"rec_arch='pod' needs a 1-D or 2-D grid; {problem.name} has state shape "
                          f"{tuple(problem.state_shape)}")
    return shape


def train_ldnet(problem: Problem, dataset: Dataset, cfg: LDNetTrainConfig, tlog: TrainLog,
                device: torch.device | str = "cpu", checkpoint_dir: Path | str | None = None,
                snapshot_run: SnapshotRun | None = None,
                cache_dir: Path | str | None = None) -> tuple[LDNet, dict]:
    """Train an LDNet on the training split, select by validation, report test errors.

    Returns the network (best validation weights) and a summary with ``test_rrmse_norm`` and
    ``test_rrmse_phys`` (time- and trajectory-averaged per-snapshot relative L2 on the full test grid, in
    normalised and physical units). ``checkpoint_dir``: the Adam stage checkpoints there (``ldnet.pt``) and
    resumes from it (see :func:`run_stage`). ``cfg.extra_traj > 0`` adds that many training trajectories,
    simulated from the same prior with another data seed (the validation and test splits are unchanged).
    ``cfg.train_fraction < 1`` stops the run at that fraction of its epochs; ``snapshot_run`` keeps the run's state
    at every such stop and continues from the nearest earlier one (:class:`methods.train_loop.SnapshotRun`).
    ``cfg.init_from`` starts from that artifact's weights (found in the shipped folder or ``cache_dir``'s models).
    """
    stop = stop_epoch(cfg.epochs, cfg.train_fraction)
    if stop < cfg.epochs and (cfg.rec_epochs > 0 or cfg.lbfgs_iters > 0):
        raise ConfigError("train_fraction < 1 takes a snapshot of the Adam stage; it cannot be combined with "
                          "rec_epochs or lbfgs_iters (stages after it)")
    g = torch.Generator().manual_seed(cfg.seed)
    coords = problem.coords().to(torch.float64)
    lo_c, hi_c = coords.min(0).values, coords.max(0).values
    net = LDNet(LDNetConfig(
        latent_dim=cfg.latent_dim, n_params=problem.n_params, n_fields=problem.n_fields, coord_dim=coords.shape[1],
        dt_lat=cfg.dt_lat, coord_lo=lo_c.tolist(), coord_hi=hi_c.tolist(), dyn_width=cfg.dyn_width,
        dyn_depth=cfg.dyn_depth, rec_arch=cfg.rec_arch, rec_width=cfg.rec_width, rec_depth=cfg.rec_depth,
        n_fourier=cfg.n_fourier, fourier_scale=cfg.fourier_scale, train_fourier=cfg.train_fourier,
        n_basis=cfg.n_basis, act=cfg.act, seed=cfg.seed, film=cfg.film, n_shifts=cfg.n_shifts,
        rec_params=cfg.rec_params,
        grid_shape=pod_grid_shape(problem) if cfg.rec_arch == "pod" else None,
        rec_fourier=cfg.rec_fourier, rec_fourier_scale=cfg.rec_fourier_scale)).to(device)
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
    if cfg.point_sampling not in ("uniform", "signal", "fixed"):
        raise ConfigError(f"point_sampling={cfg.point_sampling!r}; valid: uniform, signal, fixed")
    if cfg.norm not in ("zscore", "minmax"):
        raise ConfigError(f"norm={cfg.norm!r}; valid: zscore, minmax")
    if cfg.norm == "minmax":  # the network's own output map: z = raw * scale + shift (z-score units)
        zmin = Ztr.amin(dim=(0, 1, 2)).float().cpu()
        zmax = Ztr.amax(dim=(0, 1, 2)).float().cpu()
        net.set_output_map(((zmax - zmin) / 2).clamp_min(1e-12).tolist(), ((zmax + zmin) / 2).tolist())
    out_scale = net.out_scale.to(device)
    pod_targets = None
    if cfg.rec_arch == "pod":  # the modes from the training split; targets are the snapshots' coefficients
        if cfg.norm != "zscore":
            raise ConfigError("rec_arch='pod' trains in z-score units; use norm='zscore'")
        flat = Ztr.reshape(n_tr * T1, P, C)
        pick = torch.randperm(n_tr * T1, generator=g)[:POD_SNAPSHOTS].to(device)
        _, missed = net.rec.fit_basis(flat[pick], xi)
        pod_targets = torch.cat([net.rec.coefficients(flat[i:i + 4096]) for i in range(0, len(flat), 4096)]
                                ).reshape(n_tr, T1, -1)
        tlog.info(f"POD head: {cfg.n_basis} modes from {len(pick)} training snapshots miss {missed:.2%} of their "
                  f"centred energy")
    fixed_idx = torch.randperm(P, generator=g)[:n_pts].to(device) \
        if cfg.point_sampling == "fixed" and n_pts < P else None
    signal_w = None
    if cfg.point_sampling == "signal" and n_pts < P:  # (n_tr, T1, P) sampling weights, fixed for the run
        dev_ = (Ztr - Ztr.median(dim=2, keepdim=True).values).abs().sum(-1)
        signal_w = (dev_ / dev_.sum(-1, keepdim=True).clamp_min(1e-30)).float().cpu()
    key = parent_key(cfg, problem)
    if key is not None:
        parent = parent_artifact(key, problem, cache_dir, "" if cfg.init_from else
                                 f" for parent={cfg.parent}: train it first (LD-EnSF's fit and `bench train` do)")
        mine = json.loads(json.dumps(net.config()))  # in the stored form (tuples as lists)
        if parent.config["networks"]["ldnet"] != mine:
            diff = {k: v for k, v in mine.items() if parent.config["networks"]["ldnet"].get(k) != v}
            raise ConfigError(f"init_from={key}: its network differs from this configuration's in {diff}")
        net.load_state_dict(parent.weights["ldnet"])
        ps = parent.config.get("summary", {})
        tlog.train_s += float(ps.get("train_opt_s") or 0.0)          # the parent's time counts: the curve and
        tlog.train_cpu_s += float(ps.get("train_cpu_s") or 0.0)      # the summary start where it ended
        tlog.info(f"LDNet starts from artifact {key} (test rRMSE {ps.get('test_rrmse_phys')}, "
                  f"{tlog.train_cpu_s / 60:.1f} CPU-min of training carried over)")
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
        if cfg.eval_points <= 0 or cfg.eval_points >= P or cfg.rec_arch == "pod":  # a POD head: the full grid
            eval_sets[name] = (Z, U, None)                                       # is its cheapest layout
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
                if pod_targets is not None:  # the full-grid squared error in the modes' span, per point
                    c = net.rec.predict(net.rec_input(s, Utr[b]))
                    yield (c.float() - pod_targets[b]).pow(2).sum(-1).mean() / (P * C)
                    continue
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
    ckpt, resume = snapshot_files(snapshot_run, stop, cfg.epochs)
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / "ldnet.pt"
    tmp = None
    if cfg.warm_restart and ckpt is None:  # the restart continues from the first run's state: keep it in a file
        tmp = tempfile.TemporaryDirectory(prefix="ldnet-restart-")
        ckpt = Path(tmp.name) / "ldnet.pt"
    runs = [*restart_points(cfg.warm_restart), cfg.epochs]
    if len(runs) > 1 and ckpt.exists():  # the runs a checkpoint has finished are done (resume from it)
        done = checkpoint_epoch(ckpt)
        runs = [k for k in runs[:-1] if k > done] + runs[-1:]
    try:
        with snapshot_run.lock() if snapshot_run is not None else contextlib.nullcontext():
            for epochs in runs:
                best = run_stage("ldnet", {"ldnet": net}, list(p for p in net.parameters() if p.requires_grad),
                                 batches, epochs=epochs, steps_per_epoch=steps, lr=cfg.lr, schedule=cfg.schedule,
                                 evaluate=evaluate, select="valid_rrmse", eval_every=cfg.eval_every, tlog=tlog,
                                 weight_decay=cfg.weight_decay, checkpoint=ckpt, rng=g, step_gamma=cfg.step_gamma,
                                 stop_at=min(stop, epochs), resume_from=resume)
    finally:
        if tmp is not None:
            tmp.cleanup()
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
        best = _lbfgs(net, Ztr, Utr, xi, n_pts, cfg, g, evaluate, tlog, best, pod_targets)
    net.eval()
    with torch.no_grad():
        Z, U = splits["test"]
        pred = predict(U, None)
        test_norm = float(rel_l2(pred, Z).mean())
        test_phys = float(rel_l2(pred, Z, mean, std).mean())
    tlog.info(f"LDNet test rRMSE (full grid): {test_norm:.4f} normalised, {test_phys:.4f} physical")
    summary = dict(test_rrmse_norm=test_norm, test_rrmse_phys=test_phys, best_epoch=best.get("epoch"),
                   valid_rrmse=best.get("valid_rrmse"), n_weights=sum(p.numel() for p in net.parameters()),
                   epochs_trained=stop, train_fraction=cfg.train_fraction)
    return net, summary


def _lbfgs(net, Ztr, Utr, xi, n_pts, cfg, g, evaluate, tlog, best, pod_targets=None):
    """Full-batch L-BFGS after Adam (LDNets' Adam-then-BFGS recipe): on one fixed point subset, or for a POD
    head in coefficient space (the full grid, as its Adam stage). Runs in chunks of ``cfg.eval_every``
    iterations (at most 50), evaluating after each; the network ends with the best validation weights seen
    (those of the Adam stage when no L-BFGS chunk beats them)."""
    n_tr, T1, P, C = Ztr.shape
    if pod_targets is None:
        idx = torch.randint(P, (n_tr, T1, n_pts), generator=g).to(Ztr.device)
        true = _gather_points(Ztr, idx)
    params = [p for p in net.parameters() if p.requires_grad]
    chunk = max(1, min(cfg.eval_every, 50, cfg.lbfgs_iters))
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=chunk, history_size=50, line_search_fn="strong_wolfe")

    last = [float("nan")]

    def closure():
        opt.zero_grad(set_to_none=True)
        s = net.rollout(Utr, T1 - 1)
        if pod_targets is not None:
            loss = (net.rec.predict(net.rec_input(s, Utr)) - pod_targets).pow(2).sum(-1).mean() / (P * C)
        else:
            loss = ((net.reconstruct(s, xi[idx], u=Utr) - true) / net.out_scale).pow(2).mean()
        loss.backward()
        last[0] = float(loss.detach())
        return loss
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    done = 0
    while done < cfg.lbfgs_iters:
        opt.param_groups[0]["max_iter"] = min(chunk, cfg.lbfgs_iters - done)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.step(closure)
        loss = last[0]                                                    # at the chunk's last evaluation
        tlog.train_s += time.perf_counter() - t0
        tlog.train_cpu_s += time.process_time() - c0
        done += opt.param_groups[0]["max_iter"]
        with torch.no_grad():
            ev = evaluate()
        tlog.record(stage="lbfgs", epoch=done, lr=1.0, train_loss=loss, **ev)
        tlog.info(f"L-BFGS {done} iterations: loss {loss:.3e}, valid {ev['valid_rrmse']:.4f}")
        if ev["valid_rrmse"] < best["valid_rrmse"]:
            best = dict(ev, epoch=f"lbfgs{done}")
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if not math.isfinite(loss):
            break
    net.load_state_dict(best_state)
    return best


@torch.no_grad()
def ldnet_test_errors(net, problem: Problem, dataset: Dataset,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """An LDNet's per-snapshot relative L2 errors on the full test grid of ``dataset``, ``(trajectories,
    snapshots)`` each: in normalised and in physical units."""
    net = net.to(device).eval()
    xi = net.normalize_coords(problem.coords().to(device, torch.float32))
    p_lo, p_hi = param_normalizer(problem)
    x, p = dataset.split("test")
    mean, std = dataset.field_mean.to(torch.float32), dataset.field_std.to(torch.float32)
    norm, phys = [], []
    for i in range(0, x.shape[0], 8):
        Z = to_points(problem, dataset, x[i:i + 8]).to(device)
        U = normalize_params(p[i:i + 8], p_lo, p_hi).to(device, torch.float32)
        pred = net.reconstruct(net.rollout(U, Z.shape[1] - 1), xi, u=U)
        norm.append(rel_l2(pred, Z))
        phys.append(rel_l2(pred, Z, mean, std))
    return torch.cat(norm), torch.cat(phys)


def score_ldnet(net, problem: Problem, dataset: Dataset, device: torch.device | str = "cpu") -> dict[str, float]:
    """An LDNet's test errors on ``dataset``, as :func:`train_ldnet` reports them (full test grid, per-snapshot
    relative L2 averaged): ``test_rrmse_norm`` and ``test_rrmse_phys``."""
    norm, phys = ldnet_test_errors(net, problem, dataset, device)
    return dict(test_rrmse_norm=float(norm.mean()), test_rrmse_phys=float(phys.mean()))


def rescore_ldnet(problem: Problem, dataset: Dataset) -> Callable[[Artifact], dict[str, float]]:
    """``rescore`` for :func:`load_or_train`: the artifact's LDNet scored on ``dataset``."""
    def rescore(art: Artifact) -> dict[str, float]:
        net = LDNet.from_config(art.config["networks"]["ldnet"])
        net.load_state_dict(art.weights["ldnet"])
        return score_ldnet(net, problem, dataset)
    return rescore


# --------------------------------------------------------------------------------------------------------------
# The observation encoder (LSTM)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderTrainConfig(HashedConfig):
    """The LSTM encoder's architecture and optimisation (full batch Adam; ``train_noise``: Gaussian noise of that
    fraction of the per-channel observation std added to the training observations at every epoch, and once to
    the validation and test observations it is selected and scored on; 0 = clean observations; ``extra_traj``:
    training sequences from that many trajectories simulated beside the training split, as the LDNet's
    ``extra_traj``, their targets rolled out by the LDNet from their parameters; ``batch``: sequences per Adam
    step, in a fresh random order every epoch; 0 = the full batch, one step per epoch)."""

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("extra_traj", "batch")

    hidden: int = 128
    epochs: int = 1500
    lr: float = 3e-3
    schedule: str = "cosine"
    train_noise: float = 0.0
    eval_every: int = 50
    seed: int = 0
    extra_traj: int = 0
    batch: int = 0


def clean_observations(problem: Problem, observer: Observer, snaps: torch.Tensor) -> torch.Tensor:
    """``(n, T+1, *state_shape)`` physical -> ``(n, T, m)`` noise-free observations at ``t = 1 .. T``."""
    n, T1 = snaps.shape[:2]
    x = snaps[:, 1:].reshape(n * (T1 - 1), *problem.state_shape).to(torch.float32)
    return observer.observe(x).reshape(n, T1 - 1, -1)


def observed_cycles(observer: Observer) -> slice:
    """The entries of a per-cycle sequence over ``t = 1 .. T`` that the observer observes (``t = k, 2k, ...``)."""
    return slice(observer.obs_every - 1, None, observer.obs_every)


def encoder_targets(net, problem: Problem, params: torch.Tensor, T: int) -> torch.Tensor:
    """Targets ``kappa_t = (s_t, u_n)`` for ``t = 1 .. T``: ``(n, T, d_s + d_u)`` from the LDNet rollout."""
    p_lo, p_hi = param_normalizer(problem)
    dev = next(net.parameters()).device
    un = normalize_params(params, p_lo, p_hi).to(dev, torch.float32)
    with torch.no_grad():
        s = net.rollout(un, T)[:, 1:]
    return torch.cat([s, un[:, None, :].expand(-1, T, -1)], dim=-1)


def train_encoder(net, problem: Problem, observer: Observer, dataset: Dataset, cfg: EncoderTrainConfig,
                  tlog: TrainLog, device: torch.device | str = "cpu",
                  checkpoint_dir: Path | str | None = None) -> tuple[LSTMEncoder, dict]:
    """Train the causal LSTM ``y_{1:t} -> (s_t, u_n)`` against the LDNet latents and the true parameters.

    The sequences are the observer's: its operator, and only its observed cycles (``obs_every``), so the LSTM
    steps once per observation as it does online. ``checkpoint_dir``: the training checkpoints to
    ``<checkpoint_dir>/encoder.pt`` after every evaluation (the noise generator's state with it) and resumes from
    it, reaching the weights of an uninterrupted run."""
    g = torch.Generator().manual_seed(cfg.seed)
    data = {}
    sel = observed_cycles(observer)
    for name in ("train", "valid", "test"):
        x, p = dataset.split(name)
        Y = clean_observations(problem, observer, x)[:, sel].to(device)
        K = encoder_targets(net, problem, p, x.shape[1] - 1)[:, sel].to(device)
        data[name] = (Y, K)
    if cfg.extra_traj > 0:
        x, p = extra_training_data(problem, cfg.extra_traj)
        Y = clean_observations(problem, observer, x)[:, sel].to(device)
        K = encoder_targets(net, problem, p, x.shape[1] - 1)[:, sel].to(device)
        data["train"] = (torch.cat([data["train"][0], Y]), torch.cat([data["train"][1], K]))
        del x, p
    Ytr, Ktr = data["train"]
    m = Ytr.shape[-1]
    C_obs = len(observer.channels)
    per_chan = Ytr.reshape(-1, m // C_obs, C_obs)  # point-major, channel-minor
    y_mean = per_chan.mean((0, 1)).repeat(m // C_obs)
    y_std = per_chan.std((0, 1)).clamp_min(1e-8).repeat(m // C_obs)
    enc = LSTMEncoder(LSTMEncoderConfig(m, Ktr.shape[-1], cfg.hidden, cfg.seed), y_mean.tolist(),
                      y_std.tolist()).to(device)
    d_s = net.latent_dim
    ystd_noise = y_std.to(device)
    if cfg.train_noise > 0:  # validation and test read noisy observations too (one fixed draw), as online
        gv = torch.Generator().manual_seed(cfg.seed + 1)
        for name in ("valid", "test"):
            Y, K = data[name]
            data[name] = (Y + cfg.train_noise * ystd_noise * torch.randn(Y.shape, generator=gv).to(device), K)
    n_seq = Ytr.shape[0]
    size = cfg.batch if 0 < cfg.batch < n_seq else n_seq  # sequences per step; the full batch: one step per epoch
    tlog.info(f"encoder: LSTM {m} -> {cfg.hidden} -> {Ktr.shape[-1]}, {n_seq} sequences of {Ytr.shape[1]}"
              + (f", {size} per step" if size < n_seq else ""))

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
        if size == n_seq:
            pred, _ = enc(Y)
            yield (pred - Ktr).pow(2).mean()
            return
        order = torch.randperm(n_seq, generator=g).to(device)
        for i in range(0, n_seq, size):
            idx = order[i:i + size]
            pred, _ = enc(Y[idx])
            yield (pred - Ktr[idx]).pow(2).mean()

    ckpt = Path(checkpoint_dir) / "encoder.pt" if checkpoint_dir is not None else None
    best = run_stage("encoder", {"encoder": enc}, list(enc.parameters()), batches, epochs=cfg.epochs,
                     steps_per_epoch=-(-n_seq // size), lr=cfg.lr, schedule=cfg.schedule, evaluate=evaluate,
                     select="valid_rel", eval_every=cfg.eval_every, tlog=tlog, checkpoint=ckpt, rng=g)
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
        enc = LSTMEncoder.from_config(art.config["networks"]["encoder"])
        enc.load_state_dict(art.weights["encoder"])
        return score_encoder(enc, net.to("cpu", torch.float32), problem, observer, dataset)
    return rescore
