"""Results on disk: one atomic file per finished cell, a lock per run folder, consolidated Parquet tables.

Layout of a run folder ``DIR``::

    DIR/grid.yaml              the config as given (for provenance and `bench show`)
    DIR/cells/<cell_id>.json   one finished cell: {"cell", "row", "cycles"}, written atomically
    DIR/snapshots/<id>.npz     field snapshots (gridded problems)
    DIR/results.parquet        one row per cell (consolidated from cells/)
    DIR/cycles.parquet         one row per (cell, cycle)
    DIR/run.json               provenance, timings
    DIR/.lock                  held by the running `bench run`

A cell file is JSON with a ``checksum`` of its payload, so a partial or corrupt file is detected and the cell
rerun rather than read.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from assimbench.errors import ConfigError

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    if isinstance(v, tuple):
        return list(v)
    return v


def _sanitize(obj: Any) -> Any:
    """JSON-safe copy: NaN -> None, +-inf -> strings, numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return _clean(obj)


def write_cell(run_dir: Path, cell_id: str, payload: dict) -> None:
    """Atomically write one finished cell (``payload`` holds JSON-able ``cell``, ``row``, ``cycles``)."""
    body = json.dumps(_sanitize({k: payload[k] for k in ("cell", "row", "cycles")}), sort_keys=True,
                      allow_nan=False)
    checksum = hashlib.sha256(body.encode()).hexdigest()
    blob = json.dumps({"format": FORMAT_VERSION, "checksum": checksum, "body": body})
    atomic_write_bytes(run_dir / "cells" / f"{cell_id}.json", blob.encode())


def read_cell(path: Path) -> dict | None:
    """The cell payload, or None when the file is partial, corrupt or from another format version."""
    try:
        outer = json.loads(path.read_text())
        body = outer["body"]
        if outer.get("format") != FORMAT_VERSION or hashlib.sha256(body.encode()).hexdigest() != outer["checksum"]:
            return None
        return json.loads(body)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_cells(run_dir: Path) -> dict[str, dict]:
    """cell_id -> payload of every valid cell file; corrupt ones are removed (they will be rerun)."""
    out = {}
    for p in sorted((run_dir / "cells").glob("*.json")):
        payload = read_cell(p)
        if payload is None:
            p.unlink(missing_ok=True)
            continue
        out[p.stem] = payload
    return out


