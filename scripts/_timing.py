"""The timing loop the solver-speed scripts share: one warm-up call, then wall and process-CPU samples."""
from __future__ import annotations

import time


def samples(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``repeats`` calls of ``fn()``, after one warm-up call (jit compile,
    allocator). CPU time is what the run cost this process, whatever else the machine ran."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu
