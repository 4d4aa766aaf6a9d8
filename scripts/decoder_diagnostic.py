"""Decoder-only diagnostic: how fast a reconstruction network learns the tsunami fields from exact inputs.

Usage::

    python scripts/decoder_diagnostic.py film 100        # FiLM residual MLP (the cpu recipe's decoder)
    python scripts/decoder_diagnostic.py registered 100 --frames 4
    python scripts/decoder_diagnostic.py pod 240 --traj 1500   # POD head, 1380 more training trajectories

The decoder's conditioning input is the exact state of the simulation instead of a learned latent: the
normalised bump location ``u`` and time features (``t`` and ``sin(k pi t / 2)``, k = 1..7). Adam 3e-3,
bfloat16 autocast, 4 trajectories x 64 random points per snapshot per step over the 120 training trajectories of
the default dataset, one thread, for the given CPU seconds; prints the running training loss and the test rRMSE
(normalised units, 256 fixed points per snapshot of 20 test trajectories) every 400 steps. It separates the
decoder's cost from the latent dynamics': if the decoder alone cannot reach an error in a budget, no LDNet
built on it can.

``pod`` is the POD head instead (:class:`methods.ldnet.PODDecoder`'s idea): an MLP 3 x 512 (GELU) of the same
inputs and 64 trainable Fourier features of them (scale 1) predicts the coefficients of the leading ``--modes``
POD modes of the training snapshots (in units of each mode's RMS coefficient), 8 trajectories per step on every
grid point, Adam 1e-3 on a cosine schedule over the budget, float32; the test error is measured the same way.
``--traj`` trains on that many trajectories (the 120 of the training split and the rest simulated with another
data seed, as ``extra_traj`` does), for every decoder.
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
    ap.add_argument("decoder", choices=["film", "registered", "pod"])
    ap.add_argument("cpu_seconds", type=float)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--traj", type=int, default=120, help="training trajectories (> 120: simulate the rest)")
    ap.add_argument("--modes", type=int, default=512, help="POD modes of the pod decoder")
    args = ap.parse_args(argv)
    if args.traj < 1:
        ap.error(f"--traj must be >= 1, got {args.traj}")
    torch.set_num_threads(1)
    pb = problems.get("shallow_water")
    ds = pb.dataset(progress=False)
    plo, phi = param_normalizer(pb)

    def load(name, n):
        x, p = ds.split(name)
        if name == "train" and n > x.shape[0]:
            from methods.ldnet_train import extra_training_data
            xe, pe = extra_training_data(pb, n - x.shape[0])
            x, p = torch.cat([x, xe.to(x.dtype)]), torch.cat([p, pe.to(p.dtype)])
        return to_points(pb, ds, x[:n]), normalize_params(p[:n], plo, phi).float()
    Z, U = load("train", args.traj)
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
    ie = torch.randint(xi.shape[0], (Zt.shape[0], T1, 256), generator=torch.Generator().manual_seed(5))
    true_t = torch.gather(Zt, 2, ie[..., None].expand(-1, -1, -1, 3))
    if args.decoder == "pod":
        return pod_head(args, Z, U, Ut, code, ie, true_t)
    g = torch.Generator().manual_seed(0)
    d = 10
    net = RegisteredDecoder(d, 2, 3, 64, 4, "relu", 16, 1.0, True, args.frames, g) \
        if args.decoder == "registered" else ResMLP(d, 2, 3, 64, 4, "relu", 32, 2.0, True, g, film=True)
    opt = torch.optim.Adam(net.parameters(), 3e-3)

    def test() -> float:
        with torch.no_grad():
            pred = net(code(Ut), xi[ie])
        return float(((pred - true_t).pow(2).sum((-1, -2)) / true_t.pow(2).sum((-1, -2))).sqrt().mean())
    def loss() -> torch.Tensor:
        b = torch.randint(Z.shape[0], (4,), generator=g)
        idx = torch.randint(xi.shape[0], (4, T1, 64), generator=g)
        true = torch.gather(Z[b], 2, idx[..., None].expand(-1, -1, -1, 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = net(code(U[b]), xi[idx])
        return (pred.float() - true).pow(2).mean()
    return optimise(loss, opt, test, args.cpu_seconds)


def optimise(loss_fn, opt, test, cpu_seconds: float, cosine_lr: float | None = None) -> int:
    """Adam steps of ``loss_fn()`` for ``cpu_seconds`` of this process's CPU time (with ``cosine_lr``: the learning
    rate annealed from it to 0 over the budget), printing the running training loss and ``test()`` every 400
    steps and at the end."""
    t0, i, ema = time.process_time(), 0, None
    while (used := time.process_time() - t0) < cpu_seconds:
        if cosine_lr is not None:
            for group in opt.param_groups:
                group["lr"] = cosine_lr * 0.5 * (1 + math.cos(math.pi * used / cpu_seconds))
        loss = loss_fn()
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


def pod_head(args, Z, U, Ut, code, ie, true_t) -> int:
    """The ``pod`` decoder: the inputs of ``code`` -> coefficients of the leading POD modes (see the docstring)."""
    from methods.ldnet import MLP, FourierFeatures
    from methods.pod import pod_basis
    n, T1, P, C = Z.shape
    flat = Z.reshape(n * T1, P * C)
    pick = torch.randperm(n * T1, generator=torch.Generator().manual_seed(0))[:6000]
    mu, modes, _, missed = pod_basis(flat[pick], args.modes)
    mu, modes = mu.float(), modes.float()
    coef = (flat - mu) @ modes
    rms = coef.pow(2).mean(0).sqrt().clamp_min(1e-8)
    target = (coef / rms).reshape(n, T1, -1)
    g = torch.Generator().manual_seed(0)
    inputs, inputs_t = code(U), code(Ut)
    feats = FourierFeatures(inputs.shape[-1], 64, 1.0, True, g)
    mlp = MLP(inputs.shape[-1] + 128, args.modes, 512, 3, "gelu", g)
    net = lambda x: mlp(torch.cat([x, feats(x)], -1))  # noqa: E731
    params = list(feats.parameters()) + list(mlp.parameters())
    opt = torch.optim.Adam(params, 1e-3)
    basis = (modes * rms).T                                             # (K, P C): coefficients -> fields

    def test() -> float:
        with torch.no_grad():
            full = (net(inputs_t) @ basis + mu).reshape(*inputs_t.shape[:2], P, C)
            pred = torch.gather(full, 2, ie[..., None].expand(-1, -1, -1, C))
        return float(((pred - true_t).pow(2).sum((-1, -2)) / true_t.pow(2).sum((-1, -2))).sqrt().mean())
    print(f"pod: {args.modes} modes of {n} training trajectories miss {missed:.4f} of the centred energy", flush=True)

    def loss() -> torch.Tensor:
        b = torch.randint(n, (8,), generator=g)
        return (net(inputs[b]) - target[b]).pow(2).mean()
    return optimise(loss, opt, test, args.cpu_seconds, cosine_lr=1e-3)


if __name__ == "__main__":
    raise SystemExit(main())
