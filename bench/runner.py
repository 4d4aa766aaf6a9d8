"""The runner: owns the assimilation cycle, the timers and every metric.

For one cell (problem, observer, method, N, seed, device) it

1. builds the problem's cached dataset; the truth is a trajectory of the *test* split (``seed % n_test``; the
   *valid* split for ``bench tune``'s tuning truths, so tuning never sees a test truth);
2. draws the observations ``y_1..y_T`` from a seed that depends on (problem, observer, seed) only, and the
   initial ensemble (:func:`initial_ensemble`: parameters from the prior; states from the climatology
   ``problem.sample_initial``, or around the truth's first state for ``init: {perturbed: s}``) from a seed that
   depends on (problem, seed, N) only, so every method assimilates identical data from an identical start;
3. times ``fit`` (offline), then per cycle ``forecast`` (T_d), ``analysis`` (T_a) and ``estimate`` (T_r), each
   synchronised on GPU; metrics are computed outside the timers; cycle 1 is the timing warm-up and the first
   ``spinup`` cycles are excluded from the time averages of the metrics;
4. stops a filter that produces NaN/Inf or leaves the plausible range and records ``failed`` with
   "diverged at cycle k"; any exception becomes a ``failed`` row with its traceback and the sweep goes on.
"""
from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import Cell, init_std
from assimbench.errors import Diverged
from bench.metrics import ensemble_metrics, param_rmse
from assimbench.naming import content_hash

METRICS = ("rmse_f", "rmse_a", "rrmse_f", "rrmse_a", "rrmse_member_a", "spread_a", "crps_a", "param_rmse_a",
           "rmse_between", "rrmse_between")
TIMINGS = ("time_fit_s", "time_forecast_s", "time_analysis_s", "time_reconstruct_s", "time_online_s",
           "time_per_cycle_s", "time_total_s", "peak_mem_mb")
