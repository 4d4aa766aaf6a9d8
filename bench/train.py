"""`bench train`: train the networks of every learned method in a grid, without assimilating.

For each distinct (problem, observer layout, learned method) of the grid it prepares the cell the way the runner
does (:func:`bench.runner.prepare`: dataset, observer, skip reason), runs the method's ``fit`` (shipped artifact
-> cache -> fresh training, see methods/artifact_cache.py) and prints the test errors measured on the data at hand (the
recorded ones when the artifact's data checksum is the dataset's, else re-scored; a line per network says
which). ``--ship`` copies the resulting artifacts into ``methods/artifacts/`` so that they are committed and a
cold ``bench run`` uses them; ``--curve PREFIX`` writes time-to-accuracy curves as CSV. A shipped network whose
files fail their checksums is refused (exit 1).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path


import methods
from bench.config import Grid, freeze
from bench.runner import prepare
from methods.base import Context, Method
from methods.artifact_cache import SHIPPED_DIR, ArtifactError, write_curve
from problems.base import Dataset, Observer, Problem

ARTIFACT_DIR = SHIPPED_DIR


def is_learned(method) -> bool:
    return type(method).fit is not Method.fit


def train_method(method: Method, problem: Problem, observer: Observer, dataset: Dataset | None = None, *,
                 cache_dir: Path | str | None = None,
                 progress: bool = True, curve_path: Path | str | None = None) -> dict:
    """Bind ``method`` to (problem, observer, dataset), run its ``fit`` and summarise the training.

    The method's networks come from the shipped artifacts, the cache, or fresh training (in that order; see
    methods/artifact_cache.py). ``curve_path``, when given, receives the learning curve(s) as one CSV (a ``network``
    column tells the artifacts apart). Returns a dict with ``time_fit_s`` (wall-clock of ``fit``), and, from the
    method's ``training_summary``: per network, its artifact ``hash``, ``source`` (shipped/cache/trained),
    ``path`` and test errors (e.g. ``test_rrmse_norm``/``test_rrmse_phys`` for an LDNet).
    """
    if dataset is None:
        dataset = problem.dataset(cache_dir=cache_dir, progress=progress)
    ctx = Context(problem=problem, observer=observer, dataset=dataset,
                  cache_dir=Path(cache_dir) if cache_dir is not None else None, progress=progress)
    method.bind(ctx)
    t0 = time.perf_counter()
    method.fit()
    summary = dict(method.training_summary)
    summary["time_fit_s"] = time.perf_counter() - t0
    summary["method"] = method.label
    summary["problem"] = problem.label
    if curve_path is not None:
        rows = []
        for name, art in method.artifacts.items():
            rows += [dict(network=name, **r) for r in art.curve]
        write_curve(rows, curve_path)
    return summary


def train_grid(grid: Grid, cache_dir: Path | None = None, ship: bool = False, curve: str | None = None,
               recipe: str | None = None, progress: bool = True) -> list[dict]:
    """Train every learned method of ``grid``; ``recipe`` (when given) replaces each one's training recipe.

    An unknown recipe raises ConfigError (naming the valid ones) before anything is trained. ``progress``
    shows progress bars and training log lines (the CLI turns it off when stderr is not a terminal).
    """
    preps = []
    for c in grid.cells:
        if recipe is not None and "recipe" in {f.name for f in dataclasses.fields(methods.cls(c.method))}:
            c = dataclasses.replace(c, method_params=freeze({**c.mdict, "recipe": recipe}))
        prep = prepare(c, cache_dir=cache_dir, progress=progress)  # builds problem and method only
        if is_learned(prep.method):
            preps.append(prep)
    seen, out, refused = set(), [], []
    for prep in preps:
        c = prep.cell
        key = (c.problem, c.problem_params, c.observer_params, c.method, prep.method.label)
        if key in seen:
            continue
        seen.add(key)
        reason = prep.skip_reason
        if reason:
            print(f"skip {prep.method.label} on {prep.problem.label}: {reason}")
            continue
        curve_path = None
        if curve:
            curve_path = Path(f"{curve}-{c.method}-{c.problem}.csv")
            curve_path.parent.mkdir(parents=True, exist_ok=True)
        try:  # the training seed of `bench train` is fixed (0), independent of the cell
            summary = train_method(prep.method, prep.problem, prep.observer, prep.dataset,
                                   cache_dir=cache_dir,
                                   progress=progress, curve_path=curve_path)
        except ArtifactError as e:  # a corrupt shipped network: refused, said once, the other methods go on
            print(f"error: {e}", file=sys.stderr)
            refused.append(str(e))
            continue
        print(json.dumps(summary, indent=2, default=str))
        for name, art in (getattr(prep.method, "artifacts", {}) or {}).items():
            print(f"{name} {art.key} ({art.source}): {art.data_note}")
        if ship:
            for name, art in prep.method.artifacts.items():
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
