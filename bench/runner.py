"""The runner: owns the assimilation cycle, the timers and every metric.

For one cell (problem, observer, method, N, seed, device) it

1. builds the problem's cached dataset; the truth is a trajectory of the *test* split (``seed % n_test``; the
   *valid* split for ``bench tune``'s tuning truths, so tuning never sees a test truth);
2. draws the observations ``y_1..y_T`` from a seed that depends on (problem, observer, seed) only, and the
   initial ensemble (:func:`initial_ensemble`: parameters from the prior; states from the climatology
   ``problem.sample_initial``, or around the truth's first state for ``init: {perturbed: s}``) from a seed that
   depends on (problem, seed, N) only, so every method assimilates identical data from an identical start;
3. times ``fit`` (offline), then per cycle ``forecast`` (T_d), ``analysis`` (T_a) and ``estimate`` (T_r), each
   synchronised on GPU, in wall-clock and in process CPU time, and counts the solver sub-steps of the forecast;
   metrics are computed outside the timers; cycle 1 is the timing warm-up (left out of every timing statistic)
   and the first ``spinup`` cycles are excluded from the time averages of the metrics; with ``timing_repeats =
   R`` each cycle is timed R more times from the same state (every random generator restored), untouched
   metrics; the results row carries the mean, median and interquartile range of each phase over the timed
   cycles (see docs/benchmarks.md, "Timing protocol");
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
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

import methods
import problems
from assimbench.errors import Diverged
from assimbench.naming import content_hash
from bench.config import Cell, init_std
from bench.metrics import ensemble_metrics, param_rmse, rank_histogram, spread_error_ratio
from methods.base import Context
from problems.base import Observer, ObserverConfig, count_substeps

METRICS = ("rmse_f", "rmse_a", "rrmse_f", "rrmse_a", "rrmse_member_a", "spread_a", "crps_a", "param_rmse_a",
           "rmse_between", "rrmse_between", "spread_error_a")
#: the timed phases: per-cycle sample column -> results-table stem
PHASES = {"t_forecast": "forecast", "t_analysis": "analysis", "t_reconstruct": "reconstruct", "t_online": "online",
          "t_cycle": "per_cycle"}
TIMINGS = ("time_fit_s", "time_forecast_s", "time_analysis_s", "time_reconstruct_s", "time_online_s",
           "time_per_cycle_s", "time_total_s", "peak_mem_mb",
           *(f"time_{p}_{stat}_s" for p in PHASES.values() for stat in ("med", "iqr")),
           *(f"time_{p}_cpu_s" for p in ("forecast", "analysis", "reconstruct", "online")),
           "cpu_per_wall", "forecast_substeps", "forecast_speed", "time_forecast_per_substep_s",
           "time_forecast_per_substep_cpu_s", "timed_cycles")
#: an estimate farther than this many truth scales from the truth is a divergence
DIVERGENCE_FACTOR = 1e3


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a hash of ``parts`` (never global state)."""
    return int(content_hash(*parts, n=15), 16)


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


