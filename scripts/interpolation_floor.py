"""What a surrogate could reach by interpolating the training trajectories in parameter space, per time.

Usage::

    python scripts/interpolation_floor.py kolmogorov [--artifact HASH] [--times 8]

For every test trajectory of the problem's default dataset, two predictors that need no training: the training
trajectory whose (standardised) parameters are nearest (``nn``), and the inverse-distance-weighted mean of the
``k`` nearest (``idw``, k = 2 for one parameter, 4 for more). Prints their relative L2 error against the test
snapshots (raw fields, all fields pooled, as a result's rRMSE) per time and averaged over time, the number an
LDNet's test rRMSE is compared with. With ``--artifact`` (a shipped LD-EnSF LDNet), its error per time beside
them (physical units, the test rRMSE of ``bench train``).

A small error at early times and a large one late says that the trajectories separate with time (a chaotic
flow): an MSE-trained surrogate can then at best predict the conditional mean late, and the early times are
where it must be exact; an error that is large at every time says that neighbouring training parameters are
too far apart for plain interpolation (a bump that moves with its parameter).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import problems
    from methods.artifact_cache import SHIPPED_DIR, read_artifact
    from methods.ldnet import LDNet
    from methods.ldnet_train import ldnet_test_errors
    from methods.train_loop import rel_l2

    def rel(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Per-snapshot relative L2 of raw fields, ``(b, T, ...) -> (b, T)``."""
        return rel_l2(pred.flatten(2).unsqueeze(-1), true.flatten(2).unsqueeze(-1))

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("problem", choices=["shallow_water", "kolmogorov"])
    ap.add_argument("--artifact", help="a shipped LD-EnSF LDNet (folder name under methods/artifacts)")
    ap.add_argument("--times", type=int, default=8, help="times printed (evenly spaced)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pb = problems.get(args.problem)
    ds = pb.dataset()
    xtr, ptr = ds.split("train")
    xte, pte = ds.split("test")
    xtr, xte = xtr.double(), xte.double()
    mu, sd = ptr.mean(0), ptr.std(0).clamp_min(1e-12)
    dist = torch.cdist(((pte - mu) / sd).double(), ((ptr - mu) / sd).double())
    k = 2 if ptr.shape[1] == 1 else 4
    d, idx = dist.topk(k, largest=False)
    w = 1.0 / d.clamp_min(1e-12)
    w = (w / w.sum(1, keepdim=True)).reshape(*w.shape, *[1] * (xtr.dim() - 1))
    rows = {"nn": rel(xtr[idx[:, 0]], xte), f"idw{k}": rel((w * xtr[idx]).sum(1), xte)}
    if args.artifact:
        art = read_artifact(SHIPPED_DIR / args.artifact, "shipped")
        net = LDNet.from_config(art.config["networks"]["ldnet"])
        net.load_state_dict(art.weights["ldnet"])
        rows[args.artifact[:8]] = ldnet_test_errors(net, pb, ds)[1].double()
    T = xte.shape[1]
    times = sorted({round(i * (T - 1) / max(args.times - 1, 1)) for i in range(args.times)})
    print(f"{args.problem}: {xte.shape[0]} test trajectories, {xtr.shape[0]} training, {T} snapshots")
    print(f"{'predictor':>10} " + " ".join(f"{'t=' + str(t):>7}" for t in times) + f" {'mean':>7}")
    for name, e in rows.items():
        print(f"{name:>10} " + " ".join(f"{float(e[:, t].mean()):7.3f}" for t in times) + f" {float(e.mean()):7.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
