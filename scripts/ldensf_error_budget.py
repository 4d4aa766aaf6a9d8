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
    from methods.ldensf import LatentState
    from methods.ldnet import normalize_params
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
            u = normalize_params(p[k:k + 1].double(), m._p_lo, m._p_hi).float()
            s = net.rollout(u, T)[0]                                                # (T+1, d_s)
            y = obs.sample(truth[1:], g).reshape(1, T, -1)
            kappa, _ = enc(y)                                                       # (1, T, d_s + d_u)
            roll, read = [], []
            for t in range(args.spinup + 1, T + 1):
                roll.append(_rel(m.estimate(LatentState(s[t:t + 1], u))[0], truth[t]))
                read.append(_rel(m.estimate(LatentState(kappa[:, t - 1, :d_s], kappa[:, t - 1, d_s:]))[0], truth[t]))
            rows.append((k, sum(roll) / len(roll), sum(read) / len(read)))
    print(f"{'truth':>5}  {'rollout':>8}  {'encoder':>8}   (rRMSE over cycles {args.spinup + 1}..{T})")
    for k, a, b in rows:
        print(f"{k:>5}  {a:8.3f}  {b:8.3f}")
    n = len(rows)
    print(f"{'mean':>5}  {sum(r[1] for r in rows) / n:8.3f}  {sum(r[2] for r in rows) / n:8.3f}")
    return 0


def _rel(est: torch.Tensor, truth: torch.Tensor) -> float:
    return float((est - truth).norm() / truth.norm())


if __name__ == "__main__":
    raise SystemExit(main())
