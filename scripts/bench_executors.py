"""Wall-clock of one grid under the three executors: sequential, ``--jobs 2`` and Dask with 2 workers.

Each executor runs the real CLI (``python -m bench run ... --no-report --quiet``) into a fresh output folder, so
the times include interpreter start, the pool / cluster start-up and the final consolidation; the datasets are
built once beforehand into a shared cache (a warm cache, as on a cluster with a shared filesystem), so no run
pays for a simulation the others skip.

The grid is ``--preset default`` unless a quick estimate (the first few cells run in this process, times the
number of cells) says a sequential run would take longer than ``--budget`` seconds; then a reduced Lorenz-96
grid of 24 cells (2 coverages x 2 ensemble sizes x 3 methods x 2 seeds, 100 cycles) is used instead, and the
output says so. Give ``--reduced`` to skip the estimate.

Reported: each wall time and the ratios sequential / parallel (> 1: the parallel executor is faster). On a
machine shared with other work (other processes loading the CPU) the ratios are noisy; the output records the
load average before and after.

Usage: ``python scripts/bench_executors.py [--preset default] [--reduced] [--budget 180] [--workers 2]``.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REDUCED = {
    "name": "executors-reduced",
    "seeds": 2, "spinup": 20,
    "problems": {"lorenz96": {"dim": 40, "n_cycles": 100, "n_traj": 5}},
    "observers": {"coverage": [1.0, 0.5], "noise": 1.0, "noise_type": "absolute"},
    "n_ens": [10, 20],
    "methods": {"EnKF": {"variant, inflation, loc_radius": [["sqrt", 1.04, 0.0], ["stochastic", 1.06, 0.0]]},
                "FreeRun": {}},
}


def estimate_sequential_s(config: dict, cache: Path, work: Path, n_probe: int = 6) -> tuple[float, int]:
    """Seconds a sequential run of ``config`` would take (from ``n_probe`` of its cells), and its cell count.

    The probe cells run through ``run_grid`` into a scratch folder, so the estimate includes the per-cell file
    writes (fsync) as well as the cycle itself.
    """
    from bench.config import expand
    from bench.sweep import _prepare_datasets, run_grid

    cells = expand(copy.deepcopy(config)).cells
    _prepare_datasets(cells, cache, progress=True)
    # probe evenly spread cells (the grid is ordered by problem/observer/method, costs differ by method)
    step = max(1, len(cells) // n_probe)
    probe = cells[::step][:n_probe]
    t0 = time.perf_counter()
    run_grid(probe, work / "probe", cache_dir=cache, progress=False)
    per_cell = (time.perf_counter() - t0) / len(probe)
    return per_cell * len(cells), len(cells)


def run_cli(config_path: Path, out: Path, cache: Path, extra: list[str]) -> float:
    env = {**os.environ, "ASSIMBENCH_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "bench", "run", str(config_path), "--out", str(out), "--no-report", "--quiet",
           *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--reduced", action="store_true", help="use the reduced 24-cell Lorenz-96 grid")
    ap.add_argument("--budget", type=float, default=180.0,
                    help="largest estimated sequential seconds for the preset before falling back")
    ap.add_argument("--workers", type=int, default=2, help="parallel processes (--jobs / --workers)")
    ap.add_argument("--cache", help="dataset cache (default: a temporary folder)")
    args = ap.parse_args()

    from bench.config import load_preset

    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache) if args.cache else tmp / "cache"
        config, label = REDUCED, "reduced Lorenz-96 grid"
        if not args.reduced:
            preset = load_preset(args.preset)
            est, n = estimate_sequential_s(preset, cache, tmp)
            print(f"preset {args.preset}: {n} cells, estimated sequential {est:.0f} s", flush=True)
            if est <= args.budget:
                config, label = preset, f"preset {args.preset}"
            else:
                print(f"  > budget {args.budget:.0f} s: using the reduced Lorenz-96 grid instead", flush=True)
        if config is REDUCED:
            estimate_sequential_s(REDUCED, cache, tmp, n_probe=1)  # builds its dataset into the cache
        path = tmp / "grid.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        from bench.config import expand
        n_cells = len(expand(copy.deepcopy(config)).cells)
        w = str(args.workers)
        runs = [("sequential", []), (f"local --jobs {w}", ["--jobs", w]),
                (f"dask --workers {w}", ["--executor", "dask", "--workers", w])]
        print(f"grid: {label}, {n_cells} cells; cpu cores: {os.cpu_count()}; "
              f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
        times = {}
        for i, (name, extra) in enumerate(runs):
            times[name] = run_cli(path, tmp / f"out{i}", cache, extra)
            print(f"  {name:<20s} {times[name]:8.1f} s", flush=True)
        seq = times["sequential"]
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print("speed-up (sequential / executor; > 1 = faster):")
        for name, t in times.items():
            print(f"  {name:<20s} {seq / t:6.2f}x")


if __name__ == "__main__":
    main()
