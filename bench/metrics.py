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


#: At most this many state entries enter a rank histogram per cycle; larger states use a fixed, evenly spaced
#: subset of entries (the same in every cycle and for every method), so the cost stays O(N x this).
RANK_MAX_ENTRIES = 16384


def rank_entries(d: int, max_entries: int = RANK_MAX_ENTRIES) -> torch.Tensor | None:
    """The flat state entries a rank histogram uses: None (all of them) when ``d <= max_entries``, else
    ``max_entries`` evenly spaced indices over ``0..d-1`` (deterministic, so every field is represented)."""
    if d <= max_entries:
        return None
    return torch.linspace(0, d - 1, max_entries, dtype=torch.float64).round().long().unique()


def rank_histogram(E: torch.Tensor, truth: torch.Tensor, max_entries: int = RANK_MAX_ENTRIES) -> list[int]:
    """Rank histogram of ``truth (*shape)`` within the ensemble ``E (N, *shape)``: ``N + 1`` bin counts.

    For every state entry (all fields and grid points, physical units; a fixed subset of
    :func:`rank_entries` when there are more than ``max_entries``) the rank is the number of members below the
    truth, 0..N; a truth tied with members takes the middle of the tied ranks (deterministic). A calibrated
    ensemble, whose members and truth are exchangeable draws, gives a flat histogram (each bin 1 / (N + 1));
    an under-dispersed one a U shape (the truth falls outside the ensemble too often); an over-dispersed one
    a dome; a biased one a slope (Hamill 2001, "Interpretation of rank histograms for verifying ensemble
    forecasts", Mon. Wea. Rev. 129).
    """
    E = E.reshape(E.shape[0], -1)
    x = truth.reshape(-1).to(E.device, E.dtype)
    idx = rank_entries(x.numel(), max_entries)
    if idx is not None:
        idx = idx.to(E.device)
        E, x = E[:, idx], x[idx]
    N = E.shape[0]
    below = (E < x).sum(0)
    ties = (E == x).sum(0)
    ranks = below + ties.div(2, rounding_mode="floor")
    return torch.bincount(ranks.cpu(), minlength=N + 1).tolist()


def spread_error_ratio(spread, rmse, n_ens: int) -> float:
    """Spread / error ratio ``sqrt((N + 1) / N) sqrt(mean spread^2 / mean rmse^2)`` of series (or scalars).

    ``spread`` is the ensemble spread (sqrt of the mean member variance, ddof 1) and ``rmse`` the RMSE of the
    ensemble mean, per cycle; the means run over the given cycles (a ratio of time-averaged mean squares, not
    a mean of per-cycle ratios, so a cycle with a tiny error does not dominate). The factor ``(N + 1) / N``
    makes a calibrated ensemble score 1 for every N: when the truth is one more draw from the ensemble's
    distribution, the mean's squared error is ``(1 + 1/N)`` times the variance (Fortin et al. 2014, "Why should
    ensemble spread match the RMSE of the ensemble mean?", J. Hydrometeorol. 15). Below 1: under-dispersed
    (over-confident); above 1: over-dispersed. NaN when the error is zero or nothing is finite.
    """
    import numpy as np

    s = np.atleast_1d(np.asarray(spread, dtype=np.float64))
    e = np.atleast_1d(np.asarray(rmse, dtype=np.float64))
    ok = np.isfinite(s) & np.isfinite(e)
    if not ok.any() or n_ens < 1:
        return float("nan")
    mse = float(np.mean(e[ok] ** 2))
    if mse <= 0.0:
        return float("nan")
    return float(np.sqrt((n_ens + 1) / n_ens * np.mean(s[ok] ** 2) / mse))


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
