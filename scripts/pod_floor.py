"""How well would a linear decoder do? POD (PCA) projection error of the test snapshots onto the leading modes of
the training snapshots, in the LDNet's normalised point layout.

Usage::

    python scripts/pod_floor.py shallow_water [--modes 8 16 32 64 128 256 512]

Prints the per-snapshot relative L2 error (normalised and physical units, averaged over test snapshots) for each
number of modes; the eigenproblem is the (snapshots x snapshots) Gram matrix of the training split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import problems
    from methods.ldnet import to_points
    from methods.train_loop import rel_l2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("problem")
    ap.add_argument("--modes", type=int, nargs="*", default=[8, 16, 32, 64, 128, 256, 512])
    args = ap.parse_args(argv)
    pb = problems.get(args.problem)
    ds = pb.dataset()
    Ztr = to_points(pb, ds, ds.split("train")[0])
    Zte = to_points(pb, ds, ds.split("test")[0])
    A = Ztr.reshape(-1, Ztr.shape[2] * Ztr.shape[3]).double()
    ev, V = torch.linalg.eigh(A @ A.T)
    ev, V = ev.flip(0), V.flip(1)
    B = Zte.reshape(-1, A.shape[1]).double()
    mean, std = ds.field_mean.float(), ds.field_std.float()
    print("modes  rRMSE_norm  rRMSE_phys")
    for k in args.modes:
        U = A.T @ V[:, :k] / ev[:k].clamp_min(1e-30).sqrt()
        pred = ((B @ U) @ U.T).reshape(Zte.shape).float()
        print(f"{k:5d}  {float(rel_l2(pred, Zte).mean()):10.4f}  {float(rel_l2(pred, Zte, mean, std).mean()):10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