#: an estimate farther than this many truth scales from the truth is a divergence
DIVERGENCE_FACTOR = 1e3


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a hash of ``parts`` (never global state)."""
    return int(content_hash(*parts, n=15), 16)


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


# ----------------------------------------------------------------------------------------------------------------
class Timer:
    """Wall-clock timer synchronised with the device (CUDA kernels are asynchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class PeakMemory:
    """Peak resident memory of this process while the block runs (a sampler thread; CUDA: max allocated)."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss_mb())

    def __enter__(self):
        self.peak = self.rss_mb()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20


# ----------------------------------------------------------------------------------------------------------------
_PROVENANCE: dict | None = None


def provenance(device: torch.device, dtype: str) -> dict:
    global _PROVENANCE
    if _PROVENANCE is None:
        root = Path(__file__).resolve().parent.parent
        try:
            sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=5).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            sha = "unknown"
        import numpy
        import pandas
        _PROVENANCE = {"git_sha": sha, "torch_version": torch.__version__, "numpy_version": numpy.__version__,
                       "pandas_version": pandas.__version__, "python_version": platform.python_version(),
                       "host": socket.gethostname(), "cpu": platform.processor() or platform.machine()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {**_PROVENANCE, "device_name": name, "dtype": dtype, "threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def param_columns(cell: Cell, problem, observer, method) -> dict:
    """The ``p_*`` columns of a cell: the headline ones, then one per problem / observer / method parameter."""
    cols = {"p_problem": problem.label, "p_method": method.label, "p_problem_name": cell.problem,
            "p_method_name": cell.method, "p_n_ens": cell.n_ens, "p_coverage": float(observer.coverage),
            "p_noise": float(observer.noise), "p_seed": cell.seed, "p_device": cell.device, "p_dtype": cell.dtype,
            "p_spinup": cell.spinup, "p_score_between": cell.score_between, "p_observer": observer.label,
            "p_init": cell.init, "p_init_std": init_std(cell.init), "p_truth_split": cell.truth_split,
            "p_tuned": cell.tuned}
    for prefix, params in (("p_problem_", problem.params_dict()), ("p_obs_", observer.params_dict()),
                           ("p_method_", method.params_dict())):
        for k, v in params.items():
            cols[prefix + k] = list(v) if isinstance(v, tuple) else v
    for k in ("p_obs_coverage", "p_obs_noise"):
        cols.pop(k, None)
    return {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in cols.items()}


# ----------------------------------------------------------------------------------------------------------------
def run_cell(cell: Cell, cache_dir: Path | None = None, raise_errors: bool = False, progress: bool = False,
             snapshot_cycles: int = 3) -> dict:
    """Run one cell; returns ``{"cell", "row", "cycles", "snapshots"}`` (never raises unless ``raise_errors``)."""
    import methods
    import problems

    device = torch.device(cell.device)
    dtype = getattr(torch, cell.dtype)
    problem = problems.get(cell.problem, **cell.pdict)
    method = methods.get(cell.method, **cell.mdict)
    row: dict[str, Any] = {"cell_id": cell.cell_id}
    cycles: list[dict] = []
    snaps: dict[str, Any] = {}
    t_start = time.perf_counter()
    status, error = "ok", ""
    timings = {k: float("nan") for k in TIMINGS}
    metric_means = {k: float("nan") for k in METRICS}
    try:
        dataset = problem.dataset(cache_dir=cache_dir, progress=progress)
        observer = problems.bind_observer(problem, dataset, **cell.odict)
        row.update(param_columns(cell, problem, observer, method))
        row.update({"obs_coverage": observer.actual_coverage, "n_obs": observer.n_obs})
        reason = method.skip(problem, observer)
        if reason:
            status, error = "skipped", reason
        else:
            with PeakMemory(device) as mem:
                cycles, metric_means, timings, snaps = _cycle(cell, problem, observer, method, dataset, device,
                                                              dtype, cache_dir, progress, snapshot_cycles)
            timings["peak_mem_mb"] = mem.peak
    except Diverged as e:
        status, error = "failed", str(e)
        cycles = getattr(e, "cycles", [])
    except Exception as e:  # a failed method is data, the sweep goes on
        if raise_errors:
            raise
        status = "failed"
        error = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc()[-2000:])
    if "p_problem" not in row:  # failed before the observer was bound: still give the row its parameters
        row.update({"p_problem": problem.label, "p_method": method.label, "p_problem_name": cell.problem,
                    "p_method_name": cell.method, "p_n_ens": cell.n_ens,
                    "p_coverage": float(cell.odict.get("coverage", 1.0)),
                    "p_noise": float(cell.odict.get("noise", 0.1)), "p_seed": cell.seed, "p_device": cell.device,
                    "p_dtype": cell.dtype, "p_spinup": cell.spinup, "p_init": cell.init,
                    "p_init_std": init_std(cell.init), "p_truth_split": cell.truth_split, "p_tuned": cell.tuned})
    timings["time_total_s"] = time.perf_counter() - t_start
    row.update(metric_means)
    row.update(timings)
    row.update({"status": status, "error": error, "n_cycles": len(cycles)})
    row.update(provenance(device, cell.dtype))
    pcols = {k: v for k, v in row.items() if k.startswith("p_")}
    cycles = [{"cell_id": cell.cell_id, **pcols, **c} for c in cycles]
    extras = snaps.pop("_extras", {}) if isinstance(snaps, dict) else {}
    return {"cell": cell.to_dict(), "row": row, "cycles": cycles, "snapshots": snaps, "extras": extras}


def _cycle(cell, problem, observer, method, dataset, device, dtype, cache_dir, progress, snapshot_cycles):
    from methods.base import Context

    trajs, traj_params = dataset.split(cell.truth_split)
    k = cell.seed % trajs.shape[0]
    truth = trajs[k].to(device=device, dtype=dtype)  # (T+1, *shape)
    truth_params = traj_params[k].to(device=device, dtype=torch.float64)
    T = truth.shape[0] - 1
    if cell.spinup >= T:
        raise ValueError(f"spinup={cell.spinup} leaves no cycle to average (the problem has {T} cycles)")
    tuning = () if cell.truth_split == "test" else (cell.truth_split,)  # test-truth seeds stay as they were
    g_obs = generator("obs", problem.label, observer.label, cell.seed, *tuning)
    ys = observer.sample(truth[1:].double().cpu(), g_obs).to(device=device, dtype=dtype)  # (T, m)
    x0, params0 = initial_ensemble(cell, problem, trajs[k, 0])
    x0, params0 = x0.to(device=device, dtype=dtype), params0.to(device=device, dtype=dtype)

    ctx = Context(problem=problem, observer=observer, dataset=dataset, device=device, dtype=dtype,
                  cache_dir=cache_dir, progress=progress)
    timer = Timer(device)
    method.bind(ctx)
    t0 = timer.now()
    method.fit(generator("fit", problem.label, observer.label, method.label))
    time_fit = timer.now() - t0
    state = method.init(x0, params0, generator("method", problem.label, observer.label, method.label,
                                               cell.n_ens, cell.seed))
    scale = float(truth.double().abs().max()) + float(dataset.field_std.max())
    snap_at = sorted({max(1, T // 4), max(1, T // 2), T})[:max(snapshot_cycles, 0)] if len(problem.state_shape) == 3 else []
    snaps = {"cycles": [], "truth": [], "mean": []}
    latents: list = []
    rows = []
    fracs = [j / (cell.score_between + 1) for j in range(1, cell.score_between + 1)]
    for t in range(1, T + 1):
        before = state
        try:
            state, r, xa, fstate = _one_cycle(t, method, state, ys, timer, truth, truth_params, dataset, problem,
                                              scale)
        except Diverged as e:  # raised by the runner's check or by the method itself: keep what was computed
            msg = str(e) if str(e).startswith("diverged at cycle") else f"diverged at cycle {t}: {e}"
            err = Diverged(msg)
            err.cycles = rows
            raise err from None
        r["rmse_between"] = r["rrmse_between"] = float("nan")
        if fracs:  # untimed: the truth and the estimate inside the interval (t-1, t)
            r.update(_score_between(method, before, fstate, fracs, truth[t - 1], truth_params, problem))
        r["spinup"] = t <= cell.spinup
        rows.append(r)
        with torch.no_grad():
            lat = method.latent(state)
        if lat is not None:
            latents.append(lat.detach().float().cpu().numpy())
        if t in snap_at:
            snaps["cycles"].append(t)
            snaps["truth"].append(truth[t].float().cpu().numpy())
            snaps["mean"].append(xa.float().mean(0).cpu().numpy())
    return _summarise(rows, timings_fit=time_fit, snaps=snaps, latents=latents, observer=observer,
                      problem=problem, method=method)


def initial_ensemble(cell: Cell, problem, truth0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial ensemble of a cell: ``(x0 (N, *state_shape), params (N, P))`` on the CPU.

    Parameters come from the prior. States: ``climatology`` draws them from ``problem.sample_initial``
    independently of the truth; ``perturbed(std=s)`` centres them on the truth's first state ``truth0`` the way a
    twin experiment that draws truth and members from ``N(x0, s^2 I)`` does: ``truth0 + s (c + e_i)``, with the
    offset ``c ~ N(0, I)`` shared by the members (seeded by problem and seed only) and ``e_i ~ N(0, I)``.
    """
    tuning = () if cell.truth_split == "test" else (cell.truth_split,)
    g_init = generator("init", problem.label, cell.seed, cell.n_ens, *tuning)
    params0 = problem.sample_params(cell.n_ens, g_init)
    if cell.init == "climatology":
        return problem.sample_initial(params0, g_init), params0
    s = init_std(cell.init)
    x = truth0.double()
    c = torch.randn(x.shape, generator=generator("init-centre", problem.label, cell.seed, *tuning),
                    dtype=torch.float64)
    e = torch.randn((cell.n_ens, *x.shape), generator=g_init, dtype=torch.float64)
    return x + s * (c + e), params0


def _score_between(method, before, after, fracs, x_prev, truth_params, problem) -> dict:
    """Mean RMSE / rRMSE of the ensemble mean at the fractions ``fracs`` of the interval after ``x_prev``."""
    with torch.no_grad():
        ests = method.estimate_between(before, after, fracs)
        truths = problem.advance_through(x_prev[None].double(), truth_params[None], fracs)
        rm, rr = [], []
        for e, x in zip(ests, truths):
            m = ensemble_metrics(e, x[0].to(e.dtype))
            rm.append(m["rmse"])
            rr.append(m["rrmse"])
    return {"rmse_between": float(np.mean(rm)), "rrmse_between": float(np.mean(rr))}


def _one_cycle(t, method, state, ys, timer, truth, truth_params, dataset, problem, scale):
    """Forecast, analysis, estimate (timed) and the cycle's metrics (untimed)
    -> (state, row, analysis ensemble, forecast state)."""
    tc0 = timer.now()
    state = method.forecast(state)
    fstate = state
    tc1 = timer.now()
    with torch.no_grad():
        xf = method.estimate(state)  # untimed: only for the forecast metrics
        if not bool(torch.isfinite(xf).all()):
            raise Diverged(f"diverged at cycle {t}: the forecast ensemble has non-finite values (the model blew up "
                           "from the previous analysis)")
    tc2 = timer.now()
    try:
        state = method.analysis(state, ys[t - 1])
    except torch.linalg.LinAlgError as e:  # an ill-conditioned update is a divergence of this cell, not a crash
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Diverged(f"diverged at cycle {t}: the analysis failed numerically ({first}); the forecast ensemble "
                       f"spread is {float(xf.double().std(0).mean()):.3g}") from None
    tc3 = timer.now()
    xa = method.estimate(state)
    tc4 = timer.now()
    # ---- metrics, outside the timers
    if not bool(torch.isfinite(xa).all()) or float(xa.double().abs().max()) > DIVERGENCE_FACTOR * scale:
        raise Diverged(f"diverged at cycle {t}: the analysis ensemble has "
                       f"{'non-finite values' if not bool(torch.isfinite(xa).all()) else 'left the plausible range'}")
    mf = ensemble_metrics(xf, truth[t])
    ma = ensemble_metrics(xa, truth[t])
    pe = method.estimate_params(state)
    r = {"cycle": t, "time": float(dataset.times[t]), "rmse_f": mf["rmse"], "rrmse_f": mf["rrmse"],
         "rmse_a": ma["rmse"], "rrmse_a": ma["rrmse"], "rrmse_member_a": ma["rrmse_member"],
         "spread_a": ma["spread"], "crps_a": ma["crps"], "param_rmse_a": param_rmse(pe, truth_params),
         "t_forecast": tc1 - tc0, "t_analysis": tc3 - tc2, "t_reconstruct": tc4 - tc3,
         "t_cycle": timer.now() - tc0}
    for i, name in enumerate(problem.param_names):
        r[f"param_mean_{name}"] = float(pe[:, i].double().mean()) if pe is not None and pe.numel() else float("nan")
        r[f"param_true_{name}"] = float(truth_params[i])
    return state, r, xa, fstate


def _summarise(rows, timings_fit, snaps, latents, observer, problem, method):
    scored = [r for r in rows if not r["spinup"]]
    means = {m: float(np.nanmean([r[m] for r in scored])) if scored and not all(
        isinstance(r[m], float) and math.isnan(r[m]) for r in scored) else float("nan") for m in METRICS}
    timed = rows[1:] if len(rows) > 1 else rows  # cycle 1 is the warm-up
    mean_t = lambda key: float(np.mean([r[key] for r in timed]))  # noqa: E731
    timings = {"time_fit_s": timings_fit, "time_forecast_s": mean_t("t_forecast"),
               "time_analysis_s": mean_t("t_analysis"), "time_reconstruct_s": mean_t("t_reconstruct")}
    timings["time_online_s"] = timings["time_forecast_s"] + timings["time_analysis_s"] + timings["time_reconstruct_s"]
    timings["time_per_cycle_s"] = mean_t("t_cycle")
    if snaps["cycles"]:
        snaps = {"cycles": np.array(snaps["cycles"]), "truth": np.stack(snaps["truth"]),
                 "mean": np.stack(snaps["mean"]), "obs_points": observer.points.numpy(),
                 "field_names": np.array(problem.field_names)}
    else:
        snaps = {}
    extras = {"surrogate": _flat_numbers(getattr(method, "training_summary", None) or {})}
    if latents:
        extras["latent"] = {"cycles": np.arange(1, len(latents) + 1), "analysis": np.stack(latents)}
    snaps["_extras"] = extras
    return rows, means, timings, snaps


def _flat_numbers(d: dict, prefix: str = "") -> dict:
    """Numeric leaves of a nested summary, keys joined with dots (for the report's surrogate table)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out
