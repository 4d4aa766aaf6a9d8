"""Conformance checks every Method x Problem must pass; reusable for a researcher's own classes.

``check(method_name, problem_name)`` runs a tiny configuration through the real runner path (dataset, observer,
fit, init, a few forecast/analysis/estimate cycles) and asserts finite ensembles of the right shape, dtype and
device, or returns the skip reason. The pytest suite (tests/test_conformance.py) parametrizes it over both
registries; set ``ASSIMBENCH_PLUGINS=pkg.mod,...`` to include plugin classes.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def tiny_problem(name: str):
    """The problem ``name`` at its tiny configuration (``conformance_params`` class attribute)."""
    import problems
    cls = problems.cls(name)
    return problems.get(name, **getattr(cls, "conformance_params", {}))


def check(method_name: str, problem_name: str, *, n_ens: int = 4, n_cycles: int = 2,
          cache_dir: Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Run ``n_cycles`` cycles of a tiny configuration; returns the skip reason or None (AssertionError on failure)."""
    import methods
    import problems
    from methods.base import Context

    problem = tiny_problem(problem_name)
    ds = problem.dataset(cache_dir=cache_dir, progress=False)
    obs_params = getattr(type(problem), "conformance_observer", {"coverage": 0.5})
    observer = problems.bind_observer(problem, ds, **obs_params)
    mcls = methods.cls(method_name)
    method = methods.get(method_name, **getattr(mcls, "conformance_params", {}))
    reason = method.skip(problem, observer)
    if reason:
        assert isinstance(reason, str) and reason, "skip() must return a non-empty reason or None"
        return reason
    dev = torch.device(device)
    method.bind(Context(problem, observer, ds, device=dev, dtype=dtype, cache_dir=cache_dir))
    g = torch.Generator().manual_seed(0)
    method.fit(g)
    params = problem.sample_params(n_ens, g)
    x0 = problem.sample_initial(params, g).to(dev, dtype)
    state = method.init(x0, params.to(dev, dtype), g)
    y_all = observer.sample(ds.test[0, 1:n_cycles + 1].double(), g).to(dev, dtype)
    for t in range(n_cycles):
        state = method.forecast(state)
        state = method.analysis(state, y_all[t])
        x = method.estimate(state)
        assert tuple(x.shape) == (n_ens, *problem.state_shape), f"estimate shape {tuple(x.shape)}"
        assert x.dtype == dtype, f"estimate dtype {x.dtype}, expected {dtype}"
        assert x.device.type == dev.type, f"estimate on {x.device}, expected {dev}"
        assert torch.isfinite(x).all(), "estimate has non-finite values"
        p = method.estimate_params(state)
        if p is not None:
            assert tuple(p.shape) == (n_ens, problem.n_params), f"parameter estimate shape {tuple(p.shape)}"
            assert torch.isfinite(p).all(), "parameter estimate has non-finite values"
    return None


def load_env_plugins() -> None:
    from assimbench.registry import load_plugins
    mods = [m for m in os.environ.get("ASSIMBENCH_PLUGINS", "").split(",") if m.strip()]
    load_plugins([m.strip() for m in mods])
