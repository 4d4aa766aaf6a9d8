"""The shallow-water sub-step against memory bandwidth: how close the solver runs to the speed of its memory.

The C-grid sub-step (one momentum update and one continuity update, see ``problems/shallow_water.py``) is a
chain of element-wise torch operations: it does a few flops per byte, so its speed limit is how fast memory
streams, not arithmetic. This script measures, on one thread:

1. the machine's streaming bandwidth: ``b.copy_(a)`` (read + write) and the triad ``c = a + s * b`` on arrays
   of 512 MiB (main memory) and on arrays the size of the solver's working set (the caches it actually runs
   from at 64 x 64);
2. the bytes one sub-step moves *as implemented*: every aten operation's inputs and outputs counted once
   (a ``TorchDispatchMode`` around one sub-step; no cache reuse assumed, so an upper bound on traffic), and the
   *compulsory* bytes (the state U, V, eta read and written once: what a fully fused kernel would move);
3. the time per sub-step (``ShallowWater.integrate`` over a whole observation interval divided by its
   sub-steps; median and min over ``--repeats`` of the process CPU time, and the median wall time);

All rates use the process CPU time (min over repeats), which on one thread is immune to other processes; the
wall time is printed beside it (on a busy machine it can be several times larger).

and prints the achieved bandwidth (implemented bytes / time) as a fraction of the measured bandwidth of the
level the working set fits in, and the time a fused kernel would need at that bandwidth (compulsory bytes /
bandwidth). A fraction near 1 means the step runs at the speed of memory and only fusing operations (fewer
passes over the arrays) makes it faster; a small fraction means per-operation overhead dominates (small arrays).

Usage: ``python scripts/sw_bandwidth.py [--threads 1] [--repeats 7] [--sizes 64 150] [--members 1 20]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--repeats", type=int, default=7)
ap.add_argument("--sizes", type=int, nargs="+", default=[64, 150])
ap.add_argument("--members", type=int, nargs="+", default=[1, 20])
ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

torch.set_num_threads(args.threads)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import problems  # noqa: E402
from problems.shallow_water import to_staggered  # noqa: E402
from _timing import samples  # noqa: E402  (scripts/_timing.py)


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall, median CPU, min CPU) seconds of ``fn()`` after one warm-up call. The process CPU time (one
    thread) is what the work cost, whatever else the machine ran; the wall time also counts waiting for a core."""
    wall, cpu = samples(fn, repeats)
    return statistics.median(wall), statistics.median(cpu), min(cpu)


def bandwidth(nbytes: int, dtype: torch.dtype, repeats: int) -> dict:
    """GB/s of copy (2 passes) and triad (3 passes) on arrays of ``nbytes`` each (best of the repeats)."""
    n = max(1, nbytes // torch.tensor([], dtype=dtype).element_size())
    a, b, c = torch.rand(n, dtype=dtype), torch.rand(n, dtype=dtype), torch.empty(n, dtype=dtype)
    inner = max(1, int(2**27 // max(nbytes, 1)))  # repeat small arrays so one timing covers ~128 MiB
    size = a.numel() * a.element_size()

    def copy():
        for _ in range(inner):
            c.copy_(a)

    def triad():
        for _ in range(inner):
            torch.add(a, b, alpha=0.5, out=c)

    _, _, t_copy = timed(copy, repeats)
    _, _, t_triad = timed(triad, repeats)
    return {"copy": 2 * size * inner / t_copy / 1e9, "triad": 3 * size * inner / t_triad / 1e9}


class ByteCounter(TorchDispatchMode):
    """Sums the bytes of every tensor argument and result of every aten op dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.bytes, self.ops = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs or {}, out))[0] if isinstance(t, torch.Tensor)]
        seen = set()
        for t in tensors:  # an out= argument is also the result: count it once
            key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
            if key not in seen:
                seen.add(key)
                self.bytes += t.numel() * t.element_size()
        self.ops += 1
        return out


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} repeats; "
          f"GB/s = 1e9 bytes/s")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        dram = bandwidth(512 * 2**20, dtype, max(3, args.repeats // 2))
        print(f"\n{dtype_name}: main-memory bandwidth (512 MiB arrays): copy {dram['copy']:.1f}, "
              f"triad {dram['triad']:.1f} GB/s")
        for n in args.sizes:
            pb = problems.get("shallow_water", n=n)
            K = pb.n_substeps()
            for N in args.members:
                x = pb.initial_state(pb.sample_params(N, torch.Generator().manual_seed(0))).to(dtype)
                U, V, eta = to_staggered(x)
                state_bytes = (U.numel() + V.numel() + eta.numel()) * U.element_size()
                with ByteCounter() as bc:
                    pb.integrate(U.clone(), V.clone(), eta.clone(), 1)
                # one sub-step as counted includes the extra half continuity step of an interval's start/end:
                # count two sub-steps and take the difference to get the per-sub-step traffic
                with ByteCounter() as bc2:
                    pb.integrate(U.clone(), V.clone(), eta.clone(), 2)
                impl = bc2.bytes - bc.bytes
                ops = bc2.ops - bc.ops
                compulsory = 2 * state_bytes
                cache = bandwidth(max(state_bytes, 4096), dtype, args.repeats)
                Uw, Vw, ew = U.clone(), V.clone(), eta.clone()
                wall, cpu, cmin = timed(lambda pb=pb, Uw=Uw, Vw=Vw, ew=ew, K=K: pb.integrate(Uw, Vw, ew, K),
                                        args.repeats)
                t_sub, c_sub, c_sub_min = wall / K, cpu / K, cmin / K
                level = cache if state_bytes < 8 * 2**20 else dram
                achieved = impl / c_sub_min / 1e9
                print(f"  n={n:3d} N={N:2d}: {K} sub-steps/interval, {ops} ops/sub-step, state "
                      f"{state_bytes / 2**20:.2f} MiB; sub-step CPU {1e3 * c_sub:.3f} ms median "
                      f"[{1e3 * c_sub_min:.3f} min; wall {1e3 * t_sub:.3f}]; bytes/sub-step implemented "
                      f"{impl / 2**20:.2f} MiB, compulsory {compulsory / 2**20:.2f} MiB "
                      f"({impl / compulsory:.1f}x); achieved {achieved:.1f} GB/s = "
                      f"{achieved / level['copy']:.2f} of the copy bandwidth at this size "
                      f"({level['copy']:.1f} GB/s); a fused kernel at that bandwidth: "
                      f"{1e3 * compulsory / level['copy'] / 1e9:.3f} ms/sub-step", flush=True)


if __name__ == "__main__":
    main()
