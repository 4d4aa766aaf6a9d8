"""Results on disk: one atomic file per finished cell, a lock per run folder, consolidated Parquet tables.

Layout of a run folder ``DIR``::

    DIR/grid.yaml                    the config as given (written under the lock: the folder holds this grid)
    DIR/cells/<cell_id>.json         one finished cell: {"cell", "row", "cycles"}, written atomically
    DIR/snapshots/<cell_id>.npz      field snapshots (gridded problems)
    DIR/extras/<cell_id>.json        the method's training summary (surrogate errors), when it has one
    DIR/extras/<cell_id>.latent.npz  analysis latents of latent methods
    DIR/results.parquet              one row per cell (consolidated from cells/)
    DIR/cycles.parquet               one row per (cell, cycle)
    DIR/run.json                     provenance, timings
    DIR/.lock                        held by the running `bench run`

This module is the only one that knows these paths: the sweep, the executors, the CLI and the report ask it.
A cell file is JSON with a ``checksum`` of its payload, so a partial or corrupt file is detected and the cell
rerun rather than read.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from assimbench.errors import ConfigError

if TYPE_CHECKING:
    from bench.runner import CellResult

FORMAT_VERSION = 1

RESULTS_FILE = "results.parquet"
CYCLES_FILE = "cycles.parquet"
RUN_FILE = "run.json"
GRID_FILE = "grid.yaml"
LOCK_FILE = ".lock"
CELLS_DIR = "cells"
SNAPSHOTS_DIR = "snapshots"
EXTRAS_DIR = "extras"


# ----------------------------------------------------------------------------------------------------------------
# paths of a run folder


def results_path(run_dir: Path) -> Path:
    return Path(run_dir) / RESULTS_FILE


def cycles_path(run_dir: Path) -> Path:
    return Path(run_dir) / CYCLES_FILE


def run_info_path(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_FILE


def grid_path(run_dir: Path) -> Path:
    return Path(run_dir) / GRID_FILE


def cells_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CELLS_DIR


def cell_path(run_dir: Path, cell_id: str) -> Path:
    return cells_dir(run_dir) / f"{cell_id}.json"


def snapshot_path(run_dir: Path, cell_id: str) -> Path:
    return Path(run_dir) / SNAPSHOTS_DIR / f"{cell_id}.npz"


def surrogate_path(run_dir: Path, cell_id: str) -> Path:
    return Path(run_dir) / EXTRAS_DIR / f"{cell_id}.json"


def latent_path(run_dir: Path, cell_id: str) -> Path:
    return Path(run_dir) / EXTRAS_DIR / f"{cell_id}.latent.npz"


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
    atomic_write_bytes(cell_path(run_dir, cell_id), blob.encode())


def _write_npz(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_result(run_dir: Path, result: "CellResult") -> None:
    """Write a :class:`bench.runner.CellResult`: its arrays first, then the cell file, whose presence marks the
    cell finished (a writer killed before that leaves the cell to be rerun)."""
    cell_id = result.row["cell_id"]
    if result.snapshots:
        _write_npz(snapshot_path(run_dir, cell_id), result.snapshots)
    if result.latent:
        _write_npz(latent_path(run_dir, cell_id), result.latent)
    if result.surrogate:
        atomic_write_bytes(surrogate_path(run_dir, cell_id),
                           json.dumps({"surrogate": result.surrogate}, indent=1).encode())
    write_cell(run_dir, cell_id, {"cell": result.cell, "row": result.row, "cycles": result.cycles})


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


def finished_cells(run_dir: Path, remove_corrupt: bool = True) -> dict[str, dict]:
    """cell_id -> payload of every valid cell file; corrupt ones are removed (they will be rerun) unless
    ``remove_corrupt`` is False (readers that do not hold the run lock)."""
    out = {}
    for p in sorted(cells_dir(run_dir).glob("*.json")):
        payload = read_cell(p)
        if payload is None:
            if remove_corrupt:
                p.unlink(missing_ok=True)
            continue
        out[p.stem] = payload
    return out


class RunLock:
    """An exclusive advisory lock on a run folder: two `bench run` never write the same cells."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write to the results folder {self.path.parent} ({e.strerror or e}); choose "
                              f"a folder you can write with --out") from None
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


def _device_free(cell: dict) -> str | None:
    """The identity of a cell apart from its device (CPU and GPU runs of one grid share a folder)."""
    from bench.config import Cell
    try:
        return Cell.from_dict({**cell, "device": "*"}).cell_id
    except (KeyError, TypeError, AttributeError):
        return None


