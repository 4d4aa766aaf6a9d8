"""pytest-benchmark timings of the shallow-water forecast step (one observation interval, N = 20 members, float32).

Run with ``pytest tests/test_bench_shallow_water.py -m benchmark --benchmark-enable``; member-steps per second
= 20 / mean time. ``extra_info`` records the grid, the sub-steps and that rate.
"""
from __future__ import annotations

import pytest
import torch

from problems.shallow_water import ShallowWater

N_MEMBERS = 20


@pytest.mark.benchmark
@pytest.mark.parametrize("n", [64, 150])
def test_bench_step_float32(benchmark, n):
    pb = ShallowWater(n=n)
    p = pb.sample_params(N_MEMBERS, torch.Generator().manual_seed(0))
    x = pb.step(pb.initial_state(p).float(), p)            # warm-up; a developed wave field
    out = benchmark(pb.step, x, p)
    assert out.shape == (N_MEMBERS, 3, n, n) and out.dtype == torch.float32 and torch.isfinite(out).all()
    benchmark.extra_info.update(n=n, members=N_MEMBERS, substeps=pb.n_substeps())
    if benchmark.stats is not None:
        benchmark.extra_info["member_steps_per_s"] = N_MEMBERS / benchmark.stats.stats.mean
