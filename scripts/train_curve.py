"""Train LD-EnSF's networks for one problem and record the time-to-accuracy curve.

Usage::

    python scripts/train_curve.py shallow_water [--set epochs=40 points=64 ...] [--curve out.csv] [--ship]
        [--threads 1] [--cache DIR]

Trains (or loads) the LDNet and the LSTM encoder of ``LD-EnSF`` with the default observer of the default preset
(lattice, coverage 0.0044, default fields, additive noise 0.1), prints the summary (test rRMSE in normalised and
physical units, training times) and writes the learning curve CSV (training seconds vs validation/test rRMSE).
``--ship`` copies the two artifacts into ``methods/artifacts/`` (what the package ships).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def main(argv: list[str] | None = None) -> int:
    import logging
    import problems
    import methods
    from bench.train import train_method
    from methods.artifact_cache import SHIPPED_DIR
    from problems.base import bind_observer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("problem")
    ap.add_argument("--set", nargs="*", default=[], help="LD-EnSF fields, key=value")
    ap.add_argument("--curve", default=None)
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pb = problems.get(args.problem)
    ds = pb.dataset(cache_dir=args.cache)
    obs = bind_observer(pb, ds, layout="lattice", coverage=0.0044, noise=0.1, noise_type="additive")
    kw = dict(kv.split("=", 1) for kv in args.set)
    m = methods.get("LD-EnSF", **{k: _value(v) for k, v in kw.items()})
    curve = args.curve or f"results/train_curve_{args.problem}.csv"
    summary = train_method(m, pb, obs, ds, cache_dir=args.cache,
                           progress=True, curve_path=curve)
    print(json.dumps(summary, indent=2, default=str))
    if args.ship:
        for name, art in m.artifacts.items():
            dest = SHIPPED_DIR / art.key
            if art.source != "shipped" and not dest.exists():
                shutil.copytree(art.path, dest)
                print(f"shipped {name} -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
