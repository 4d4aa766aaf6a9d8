"""A grid of cells into a run folder: resumable, lock-protected, on any executor.

``bench.runner`` runs one cell; ``bench.executors`` decides where cells run and writes each one's file; this module
drives a whole grid through an executor and consolidates the results table.
"""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

import problems
from bench import store
from bench.config import Cell
from bench.executors import make_executor
from problems.base import default_cache_dir


def run_grid(cells: list[Cell], run_dir: Path, *, jobs: int = 1, cache_dir: Path | None = None,
             raise_errors: bool = False, retry_failed: bool = False, progress: bool = True,
             executor=None, plugins: list[str] | tuple = ()) -> dict:
    """Run every cell not already finished in ``run_dir``; returns counts. Resumable and lock-protected.

    ``executor`` is a :class:`bench.executors.Executor` (default: sequential for ``jobs == 1``, else a local
    process pool of ``jobs``); ``plugins`` are imported in every worker process before its cells run. The
    datasets are built once into the cache before the sweep, and the cache folder is resolved here, so every
    worker loads them rather than racing to rebuild them.
    """
    if executor is None:
        executor = make_executor("local", jobs=jobs)
    run_dir = Path(run_dir).resolve()
    cache_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with store.RunLock(run_dir):
        store.remove_stale_tmp(run_dir)
        done = store.finished_cells(run_dir)
        if retry_failed:
            done = {k: v for k, v in done.items() if v["row"]["status"] != "failed"}
        todo = [c for c in cells if c.cell_id not in done]
        counts = {"total": len(cells), "cached": len(cells) - len(todo), "ok": 0, "failed": 0, "skipped": 0}
        if todo:
            with executor:  # connect / start the cluster first: a bad address fails before any dataset work
                # build each dataset once, before the sweep, so parallel workers load rather than race to build it
                _prepare_datasets(todo, cache_dir, progress)
                bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress, dynamic_ncols=True)
                for _, status in executor.run(todo, run_dir, cache_dir, raise_errors, tuple(plugins)):
                    counts[status] += 1
                    bar.update()
                bar.close()
        store.consolidate(run_dir, [c.cell_id for c in cells])
    return counts


def _prepare_datasets(cells: list[Cell], cache_dir: Path | None, progress: bool) -> None:
    seen = set()
    for c in cells:
        key = (c.problem, c.problem_params)
        if key in seen:
            continue
        seen.add(key)
        try:
            problems.get(c.problem, **c.pdict).dataset(cache_dir=cache_dir, progress=progress)
        except Exception:  # the cell itself will record the failure
            pass