def check_grid(run_dir: Path, cells: list, done: dict[str, dict], force: bool = False) -> dict[str, dict]:
    """The folder policy: a run folder holds the cells of one grid (on any devices).

    A finished cell of ``run_dir`` that is not one of ``cells`` (compared without the device, so the same grid
    run with ``--device cuda`` joins the CPU run, side by side) belongs to another grid. Without ``force`` that
    is a ConfigError (rerun the folder's own grid to resume it, use a fresh folder, or ``--force``); with
    ``force`` those cells are deleted (cell files, snapshots, extras) so the tables never mix two grids. A grid
    that adds cells to the folder's (more seeds, another method) is the same folder growing and is allowed.
    Returns the finished cells that the folder keeps. Call it holding the :class:`RunLock`.
    """
    keys = {_device_free(c.to_dict()) for c in cells}
    return check_folder(run_dir, lambda cell: _device_free(cell) in keys, done, force,
                        own=f"Rerun that folder's own grid ({grid_path(run_dir)}) to resume it")


def check_folder(run_dir: Path, belongs, done: dict[str, dict], force: bool = False, *,
                 own: str = "Rerun that folder's own command to resume it") -> dict[str, dict]:
    """The folder policy of :func:`check_grid` for any command that writes cells: ``belongs(cell_dict)`` says
    whether a finished cell is one of this command's (a `bench run` grid, a `bench tune` search); the others
    stop the command with a ConfigError (``own`` says how to resume the folder's own work) or, with ``force``,
    are deleted. Returns the finished cells that the folder keeps. Call it holding the :class:`RunLock`."""
    foreign = sorted(cid for cid, payload in done.items() if not belongs(payload.get("cell", {})))
    if foreign and not force:
        names = sorted({str(done[c].get("row", {}).get("p_method", "?")) for c in foreign})[:3]
        raise ConfigError(f"{run_dir} already holds {len(foreign)} finished cell(s) of another grid (e.g. "
                          f"{', '.join(names)}) that this grid does not contain; running it there would mix the two "
                          f"grids. {own}, choose a fresh --out folder, or pass --force to replace the folder's grid "
                          f"(deletes those cells)")
    for cid in foreign:
        for path in (run_dir / "cells" / f"{cid}.json", run_dir / "snapshots" / f"{cid}.npz",
                     run_dir / "extras" / f"{cid}.json", run_dir / "extras" / f"{cid}.latent.npz"):
            path.unlink(missing_ok=True)
    return {k: v for k, v in done.items() if k not in set(foreign)}


def write_grid(run_dir: Path, config: dict) -> None:
    """Record the folder's grid (the config as given), atomically; call it holding the :class:`RunLock`."""
    import yaml
    atomic_write_bytes(grid_path(run_dir), yaml.safe_dump(config, sort_keys=False).encode())


# --------------------------------------------------------------------------------------------------------------
# the typed schema of results.parquet and cycles.parquet

#: Columns that are always floating point (metrics, timings), even when every value is missing.
FLOAT_COLUMNS: frozenset[str] = frozenset({
    "rmse_f", "rmse_a", "rrmse_f", "rrmse_a", "rrmse_member_a", "spread_a", "crps_a", "param_rmse_a",
    "rmse_between", "rrmse_between", "spread_error_a", "obs_coverage", "peak_mem_mb", "p_coverage", "p_noise",
    "p_init_std", "time"})
#: Prefixes of floating-point column families (timings, per-parameter traces).
FLOAT_PREFIXES: tuple[str, ...] = ("time_", "t_", "param_mean_", "param_true_", "param_std_")
#: Columns that are always integers (nullable ``Int64`` where a cell lacks the value).
INT_COLUMNS: frozenset[str] = frozenset({"p_n_ens", "p_seed", "p_spinup", "p_score_between", "n_cycles", "n_obs",
                                         "state_dim", "threads", "cycle"})
