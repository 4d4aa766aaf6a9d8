"""`bench train`: train the networks of every learned method in a grid, without assimilating.

For each distinct (problem, observer layout, learned method) of the grid it builds the dataset, binds the
method and runs its ``fit`` (shipped artifact -> cache -> fresh training, see methods/training.py), printing the
test errors measured on the data at hand (the recorded ones when the artifact's data checksum is the dataset's,
else re-scored; a line per network says which). ``--ship`` copies the resulting artifacts into
``methods/artifacts/`` so that they are committed and a cold ``bench run`` uses them; ``--curve PREFIX`` writes
time-to-accuracy curves as CSV. A shipped network whose files fail their checksums is refused (exit 1).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from bench.config import Grid

ARTIFACT_DIR = Path(__file__).resolve().parent.parent / "methods" / "artifacts"


def is_learned(method) -> bool:
    from methods.base import Method
    return type(method).fit is not Method.fit


def train_grid(grid: Grid, cache_dir: Path | None = None, ship: bool = False, curve: str | None = None) -> list[dict]:
    import methods
    import problems
    from methods.training import train_method

    from methods.training import ArtifactError
    seen, out, refused = set(), [], []
    for c in grid.cells:
        method = methods.get(c.method, **c.mdict)
        if not is_learned(method):
            continue
        key = (c.problem, c.problem_params, c.observer_params, c.method, c.method_params)
        if key in seen:
            continue
        seen.add(key)
        problem = problems.get(c.problem, **c.pdict)
        ds = problem.dataset(cache_dir=cache_dir, progress=True)
        observer = problems.bind_observer(problem, ds, **c.odict)
        reason = method.skip(problem, observer)
        if reason:
            print(f"skip {method.label} on {problem.label}: {reason}")
            continue
        curve_path = None
        if curve:
            curve_path = Path(f"{curve}-{c.method}-{c.problem}.csv")
            curve_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            summary = train_method(method, problem, observer, ds, generator=torch.Generator().manual_seed(0),
                                   cache_dir=cache_dir, progress=True, curve_path=curve_path)
        except ArtifactError as e:  # a corrupt shipped network: refused, said once, the other methods go on
            print(f"error: {e}", file=sys.stderr)
            refused.append(str(e))
            continue
        print(json.dumps(summary, indent=2, default=str))
        for name, art in (getattr(method, "artifacts", {}) or {}).items():
            print(f"{name} {art.key} ({art.source}): {art.data_note}")
        if ship:
            for name, art in (getattr(method, "artifacts", {}) or {}).items():
                src = Path(art.path)
                dst = ARTIFACT_DIR / src.name
                if src.resolve() != dst.resolve():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                    print(f"shipped {name} -> {dst}")
        out.append(summary)
    if not out and not refused:
        print("no learned method in this grid: nothing to train")
    if refused:
        raise SystemExit(1)
    return out
