"""Training of Latent-EnSF's coupled VAE, beside it (:mod:`methods.vae`): the training configuration, the trainer
(all training snapshots with their clean observations, selection on validation, test errors) and the scorer that
re-measures a stored VAE's test errors on the data at hand (the ``rescore`` of
:func:`methods.artifact_cache.load_or_train`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from assimbench.errors import ConfigError
from methods.artifact_cache import Artifact, HashedConfig
from methods.train_loop import SnapshotRun, TrainLog, rel_l2, run_stage, snapshot_files, stop_epoch
from methods.vae import CoupledVAE, VAEConfig, vae_loss
from problems.base import Dataset, Observer, Problem, lattice_stride


@dataclass(frozen=True)
class VAETrainConfig(HashedConfig):
    """Everything that determines a trained coupled VAE (architecture + optimisation).

    ``beta``: weight of the two KL terms relative to the reconstruction terms (element means);
    ``lam``: weight of the latent matching term; ``obs_train_noise``: std of Gaussian noise added to the
    normalised training observations (0 = clean observations); ``eval_max``: validation/test snapshots used by the
    per-epoch evaluation (a fixed random subset; the final test uses the whole split); ``train_fraction``: the
    network is taken after this fraction of the ``epochs``-epoch run (its schedule unchanged), a snapshot along
    the training curve (1 = the whole run); ``state_arch``: ``conv`` (convolutional state encoder and decoder) or
    ``pod`` (the linear whitened POD state path of :class:`methods.vae.PODStateMap`, fitted once to the training
    snapshots before the optimisation, which then trains the observation encoder and the posterior widths).
    """

    c_lat: int = 4
    h_lat: int = 8
    width: int = 8
    obs_arch: str = "auto"
    epochs: int = 40
    batch: int = 64
    lr: float = 3e-3
    schedule: str = "cosine"
    beta: float = 1e-4
    lam: float = 1.0
    obs_train_noise: float = 0.0
    eval_every: int = 2
    eval_max: int = 512
    seed: int = 0
    recipe: str = "cpu"
    train_fraction: float = 1.0
    state_arch: str = "conv"

    #: fields added after artifacts were shipped: left out of the identity (hash) while at their defaults
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("recipe", "train_fraction", "state_arch")



def observer_lattice(problem: Problem, observer: Observer) -> tuple[int, int, int] | None:
    """``(C_obs, h_obs, w_obs)`` of a lattice observer on a 2-D grid, else None."""
    if observer.layout != "lattice" or len(problem.spatial_shape) != 2:
        return None
    H, W = problem.spatial_shape
    stride = observer.stride or lattice_stride((H, W), observer.coverage)
    ho, wo = math.ceil(H / stride), math.ceil(W / stride)
    c = len(observer.channels)
    if ho * wo * c != observer.n_obs:
        return None
    return (c, ho, wo)


def snapshots(problem: Problem, ds: Dataset, name: str) -> torch.Tensor:
    """All snapshots of a split, ``(n (T+1), C, H, W)`` float32 physical."""
    x, _ = ds.split(name)
    return x.reshape(-1, *problem.state_shape).to(torch.float32)


def _rrmse(pred: torch.Tensor, true: torch.Tensor, mean: torch.Tensor | None = None,
           std: torch.Tensor | None = None) -> torch.Tensor:
    """Per-snapshot relative L2 of normalised ``(N, C, H, W)`` fields (physical units with ``mean``/``std``)."""
    return rel_l2(pred.flatten(2).transpose(1, 2), true.flatten(2).transpose(1, 2), mean, std)


def train_vae(problem: Problem, observer: Observer, dataset: Dataset, cfg: VAETrainConfig, tlog: TrainLog,
              device: torch.device | str = "cpu", snapshot_run: SnapshotRun | None = None):
    """Train the coupled VAE on all training snapshots, select by validation, report test errors.

    Returns the network (best validation weights, eval mode) and a summary with ``test_rrmse_norm`` /
    ``test_rrmse_phys`` (state path ``D(mu_x(x))``) and ``test_rrmse_obs_norm`` / ``test_rrmse_obs_phys``
    (observation path ``D(mu_y(y))``, clean observations), per-snapshot relative L2 averaged over the whole test
    split. ``cfg.train_fraction < 1`` stops the run at that fraction of its epochs; ``snapshot_run`` keeps the run's
    state at every such stop and continues from the nearest earlier one (:class:`methods.train_loop.SnapshotRun`).
    """
    stop = stop_epoch(cfg.epochs, cfg.train_fraction)
    g = torch.Generator().manual_seed(cfg.seed)
    nsd = len(problem.state_shape)
    data = {}
    for name in ("train", "valid", "test"):
        x = snapshots(problem, dataset, name)
        data[name] = (dataset.normalize(x, nsd).contiguous(), observer.observe(x).to(torch.float32))
    Xtr, Ytr_raw = data["train"]
    m = Ytr_raw.shape[1]
    c_obs = len(observer.channels)
    per_chan = Ytr_raw.reshape(-1, m // c_obs, c_obs)
    y_mean = per_chan.mean((0, 1)).repeat(m // c_obs)
    y_std = per_chan.std((0, 1)).clamp_min(1e-8).repeat(m // c_obs)
    lattice = observer_lattice(problem, observer)
    pod = cfg.state_arch == "pod"
    arch = cfg.obs_arch if cfg.obs_arch != "auto" else ("conv" if lattice is not None and not pod else "mlp")
    if arch == "conv" and lattice is None:
        raise ConfigError("Latent-EnSF obs_arch='conv' needs a lattice observer; use obs_arch='mlp' or 'auto'")
    if arch == "conv" and pod:
        raise ConfigError("Latent-EnSF state_arch='pod' has no spatial latent map: use obs_arch='mlp' or 'auto'")
    C, H, W = problem.state_shape
    vae = CoupledVAE(VAEConfig(n_fields=C, n=H, m=m, c_lat=cfg.c_lat, h_lat=cfg.h_lat, width=cfg.width,
                               obs_arch=arch, lattice=list(lattice) if lattice else None,
                               periodic=bool(problem.periodic), obs_mean=y_mean.tolist(), obs_std=y_std.tolist(),
                               seed=cfg.seed, state_arch=cfg.state_arch))
    if pod:
        pick = torch.randperm(Xtr.shape[0], generator=torch.Generator().manual_seed(cfg.seed + 1))[:6000]
        missed = vae.fit_basis(Xtr[pick])
        tlog.info(f"POD state path: {cfg.c_lat * cfg.h_lat ** 2} modes from {len(pick)} training snapshots miss "
                  f"{missed:.2%} of their centred energy")
    vae = vae.to(device)
    norm_y = {k: vae.normalize_obs(v[1].to(device)) for k, v in data.items()}
    Xtr, Ytr = Xtr.to(device), norm_y["train"]
    n_tr = Xtr.shape[0]
    mean, std = dataset.field_mean.to(torch.float32), dataset.field_std.to(torch.float32)
    tlog.info(f"coupled VAE: {sum(p.numel() for p in vae.parameters())} parameters; latent "
              f"{cfg.c_lat}x{cfg.h_lat}x{cfg.h_lat}; {n_tr} training snapshots of {C}x{H}x{W}; {m} observations "
              f"({arch} encoder{', lattice ' + 'x'.join(map(str, lattice)) if lattice else ''})")

    ge = torch.Generator().manual_seed(cfg.seed + 7919)
    eval_sets = {}
    for name in ("valid", "test"):
        X, Y = data[name][0], norm_y[name]
        if 0 < cfg.eval_max < X.shape[0]:
            idx = torch.randperm(X.shape[0], generator=ge)[:cfg.eval_max]
            X, Y = X[idx], Y[idx]
        eval_sets[name] = (X.to(device), Y)

    def reconstruct(X: torch.Tensor, Y: torch.Tensor, bs: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        rx, ry = [], []
        for i in range(0, X.shape[0], bs):
            rx.append(vae.decode(vae.encode_x(X[i:i + bs])[0]))
            ry.append(vae.decode(vae.encode_y(Y[i:i + bs])[0]))
        return torch.cat(rx), torch.cat(ry)

    def evaluate() -> dict[str, float]:
        vae.eval()
        out = {}
        for name, (X, Y) in eval_sets.items():
            rx, ry = reconstruct(X, Y)
            out[f"{name}_rrmse"] = float(_rrmse(rx, X).mean())
            out[f"{name}_rrmse_obs"] = float(_rrmse(ry, X).mean())
        out["valid_sel"] = out["valid_rrmse"] + out["valid_rrmse_obs"]
        vae.train()
        return out

    def batches(ep: int) -> Iterable[torch.Tensor]:
        perm = torch.randperm(n_tr, generator=g)
        for i in range(0, n_tr, cfg.batch):
            b = perm[i:i + cfg.batch].to(device)
            y = Ytr[b]
            if cfg.obs_train_noise > 0:
                y = y + cfg.obs_train_noise * torch.randn(y.shape, generator=g).to(device)
            loss, _ = vae_loss(vae, Xtr[b], y, cfg.beta, cfg.lam, g)
            yield loss

    vae.train()
    ckpt, resume = snapshot_files(snapshot_run, stop, cfg.epochs)
    with snapshot_run.lock() if snapshot_run is not None else contextlib.nullcontext():
        best = run_stage("vae", {"vae": vae}, list(vae.parameters()), batches, epochs=cfg.epochs,
                         steps_per_epoch=math.ceil(n_tr / cfg.batch), lr=cfg.lr, schedule=cfg.schedule,
                         evaluate=evaluate, select="valid_sel", eval_every=cfg.eval_every, tlog=tlog,
                         checkpoint=ckpt, rng=g, stop_at=stop, resume_from=resume)
    vae.eval()
    with torch.no_grad():
        X, Y = data["test"][0].to(device), norm_y["test"]
        rx, ry = reconstruct(X, Y)
        summary = dict(test_rrmse_norm=float(_rrmse(rx, X).mean()),
                       test_rrmse_phys=float(_rrmse(rx, X, mean, std).mean()),
                       test_rrmse_obs_norm=float(_rrmse(ry, X).mean()),
                       test_rrmse_obs_phys=float(_rrmse(ry, X, mean, std).mean()),
                       best_epoch=best.get("epoch"), valid_rrmse=best.get("valid_rrmse"),
                       valid_rrmse_obs=best.get("valid_rrmse_obs"), obs_arch=arch,
                       n_weights=sum(p.numel() for p in vae.parameters()), epochs_trained=stop,
                       train_fraction=cfg.train_fraction)
    tlog.info(f"VAE test rRMSE (whole split): state path {summary['test_rrmse_norm']:.4f} normalised, "
              f"{summary['test_rrmse_phys']:.4f} physical; observation path {summary['test_rrmse_obs_norm']:.4f} "
              f"normalised, {summary['test_rrmse_obs_phys']:.4f} physical")
    return vae, summary




@torch.no_grad()
def score_vae(vae, problem: Problem, observer: Observer, dataset: Dataset) -> dict[str, float]:
    """A coupled VAE's test errors on ``dataset``, as :func:`train_vae` reports them (whole test split)."""
    vae.eval()
    x = snapshots(problem, dataset, "test")
    X = dataset.normalize(x, len(problem.state_shape))
    Y = vae.normalize_obs(observer.observe(x).to(torch.float32))
    mean, std = dataset.field_mean.to(torch.float32), dataset.field_std.to(torch.float32)
    rx, ry = [], []
    for i in range(0, X.shape[0], 256):
        rx.append(vae.decode(vae.encode_x(X[i:i + 256])[0]))
        ry.append(vae.decode(vae.encode_y(Y[i:i + 256])[0]))
    rx, ry = torch.cat(rx), torch.cat(ry)
    return dict(test_rrmse_norm=float(_rrmse(rx, X).mean()), test_rrmse_phys=float(_rrmse(rx, X, mean, std).mean()),
                test_rrmse_obs_norm=float(_rrmse(ry, X).mean()),
                test_rrmse_obs_phys=float(_rrmse(ry, X, mean, std).mean()))


def rescore_vae(problem: Problem, observer: Observer, dataset: Dataset
                ) -> Callable[[Artifact], dict[str, float]]:
    """``rescore`` for :func:`methods.artifact_cache.load_or_train`: the artifact's VAE scored on ``dataset``."""
    def rescore(art: Artifact) -> dict[str, float]:
        vae = CoupledVAE.from_config(art.config["networks"]["vae"])
        vae.load_state_dict(art.weights["vae"])
        return score_vae(vae, problem, observer, dataset)
    return rescore