# ----------------------------------------------------------------------------------------------------------------
class Timer:
    """Wall-clock and process CPU time, synchronised with the device (CUDA kernels are asynchronous).

    The CPU time (all threads of this process) counts only the time the process ran: on a machine shared with
    other work it stays put while the wall-clock time grows, so it is the sample `bench compare` tests on CPU.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def stamp(self) -> tuple[float, float]:
        """``(wall, cpu)`` seconds now."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def now(self) -> float:
        return self.stamp()[0]


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


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(device: torch.device, dtype: str) -> dict:
    """Where and with what a cell ran: code version (git sha, and ``git_dirty``: uncommitted changes to
    tracked files), library versions, host, CPU model, device, dtype, threads and the date."""
    global _PROVENANCE
    if _PROVENANCE is None:
        root = Path(__file__).resolve().parent.parent
        sha = (_git(root, "rev-parse", "--short", "HEAD") or "").strip() or "unknown"
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        import pandas  # only for its version: the runner itself needs no pandas
        _PROVENANCE = {"git_sha": sha, "git_dirty": None if status is None else bool(status.strip()),
                       "torch_version": torch.__version__, "numpy_version": np.__version__,
                       "pandas_version": pandas.__version__, "python_version": platform.python_version(),
                       "host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
                       "cpu_model": cpu_model()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {**_PROVENANCE, "device_name": name, "dtype": dtype, "threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def param_columns(cell: Cell, problem=None, observer=None, method=None) -> dict:
    """The ``p_*`` columns of a cell: the headline ones, then one per problem / observer / method parameter.

    Built from whatever is known: the problem and method labels when they were built (else their registry
    names), the observer's coverage and noise when it was bound (else the cell's values, falling back to the
    :class:`~problems.base.ObserverConfig` defaults), and the per-parameter columns only once the observer is bound.
    """
    cols = {"p_problem": problem.label if problem is not None else cell.problem,
            "p_method": method.label if method is not None else cell.method,
            "p_problem_name": cell.problem, "p_method_name": cell.method, "p_n_ens": cell.n_ens,
            "p_coverage": float(observer.coverage if observer is not None else _observer_value(cell, "coverage")),
            "p_noise": float(observer.noise if observer is not None else _observer_value(cell, "noise")),
            "p_seed": cell.seed, "p_device": cell.device, "p_dtype": cell.dtype, "p_spinup": cell.spinup,
            "p_init": cell.init, "p_init_std": init_std(cell.init), "p_truth_split": cell.truth_split,
            "p_tuned": cell.tuned}
    if observer is None or problem is None or method is None:
        return cols
    cols.update({"p_score_between": cell.score_between, "p_observer": observer.label})
    for prefix, params in (("p_problem_", problem.params_dict()), ("p_obs_", observer.params_dict()),
                           ("p_method_", method.params_dict())):
        for k, v in params.items():
            cols[prefix + k] = list(v) if isinstance(v, tuple) else v
    for k in ("p_obs_coverage", "p_obs_noise"):
        cols.pop(k, None)
    return {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in cols.items()}


def _observer_value(cell: Cell, key: str):
    """The cell's observer parameter ``key``, or the Observer's own default."""
    return cell.odict.get(key, ObserverConfig.__dataclass_fields__[key].default)


# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CellResult:
    """What running one cell produces: the results row, the per-cycle rows and the optional arrays.

    ``snapshots``: field snapshots of gridded problems (``cycles``, ``truth``, ``mean``, ``obs_points``,
    ``field_names``), empty otherwise; ``latent``: the analysis latents of latent methods (``cycles``,
    ``analysis``), empty otherwise; ``surrogate``: numeric leaves of the method's training summary.
    :func:`bench.store.write_result` puts each in its place in the run folder.
    """

    cell: dict
    row: dict
    cycles: list[dict]
    snapshots: dict = field(default_factory=dict)
    latent: dict = field(default_factory=dict)
    surrogate: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.row["status"]


@dataclass
class Assimilation:
    """The outcome of the cycles of one prepared cell (see :meth:`PreparedCell.assimilate`)."""

    means: dict
    timings: dict
    snapshots: dict
    latent: dict
    surrogate: dict


class PreparedCell:
    """Everything one cell runs on, built the one way every caller shares (see :func:`prepare`).

    ``problem`` and ``method`` are built on construction (a bad name or parameter raises
    :class:`~assimbench.errors.ConfigError` there); the rest is built on first access, in this order of
    dependence: ``dataset`` (cached on disk) -> ``observer`` (bound to the dataset's statistics) ->
    ``skip_reason``; ``truth`` (trajectory ``seed % n`` of the cell's ``truth_split``, ``(T+1, *state_shape)``) and
    ``truth_params``; ``observations`` ``(T, m)`` from a seed of (problem, observer, seed) only; ``initial``
    (``x0 (N, *state_shape)``, ``params0 (N, P)``, :func:`initial_ensemble`) from a seed of (problem, seed, N)
    only. ``method_generator`` gives the method's seed for the cycle. All tensors are on the cell's device and dtype.
    """

    def __init__(self, cell: Cell, cache_dir: Path | None = None, progress: bool = False):
        self.cell, self.cache_dir, self.progress = cell, cache_dir, progress
        self.device = torch.device(cell.device)
        self.dtype = getattr(torch, cell.dtype)
        self.problem = problems.get(cell.problem, **cell.pdict)
        self.method = methods.get(cell.method, **cell.mdict)

    # ---- the setting
    @cached_property
    def dataset(self):
        return self.problem.dataset(cache_dir=self.cache_dir, progress=self.progress)

    @cached_property
    def observer(self) -> Observer:
        return problems.bind_observer(self.problem, self.dataset, **self.cell.odict)

    @cached_property
    def skip_reason(self) -> str | None:
        return self.method.skip(self.problem, self.observer) or None

    @cached_property
    def _truth_cpu(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The truth trajectory ``(T+1, *shape)`` and its parameters ``(P,)`` as stored in the dataset."""
        trajs, traj_params = self.dataset.split(self.cell.truth_split)
        k = self.cell.seed % trajs.shape[0]
        return trajs[k], traj_params[k]

    @cached_property
    def truth(self) -> torch.Tensor:
        return self._truth_cpu[0].to(device=self.device, dtype=self.dtype)  # (T+1, *shape)

    @cached_property
    def truth_params(self) -> torch.Tensor:
        return self._truth_cpu[1].to(device=self.device, dtype=torch.float64)

    @property
    def n_cycles(self) -> int:
        return self.truth.shape[0] - 1

    @cached_property
    def observations(self) -> torch.Tensor:
        """``(T, m)``: row ``t - 1`` is the observation of cycle ``t``. Drawn for every cycle from a seed that
        leaves ``obs_every`` out, so the observed cycles of ``obs_every: k`` see the very data of ``obs_every: 1``
        (the rows of the other cycles are never given to the method)."""
        every_cycle = dataclasses.replace(self.observer.config, obs_every=1)
        g_obs = generator("obs", self.problem.label, every_cycle.label, self.cell.seed, *_tuning(self.cell))
        return self.observer.sample(self.truth[1:].double().cpu(), g_obs).to(device=self.device,
                                                                            dtype=self.dtype)  # (T, m)

    @cached_property
    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        x0, params0 = initial_ensemble(self.cell, self.problem, self._truth_cpu[0][0])
        return x0.to(device=self.device, dtype=self.dtype), params0.to(device=self.device, dtype=self.dtype)

    def method_generator(self) -> torch.Generator:
        return generator("method", self.problem.label, self.observer.label, self.method.label, self.cell.n_ens,
                         self.cell.seed)

    # ---- the method's life cycle
    def bind(self) -> None:
        """Give the method its context (problem, observer, dataset, device, dtype, cache); untimed."""
        self.method.bind(Context(problem=self.problem, observer=self.observer, dataset=self.dataset,
                                 device=self.device, dtype=self.dtype, cache_dir=self.cache_dir,
                                 progress=self.progress))

    def fit(self) -> None:
        """The method's offline training (shipped artifact, cache or fresh; each method seeds its own training
        from its configuration, so a trained network depends on nothing but that)."""
        self.method.fit()

    def init(self) -> Any:
        """The method's initial state from the shared initial ensemble."""
        x0, params0 = self.initial
        return self.method.init(x0, params0, self.method_generator())

    def divergence_scale(self) -> float:
        """An estimate farther than DIVERGENCE_FACTOR times this from zero is a divergence."""
        return float(self.truth.double().abs().max()) + float(self.dataset.field_std.max())

    def cycle(self, t: int, state: Any, timer: "Timer", scale: float) -> tuple[Any, dict, torch.Tensor, Any]:
        """Forecast, analysis, estimate (timed) and the cycle's metrics (untimed)
        -> (state, row, analysis ensemble, forecast state).

        A cycle without an observation (``obs_every > 1``) is forecast-only: no analysis (its time is 0), the
        "analysis" ensemble is the forecast, and every metric is recorded as on the other cycles."""
        method, truth, truth_params = self.method, self.truth, self.truth_params
        observed = self.observer.observes_at(t)
        s0 = timer.stamp()
        with count_substeps() as steps:
            state = method.forecast(state)
        fstate = state
        s1 = timer.stamp()
        with torch.no_grad():
            xf = method.estimate(state)  # untimed: only for the forecast metrics
            if not bool(torch.isfinite(xf).all()):
                raise Diverged(f"diverged at cycle {t}: the forecast ensemble has non-finite values (the model blew "
                               "up from the previous analysis)")
        s2 = timer.stamp()
        try:
            if observed:
                state = method.analysis(state, self.observations[t - 1])
        except torch.linalg.LinAlgError as e:  # an ill-conditioned update is a divergence of this cell, not a crash
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise Diverged(f"diverged at cycle {t}: the analysis failed numerically ({first}); the forecast "
                           f"ensemble spread is {float(xf.double().std(0).mean()):.3g}") from None
        s3 = timer.stamp()
        xa = method.estimate(state)
        s4 = timer.stamp()
        # ---- metrics, outside the timers
        if not bool(torch.isfinite(xa).all()) or float(xa.double().abs().max()) > DIVERGENCE_FACTOR * scale:
            what = "non-finite values" if not bool(torch.isfinite(xa).all()) else "left the plausible range"
            raise Diverged(f"diverged at cycle {t}: the analysis ensemble has {what}")
        mf = ensemble_metrics(xf, truth[t])
        ma = ensemble_metrics(xa, truth[t])
        pe = method.estimate_params(state)
        r = {"cycle": t, "time": float(self.dataset.times[t]), "observed": observed,
             "rmse_f": mf["rmse"], "rrmse_f": mf["rrmse"],
             "rmse_a": ma["rmse"], "rrmse_a": ma["rrmse"], "rrmse_member_a": ma["rrmse_member"],
             "spread_a": ma["spread"], "crps_a": ma["crps"], "param_rmse_a": param_rmse(pe, truth_params),
             "spread_error_a": spread_error_ratio(ma["spread"], ma["rmse"], xa.shape[0]),
             "rank_hist_a": rank_histogram(xa, truth[t])}
        r.update(_phase_times(s0, s1, s2, s3, s4))
        end = timer.stamp()
        r["t_cycle"], r["t_cycle_cpu"] = end[0] - s0[0], end[1] - s0[1]
        r["forecast_substeps"] = float(steps.steps) if steps.calls else float("nan")
        r["forecast_speed"] = steps.speed
        for i, name in enumerate(self.problem.param_names):
            r[f"param_mean_{name}"] = float(pe[:, i].double().mean()) if pe is not None and pe.numel() else float("nan")
            r[f"param_true_{name}"] = float(truth_params[i])
        return state, r, xa, fstate

    def retime(self, t: int, before: Any, rngs: "_RandomState", timer: "Timer", repeats: int) -> dict:
        """Time forecast, analysis and estimate of cycle ``t`` ``repeats`` more times from ``before`` (the state
        the cycle started from, copied for each repeat), each with the random generators as they were when the
        cycle started; afterwards every generator is as the real cycle left it, so no metric changes.

        Returns the per-phase samples ``{"t_forecast": [...], "t_forecast_cpu": [...], ...}``.
        """
        after = rngs.capture()
        samples: dict[str, list[float]] = {}
        try:
            with torch.no_grad():
                for _ in range(repeats):
                    rngs.restore()
                    state = _copy_state(before)
                    s0 = timer.stamp()
                    state = self.method.forecast(state)
                    s1 = timer.stamp()
                    s2 = timer.stamp()
                    if self.observer.observes_at(t):
                        state = self.method.analysis(state, self.observations[t - 1])
                    s3 = timer.stamp()
                    self.method.estimate(state)
                    s4 = timer.stamp()
                    for k, v in _phase_times(s0, s1, s2, s3, s4).items():
                        samples.setdefault(k, []).append(v)
        finally:
            rngs.restore(after)
        return samples

    def assimilate(self, rows: list[dict], snapshot_cycles: int = 3) -> Assimilation:
        """Bind, fit (timed) and run every cycle, appending one row per cycle to ``rows`` as it goes (so a
        divergence keeps the cycles computed before it); raises :class:`~assimbench.errors.Diverged`."""
        cell, problem, method = self.cell, self.problem, self.method
        T = self.n_cycles
        if cell.spinup >= T:
            raise ValueError(f"spinup={cell.spinup} leaves no cycle to average (the problem has {T} cycles)")
        self.observations, self.initial  # noqa: B018  (drawn before fit, as always)
        timer = Timer(self.device)
        self.bind()
        t0 = timer.now()
        self.fit()
        time_fit = timer.now() - t0
        state = self.init()
        scale = self.divergence_scale()
        snap_at = sorted({max(1, T // 4), max(1, T // 2), T})[:max(snapshot_cycles, 0)] \
            if len(problem.state_shape) == 3 else []
        snaps = {"cycles": [], "truth": [], "mean": []}
        latents: list = []
        fracs = [j / (cell.score_between + 1) for j in range(1, cell.score_between + 1)]
        repeats = int(getattr(cell, "timing_repeats", 0) or 0)
        for t in range(1, T + 1):
            before = state
            rngs = _RandomState(method, state, self.device) if repeats else None
            try:
                state, r, xa, fstate = self.cycle(t, state, timer, scale)
            except Diverged as e:  # raised by the runner's check or by the method itself
                msg = str(e) if str(e).startswith("diverged at cycle") else f"diverged at cycle {t}: {e}"
                raise Diverged(msg) from None
            r["warmup"] = t == 1
            if repeats:  # the cycle's samples become the median of its 1 + R timings
                more = self.retime(t, before, rngs, timer, repeats)
                for k, v in more.items():
                    r[k] = float(np.median([r[k], *v]))
                r["t_online"] = r["t_forecast"] + r["t_analysis"] + r["t_reconstruct"]
                r["t_online_cpu"] = r["t_forecast_cpu"] + r["t_analysis_cpu"] + r["t_reconstruct_cpu"]
            r["timing_repeats"] = repeats
            r["rmse_between"] = r["rrmse_between"] = float("nan")
            if fracs:  # untimed: the truth and the estimate inside the interval (t-1, t)
                r.update(_score_between(method, before, fstate, fracs, self.truth[t - 1], self.truth_params,
                                        problem))
            r["spinup"] = t <= cell.spinup
            rows.append(r)
            with torch.no_grad():
                lat = method.latent(state)
            if lat is not None:
                latents.append(lat.detach().float().cpu().numpy())
            if t in snap_at:
                snaps["cycles"].append(t)
                snaps["truth"].append(self.truth[t].float().cpu().numpy())
                snaps["mean"].append(xa.float().mean(0).cpu().numpy())
        means, timings = _summarise(rows, time_fit)
        snapshots = {"cycles": np.array(snaps["cycles"]), "truth": np.stack(snaps["truth"]),
                     "mean": np.stack(snaps["mean"]), "obs_points": self.observer.points.numpy(),
                     "field_names": np.array(problem.field_names)} if snaps["cycles"] else {}
        latent = {"cycles": np.arange(1, len(latents) + 1), "analysis": np.stack(latents)} if latents else {}
        surrogate = _flat_numbers(method.training_summary)
        return Assimilation(means, timings, snapshots, latent, surrogate)


def _tuning(cell: Cell) -> tuple:
    """The extra seed part of a tuning truth (none for the test truths, whose seeds stay as they were)."""
    return () if cell.truth_split == "test" else (cell.truth_split,)


def initial_ensemble(cell: Cell, problem, truth0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial ensemble of a cell: ``(x0 (N, *state_shape), params (N, P))`` on the CPU.

    Parameters come from the prior. States: ``climatology`` draws them from ``problem.sample_initial``
    independently of the truth; ``perturbed(std=s)`` centres them on the truth's first state ``truth0`` the way a
    twin experiment that draws truth and members from ``N(x0, s^2 I)`` does: ``truth0 + s (c + e_i)``, with the
    offset ``c ~ N(0, I)`` shared by the members (seeded by problem and seed only) and ``e_i ~ N(0, I)``.
    """
    tuning = _tuning(cell)
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


def prepare(cell: Cell, cache_dir: Path | None = None, progress: bool = False) -> PreparedCell:
    """The one way to set up a cell: problem, dataset, observer, bound method, truth, observations, seeds.

    Used by :func:`run_cell`, the conformance suite, the asv suite and ``bench train``; see
    :class:`PreparedCell` for what it holds and when each part is built.
    """
    return PreparedCell(cell, cache_dir=cache_dir, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
def run_cell(cell: Cell, cache_dir: Path | None = None, raise_errors: bool = False, progress: bool = False,
             snapshot_cycles: int = 3, threads: int | None = None, jobs: int | None = None) -> CellResult:
    """Run one cell; returns its :class:`CellResult` (never raises unless ``raise_errors``).

    ``threads``: torch intra-op threads for this cell (restored afterwards; None keeps the process's setting);
    ``jobs``: how many cells the executor runs side by side (recorded with the timings, not used).
    """
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        result = _run_cell(cell, cache_dir, raise_errors, progress, snapshot_cycles)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
    result.row["jobs"] = jobs if jobs is not None else float("nan")
    return result


def _run_cell(cell: Cell, cache_dir: Path | None, raise_errors: bool, progress: bool,
              snapshot_cycles: int) -> CellResult:
    prep = prepare(cell, cache_dir=cache_dir, progress=progress)
    problem, method = prep.problem, prep.method
    row: dict[str, Any] = {"cell_id": cell.cell_id}
    cycles: list[dict] = []
    result = Assimilation({k: float("nan") for k in METRICS}, {k: float("nan") for k in TIMINGS}, {}, {}, {})
    t_start = time.perf_counter()
    status, error = "ok", ""
    try:
        observer = prep.observer
        row.update(param_columns(cell, problem, observer, method))
        row.update({"obs_coverage": observer.actual_coverage, "n_obs": observer.n_obs,
                    "state_dim": math.prod(problem.state_shape)})
        if prep.skip_reason:
            status, error = "skipped", prep.skip_reason
        else:
            with PeakMemory(prep.device) as mem:
                result = prep.assimilate(cycles, snapshot_cycles)
            result.timings["peak_mem_mb"] = mem.peak
    except Diverged as e:
        status, error = "failed", str(e)
    except Exception as e:  # a failed method is data, the sweep goes on
        if raise_errors:
            raise
        status = "failed"
        error = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exc()[-2000:])
    if "p_problem" not in row:  # failed before the observer was bound: still give the row its parameters
        row.update(param_columns(cell, problem, None, method))
    timings = {**{k: float("nan") for k in TIMINGS}, **result.timings}
    timings["time_total_s"] = time.perf_counter() - t_start
    row.update(result.means)
    row.update(timings)
    row.update({"status": status, "error": error, "n_cycles": len(cycles),
                "timing_repeats": int(getattr(cell, "timing_repeats", 0) or 0),
                "param_unit": (problem.param_unit or None) if problem.param_names else None})
    row.update(provenance(prep.device, cell.dtype))
    pcols = {k: v for k, v in row.items() if k.startswith("p_")}
    cycles = [{"cell_id": cell.cell_id, **pcols, **c} for c in cycles]
    return CellResult(cell.to_dict(), row, cycles, result.snapshots, result.latent, result.surrogate)


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


def _phase_times(s0, s1, s2, s3, s4) -> dict:
    """Wall and CPU seconds of forecast (s0-s1), analysis (s2-s3), reconstruction (s3-s4) and their sum."""
    out = {}
    for i, suffix in ((0, ""), (1, "_cpu")):
        f, a, r = s1[i] - s0[i], s3[i] - s2[i], s4[i] - s3[i]
        out.update({f"t_forecast{suffix}": f, f"t_analysis{suffix}": a, f"t_reconstruct{suffix}": r,
                    f"t_online{suffix}": f + a + r})
    return out


def _quartiles(v: np.ndarray) -> tuple[float, float]:
    """(median, interquartile range) of the finite values; NaN when there are none."""
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float(med), float(q3 - q1)


def _summarise(rows: list[dict], time_fit: float) -> tuple[dict, dict]:
    """Metric means over the scored cycles; timing statistics over the timed cycles (all but the warm-up).

    Calibration pools the scored cycles: ``rank_hist_a`` sums their rank counts and ``spread_error_a`` is the
    ratio of their time-averaged mean squares (:func:`bench.metrics.spread_error_ratio`), not a mean of ratios.

    Per phase: the mean (``time_<phase>_s``, comparable with older runs), the median and the interquartile
    range over cycles (``time_<phase>_med_s``, ``time_<phase>_iqr_s``) and the median CPU time
    (``time_<phase>_cpu_s``); the analysis's statistics are over the observed cycles but the first (with
    ``obs_every > 1`` the forecast-only cycles have no analysis to time); ``cpu_per_wall`` is total CPU over
    total wall time of the online phases (about the number of busy threads; well below it when the process
    waited for a core); the forecast's sub-steps (mean per cycle over all cycles), the largest speed that set a
    CFL count, and the median forecast time per sub-step.
    """
    scored = [r for r in rows if not r["spinup"]]
    means = {m: float(np.nanmean([r[m] for r in scored])) if scored and not all(
        isinstance(r[m], float) and math.isnan(r[m]) for r in scored) else float("nan") for m in METRICS}
    hists = [r["rank_hist_a"] for r in scored if r.get("rank_hist_a")]
    if hists:  # calibration pools the scored cycles: summed rank counts, a ratio of time-averaged mean squares
        means["rank_hist_a"] = np.sum(np.array(hists, dtype=np.int64), axis=0).tolist()
        means["spread_error_a"] = spread_error_ratio([r["spread_a"] for r in scored], [r["rmse_a"] for r in scored],
                                                     len(hists[0]) - 1)
    timed = rows[1:] if len(rows) > 1 else rows  # cycle 1 is the warm-up
    # analyses: the observed cycles but the first (the analysis's own warm-up; cycle 1 when every cycle is)
    observed = [r for r in rows if r.get("observed", True)]
    analysed = observed[1:] if len(observed) > 1 else observed
    col = lambda key, rs=timed: np.array([r.get(key, np.nan) for r in rs], dtype=float)  # noqa: E731
    timings = {"time_fit_s": time_fit, "timed_cycles": float(len(timed))}
    for key, stem in PHASES.items():
        v = col(key, analysed if key == "t_analysis" else timed)
        timings[f"time_{stem}_s"] = float(np.mean(v)) if len(v) else float("nan")
        timings[f"time_{stem}_med_s"], timings[f"time_{stem}_iqr_s"] = _quartiles(v)
    for stem in ("forecast", "analysis", "reconstruct", "online"):
        timings[f"time_{stem}_cpu_s"] = _quartiles(col(f"t_{stem}_cpu", analysed if stem == "analysis" else timed))[0]
    wall, cpu = np.nansum(col("t_online")), np.nansum(col("t_online_cpu"))
    timings["cpu_per_wall"] = float(cpu / wall) if wall > 0 else float("nan")
    subs = col("forecast_substeps", rows)
    timings["forecast_substeps"] = float(np.nanmean(subs)) if np.isfinite(subs).any() else float("nan")
    speeds = col("forecast_speed", rows)
    timings["forecast_speed"] = float(np.nanmax(speeds)) if np.isfinite(speeds).any() else float("nan")
    per = col("forecast_substeps")
    with np.errstate(divide="ignore", invalid="ignore"):
        timings["time_forecast_per_substep_s"] = _quartiles(np.where(per > 0, col("t_forecast") / per, np.nan))[0]
        timings["time_forecast_per_substep_cpu_s"] = _quartiles(
            np.where(per > 0, col("t_forecast_cpu") / per, np.nan))[0]
    return means, timings


class _RandomState:
    """The states of every random generator a cycle can draw from: the method's and its state's
    ``torch.Generator`` attributes, torch's global CPU generator and, on CUDA, the device's."""

    def __init__(self, method: Any, state: Any, device: torch.device):
        gens = [v for v in vars(method).values() if isinstance(v, torch.Generator)]
        holders = [state, *(vars(state).values() if hasattr(state, "__dict__") else ()),
                   *(getattr(state, "extra", {}) or {}).values()] if state is not None else []
        gens += [v for v in holders if isinstance(v, torch.Generator)]
        self.gens = list({id(g): g for g in gens}.values())
        self.cuda = device.type == "cuda"
        self.saved = self.capture()

    def capture(self) -> tuple:
        return ([g.get_state() for g in self.gens], torch.get_rng_state(),
                torch.cuda.get_rng_state() if self.cuda else None)

    def restore(self, saved: tuple | None = None) -> None:
        gens, cpu, cuda = saved if saved is not None else self.saved
        for g, st in zip(self.gens, gens):
            g.set_state(st)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def _copy_state(x: Any) -> Any:
    """A copy of a method state that the method may modify in place: tensors cloned, containers rebuilt."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _copy_state(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_copy_state(v) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _copy_state(getattr(x, f.name)) for f in dataclasses.fields(x)
                                         if f.init})
    return x


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
