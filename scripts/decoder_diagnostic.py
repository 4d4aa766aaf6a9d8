"""Decoder-only diagnostic: how fast a reconstruction network learns the tsunami fields from exact inputs.

Usage::

    python scripts/decoder_diagnostic.py film 100        # FiLM residual MLP (the cpu recipe's decoder)
    python scripts/decoder_diagnostic.py registered 100 --frames 4

The decoder's conditioning input is the exact state of the simulation instead of a learned latent: the
normalised bump location ``u`` and time features (``t`` and ``sin(k pi t / 2)``, k = 1..7). Adam 3e-3,
bfloat16 autocast, 4 trajectories x 64 random points per snapshot per step over the 120 training trajectories of
the default dataset, one thread, for the given CPU seconds; prints the running training loss and the test rRMSE
(normalised units, 256 fixed points per snapshot of 20 test trajectories) every 400 steps. It separates the
decoder's cost from the latent dynamics': if the decoder alone cannot reach an error in a budget, no LDNet
built on it can.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import problems
    from methods.ldnet import RegisteredDecoder, ResMLP, normalize_params, param_normalizer, to_points

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("decoder", choices=["film", "registered"])
    ap.add_argument("cpu_seconds", type=float)
    ap.add_argument("--frames", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pb = problems.get("shallow_water")
    ds = pb.dataset(progress=False)
    plo, phi = param_normalizer(pb)

    def load(name, n):
        x, p = ds.split(name)
        return to_points(pb, ds, x[:n]), normalize_params(p[:n], plo, phi).float()
    Z, U = load("train", 120)
    Zt, Ut = load("test", 20)
    T1 = Z.shape[1]
    t = torch.linspace(-1, 1, T1)
    coords = pb.coords().float()
    lo, hi = coords.min(0).values, coords.max(0).values
    xi = 2 * (coords - lo) / (hi - lo) - 1

    def code(Ub):
        tt = t[None, :, None].expand(len(Ub), T1, 1)
        return torch.cat([Ub[:, None, :].expand(-1, T1, -1), tt]
                         + [torch.sin(k * math.pi * tt / 2) for k in range(1, 8)], -1)
    g = torch.Generator().manual_seed(0)
    d = 10
    net = RegisteredDecoder(d, 2, 3, 64, 4, "relu", 16, 1.0, True, args.frames, g) \
        if args.decoder == "registered" else ResMLP(d, 2, 3, 64, 4, "relu", 32, 2.0, True, g, film=True)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    ie = torch.randint(xi.shape[0], (Zt.shape[0], T1, 256), generator=torch.Generator().manual_seed(5))
    true_t = torch.gather(Zt, 2, ie[..., None].expand(-1, -1, -1, 3))

    def test() -> float:
        with torch.no_grad():
            pred = net(code(Ut), xi[ie])
        return float(((pred - true_t).pow(2).sum((-1, -2)) / true_t.pow(2).sum((-1, -2))).sqrt().mean())
    t0, i, ema = time.process_time(), 0, None
    while time.process_time() - t0 < args.cpu_seconds:
        b = torch.randint(Z.shape[0], (4,), generator=g)
        idx = torch.randint(xi.shape[0], (4, T1, 64), generator=g)
        true = torch.gather(Z[b], 2, idx[..., None].expand(-1, -1, -1, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = net(code(U[b]), xi[idx])
        loss = (pred.float() - true).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema = float(loss.detach()) if ema is None else 0.98 * ema + 0.02 * float(loss.detach())
        i += 1
        if i % 400 == 0:
            print(f"step {i}: train loss {ema:.4f}, test rRMSE {test():.4f}, {time.process_time() - t0:.1f} CPU s",
                  flush=True)
    print(f"final, step {i}: train loss {ema:.4f}, test rRMSE {test():.4f}, {time.process_time() - t0:.1f} CPU s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
