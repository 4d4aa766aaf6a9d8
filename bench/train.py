"""`bench train`: train the networks of every learned method in a grid, without assimilating.

For each distinct (problem, observer layout, learned method) of the grid it builds the dataset, binds the
method and runs its ``fit`` (shipped artifact -> cache -> fresh training, see methods/training.py), printing the
test errors. ``--ship`` copies the resulting artifacts into ``methods/artifacts/`` so that they are committed
and a cold ``bench run`` uses them; ``--curve PREFIX`` writes time-to-accuracy curves as CSV.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bench.config import Grid

ARTIFACT_DIR = Path(__file__).resolve().parent.parent / "methods" / "artifacts"


def is_learned(method) -> bool:
    from methods.base import Method
    return type(method).fit is not Method.fit


def train_grid(grid: Grid, cache_dir: Path | None = None, ship: bool = False, curve: str | None = None,
               progress: bool = True) -> list[dict]:
    import methods
    import problems
    from methods.training import train_method

    seen, out = set(), []
    for c in grid.cells:
        method = methods.get(c.method, **c.mdict)
        if not is_learned(method):
            continue
        key = (c.problem, c.problem_params, c.observer_params, c.method, c.method_params)
        if key in seen:
            continue
        seen.add(key)
        problem = problems.get(c.problem, **c.pdict)
        ds = problem.dataset(cache_dir=cache_dir, progress=progress)
        observer = problems.bind_observer(problem, ds, **c.odict)
        reason = method.skip(problem, observer)
        if reason:
            print(f"skip {method.label} on {problem.label}: {reason}")
            continue
        curve_path = None
        if curve:
            curve_path = Path(f"{curve}-{c.method}-{c.problem}.csv")
            curve_path.parent.mkdir(parents=True, exist_ok=True)
        summary = train_method(method, problem, observer, ds, generator=torch.Generator().manual_seed(0),
                               cache_dir=cache_dir, progress=progress, curve_path=curve_path)
        print(json.dumps(summary, indent=2, default=str))
        if ship:
            for name, art in (getattr(method, "artifacts", {}) or {}).items():
                src = Path(art.path)
                dst = ARTIFACT_DIR / src.name
                if src.resolve() != dst.resolve():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                    print(f"shipped {name} -> {dst}")
        out.append(summary)
    if not out:
        print("no learned method in this grid: nothing to train")
    return out
