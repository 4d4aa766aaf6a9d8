"""Time the torch Kolmogorov solver against jax-cfd's spectral Navier-Stokes solver on the same CPU.

Both solve the same PDE (forcing sin(4y) on u, drag 0.1, nu = 1/Re) from the same initial vorticity (our
shared field spun up to t = 4 at Re = 1000), in float32 or float64, on the same grid, with the same time step (our CFL
rule: dt_obs = 0.2 split into ``n_substeps`` equal steps) and the same number of intra-op threads.

- torch: ``Kolmogorov.step`` on an ``(N, 2, n, n)`` batch (velocity in/out; integrating-factor RK4, 4 RHS
  evaluations per sub-step; each member its own viscosity).
- jax-cfd: ``spectral.equations.ForcedNavierStokes2D`` with ``time_stepping.crank_nicolson_rk4`` (5 RHS
  evaluations per sub-step), ``jax.vmap`` over the members (viscosity vmapped too), ``funcutils.repeated``
  (``lax.scan``) over the sub-steps, jit-compiled (compile time excluded), vorticity in Fourier space in/out.

The solvers are timed interleaved (torch, jax-cfd, torch, jax-cfd, ...; with ``--baseline REV`` also the
torch solver of git revision ``REV`` in the same rounds), so a slow spell of a shared machine hits all alike.
Reported: the median (and the min) over ``--repeats`` rounds of the wall time per member-step (a step = one
observation interval of 0.2), the per-round ratio jax-cfd / torch (> 1: torch faster) as median and
interquartile range in process CPU time (the one to read on a shared machine) and the median in wall time, and
the relative L2 difference of the two vorticity fields after the run. It is not small for the spun-up Re = 1000
flow because jax-cfd's brick-wall filter differs from our symmetric 2/3 mask on the cutoff line, where an
under-resolved flow carries energy. The final cross-check starts from the smooth unspun field and also runs
jax-cfd with our mask, which isolates that difference.

Usage: ``pip install jax jax-cfd`` (CPU), then
``python scripts/compare_jaxcfd.py [--threads 1] [--big] [--dtype float32|float64|both] [--repeats 5]
[--baseline REV]``.
jax and jax-cfd are deliberately not project dependencies.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=1, help="intra-op threads for both libraries")
ap.add_argument("--big", action="store_true", help="also run 150 x 150 (one 0.2 interval)")
ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median and min reported)")
ap.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
ap.add_argument("--skip-crosscheck", action="store_true", help="timings only")
ap.add_argument("--crosscheck-only", action="store_true", help="skip the timings, run only the cross-check")
ap.add_argument("--baseline", metavar="REV", help="also time the torch solver of this git revision (e.g. HEAD~1) "
                "in the same rounds and print the speed-up over it")
args = ap.parse_args()
if args.dtype == "both":  # one process per dtype (jax's x64 switch is global)
    import subprocess
    rc = 0
    for dt in ("float32", "float64"):
        raw = sys.argv[1:]
        argv = [a for i, a in enumerate(raw) if not a.startswith("--dtype") and not (i > 0 and raw[i - 1] == "--dtype")]
        rc |= subprocess.call([sys.executable, __file__, *argv, "--dtype", dt])
    sys.exit(rc)

# thread limits must be set before the libraries start their pools; the process is also pinned to
# ``threads`` CPUs so both libraries get exactly the same cores
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + ("" if args.threads > 1 else " --xla_cpu_multi_thread_eigen=false")).strip()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)
if hasattr(os, "sched_setaffinity"):
    cpus = sorted(os.sched_getaffinity(0))[:args.threads]
    os.sched_setaffinity(0, cpus)

import torch  # noqa: E402

torch.set_num_threads(args.threads)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import problems  # noqa: E402
from problems.kolmogorov import spectral_ops, velocity_to_vorticity  # noqa: E402
from _timing import interleaved, ratio_stats  # noqa: E402  (scripts/_timing.py)

try:
    import jax
    # jax-cfd builds its wavenumbers in the default float type: x64 only for the float64 run
    jax.config.update("jax_enable_x64", args.dtype == "float64")
    import jax.numpy as jnp
    import jax_cfd.base as cfd
    from jax_cfd.base import funcutils
    from jax_cfd.spectral import equations as spectral_equations
    from jax_cfd.spectral import time_stepping as spectral_time_stepping
except Exception as exc:  # report exactly why and stop
    print(f"jax-cfd unavailable: {type(exc).__name__}: {exc}")
    sys.exit(1)

RE = 1000.0
DT_OBS = 0.2


def load_baseline(rev: str):
    """The ``Kolmogorov`` class of ``problems/kolmogorov.py`` at git revision ``rev`` (a module of its own)."""
    import importlib.util
    import subprocess
    import tempfile
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    try:
        src = subprocess.run(["git", "-C", root, "show", f"{rev}:problems/kolmogorov.py"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"--baseline {rev}: cannot read problems/kolmogorov.py at that revision ({exc})")
        sys.exit(2)
    path = os.path.join(tempfile.mkdtemp(), "kolmogorov_baseline.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("kolmogorov_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kolmogorov_baseline"] = mod
    spec.loader.exec_module(mod)
    return mod.Kolmogorov


BASELINE = load_baseline(args.baseline) if args.baseline else None


def run_case(n: int, N: int, n_obs: int, x0_single: torch.Tensor, pb, repeats: int | None = None,
             re_: float = RE, same_mask: bool = False, dtype: str = "float32") -> dict:
    repeats = args.repeats if repeats is None else repeats
    tdt, jdt = getattr(torch, dtype), getattr(jnp, dtype)
    x0_single = x0_single.to(tdt)
    n_sub = pb.n_substeps(DT_OBS)
    dt = DT_OBS / n_sub
    # ---- torch ----
    x0 = x0_single.expand(N, -1, -1, -1).contiguous()
    th = torch.full((N, 1), re_, dtype=tdt)

    def torch_run():
        x = x0
        for _ in range(n_obs):
            x = pb.step(x, th)
        return x

    fns = {"torch": torch_run}
    if BASELINE is not None and repeats > 0:
        import dataclasses
        pb_base = BASELINE(**{f.name: getattr(pb, f.name) for f in dataclasses.fields(pb)})

        def base_run():
            x = x0
            for _ in range(n_obs):
                x = pb_base.step(x, th)
            return x

        fns["baseline"] = base_run
    x_torch = torch_run()

    # ---- jax-cfd ----
    grid = cfd.grids.Grid((n, n), domain=((0, 2 * math.pi), (0, 2 * math.pi)))
    ops = spectral_ops(n, "cpu", torch.float64)
    w_hat, _ = velocity_to_vorticity(x0_single[None].double(), ops)
    w = torch.fft.irfft2(w_hat, s=(n, n), norm="forward")[0]  # [i = y, j = x]
    w_jax = jnp.asarray(w.T.numpy(), dtype=jdt)  # jax-cfd arrays are [x, y]
    w_hat0 = jnp.broadcast_to(jnp.fft.rfftn(w_jax), (N, n, n // 2 + 1))
    nus = jnp.full((N,), 1.0 / re_, dtype=jdt)
    # our 2/3 mask (3|k| < n on both axes) in jax-cfd's [x, y] layout; jax-cfd's own brick wall differs on the
    # cutoff line (it keeps k_x = -n/3 rows but not +n/3 for even n)
    kf = torch.fft.fftfreq(n, d=1.0 / n)[:, None]
    kr = torch.fft.rfftfreq(n, d=1.0 / n)[None, :]
    our_mask = jnp.asarray(((3 * kf.abs() < n) & (3 * kr.abs() < n)).to(tdt).numpy())

    def one_member(w_hat_m, nu_m):
        eq = spectral_equations.ForcedNavierStokes2D(nu_m, grid, smooth=True)
        if same_mask:
            eq.filter_ = our_mask
        step = spectral_time_stepping.crank_nicolson_rk4(eq, dt)
        return funcutils.repeated(step, n_sub * n_obs)(w_hat_m)

    jax_run_c = jax.jit(jax.vmap(one_member))

    def jax_run():
        return jax_run_c(w_hat0, nus).block_until_ready()

    fns["jax"] = jax_run
    t = interleaved(fns, repeats)
    (w_torch, c_torch), (w_jax, c_jax) = t["torch"], t["jax"]
    w_jax_end = jnp.fft.irfftn(jax_run(), axes=(1, 2))[0]

    # ---- cross-check: vorticity after the run ----
    w_t, _ = velocity_to_vorticity(x_torch[:1].double(), ops)
    w_t = torch.fft.irfft2(w_t, s=(n, n), norm="forward")[0].T.numpy()
    import numpy as np
    w_j = np.asarray(w_jax_end, dtype=np.float64)
    diff = float(np.linalg.norm(w_t - w_j) / np.linalg.norm(w_j))
    ms = N * n_obs

    def med(v):
        return statistics.median(v) if v else math.nan

    out = dict(n=n, N=N, T=n_obs * DT_OBS, n_sub=n_sub, dtype=dtype,
               torch_ms_per_member_step=1e3 * med(w_torch) / ms, jax_ms_per_member_step=1e3 * med(w_jax) / ms,
               torch_min_ms=1e3 * min(w_torch, default=math.nan) / ms,
               jax_min_ms=1e3 * min(w_jax, default=math.nan) / ms,
               torch_cpu_ms=1e3 * med(c_torch) / ms, jax_cpu_ms=1e3 * med(c_jax) / ms,
               ratio=ratio_stats(w_jax, w_torch)[0], cpu_ratio=ratio_stats(c_jax, c_torch), rel_diff=diff)
    if "baseline" in t:
        out["base_cpu_ratio"] = ratio_stats(t["baseline"][1], c_torch)
    return out


def crosscheck(n: int, re_: float = RE, T: float = DT_OBS, same_mask: bool = False) -> float:
    """Relative L2 vorticity difference after ``T`` from the smooth pre-spin-up field (well resolved at t = 0,
    so the two dealiasing conventions hardly matter), in the run's dtype, one member."""
    pb = problems.get("kolmogorov", n=n)
    x0 = pb.initial_field(torch.float32)
    n_obs = int(round(T / DT_OBS))
    r = run_case(n, 1, n_obs, x0, pb, repeats=0, re_=re_, same_mask=same_mask, dtype=args.dtype)
    return r["rel_diff"]


