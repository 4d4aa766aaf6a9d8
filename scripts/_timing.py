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


def interleaved(fns: dict, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds of each ``fns[name]()``, one warm-up call each, then ``repeats`` rounds
    that call every function once in turn (A B A B ...), so slow spells of a shared machine hit all of them
    alike. Returns ``{name: (wall, cpu)}``."""
    for fn in fns.values():
        fn()
    out = {name: ([], []) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            out[name][0].append(time.perf_counter() - t0)
            out[name][1].append(time.process_time() - c0)
    return out


def ratio_stats(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile of the per-round ratios ``num[i] / den[i]`` (NaN when empty)."""
    import statistics
    r = sorted(a / b for a, b in zip(num, den) if b > 0)
    if not r:
        return float("nan"), float("nan"), float("nan")
    if len(r) == 1:
        return r[0], r[0], r[0]
    q = statistics.quantiles(r, n=4, method="inclusive")
    return statistics.median(r), q[0], q[2]
