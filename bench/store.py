"""Results on disk: one atomic file per finished cell, a lock per run folder, consolidated Parquet tables.

Layout of a run folder ``DIR``::

    DIR/grid.yaml              the config as given (written under the lock; the folder holds this grid's cells)
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


def finished_cells(run_dir: Path, remove_corrupt: bool = True) -> dict[str, dict]:
    """cell_id -> payload of every valid cell file; corrupt ones are removed (they will be rerun) unless
    ``remove_corrupt`` is False (readers that do not hold the run lock)."""
    out = {}
    for p in sorted((run_dir / "cells").glob("*.json")):
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
        self.path = run_dir / ".lock"
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


GRID_FILE = "grid.yaml"


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
    foreign = sorted(cid for cid, payload in done.items() if _device_free(payload.get("cell", {})) not in keys)
    if foreign and not force:
        names = sorted({str(done[c].get("row", {}).get("p_method", "?")) for c in foreign})[:3]
        raise ConfigError(f"{run_dir} already holds {len(foreign)} finished cell(s) of another grid (e.g. "
                          f"{', '.join(names)}) that this grid does not contain; running it there would mix the two "
                          f"grids. Rerun that folder's own grid ({run_dir / GRID_FILE}) to resume it, choose a fresh "
                          f"--out folder, or pass --force to replace the folder's grid (deletes those cells)")
    for cid in foreign:
        for path in (run_dir / "cells" / f"{cid}.json", run_dir / "snapshots" / f"{cid}.npz",
                     run_dir / "extras" / f"{cid}.json", run_dir / "extras" / f"{cid}.latent.npz"):
            path.unlink(missing_ok=True)
    return {k: v for k, v in done.items() if k not in set(foreign)}


def write_grid(run_dir: Path, config: dict) -> None:
    """Record the folder's grid (the config as given), atomically; call it holding the :class:`RunLock`."""
    import yaml
    atomic_write_bytes(run_dir / GRID_FILE, yaml.safe_dump(config, sort_keys=False).encode())


def _normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Make every object column Parquet-safe (mixed types become strings, None stays missing)."""
    for c in df.columns:
        if df[c].dtype == object:
            vals = df[c].dropna()
            kinds = {type(v) for v in vals}
            if kinds <= {bool} or kinds <= {str} or not kinds:
                continue
            if kinds <= {int, float}:
                df[c] = pd.to_numeric(df[c])
            else:
                df[c] = df[c].map(lambda v: None if v is None else (str(v) if not isinstance(v, str) else v))
    return df


def consolidate(run_dir: Path, cell_ids: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build ``results.parquet`` and ``cycles.parquet`` from the cell files (only ``cell_ids`` if given)."""
    cells = finished_cells(run_dir)
    ids = [c for c in (cell_ids if cell_ids is not None else sorted(cells)) if c in cells]
    rows = [cells[c]["row"] for c in ids]
    cyc = [r for c in ids for r in cells[c]["cycles"]]
    df = _normalise_columns(pd.DataFrame(rows))
    cdf = _normalise_columns(pd.DataFrame(cyc))
    for name, table in (("results.parquet", df), ("cycles.parquet", cdf)):
        tmp = run_dir / f".{name}.tmp{os.getpid()}"
        table.to_parquet(tmp, index=False)
        os.replace(tmp, run_dir / name)
    return df, cdf


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The results table of a run folder, with a clear error for a folder that is not one."""
    run_dir = Path(run_dir)
    path = run_dir / "results.parquet"
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder; give the --out folder of a `bench run`")
    if not path.exists():
        if not (run_dir / "cells").is_dir():
            raise ConfigError(f"{run_dir} is not a results folder (no results.parquet and no cells/); "
                              f"give the --out folder of a `bench run`")
        # an interrupted run: read the finished cells without writing into a folder a run may hold
        cells = finished_cells(run_dir, remove_corrupt=False)
        df = _normalise_columns(pd.DataFrame([cells[c]["row"] for c in sorted(cells)]))
    else:
        try:
            df = pd.read_parquet(path)
        except Exception as e:
            raise ConfigError(f"{path} cannot be read as Parquet ({e}); rerun `bench run` into that folder") from None
    if len(df) == 0:
        raise ConfigError(f"{run_dir} has no finished cell yet; run (or resume) its grid with "
                          f"`bench run {run_dir / GRID_FILE} --out {run_dir}`")
    need = {"p_problem", "p_method", "status"}
    if not need <= set(df.columns):
        raise ConfigError(f"{path} is from an older or foreign version (missing columns "
                          f"{sorted(need - set(df.columns))}); rerun `bench run` to rebuild it")
    return df
