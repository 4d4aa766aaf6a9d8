"""Conformance checks every Method x Problem must pass; reusable for a researcher's own classes.

``check(method_name, problem_name)`` runs a tiny configuration through the real runner path
(:func:`bench.runner.prepare`: dataset, observer, fit, init, a few of the runner's cycles) and asserts finite
ensembles of the right shape, dtype and device, or returns the skip reason. The pytest suite
(tests/test_conformance.py) parametrizes it over both registries; set ``ASSIMBENCH_PLUGINS=pkg.mod,...`` to
include plugin classes.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

import methods
import problems
from assimbench.registry import load_plugins
from bench.config import Cell, freeze
from bench.runner import Timer, prepare


def tiny_problem(name: str):
    """The problem ``name`` at its tiny configuration (``conformance_params`` class attribute)."""
    return problems.get(name, **getattr(problems.cls(name), "conformance_params", {}))


def tiny_cell(method_name: str, problem_name: str, *, n_ens: int = 4, device: str = "cpu",
              dtype: torch.dtype = torch.float32, observer: dict | None = None) -> Cell:
    """The cell of the conformance run: each class's ``conformance_params`` (and the problem's
    ``conformance_observer``, updated by ``observer``), seed 0."""
    pcls, mcls = problems.cls(problem_name), methods.cls(method_name)
    obs = {**getattr(pcls, "conformance_observer", {"coverage": 0.5}), **(observer or {})}
    return Cell(problem_name, freeze(getattr(pcls, "conformance_params", {})), freeze(obs), method_name,
                freeze(getattr(mcls, "conformance_params", {})), n_ens, 0, device, str(dtype).removeprefix("torch."))


def check(method_name: str, problem_name: str, *, n_ens: int = 4, n_cycles: int = 2,
          cache_dir: Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
          observer: dict | None = None) -> str | None:
    """Run ``n_cycles`` cycles of a tiny configuration; returns the skip reason or None (AssertionError on failure).

    The cell is set up by :func:`bench.runner.prepare` and cycled by its :meth:`~bench.runner.PreparedCell.cycle`,
    exactly as ``bench run`` does it (same seeds, same divergence checks). ``observer``: observer parameters
    that replace the tiny configuration's (e.g. ``{"operator": "arctan"}``).
    """
    prep = prepare(tiny_cell(method_name, problem_name, n_ens=n_ens, device=device, dtype=dtype,
                             observer=observer), cache_dir)
    reason = prep.skip_reason
    if reason:
        assert isinstance(reason, str) and reason, "skip() must return a non-empty reason or None"
        return reason
    dev, problem, method = prep.device, prep.problem, prep.method
    assert n_cycles <= prep.n_cycles, f"the tiny problem has only {prep.n_cycles} cycles"
    prep.bind()
    prep.fit()
    state = prep.init()
    timer, scale = Timer(dev), prep.divergence_scale()
    for t in range(1, n_cycles + 1):
        state, _, x, _ = prep.cycle(t, state, timer, scale)
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
    mods = [m for m in os.environ.get("ASSIMBENCH_PLUGINS", "").split(",") if m.strip()]
    load_plugins([m.strip() for m in mods])
