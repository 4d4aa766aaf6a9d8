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


# ----------------------------------------------------------------------------------------------------------------
# time averages of autocorrelated series
def integrated_autocorr_time(x, window_c: float = 5.0) -> float:
    """Integrated autocorrelation time ``tau = 1 + 2 sum_k rho_k`` of a series ``x (T,)``.

    The sum runs over lags ``1..M`` with Sokal's self-consistent window: the smallest ``M >= window_c * tau(M)``
    (Sokal 1997, "Monte Carlo methods in statistical mechanics"; the choice of emcee and of most MCMC
    diagnostics). ``tau`` is 1 for white noise and ``(1 + a) / (1 - a)`` for an AR(1) series with coefficient
    ``a``; the variance of the time average of ``T`` values is ``tau`` times the independent-sample variance
    ``var(x) / T``. A constant series has ``tau = 1``.
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 3:
        return 1.0
    d = x - x.mean()
    var = float(d @ d) / n
    if var <= 0.0:
        return 1.0
    f = np.fft.rfft(d, n=2 * n)  # zero-padded: the linear (not circular) autocovariance
    acov = np.fft.irfft(f * np.conj(f))[:n] / n
    rho = acov / acov[0]
    taus = 2.0 * np.cumsum(rho) - 1.0  # taus[M] = 1 + 2 sum_{k=1..M} rho_k
    ok = np.arange(n) >= window_c * taus
    M = int(np.argmax(ok)) if ok.any() else n - 1
    return float(max(taus[M], 1.0 / n))


def time_mean_ci(x, level: float = 0.95, window_c: float = 5.0) -> tuple[float, float]:
    """Mean of a time series ``x (T,)`` (NaN/Inf ignored) and the half-width of its ``level`` confidence interval.

    The standard error accounts for the autocorrelation of the series: ``se = sqrt(tau var(x) / T)`` with ``tau``
    from :func:`integrated_autocorr_time`, so ``T`` correlated values count as ``T / tau`` independent ones; the
    interval is ``mean +- z se`` with ``z`` the normal quantile. A time-averaged filter score (RMSE over cycles)
    scatters between truths and observation draws by about this much.

    Returns
    -------
    ``(mean, half_width)``; ``half_width`` is NaN for fewer than 3 finite values.
    """
    import numpy as np
    from statistics import NormalDist

    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie in (0, 1)")
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size < 3:
        return float(x.mean()), float("nan")
    tau = integrated_autocorr_time(x, window_c)
    se = float(np.sqrt(tau * x.var(ddof=1) / x.size))
    return float(x.mean()), NormalDist().inv_cdf(0.5 + level / 2.0) * se
