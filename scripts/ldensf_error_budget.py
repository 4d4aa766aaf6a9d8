"""Where LD-EnSF's analysis error comes from, per truth: the surrogate's own error against the encoder's.

Usage::

    python scripts/ldensf_error_budget.py shallow_water [--operator arctan] [--truths 3] [--spinup 5]

For LD-EnSF as the default preset runs it (its recipe's networks: shipped, cached or trained; the observer of the
default preset's PDE blocks: 0.44 % lattice, 10 % noise) and each of the first ``--truths`` test trajectories (the
truths ``bench run`` assimilates with seeds 0, 1, 2 ...), prints the relative error of the full state
(``||x - truth|| / ||truth||``, the runner's rRMSE, averaged over the cycles after ``--spinup``) of

- ``rollout``: the LDNet's latent trajectory started from the truth's own parameters, decoded. No filter can do
  better than this with these networks unless it corrects the latent state away from the surrogate's own
  trajectory: it is the analysis a perfect encoder and filter would give, the surrogate's floor on that truth.
- ``encoder``: the LSTM encoder's latent state and parameters read off one draw of the noisy observations (its
  own draw, not the run's), decoded: the analysis without a filter, which trusts the encoder alone.

Compare with LD-EnSF's analysis in a ``bench run`` of the same cells (this script does not run the filter): the
filter's worth is how far below ``encoder`` the analysis lands, and ``rollout`` is the surrogate's share.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import methods
    import problems
    from bench.train import train_method
    from methods.ldnet_train import encoder_targets
    from problems.base import bind_observer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("problem", choices=["shallow_water", "kolmogorov"])
    ap.add_argument("--operator", default="identity", choices=["identity", "arctan"])
    ap.add_argument("--truths", type=int, default=3)
    ap.add_argument("--spinup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pb = problems.get(args.problem)
    ds = pb.dataset()
    obs = bind_observer(pb, ds, coverage=0.0044, noise=0.1, operator=args.operator)
    m = methods.get("LD-EnSF")
    summary = train_method(m, pb, obs, ds, progress=False)
    print(f"LD-EnSF on {args.problem} ({args.operator} observations): networks "
          + ", ".join(f"{k} {v.get('hash')}" for k, v in summary.items() if isinstance(v, dict) and "hash" in v))
    net, enc = m.net, m.encoder
    x, p = ds.split("test")
    g = torch.Generator().manual_seed(0)
    d_s = net.latent_dim
    rows = []
    with torch.no_grad():
        for k in range(min(args.truths, x.shape[0])):
            truth = x[k].float()                                                    # (T+1, *state_shape)
            T = truth.shape[0] - 1
            own = encoder_targets(net, pb, p[k:k + 1], T)[0]                        # (T, d_s + d_u), t = 1..T
            read = enc(obs.sample(truth[1:], g).reshape(1, T, -1))[0][0]            # the same layout
            errors = [_decoded_error(m, kappa, d_s, truth[1:])[args.spinup:].mean() for kappa in (own, read)]
            rows.append((k, *map(float, errors)))
    print(f"{'truth':>5}  {'rollout':>8}  {'encoder':>8}   (rRMSE over cycles {args.spinup + 1}..{T})")
    for k, a, b in rows:
        print(f"{k:>5}  {a:8.3f}  {b:8.3f}")
    n = len(rows)
    print(f"{'mean':>5}  {sum(r[1] for r in rows) / n:8.3f}  {sum(r[2] for r in rows) / n:8.3f}")
    return 0


def _decoded_error(m, kappa: torch.Tensor, d_s: int, truth: torch.Tensor) -> torch.Tensor:
    """Relative error of each decoded latent ``kappa (T, d_s + d_u)`` against ``truth (T, *state_shape)``."""
    from methods.ldensf import LatentState
    err = m.estimate(LatentState(kappa[:, :d_s], kappa[:, d_s:])) - truth
    return err.flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1)


if __name__ == "__main__":
    raise SystemExit(main())
