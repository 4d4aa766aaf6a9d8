"""Does a method's ensemble make the model forecast dearer, or was it the machine? Re-time the forecasts side by side.

The runner times each cell's forecasts while that cell runs, so two methods' forecast times come from different
minutes of a (possibly shared) machine. This script runs every cell of a grid through the runner (one thread),
keeps the ensemble each forecast started from, and then re-times ``problem.step`` on those saved ensembles with
the methods interleaved (method A's cycle t, B's cycle t, C's cycle t, A's cycle t + 1, ...) in one process, so
load changes hit all methods alike. What is left of the difference between methods is what their states cost
(more CFL sub-steps, a different dtype or memory layout); it prints per cell:

- the runner's median forecast CPU time per sub-step (``time_forecast_per_substep_cpu_s``);
- the dtype, contiguity and strides of the saved ensembles and the sub-steps they need;
- the interleaved re-timing: median forecast CPU time per sub-step, and per cycle the ratio to the first
  method of the same problem (median and interquartile range over cycles and rounds).

Methods whose forecast is not ``problem.step`` on a physical ensemble (latent methods) are left out.

Usage: ``python scripts/forecast_cost_by_state.py GRID.yaml [--rounds 3]`` (a grid of the ``bench run`` format;
e.g. the default preset's PDE block with FreeRun, EnKF and EnSF, one seed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("grid", help="grid YAML (bench run format)")
ap.add_argument("--rounds", type=int, default=3, help="interleaved re-timing rounds over all cycles")
ap.add_argument("--cache", default=None, help="dataset cache (default: $ASSIMBENCH_CACHE or ~/.cache/assimbench)")
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.config import expand, load_yaml  # noqa: E402
from bench.runner import run_cell  # noqa: E402
import problems  # noqa: E402
from problems.base import count_substeps  # noqa: E402

cache = Path(args.cache or os.environ.get("ASSIMBENCH_CACHE", Path.home() / ".cache" / "assimbench"))
grid = expand(load_yaml(args.grid))
saved: dict[tuple, list] = defaultdict(list)  # (problem, method label) -> [(x, params), ...] per forecast
problems_of: dict[str, object] = {}

for cell in grid.cells:
    kept: list = []
    pb_cls = type(problems.get(cell.problem, **cell.pdict))
    plain_step = pb_cls.step

    def keeping_step(self, x, params=None, _kept=kept, _step=plain_step):
        _kept.append((x.detach().clone(), None if params is None else params.detach().clone()))
        problems_of[self.name] = self
        return _step(self, x, params)

    pb_cls.step = keeping_step
    try:
        r = run_cell(cell, cache_dir=cache, threads=1)
    finally:
        pb_cls.step = plain_step
    label = r.row.get("p_method", cell.method)
    if kept:
        saved[(cell.problem, label)] = kept
    print(f"{cell.problem:14s} {label:36s} {r.row.get('status')}: runner forecast CPU per sub-step "
          f"{1e3 * r.row.get('time_forecast_per_substep_cpu_s', float('nan')):.3f} ms, sub-steps per forecast "
          f"{r.row.get('forecast_substeps', float('nan')):.2f}", flush=True)

by_problem = defaultdict(list)
for (pname, label), xs in saved.items():
    if xs:
        by_problem[pname].append(label)
for pname, labels in by_problem.items():
    pb = problems_of[pname]
    n = min(len(saved[(pname, lb)]) for lb in labels)
    per = {lb: [] for lb in labels}
    for lb in labels:
        kinds = {(str(x.dtype), x.is_contiguous(), tuple(x.stride())) for x, _ in saved[(pname, lb)]}
        print(f"{pname} {lb}: saved ensembles {sorted(kinds)}")
    for _ in range(args.rounds):
        for t in range(1, n):  # cycle 1's input is the warm-up in the runner too
            for lb in labels:
                x, p = saved[(pname, lb)][t]
                with count_substeps() as steps:
                    c0 = time.process_time()
                    pb.step(x, p)
                    dt = time.process_time() - c0
                per[lb].append(dt / max(steps.steps, 1))
    ref = labels[0]
    for lb in labels:
        ratios = sorted(a / b for a, b in zip(per[lb], per[ref]))
        q = statistics.quantiles(ratios, n=4, method="inclusive")
        print(f"{pname} {lb:36s} interleaved: forecast CPU per sub-step {1e3 * statistics.median(per[lb]):.3f} ms; "
              f"/ {ref}: {statistics.median(ratios):.3f} [{q[0]:.3f}, {q[2]:.3f}]", flush=True)
