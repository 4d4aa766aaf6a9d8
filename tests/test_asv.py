"""The asv suite (bench/benchmarks, asv.conf.json) imports and is well formed: ``asv check --python=same``.

This is what CI runs; the benchmarks themselves are not executed here (``asv run --quick --python=same`` takes a
few minutes, see docs/benchmarks.md).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _asv_cmd() -> list[str]:
    exe = shutil.which("asv")
    if exe:
        return [exe]
    try:
        import asv  # noqa: F401
    except ImportError:
        pytest.skip("asv is not installed (pip install 'assimbench[test]' or pip install asv)")
    return [sys.executable, "-m", "asv"]


def test_asv_conf_points_at_the_suite():
    text = (ROOT / "asv.conf.json").read_text()
    conf = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))  # asv allows // comment lines
    assert conf["environment_type"] == "existing"
    assert conf["benchmark_dir"] == "bench/benchmarks" and (ROOT / conf["benchmark_dir"] / "__init__.py").exists()
    assert conf["results_dir"].startswith(".asv") and conf["html_dir"].startswith(".asv")


def test_asv_check_passes():
    """Discovery imports bench/benchmarks in this interpreter and validates every benchmark (runs none)."""
    cmd = _asv_cmd()
    proc = subprocess.run([*cmd, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "No problems found" in out, out[-4000:]
