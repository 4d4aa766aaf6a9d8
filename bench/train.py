"""`bench train`: train the networks of every learned method in a grid, without assimilating.

For each distinct (problem, observer layout, learned method) of the grid it builds the dataset, binds the
method and runs its ``fit`` (shipped artifact -> cache -> fresh training, see methods/training.py), printing the
test errors. ``--ship`` copies the resulting artifacts into ``methods/artifacts/`` so that they are committed
and a cold ``bench run`` uses them; ``--curve PREFIX`` writes time-to-accuracy curves as CSV.
"""
from __future__ import annotations

import dataclasses
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
               recipe: str | None = None, progress: bool = True) -> list[dict]:
    """Train every learned method of ``grid``; ``recipe`` (when given) replaces each one's training recipe.

    An unknown recipe raises ConfigError (naming the valid ones) before anything is trained. ``progress``
    shows progress bars and training log lines (the CLI turns it off when stderr is not a terminal).
    """
    import methods
    import problems
    from methods.training import train_method

    cells = []
    for c in grid.cells:
        params = dict(c.mdict)
        if recipe is not None and "recipe" in {f.name for f in dataclasses.fields(methods.cls(c.method))}:
            params["recipe"] = recipe
        method = methods.get(c.method, **params)
        if is_learned(method):
            cells.append((c, method))
    seen, out = set(), []
    for c, method in cells:
        key = (c.problem, c.problem_params, c.observer_params, c.method, method.label)
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