#: Columns that are always booleans (nullable ``boolean`` where a cell lacks the value).
BOOL_COLUMNS: frozenset[str] = frozenset({"git_dirty", "spinup"})
#: Columns whose values are lists of integers (the rank histogram's N + 1 bin counts); in Parquet a
#: ``list<int64>`` column, read back as one integer array per row (None where a cell has none).
INT_LIST_COLUMNS: frozenset[str] = frozenset({"rank_hist_a"})
#: How a non-finite float is written in a cell file (JSON has no NaN/inf) and read back.
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def column_type(name: str, values: pd.Series) -> str:
    """The pandas dtype of a results/cycles column: fixed for the known columns, else from its values.

    Known metric and timing columns are ``float64``; counts, seeds and sizes ``int64``; flags ``bool``; the
    rank histogram (:data:`INT_LIST_COLUMNS`) ``object`` holding lists of integers (Parquet ``list<int64>``). Any
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
    if name in INT_LIST_COLUMNS:
        return "int_list"
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
    if dtype == "int_list":
        return [int(c) for c in v]
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
        out[c] = pd.Series(vals, dtype=dtype if dtype not in ("object", "int_list") else object)
    return pd.DataFrame(out, index=pd.RangeIndex(len(records)))


def consolidate(run_dir: Path, cell_ids: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build ``results.parquet`` and ``cycles.parquet`` from the cell files (only ``cell_ids`` if given)."""
    cells = finished_cells(run_dir)
    ids = [c for c in (cell_ids if cell_ids is not None else sorted(cells)) if c in cells]
    rows = [cells[c]["row"] for c in ids]
    cyc = [r for c in ids for r in cells[c]["cycles"]]
    df = typed_table(rows)
    cdf = typed_table(cyc)
    for path, table in ((results_path(run_dir), df), (cycles_path(run_dir), cdf)):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return df, cdf


def remove_stale_tmp(run_dir: Path) -> None:
    """Remove the ``.tmp`` files a killed writer left behind (call it holding the lock: no writer is alive)."""
    run_dir = Path(run_dir)
    for sub in (CELLS_DIR, SNAPSHOTS_DIR, EXTRAS_DIR):
        for p in (run_dir / sub).glob(".*.tmp*"):
            p.unlink(missing_ok=True)
    for p in run_dir.glob(".*.parquet.tmp*"):
        p.unlink(missing_ok=True)


def resolve_run_dir(run_dir: str | Path) -> Path:
    """The run folder named by ``run_dir`` (the folder or its ``results.parquet``); ConfigError when it is not one.

    A folder with ``cells/`` but no ``results.parquet`` (a run interrupted before consolidation) is
    consolidated here; a folder without any finished cell is a ConfigError, and nothing is written into it.
    """
    path = Path(run_dir)
    if path.is_file() and path.name == RESULTS_FILE:
        path = path.parent
    if not results_path(path).is_file():
        if not path.exists():
            raise ConfigError(f"run directory {str(path)!r} does not exist")
        if cells_dir(path).is_dir():
            if not finished_cells(path, remove_corrupt=False):
                raise _no_cells(path)
            consolidate(path)
        else:
            raise ConfigError(f"{path} is not a results folder (no {RESULTS_FILE} and no {CELLS_DIR}/); "
                              f"give the --out folder of a `bench run`")
    return path


def _no_cells(run_dir: Path) -> ConfigError:
    return ConfigError(f"{run_dir} has no finished cell yet; run (or resume) its grid with "
                       f"`bench run {grid_path(run_dir)} --out {run_dir}`")


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The results table of a run folder (one row per cell), with a clear error for a folder that is not one
    or that an older or foreign version wrote."""
    path = results_path(resolve_run_dir(run_dir))
    try:
        df = pd.read_parquet(path)
    except Exception as e:
        raise ConfigError(f"{path} cannot be read as Parquet ({e}); rerun `bench run` into that folder") from None
    if len(df) == 0:
        raise _no_cells(path.parent)
    need = {"p_problem", "p_method", "status"}
    if not need <= set(df.columns):
        raise ConfigError(f"{path} is from an older or foreign version (missing columns "
                          f"{sorted(need - set(df.columns))}); rerun `bench run` to rebuild it")
    return df


def load_cycles(run_dir: str | Path) -> pd.DataFrame:
    """The per-cycle table of a run folder, or an empty frame when the run wrote none."""
    path = cycles_path(resolve_run_dir(run_dir))
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def load_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``DIR/run.json`` (config, provenance, start and end times, command), or ``{}`` when absent/unreadable."""
    path = run_info_path(resolve_run_dir(run_dir))
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        warnings.warn(f"could not read {path}: {e}", stacklevel=2)
        return {}


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` file of a run folder, or None (with a warning) when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        warnings.warn(f"could not read {path}: {e}", stacklevel=2)
        return None