def fmt(stats: tuple[float, float, float]) -> str:
    """``median [q1, q3]`` of a :func:`ratio_stats` triple."""
    return f"{stats[0]:.2f} [{stats[1]:.2f}, {stats[2]:.2f}]"


def main():
    import subprocess
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if os.name == "posix" else ""
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
          f"({jax.devices()[0].platform}), jax-cfd {getattr(__import__('jax_cfd'), '__version__', '?')}, "
          f"Re = {RE}, {args.repeats} interleaved rounds (median [min] per member-step; ratios: median "
          f"[25th, 75th percentile] over rounds)" + (f"; load: {load}" if load else ""))
    cases = [(64, 1, 1), (64, 20, 1), (64, 1, 10), (64, 20, 10)]
    if args.big:
        cases += [(150, 1, 1), (150, 20, 1)]
    if args.crosscheck_only:
        cases = []
    dtypes = (args.dtype,)
    rows = []
    for dtype in dtypes:
        for n, N, n_obs in cases:
            pb = problems.get("kolmogorov", n=n)
            x0 = pb.initial_state(torch.tensor([[RE]], dtype=torch.float64))[0]
            r = run_case(n, N, n_obs, x0, pb, dtype=dtype)
            rows.append(r)
            print(f"{dtype} n={r['n']:4d} N={r['N']:3d} T={r['T']:.1f} (sub-steps/0.2: {r['n_sub']}): "
                  f"torch {r['torch_ms_per_member_step']:9.2f} [{r['torch_min_ms']:.2f}] ms/member-step, "
                  f"jax-cfd {r['jax_ms_per_member_step']:9.2f} [{r['jax_min_ms']:.2f}] ms/member-step, "
                  f"wall ratio jax/torch {r['ratio']:.2f}; CPU time torch {r['torch_cpu_ms']:.2f}, jax-cfd "
                  f"{r['jax_cpu_ms']:.2f} ms/member-step, CPU ratio jax/torch {fmt(r['cpu_ratio'])}"
                  + (f", CPU ratio baseline/torch {fmt(r['base_cpu_ratio'])}" if "base_cpu_ratio" in r else "")
                  + f"; rel. vorticity difference {r['rel_diff']:.1e}", flush=True)
    if args.skip_crosscheck:
        return rows
    for n in (64, 150) if args.big else (64,):
        print(f"cross-check n={n}: rel. vorticity difference after 0.2 from the smooth unspun field, "
              f"jax-cfd's filter: Re={RE:g} {crosscheck(n):.1e}, Re=100 {crosscheck(n, 100.0):.1e}; "
              f"jax-cfd with our 2/3 mask: Re={RE:g} {crosscheck(n, same_mask=True):.1e}, "
              f"Re=100 {crosscheck(n, 100.0, same_mask=True):.1e}", flush=True)
    return rows


if __name__ == "__main__":
    main()
