"""asv benchmarks per method on the smoke scale: speed (``time_*``), memory (``peakmem_*``), accuracy
(``track_rrmse_a``), tracked across commits.

Parameters: every problem with a small configuration (Lorenz-96 at d = 40, plus each PDE problem whose class
provides ``conformance_params``) x every name in the method registry (``methods.names()``). A combination is
skipped (``NotImplementedError`` in ``setup``, asv's way) when the method does not import, when its
``skip(problem, observer)`` gives a reason, when a learned method has no tiny training configuration, or when
its preparation (bind/fit) failed in ``setup_cache``; a smoke run that fails there (e.g. diverges) skips only
``MethodRun`` (peak memory, RRMSE), a first analysis that fails skips only ``MethodTime``.

``setup_cache`` runs once per ``asv run``, in a temporary folder that lives as long as the benchmarks: it builds
every dataset and trains every learned method there (``<tmp>/assimbench-cache``); later ``setup`` calls and the
runner load the cached dataset and model artifacts.

- ``MethodTime.time_forecast`` / ``.time_analysis``: one ``method.forecast`` / ``method.analysis`` call on a prepared
  ensemble (the runner's seeds: the same truth, observation and initial ensemble as ``bench run``).
- ``MethodRun.peakmem_run`` / ``.track_rrmse_a``: a whole cell through ``bench.runner.run_cell`` (fit loads the cached
  artifact); ``track_rrmse_a`` is the time-averaged relative RMSE of the analysis mean (deterministic seeds).

The configurations are fixed here so that a preset edit does not show up as a change in the tracked numbers;
change them only on purpose. Lorenz-96: d = 40, every variable observed with unit noise, N = 10, a localised
square-root EnKF (radius 4, inflation 1.04: analysis rRMSE 0.077 against the free run's 0.83; without
localisation N = 10 < d collapses and does not track).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import methods
import problems
from bench.config import Cell, freeze
from bench.runner import prepare, run_cell
from methods.base import Method

#: one intra-op thread: stable timings on a shared machine
THREADS = int(os.environ.get("ASSIMBENCH_ASV_THREADS", "1"))
torch.set_num_threads(THREADS)

N_ENS = 10
SEED = 0
SPINUP = 2
#: problem name -> (problem parameters, observer parameters); Lorenz-96 is the smoke preset's first observer
L96 = ({"dim": 40, "n_cycles": 30, "n_traj": 5}, {"coverage": 1.0, "noise": 1.0, "noise_type": "absolute"})
#: cycles of the tiny PDE configurations (conformance_params usually has 3; a few more give a stabler RRMSE)
PDE_CYCLES = 8
PDE_OBSERVER = {"coverage": 0.5}
#: method hyperparameters for the smoke-scale runs (the smoke preset's first EnKF variant); methods not listed
#: use their class's ``conformance_params`` (tiny training for learned methods)
METHOD_PARAMS = {
    "EnKF": {"variant": "sqrt", "inflation": 1.04, "loc_radius": 4.0},
    #: tiny LDNet + encoder (seconds of training), used while the class gives no conformance_params
    "LD-EnSF": {"latent_dim": 4, "dyn_width": 16, "dyn_depth": 2, "rec_width": 16, "rec_depth": 2, "epochs": 3,
                "batch_traj": 2, "points": 64, "lstm_hidden": 8, "lstm_epochs": 3, "n_steps": 20},
}


def _problem_names() -> list[str]:
    """Lorenz-96 plus the PDE problems that import and have a tiny configuration."""
    out = ["lorenz96"]
    for name in ("shallow_water", "kolmogorov"):
        try:
            if name in problems.names() and getattr(problems.cls(name), "conformance_params", None):
                out.append(name)
        except Exception:  # a problem that does not import is simply not benchmarked
            pass
    return out


def _method_names() -> list[str]:
    return list(methods.names())


def problem_config(name: str) -> tuple[dict, dict]:
    """(problem parameters, observer parameters) of the benchmark configuration of problem ``name``."""
    if name == "lorenz96":
        return dict(L96[0]), dict(L96[1])
    cls = problems.cls(name)
    pp = dict(cls.conformance_params)
    pp["n_cycles"] = max(int(pp.get("n_cycles", 0)), PDE_CYCLES)
    return pp, dict(getattr(cls, "conformance_observer", PDE_OBSERVER))


def method_params(name: str) -> dict:
    """Hyperparameters of method ``name``; ConfigError/ImportError when it cannot be built."""
    cls = methods.cls(name)
    params = METHOD_PARAMS.get(name)
    if params is None:
        params = dict(getattr(cls, "conformance_params", {}) or {})
        if not params and cls.fit is not Method.fit:
            raise NotImplementedError(f"{name} is a learned method without conformance_params: no tiny training "
                                      "configuration to benchmark")
    return dict(params)


def make_cell(problem: str, method: str):
    """The :class:`bench.config.Cell` benchmarked for (problem, method)."""
    pp, op = problem_config(problem)
    return Cell(problem, freeze(pp), freeze(op), method, freeze(method_params(method)), N_ENS, SEED, "cpu",
                "float32", SPINUP)


def prepared_state(cell, cache_dir: Path):
    """(method, initial state, forecast state, first observation) of ``cell``, prepared by
    :func:`bench.runner.prepare` exactly as ``bench run`` prepares it (fit loads the cached artifact).

    NotImplementedError (asv's skip) when the method skips the combination.
    """
    prep = prepare(cell, cache_dir=cache_dir)
    if prep.skip_reason:
        raise NotImplementedError(prep.skip_reason)
    prep.observations, prep.initial  # noqa: B018  (drawn before fit, as the runner does)
    prep.bind()
    prep.fit()
    state0 = prep.init()
    return prep.method, state0, prep.method.forecast(state0), prep.observations[0]


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def try_once(problem: str, method: str, cache_dir: Path) -> tuple[str | None, str | None]:
    """Build the dataset and train (and cache) a learned method, then try both benchmark paths once.

    Returns ``(time_reason, run_reason)``: why the ``time_*`` benchmarks (one forecast + analysis) and the
    run benchmarks (``run_cell``) cannot run, or None. A skip or a failed fit rules out both; a smoke run that
    diverges rules out only the run benchmarks (the kernels' speed is still worth tracking).
    """
    reason = _skip_reason(problem, method)
    if reason:
        return reason, reason
    cell = make_cell(problem, method)
    try:
        m, _, state_f, y = prepared_state(cell, cache_dir)
    except NotImplementedError as e:
        return str(e), str(e)
    except Exception as e:  # the combination is skipped, the suite goes on
        reason = f"preparation (bind/fit) failed: {_first_line(e)}"
        return reason, reason
    time_reason = None
    try:
        m.analysis(state_f, y)
    except Exception as e:
        time_reason = f"the first analysis failed: {_first_line(e)}"
    row = run_cell(cell, cache_dir=cache_dir).row
    run_reason = None if row["status"] == "ok" else \
        f"the smoke run {row['status']}: {row['error'].splitlines()[0] if row['error'] else ''}"
    if run_reason is None and method != BASELINE:
        free = free_run_rrmse(problem, cache_dir)
        if not row["rrmse_a"] < free:
            run_reason = (f"does not track in this tiny setting (analysis rRMSE {row['rrmse_a']:.3g}, free run "
                          f"{free:.3g}): its accuracy is not worth tracking here")
    return time_reason, run_reason


#: the reference every tracked method must beat: a run that never assimilates
BASELINE = "FreeRun"
_FREE: dict[str, float] = {}


def free_run_rrmse(problem: str, cache_dir: Path) -> float:
    """Analysis rRMSE of the free run (no assimilation) in the benchmark setting of ``problem``."""
    from bench.runner import run_cell
    if problem not in _FREE:
        row = run_cell(make_cell(problem, BASELINE), cache_dir=cache_dir).row
        _FREE[problem] = float(row["rrmse_a"]) if row["status"] == "ok" else float("inf")
    return _FREE[problem]


def _skip_reason(problem: str, method: str) -> str | None:
    """Why (problem, method) cannot be benchmarked, or None."""
    try:
        prep = prepare(make_cell(problem, method))
        # the skip check needs only the observer geometry, not the dataset
        return prep.method.skip(prep.problem, problems.bind_observer(prep.problem, None, **prep.cell.odict)) or None
    except NotImplementedError as e:
        return str(e)
    except Exception as e:  # does not import, or bad parameters
        return f"{type(e).__name__}: {e}"


PROBLEMS = _problem_names()
METHODS = _method_names()


def setup_cache():
    """Build every dataset and train every learned method once, in asv's temporary folder; returns the cache
    folder and the skip reasons of each (problem, method) for the two benchmark classes."""
    cache_dir = Path("assimbench-cache").resolve()
    cache_dir.mkdir(exist_ok=True)
    skip: dict[str, dict[str, str]] = {"time": {}, "run": {}}
    for p in PROBLEMS:
        for m in METHODS:
            for kind, reason in zip(("time", "run"), try_once(p, m, cache_dir)):
                if reason:
                    skip[kind][f"{p}|{m}"] = reason
                    print(f"assimbench asv: skipping the {kind} benchmarks of {m} on {p}: {reason}", file=sys.stderr)
    return {"cache_dir": str(cache_dir), "skip": skip}


setup_cache.timeout = 900


class _Suite:
    params = (PROBLEMS, METHODS)
    param_names = ["problem", "method"]
    timeout = 300
    #: the one setup_cache function shared by both classes (asv runs it once)
    setup_cache = staticmethod(setup_cache)
    kind = ""

    def _check(self, cache, problem, method):
        reason = cache["skip"][self.kind].get(f"{problem}|{method}")
        if reason:
            raise NotImplementedError(reason)
        self.cache_dir = Path(cache["cache_dir"])
        self.cell = make_cell(problem, method)


class MethodTime(_Suite):
    """Per (problem, method): one forecast and one analysis of the smoke-scale ensemble (N = 10)."""

    kind = "time"
    # a handful of short samples: the machine is shared, and the suite should finish in minutes
    repeat = (1, 10, 4.0)
    warmup_time = 0.05

    def setup(self, cache, problem, method):
        self._check(cache, problem, method)
        self.method, self.state0, self.state_f, self.y = prepared_state(self.cell, self.cache_dir)

    def time_forecast(self, cache, problem, method):
        """``method.forecast`` of the N = 10 ensemble over one observation interval."""
        self.method.forecast(self.state0)

    def time_analysis(self, cache, problem, method):
        """``method.analysis`` of the N = 10 forecast ensemble with the first observation."""
        self.method.analysis(self.state_f, self.y)


class MethodRun(_Suite):
    """Per (problem, method): a whole smoke cell through ``bench.runner.run_cell`` (fit loads the cached model)."""

    kind = "run"

    def setup(self, cache, problem, method):
        self._check(cache, problem, method)

    def _run(self) -> dict:
        row = run_cell(self.cell, cache_dir=self.cache_dir).row
        if row["status"] != "ok":
            raise RuntimeError(f"run_cell {row['status']}: {row['error']}")
        return row

    def peakmem_run(self, cache, problem, method):
        """Peak resident memory of the process over the whole cell (dataset load, fit, 30 or 8 cycles)."""
        self._run()

    def track_rrmse_a(self, cache, problem, method):
        """Time-averaged relative RMSE of the analysis mean after the spin-up; fixed seeds, deterministic."""
        return float(self._run()["rrmse_a"])

    track_rrmse_a.unit = "relative RMSE"


#: the learned methods whose accuracy is tracked at the scale their shipped networks were trained for
LEARNED = ("LD-EnSF", "Latent-EnSF")
LEARNED_PROBLEMS = ("shallow_water", "kolmogorov")


def learned_cell(problem: str, method: str) -> Cell:
    """The first truth (seed 0) of the default preset's cell for (problem, method): the setting the shipped
    networks (``methods/artifacts/``) were trained for, so fit loads them instead of training."""
    from bench.config import expand, load_preset
    cells = [c for c in expand(load_preset("default")).cells
             if c.problem == problem and c.method == method and c.seed == 0]
    if not cells:
        raise NotImplementedError(f"the default preset has no {method} cell on {problem}")
    return cells[0]


def learned_setup_cache():
    """Run the four default-preset cells once (datasets from the user's cache, ``$ASSIMBENCH_CACHE`` or
    ``~/.cache/assimbench``, built there when missing); returns their analysis and surrogate errors."""
    out: dict[str, dict] = {}
    for p in LEARNED_PROBLEMS:
        for m in LEARNED:
            key = f"{p}|{m}"
            try:
                res = run_cell(learned_cell(p, m))
            except NotImplementedError as e:
                out[key] = {"skip": str(e)}
                continue
            row = res.row
            if row["status"] != "ok":
                out[key] = {"skip": f"the default-preset cell {row['status']}: "
                                    f"{(row['error'] or '').splitlines()[0] if row['error'] else ''}"}
                continue
            net = {k: v for k, v in res.surrogate.items() if k.endswith("test_rrmse_phys")}
            out[key] = {"rrmse_a": float(row["rrmse_a"]),
                        "surrogate": float(next(iter(net.values()))) if net else float("nan")}
            print(f"assimbench asv: {m} on {p}: analysis rRMSE {out[key]['rrmse_a']:.4f}, network test rRMSE "
                  f"{out[key]['surrogate']:.4f}", file=sys.stderr)
    return out


learned_setup_cache.timeout = 1800


class LearnedAccuracy:
    """The learned methods where they work: the default preset's 64 x 64 tsunami and Kolmogorov cells (N = 20,
    sparsest lattice, 10 % noise, first truth) with the shipped networks. Tracks the analysis rRMSE and the
    network's test rRMSE (physical units, full test grid, measured on the data at hand), so a change of the
    training recipe, the shipped artifacts or the filter shows up as a step in both curves."""

    params = (list(LEARNED_PROBLEMS), list(LEARNED))
    param_names = ["problem", "method"]
    timeout = 1800
    setup_cache = staticmethod(learned_setup_cache)

    def setup(self, cache, problem, method):
        entry = cache[f"{problem}|{method}"]
        if "skip" in entry:
            raise NotImplementedError(entry["skip"])
        self.entry = entry

    def track_analysis_rrmse(self, cache, problem, method):
        """Time-averaged relative RMSE of the analysis mean after the spin-up (deterministic seeds)."""
        return self.entry["rrmse_a"]

    track_analysis_rrmse.unit = "relative RMSE"

    def track_network_test_rrmse(self, cache, problem, method):
        """Test rRMSE of the method's reconstruction network (LDNet / coupled VAE), physical units."""
        return self.entry["surrogate"]

    track_network_test_rrmse.unit = "relative RMSE"
