"""Time-to-accuracy of one LDNet training recipe (no encoder, no artifact): the ablation in docs/training.md.

Usage::

    python scripts/ldnet_ablation.py shallow_water TAG [key=value ...] [--threads 1] [--out results/ablation]

The run checkpoints to ``<out>/<problem>_<TAG>.ckpt`` after every evaluation and resumes from it when started
again with the same arguments (a larger ``epochs=`` continues a finished run; ``epochs=`` given alone drops the
recipe's ``warm_restart``, as in LD-EnSF; ``warm_restart=400,800`` restarts at both); ``--curve-only`` writes the
curve of a run in progress (or interrupted) from its checkpoint. ``--for-recipe`` (for a run whose settings are
the recipe's, evaluation interval aside) also copies the finished checkpoint to where ``bench train`` resumes the
recipe's training from, so shipping the network does not train it twice.

Trains :func:`methods.ldnet_train.train_ldnet` with the LD-EnSF default recipe overridden by ``key=value``
(fields of :class:`methods.ldnet_train.LDNetTrainConfig`), and writes ``<out>/<problem>_<TAG>.csv`` (training
seconds vs validation/test rRMSE) and ``<out>/<problem>_<TAG>.json`` (the summary and the recipe).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train_curve import _value  # noqa: E402  (scripts/ is on sys.path when a script runs)


def main(argv=None) -> int:
    import problems
    import methods
    from methods.artifact_cache import checkpoint_dir, write_curve
    from methods.ldnet_train import train_ldnet
    from methods.train_loop import TrainLog

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("problem")
    ap.add_argument("tag")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/ablation")
    ap.add_argument("--recipe", default="cpu", help="the LD-EnSF training recipe the overrides start from")
    ap.add_argument("--curve-only", action="store_true",
                    help="write the curve of the run's checkpoint so far (no training, no full-grid test)")
    ap.add_argument("--for-recipe", action="store_true",
                    help="copy the finished checkpoint to where `bench train` resumes the recipe's LDNet from "
                         "(the run's settings must be the recipe's, evaluation interval aside)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.curve_only:
        out = Path(args.out)
        st = torch.load(out / f"{args.problem}_{args.tag}.ckpt" / "ldnet.pt", map_location="cpu",
                        weights_only=False)
        write_curve(st["rows"], out / f"{args.problem}_{args.tag}.csv")
        (out / f"{args.problem}_{args.tag}.json").write_text(json.dumps(dict(
            partial=True, epoch=st["epoch"], train_s=st["train_s"], train_cpu_s=st.get("train_cpu_s"),
            overrides=args.overrides), indent=2))
        print(f"{args.problem}_{args.tag}: {st['epoch']} epochs, curve written (checkpoint, no full-grid test)")
        return 0
    pb = problems.get(args.problem)
    method = methods.get("LD-EnSF", recipe=args.recipe)
    recipe_cfg = method.ldnet_config(args.problem)
    kw = {k: tuple(_value(x) for x in v.split(",")) if "," in v else _value(v)  # a,b: a list (warm_restart)
          for k, v in (o.split("=", 1) for o in args.overrides)}
    if "epochs" in kw and "warm_restart" not in kw:
        kw["warm_restart"] = 0  # as in LD-EnSF: a recipe's restart belongs to the recipe's own epochs
    cfg = dataclasses.replace(recipe_cfg, **kw)
    if args.for_recipe and dataclasses.replace(cfg, eval_every=recipe_cfg.eval_every) != recipe_cfg:
        diff = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k != "eval_every" and v != getattr(recipe_cfg, k)}
        print(f"--for-recipe: the run differs from the {args.recipe!r} recipe for {args.problem} in {diff}",
              file=sys.stderr)
        return 2
    ds = pb.dataset()
    tlog = TrainLog(progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net, summary = train_ldnet(pb, ds, cfg, tlog, checkpoint_dir=out / f"{args.problem}_{args.tag}.ckpt")
    write_curve(tlog.rows, out / f"{args.problem}_{args.tag}.csv")
    summary = dict(summary, train_s=tlog.train_s, train_cpu_s=tlog.train_cpu_s, threads=args.threads,
                   recipe=dataclasses.asdict(cfg))
    (out / f"{args.problem}_{args.tag}.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "recipe"}, default=str))
    if args.for_recipe:
        dst = checkpoint_dir("ldnet", method.name, {"dataset": pb.data_key()}, recipe_cfg.identity(), None)
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / f"{args.problem}_{args.tag}.ckpt" / "ldnet.pt", dst / "ldnet.pt")
        print(f"checkpoint copied to {dst}: `bench train` resumes the {args.recipe!r} recipe's LDNet from it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