class RunLock:
    """An exclusive advisory lock on a run folder: two `bench run` never write the same cells."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"another `bench run` (pid {other}) is writing to {self.path.parent}; wait for it to "
                              f"finish or choose another --out folder") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------------------------------------------
# the typed schema of results.parquet and cycles.parquet

#: Columns that are always floating point (metrics, timings), even when every value is missing.
FLOAT_COLUMNS: frozenset[str] = frozenset({
    "rmse_f", "rmse_a", "rrmse_f", "rrmse_a", "rrmse_member_a", "spread_a", "crps_a", "param_rmse_a",
    "rmse_between", "rrmse_between", "obs_coverage", "peak_mem_mb", "p_coverage", "p_noise", "time"})
#: Prefixes of floating-point column families (timings, per-parameter traces).
FLOAT_PREFIXES: tuple[str, ...] = ("time_", "t_", "param_mean_", "param_true_", "param_std_")
#: Columns that are always integers (nullable ``Int64`` where a cell lacks the value).
INT_COLUMNS: frozenset[str] = frozenset({"p_n_ens", "p_seed", "p_spinup", "p_score_between", "n_cycles", "n_obs",
                                         "threads", "cycle"})
#: Columns that are always booleans (nullable ``boolean`` where a cell lacks the value).
BOOL_COLUMNS: frozenset[str] = frozenset({"git_dirty", "spinup"})
#: How a non-finite float is written in a cell file (JSON has no NaN/inf) and read back.
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def column_type(name: str, values: pd.Series) -> str:
    """The pandas dtype of a results/cycles column: fixed for the known columns, else from its values.

    Known metric and timing columns are ``float64``; counts, seeds and sizes ``int64``; flags ``bool``. Any
    other column (the ``p_*`` columns of problem, observer and method parameters) takes the type of its
    values: integers stay integers, booleans stay booleans, integers mixed with floats become ``float64``,
    text stays text. Integer and boolean columns with missing values (a parameter that only some problems
    or methods have) use pandas' nullable ``Int64`` / ``boolean``, so a missing value never turns them into
    floats or objects.
    """
    present = values[[v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values]]
    missing = len(present) < len(values)
    if name in FLOAT_COLUMNS or name.startswith(FLOAT_PREFIXES):
        return "float64"
    if name in INT_COLUMNS:
        return "Int64" if missing else "int64"
    if name in BOOL_COLUMNS:
        return "boolean" if missing else "bool"
    kinds = {type(v) for v in present}
    if not kinds:
        return "object"
    if kinds <= {bool, np.bool_}:
        return "boolean" if missing else "bool"
    if kinds <= {int, np.int64, np.int32}:
        return "Int64" if missing else "int64"
    if kinds <= {int, float, np.int64, np.float64} or (
            kinds <= {int, float, str} and all(v in _NONFINITE for v in present if isinstance(v, str))):
        return "float64"
    return "object"


def _typed(v, dtype: str):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if dtype == "float64":
        return _NONFINITE[v] if isinstance(v, str) and v in _NONFINITE else float(v)
    if dtype in ("Int64", "int64"):
        return int(v)
    if dtype in ("boolean", "bool"):
        return bool(v)
    return v if isinstance(v, str) else str(v)


def typed_table(records: list[dict]) -> pd.DataFrame:
    """A DataFrame of ``records`` (one dict per row, as written in the cell files) with every column given
    its explicit type (:func:`column_type`). Types are read from the Python values before pandas sees them, so
    an integer parameter that some rows lack stays an integer column (``Int64``), not floats."""
    columns: dict[str, None] = {}
    for r in records:
        columns.update(dict.fromkeys(r))
    out = {}
    for c in columns:
        raw = pd.Series([r.get(c) for r in records], dtype=object)
        dtype = column_type(c, raw)
        vals = [_typed(v, dtype) for v in raw]
        out[c] = pd.Series(vals, dtype=dtype if dtype != "object" else object)
    return pd.DataFrame(out, index=pd.RangeIndex(len(records)))


def consolidate(run_dir: Path, cell_ids: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build ``results.parquet`` and ``cycles.parquet`` from the cell files (only ``cell_ids`` if given)."""
    cells = finished_cells(run_dir)
    ids = [c for c in (cell_ids if cell_ids is not None else sorted(cells)) if c in cells]
    rows = [cells[c]["row"] for c in ids]
    cyc = [r for c in ids for r in cells[c]["cycles"]]
    df = typed_table(rows)
    cdf = typed_table(cyc)
    for name, table in (("results.parquet", df), ("cycles.parquet", cdf)):
        tmp = run_dir / f".{name}.tmp{os.getpid()}"
        table.to_parquet(tmp, index=False)
        os.replace(tmp, run_dir / name)
    return df, cdf


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The results table of a run folder, with a clear error for a folder that is not one."""
    run_dir = Path(run_dir)
    path = run_dir / "results.parquet"
    if not path.exists():
        if (run_dir / "cells").is_dir():
            return consolidate(run_dir)[0]
        raise ConfigError(f"{run_dir} is not a results folder (no results.parquet and no cells/); "
                          f"give the --out folder of a `bench run`")
    try:
        df = pd.read_parquet(path)
    except Exception as e:
        raise ConfigError(f"{path} cannot be read as Parquet ({e}); rerun `bench run` into that folder") from None
    need = {"p_problem", "p_method", "status"}
    if not need <= set(df.columns):
        raise ConfigError(f"{path} is from an older or foreign version (missing columns "
                          f"{sorted(need - set(df.columns))}); rerun `bench run` to rebuild it")
    return df
