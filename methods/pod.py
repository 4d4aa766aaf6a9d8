"""Proper orthogonal decomposition of a snapshot matrix: the modes shared by LD-EnSF's POD head
(:class:`methods.ldnet.PODDecoder`) and Latent-EnSF's POD state path (:class:`methods.vae.PODStateMap`)."""
from __future__ import annotations

import torch


@torch.no_grad()
def pod_basis(A: torch.Tensor, n_modes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The leading ``n_modes`` POD modes of the snapshots ``A (m, D)`` (rows; computed in float64 through the
    eigenproblem of the ``m x m`` snapshot Gram matrix, cheap when ``m << D``).

    Returns ``(mean (D,), U (D, n_modes), coeffs (m, n_modes), missed)``: the snapshot mean, the modes as
    orthonormal columns (zero columns past the rank when there are fewer snapshots than modes), the centred
    snapshots' coefficients on them, and the fraction of the centred energy the modes miss; all float64.
    """
    A = A.to(torch.float64)
    mu = A.mean(0)
    A = A - mu
    ev, V = torch.linalg.eigh(A @ A.T)
    ev, V = ev.flip(0)[:n_modes], V.flip(1)[:, :n_modes]
    U, _ = torch.linalg.qr((A.T @ V) / ev.clamp_min(1e-30).sqrt())
    if U.shape[1] < n_modes:
        U = torch.cat([U, U.new_zeros(U.shape[0], n_modes - U.shape[1])], dim=1)
    coeffs = A @ U
    missed = 1.0 - float(coeffs.pow(2).sum() / A.pow(2).sum().clamp_min(1e-300))
    return mu, U, coeffs, missed
