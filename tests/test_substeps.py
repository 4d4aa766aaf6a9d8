"""Solvers report the sub-steps they take, so the runner can put a forecast's cost beside what it did."""
from __future__ import annotations

import math
import threading

import torch

import problems
from problems.base import count_substeps


def test_kolmogorov_counts_cfl_substeps_and_the_speed_that_set_them():
    pb = problems.get("kolmogorov", n=16, spinup_time=0.0)
    x = pb.initial_field(torch.float64).expand(2, -1, -1, -1).contiguous()
    re = torch.full((2, 1), 1000.0, dtype=torch.float64)
    with count_substeps() as log:
        pb.step(x, re)
    assert log.calls == 1 and log.steps == pb.n_substeps(pb.dt_obs) and log.speed == pb.max_velocity
    fast = x * (2 * pb.max_velocity / float(x.pow(2).sum(1).sqrt().max()))  # twice the assumed bound
    with count_substeps() as log:
        pb.step(fast, re)
    speed = float(fast.pow(2).sum(1).sqrt().max())
    assert log.speed == speed and log.steps == pb.n_substeps(pb.dt_obs, speed) > pb.n_substeps(pb.dt_obs)


def test_fixed_step_solvers_and_nesting():
    sw = problems.get("shallow_water", n=16)
    l96 = problems.get("lorenz96", dim=8)
    with count_substeps() as outer:
        x = sw.initial_state(sw.sample_params(1, torch.Generator().manual_seed(0)))
        with count_substeps() as inner:
            sw.step(x, None)
        l96.step(torch.zeros(1, 8, dtype=torch.float64), None)
    assert inner.steps == sw.n_substeps() and inner.speed == sw.wave_speed
    assert outer.steps == sw.n_substeps() + l96.steps_per_obs and outer.calls == 2
    assert outer.speed == sw.wave_speed  # the fixed-step solver sets no speed


def test_logs_are_per_thread():
    """Two cells in two threads (a Dask worker) do not count each other's sub-steps."""
    l96 = problems.get("lorenz96", dim=8)
    counts = {}

    def work(name, k):
        with count_substeps() as log:
            for _ in range(k):
                l96.step(torch.zeros(1, 8, dtype=torch.float64), None)
        counts[name] = log.steps

    ts = [threading.Thread(target=work, args=(i, i + 1)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert counts == {i: (i + 1) * l96.steps_per_obs for i in range(3)}
    with count_substeps() as log:
        pass
    assert log.steps == 0 and math.isnan(log.speed)
