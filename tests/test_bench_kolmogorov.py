"""pytest-benchmark timings of the Kolmogorov ``step`` (one observation interval 0.2), float32, N = 20 members.

Run with ``pytest tests/test_bench_kolmogorov.py -m benchmark --benchmark-enable``. The throughput in
member-steps per second (a member-step = one member advanced by ``dt_obs = 0.2``) is stored in the
benchmark's ``extra_info`` and printed. One intra-op thread (the machine is shared; set ``KOLMOGOROV_THREADS``
to change it).
"""
from __future__ import annotations

import os

import pytest
import torch

import problems

N_MEMBERS = 20
THREADS = int(os.environ.get("KOLMOGOROV_THREADS", "1"))


@pytest.fixture(autouse=True, scope="module")
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


@pytest.mark.benchmark
@pytest.mark.parametrize("n", [64, 150])
def test_bench_step(benchmark, n):
    p = problems.get("kolmogorov", n=n)
    th = torch.linspace(p.re_min, p.re_max, N_MEMBERS, dtype=torch.float32)[:, None]
    x = p.initial_field(torch.float32).expand(N_MEMBERS, *p.state_shape).contiguous()
    x = p.step(x, th)  # a developed, solver-consistent state
    rounds = 5 if n <= 64 else 2
    y = benchmark.pedantic(p.step, args=(x, th), rounds=rounds, iterations=1, warmup_rounds=1)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        best = stats.stats.min
        benchmark.extra_info.update(member_steps_per_s=N_MEMBERS / best, n_substeps=p.n_substeps(p.dt_obs),
                                    threads=THREADS, members=N_MEMBERS)
        print(f"\nkolmogorov n={n} N={N_MEMBERS} float32, {p.n_substeps(p.dt_obs)} sub-steps/step, {THREADS} "
              f"thread(s): {best:.3f} s/step = {N_MEMBERS / best:.1f} member-steps/s")
