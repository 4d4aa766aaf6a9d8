"""Ensemble verification metrics, computed by the runner outside every timer (float64).

All state metrics pool every field and grid point in physical units, as the LD-EnSF paper does.
"""
from __future__ import annotations

import torch


def ensemble_metrics(E: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Metrics of an ensemble ``E (N, *shape)`` against ``truth (*shape)``.

    rmse: RMSE of the ensemble mean; rrmse: ||mean - truth|| / ||truth||; rrmse_member: the member-averaged
    relative error (the paper's headline); spread: sqrt of the mean ensemble variance (ddof 1);
    crps: the ensemble CRPS averaged over variables, E|X - y| - E|X - X'| / 2.
    """
    E = E.reshape(E.shape[0], -1).double()
    x = truth.reshape(-1).double().to(E.device)
    N = E.shape[0]
    mu = E.mean(0)
    err = mu - x
    tnorm = x.norm().clamp_min(1e-300)
    rmse = err.pow(2).mean().sqrt()
    rrmse = err.norm() / tnorm
    member = ((E - x).norm(dim=1) / tnorm).mean()
    spread = E.var(0, unbiased=True).mean().sqrt() if N > 1 else torch.zeros((), dtype=E.dtype)
    Es = E.sort(0).values
    i = torch.arange(1, N + 1, dtype=E.dtype, device=E.device)[:, None]
    abs_dev = (E - x).abs().mean(0)
    pair = (2.0 / N**2) * ((2 * i - N - 1) * Es).sum(0)  # E|X - X'|
    crps = (abs_dev - 0.5 * pair).mean()
    return {"rmse": float(rmse), "rrmse": float(rrmse), "rrmse_member": float(member),
            "spread": float(spread), "crps": float(crps)}


def param_rmse(P: torch.Tensor | None, truth: torch.Tensor) -> float:
    """RMSE of the parameter-ensemble mean ``P (N, P)`` against ``truth (P,)``; NaN without parameters."""
    if P is None or P.numel() == 0 or truth.numel() == 0:
        return float("nan")
    return float((P.double().mean(0) - truth.double().to(P.device)).pow(2).mean().sqrt())
