"""The Problem and Observer contracts, and the cached train/valid/test dataset every problem shares.

Conventions (all problems):

- A state ensemble is a tensor ``(N, *state_shape)``; the ensemble is the batch dimension 0. Gridded problems
  have ``state_shape = (C, H, W)`` (C fields), Lorenz-96 has ``(d,)`` (one field ``x``, treated as C = 1).
- Parameters are a tensor ``(N, P)`` (``P = len(param_names)``, possibly 0), in physical units.
- ``step(x, params)`` advances one *observation interval* ``dt_obs``; CFL sub-steps are the solver's business.
  It is deterministic, batched, and runs on the device and dtype of ``x``.
- Snapshot ``t = 0`` is the initial state; observations exist for ``t = 1 .. n_cycles`` (no observation at 0), or
  for every ``obs_every``-th of them (:class:`ObserverConfig`).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from assimbench.errors import ConfigError
from assimbench.naming import build, content_hash, param_name, params_of


class SubstepLog:
    """Solver sub-steps taken while a :func:`count_substeps` block is open (in this thread).

    ``steps`` sums the sub-steps of every solver call (a call on the whole ensemble counts its sub-steps once);
    ``calls`` counts the calls; ``speed`` is the largest speed (problem units) that set a CFL sub-step count, NaN
    for a solver with a fixed step.
    """

    def __init__(self):
        self.steps, self.calls, self.speed = 0, 0, float("nan")

    def add(self, n_sub: int, speed: float = float("nan")) -> None:
        self.steps += int(n_sub)
        self.calls += 1
        if math.isfinite(speed) and not (speed <= self.speed):
            self.speed = float(speed)


_SUBSTEP_LOGS = threading.local()


@contextmanager
def count_substeps():
    """``with count_substeps() as log: problem.step(...)``: the sub-steps the solvers took inside the block."""
    log = SubstepLog()
    stack = getattr(_SUBSTEP_LOGS, "stack", None)
    if stack is None:
        stack = _SUBSTEP_LOGS.stack = []
    stack.append(log)
    try:
        yield log
    finally:
        stack.remove(log)


def record_substeps(n_sub: int, speed: float = float("nan")) -> None:
    """Called by a solver for each advance: ``n_sub`` sub-steps, their count set by ``speed`` (if CFL-limited)."""
    for log in getattr(_SUBSTEP_LOGS, "stack", ()):
        log.add(n_sub, speed)
log = logging.getLogger("assimbench.data")


def default_cache_dir() -> Path:
    """Shared content-addressed cache: ``$ASSIMBENCH_CACHE`` or ``~/.cache/assimbench``."""
    return Path(os.environ.get("ASSIMBENCH_CACHE", Path.home() / ".cache" / "assimbench"))


# --------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Trajectories of one problem configuration, split train/valid/test, float32, physical units.

    ``train``/``valid``/``test``: ``(n, T+1, *state_shape)``; ``params_*``: ``(n, P)`` float64;
    ``field_mean``/``field_std``/``field_min``/``field_max``: ``(C,)`` float64 statistics of the training split
    (per field, over trajectories, times and points); ``times``: ``(T+1,)`` physical times of the snapshots.
    ``checksum``: the content checksum of all these tensors (:func:`tensor_checksum`), stored when the dataset is
    built and verified whenever it is loaded; artifacts trained on a dataset record it. ``meta``: what the cache
    file records beside the tensors (generator version, summary statistics, provenance).
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    params_train: torch.Tensor
    params_valid: torch.Tensor
    params_test: torch.Tensor
    times: torch.Tensor
    field_mean: torch.Tensor
    field_std: torch.Tensor
    field_min: torch.Tensor
    field_max: torch.Tensor
    key: str = ""
    checksum: str = ""
    meta: dict = field(default_factory=dict, repr=False)

    def split(self, name: Literal["train", "valid", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        """(snapshots, params) of one split."""
        return getattr(self, name), getattr(self, f"params_{name}")

    def field_view(self, x: torch.Tensor, stat: torch.Tensor, n_state_dims: int) -> torch.Tensor:
        """``stat (C,)`` reshaped to broadcast against ``x (..., *state_shape)`` with ``n_state_dims`` state axes."""
        C = stat.shape[0]
        shape = [1] * (x.dim() - n_state_dims) + [C] + [1] * (n_state_dims - 1)
        if n_state_dims == 1:  # Lorenz-96 style (d,) state with one field
            shape = [1] * x.dim()
        return stat.to(x.device, x.dtype).reshape(shape)

    def normalize(self, x: torch.Tensor, n_state_dims: int) -> torch.Tensor:
        """z-score per field with the training statistics."""
        m = self.field_view(x, self.field_mean, n_state_dims)
        s = self.field_view(x, self.field_std, n_state_dims)
        return (x - m) / s

    def denormalize(self, z: torch.Tensor, n_state_dims: int) -> torch.Tensor:
        m = self.field_view(z, self.field_mean, n_state_dims)
        s = self.field_view(z, self.field_std, n_state_dims)
        return z * s + m


# --------------------------------------------------------------------------------------------------------------
# Problem
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Base class of all problems: a frozen dataclass of physical, numerical and data parameters.

    Subclasses set the class attributes and implement ``state_shape``, ``sample_params``, ``initial_state``,
    ``step`` and ``coords``. Every field is a parameter: it appears in the parametrized name, the ``p_problem_*``
    results columns and the dataset's content hash.

    Common fields
    -------------
    n_cycles : number of observation intervals after t = 0 (the dataset stores ``n_cycles + 1`` snapshots).
    n_traj : trajectories in the dataset, split by ``split`` fractions with a permutation seeded by ``data_seed``.
    """

    name: ClassVar[str] = "problem"
    field_names: ClassVar[tuple[str, ...]] = ()
    param_names: ClassVar[tuple[str, ...]] = ()
    #: the unit of the parameters (and of the parameter error ``param_rmse_a``), shown in tables and plots
    param_unit: ClassVar[str] = ""
    #: fields observed when an observer does not say (e.g. Kolmogorov: u and v)
    default_obs_fields: ClassVar[tuple[str, ...] | None] = None
    #: True where the spatial domain is periodic (used by localisation distances)
    periodic: ClassVar[bool] = False
    #: renamed parameters, old name -> new name: the old name is still accepted (with a FutureWarning)
    renamed: ClassVar[dict[str, str]] = {}
    #: a tiny configuration for the conformance suite (bench/conformance.py)
    conformance_params: ClassVar[dict] = {}
    #: version of the code that generates this problem's data (solver, initial states, parameter draws): part of
    #: the dataset key, so a generator whose output changes must bump it (tests/test_dataset_repro.py compares
    #: regenerated data with committed statistics and says so when it was forgotten)
    generator_version: ClassVar[int] = 1

    n_cycles: int = 50
    n_traj: int = 200
    data_seed: int = 42

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Grid shape without the field axis: ``(H, W)``, or ``(d,)`` for a 1-D state."""
        s = self.state_shape
        return s if len(s) == 1 else s[1:]

    @property
    def n_fields(self) -> int:
        return 1 if len(self.state_shape) == 1 else self.state_shape[0]

    @property
    def n_points(self) -> int:
        return math.prod(self.spatial_shape)

    @property
    def dim(self) -> int:
        return math.prod(self.state_shape)

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def grid_index(self) -> torch.Tensor:
        """``(n_points, k)`` integer grid coordinates (row-major flattening), for localisation distances."""
        axes = [torch.arange(n, dtype=torch.float64) for n in self.spatial_shape]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=1)

    def grid_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Euclidean distance in grid units between points ``a (m, k)`` and ``b (n, k)`` -> ``(m, n)``."""
        diff = (a[:, None, :] - b[None, :, :]).abs()
        if self.periodic:
            ext = torch.tensor(self.spatial_shape, dtype=diff.dtype, device=diff.device)
            diff = torch.minimum(diff, ext - diff)
        return diff.pow(2).sum(-1).sqrt()

    def coords(self) -> torch.Tensor:
        """``(n_points, k)`` physical coordinates of the grid points (for coordinate networks)."""
        raise NotImplementedError

    # ---- parameters and dynamics -----------------------------------------------------------------------------
    @property
    def param_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) of the parameter prior box, each ``(P,)`` float64 (for normalisation)."""
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)

    def sample_params(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, P)`` float64 draws from the parameter prior (default: uniform on ``param_bounds``)."""
        lo, hi = self.param_bounds
        u = torch.rand(n, len(lo), generator=generator, dtype=torch.float64)
        return lo + (hi - lo) * u

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        """``(n, *state_shape)`` float64 initial state determined by ``params (n, P)``."""
        raise NotImplementedError

    def sample_initial(self, params: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Initial states for an ensemble or a dataset; default: the deterministic ``initial_state``."""
        return self.initial_state(params)

    def step(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Advance ``x (n, *state_shape)`` by one observation interval with parameters ``params (n, P)``."""
        raise NotImplementedError

    def check_subdivision(self, n: int) -> None:
        """Raise :class:`ConfigError` unless :meth:`advance_fraction` can advance by ``1/n`` of an interval."""
        if n != 1:
            raise ConfigError(f"{self.name} cannot advance part of an observation interval, so it cannot be "
                              "scored between observations (score_between must be 0 for it)")

    def advance_fraction(self, x: torch.Tensor, params: torch.Tensor, frac: float) -> torch.Tensor:
        """Advance ``x`` by ``frac`` (in (0, 1]) of an observation interval; used to score between observations.

        The default supports only ``frac = 1`` (:meth:`step`); problems with a time step override it.
        """
        if abs(frac - 1.0) > 1e-12:
            self.check_subdivision(round(1 / frac))  # raises: the default cannot split an interval
        return self.step(x, params)

    def advance_through(self, x: torch.Tensor, params: torch.Tensor, fracs: list[float]) -> list[torch.Tensor]:
        """States at the increasing fractions ``fracs`` (in (0, 1]) of the interval after ``x``, one
        :meth:`advance_fraction` from each to the next."""
        out, prev = [], 0.0
        for f in fracs:
            x = self.advance_fraction(x, params, f - prev)
            prev = f
            out.append(x)
        return out

    @property
    def dt_obs(self) -> float:
        """Physical time between snapshots (the observation interval)."""
        raise NotImplementedError

    def simulate(self, params: torch.Tensor, n_cycles: int | None = None, x0: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(n, T+1, *state_shape)`` trajectory from ``x0`` (default ``initial_state(params)``)."""
        T = self.n_cycles if n_cycles is None else n_cycles
        x = (self.initial_state(params) if x0 is None else x0).to(device=device, dtype=dtype)
        p = params.to(device=device, dtype=dtype)
        out = [x]
        for _ in range(T):
            x = self.step(x, p)
            out.append(x)
        return torch.stack(out, dim=1)

    # ---- validation ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` for a configuration that cannot run, before anything is computed.

        Called at grid expansion (so a bad value stops `bench run` with exit 2 instead of becoming failed rows).
        The base checks every number is finite, ``n_cycles >= 1`` and that ``n_traj`` fills the three splits;
        subclasses add their own constraints and call ``super().validate()``. It must be cheap: no allocation
        proportional to the state size (a huge ``dim`` is refused by the memory estimate, not by trying).
        """
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{self.name} {f.name}={v} must be a finite number")
        if self.n_cycles < 1:
            raise ConfigError(f"{self.name} n_cycles={self.n_cycles} must be >= 1 (observation cycles after t = 0)")
        _split_sizes(self.n_traj, self.split_fractions)

    def dataset_nbytes(self) -> int:
        """Peak memory (bytes) of building the dataset: the float32 snapshots, the training copy and its
        float64 statistics pass (about 3x the snapshots)."""
        return 3 * self.n_traj * (self.n_cycles + 1) * self.dim * 4

    # ---- naming, data -----------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """Parametrized name, e.g. ``lorenz96[dim=1000]``."""
        return param_name(self)

    def params_dict(self) -> dict:
        return params_of(self)

    def data_key(self) -> str:
        """Content hash of everything that determines the dataset: the problem's parameters, the dataset layout
        (``DATASET_FORMAT``) and the generator's code version (``generator_version``; left out of the hash at 1,
        so the keys of datasets made before it existed, and the artifact hashes built on them, are unchanged).
        A renamed parameter enters the hash under its old name, for the same reason."""
        old = {new: old for old, new in self.renamed.items()}
        params = {old.get(k, k): v for k, v in self.params_dict().items()}
        ident = [self.name, params, DATASET_FORMAT]
        if self.generator_version != 1:
            ident.append({"generator_version": self.generator_version})
        return f"{self.name}-{content_hash(*ident)}"

    #: trajectories simulated per batch when building the dataset (memory vs speed)
    sim_batch: ClassVar[int] = 20
    #: split fractions (train, valid, test)
    split_fractions: ClassVar[tuple[float, float, float]] = (0.6, 0.2, 0.2)

    def dataset(self, cache_dir: Path | str | None = None, progress: bool = True) -> Dataset:
        """Build or load the cached dataset of this configuration (see :func:`build_dataset`)."""
        return build_dataset(self, cache_dir=cache_dir, progress=progress)


DATASET_FORMAT = 1
#: layout of a dataset cache record ``<key>.json`` beside ``<key>.pt`` (key, content checksum, generator version,
#: statistics); a file without one (as before checksums existed) or of another layout is rebuilt, not trusted
CACHE_LAYOUT = 2
#: the tensors of a dataset file (the fields of :class:`Dataset` that the checksum covers)
DATASET_TENSORS = ("train", "valid", "test", "params_train", "params_valid", "params_test", "times",
                   "field_mean", "field_std", "field_min", "field_max")


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and raw bytes of ``tensors`` (in name order).

    The content checksum of a dataset (and of network weights): it depends on the numbers only, not on the file
    format they are stored in, so it can be compared across files, machines and versions.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def dataset_stats(blob: dict[str, torch.Tensor]) -> dict:
    """Summary statistics of a dataset's snapshots (float64, physical units), recorded in its cache file.

    Per split: ``mean``, ``std`` and ``absmax`` over everything, and ``rms_t``, the RMS over trajectories,
    fields and points at each snapshot time (it follows the flow's evolution, so a changed generator shows in it
    even when the overall moments agree). ``params_mean`` per split. Compared with committed values by
    tests/test_dataset_repro.py and shown when data do not match an artifact.
    """
    out = {}
    for name in ("train", "valid", "test"):
        x = blob[name]
        n, T1 = x.shape[:2]
        sq = torch.zeros(T1, dtype=torch.float64)
        tot, amax = 0.0, 0.0
        for i in range(n):  # one trajectory at a time: no float64 copy of a whole split
            xi = x[i].double().reshape(T1, -1)
            sq += xi.pow(2).sum(1)
            tot += float(xi.sum())
            amax = max(amax, float(xi.abs().max()))
        m = x[0, 0].numel() * n * T1
        mean = tot / m
        ms = float(sq.sum()) / m
        out[name] = dict(mean=mean, std=math.sqrt(max(ms - mean * mean, 0.0)), absmax=amax,
                         rms_t=[math.sqrt(float(v) / (m // T1)) for v in sq],
                         params_mean=blob[f"params_{name}"].double().mean(0).tolist())
    return out


def _read_dataset_file(path: Path, key: str) -> tuple[Dataset | None, str]:
    """``(dataset, "")`` when the cache file at ``path`` and its record ``<key>.json`` are intact, else
    ``(None, what is wrong)``."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError:
        return None, "has no checksum record (written by an older version)"
    except (OSError, ValueError) as e:
        return None, f"has an unreadable checksum record ({type(e).__name__})"
    if not isinstance(meta, dict) or meta.get("layout") != CACHE_LAYOUT or not meta.get("checksum"):
        return None, "has a checksum record of another version"
    if meta.get("key") != key:
        return None, f"is recorded as another dataset ({meta.get('key')})"
    try:
        blob = torch.load(path, mmap=True, weights_only=True)
    except Exception as e:  # truncated, garbled header, not a torch file
        return None, f"is unreadable ({type(e).__name__})"
    missing = [k for k in DATASET_TENSORS if not isinstance(blob, dict) or not isinstance(blob.get(k), torch.Tensor)]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    tensors = {k: blob[k] for k in DATASET_TENSORS}
    actual = tensor_checksum(tensors)
    if actual != meta["checksum"]:
        return None, (f"is corrupt: the checksum of its contents is {actual[:12]}, the recorded one "
                      f"{meta['checksum'][:12]}")
    return Dataset(**tensors, key=key, checksum=actual, meta=meta), ""


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    n_train = int(round(fractions[0] * n))
    n_valid = int(round(fractions[1] * n))
    n_test = n - n_train - n_valid
    if min(n_train, n_valid, n_test) < 1:
        raise ConfigError(f"n_traj={n} is too small to split train/valid/test by {fractions} (each split needs a "
                          f"trajectory); use n_traj >= 5")
    return n_train, n_valid, n_test


_MEMO: dict[str, Dataset] = {}


def build_dataset(problem: Problem, cache_dir: Path | str | None = None, progress: bool = True) -> Dataset:
    """Simulate ``problem.n_traj`` trajectories in batches, split them, and cache float32 snapshots on disk.

    The cache file is ``<cache>/datasets/<name>-<hash>.pt`` (the key, :meth:`Problem.data_key`, covers the
    problem's fields, the dataset layout and the generator's version), the tensors only; beside it
    ``<name>-<hash>.json`` records the key, the content checksum of the tensors (:func:`tensor_checksum`), the
    generator version, summary statistics (:func:`dataset_stats`) and provenance (``Dataset.meta``). Loading
    memory-maps the file and verifies the checksum
    (well under a second at the default size); a file that is unreadable, corrupt (same size, other bytes), from
    an older version or another dataset is rebuilt, with one warning line saying what was wrong.

    Generation runs in float64 on one CPU thread (multi-threaded FFTs and reductions round differently with the
    thread count), so one machine builds the same bytes whatever its thread settings. The split is a
    permutation seeded by ``data_seed``; normalisation statistics come from the training split only.
    """
    key = problem.data_key()
    if key in _MEMO:
        return _MEMO[key]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "datasets" / f"{key}.pt"
    if path.exists():
        ds, problem_with_file = _read_dataset_file(path, key)
        if ds is not None:
            _MEMO[key] = ds
            return ds
        log.warning("dataset cache file %s %s: rebuilding it", path, problem_with_file)
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)

    tensors = _generate(problem, progress)
    meta = dict(layout=CACHE_LAYOUT, key=key, checksum=tensor_checksum(tensors), problem=problem.label,
                generator_version=problem.generator_version, dataset_format=DATASET_FORMAT,
                stats=dataset_stats(tensors), torch=torch.__version__,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(tensors, tmp)
    tmp_meta = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, path)  # a reader between the two renames sees a mismatch and rebuilds: safe
    os.replace(tmp_meta, path.with_suffix(".json"))
    ds = Dataset(**tensors, key=key, checksum=meta["checksum"], meta=meta)
    _MEMO[key] = ds
    return ds


def _generate(problem: Problem, progress: bool) -> dict[str, torch.Tensor]:
    """The dataset's tensors (see :class:`Dataset`), simulated in float64 on one thread, stored float32."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _simulate_and_split(problem, progress)
    finally:
        torch.set_num_threads(threads)


def _simulate_and_split(problem: Problem, progress: bool) -> dict[str, torch.Tensor]:
    n = problem.n_traj
    n_train, n_valid, n_test = _split_sizes(n, problem.split_fractions)
    g = torch.Generator().manual_seed(problem.data_seed)
    params = problem.sample_params(n, g)
    T = problem.n_cycles
    snaps = torch.empty((n, T + 1, *problem.state_shape), dtype=torch.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc=f"dataset {problem.label}", unit="traj", leave=False)
    for i in range(0, n, problem.sim_batch):
        p = params[i:i + problem.sim_batch]
        x0 = problem.sample_initial(p, g)
        snaps[i:i + len(p)] = problem.simulate(p, T, x0=x0, dtype=torch.float64).to(torch.float32)
        if bar is not None:
            bar.update(len(p))
    if bar is not None:
        bar.close()
    if not torch.isfinite(snaps).all():
        raise RuntimeError(f"dataset of {problem.label} contains non-finite values: the solver blew up")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(problem.data_seed))
    idx_tr, idx_va, idx_te = perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:]
    train = snaps[idx_tr]
    C = problem.n_fields
    per_field = train.double().movedim(2, 0).reshape(C, -1) if len(problem.state_shape) > 1 \
        else train.double().reshape(1, -1)
    return dict(
        train=train.contiguous(), valid=snaps[idx_va].contiguous(), test=snaps[idx_te].contiguous(),
        params_train=params[idx_tr], params_valid=params[idx_va], params_test=params[idx_te],
        times=torch.arange(T + 1, dtype=torch.float64) * problem.dt_obs,
        field_mean=per_field.mean(1), field_std=per_field.std(1).clamp_min(1e-12),
        field_min=per_field.min(1).values, field_max=per_field.max(1).values,
    )


# --------------------------------------------------------------------------------------------------------------
# Observer
# --------------------------------------------------------------------------------------------------------------
Operator = Literal["identity", "arctan"]
#: the observation operators, elementwise on the physical value: (operator, its inverse)
OPERATORS: dict[str, tuple] = {"identity": (lambda z: z, lambda y: y), "arctan": (torch.atan, torch.tan)}


@dataclass(frozen=True)
class ObserverConfig:
    """What a user chooses about the observations: a frozen dataclass of plain values (no problem, no tensors).

    Parameters
    ----------
    layout : ``lattice`` (a regular sub-grid with ``stride``, starting at index 0) or ``random`` (a seeded
        random subset of grid points).
    coverage : fraction of grid points observed; for ``lattice`` the stride whose point count is nearest the
        target is taken (stride 15 at 150 x 150 gives the paper's 100 points = 0.44 %).
    stride : explicit lattice stride (overrides ``coverage``; 0 = derive from coverage).
    fields : observed fields (default: the problem's ``default_obs_fields`` or all fields).
    operator : ``identity`` or ``arctan`` (elementwise, applied to the physical value).
    noise : noise level; its meaning depends on ``noise_type``.
    noise_type : ``additive`` (std = noise x per-field std of the training data), ``relative`` (std = noise x
        |H(x)|, the LD-EnSF tsunami convention) or ``absolute`` (std = noise, physical units).
    layout_seed : seed of the random layout.
    obs_every : observations exist at every ``obs_every``-th cycle only (``t = k, 2k, ...``); the cycles between
        are forecast-only (1 = every cycle).

    :meth:`bind` makes the :class:`Observer` of a problem from it.
    """

    layout: Literal["lattice", "random"] = "lattice"
    coverage: float = 1.0
    stride: int = 0
    fields: tuple[str, ...] = ()
    operator: Operator = "identity"
    noise: float = 0.1
    noise_type: Literal["additive", "relative", "absolute"] = "additive"
    layout_seed: int = 0
    obs_every: int = 1

    name: ClassVar[str] = "obs"

    def __post_init__(self):
        if not (0.0 < self.coverage <= 1.0):
            raise ConfigError(f"observer coverage={self.coverage} must lie in (0, 1]")
        if self.stride < 0:
            raise ConfigError(f"observer stride={self.stride} must be >= 0 (0 = derive from coverage)")
        if self.noise < 0 or not math.isfinite(self.noise):
            raise ConfigError(f"observer noise={self.noise} must be a finite number >= 0")
        if self.obs_every < 1:
            raise ConfigError(f"observer obs_every={self.obs_every} must be an integer >= 1 (1 = observe every "
                              "cycle, k = every k-th cycle)")

    @property
    def label(self) -> str:
        return param_name(self)

    def params_dict(self) -> dict:
        return params_of(self)

    def bind(self, problem: Problem, field_std: tuple[float, ...] = ()) -> "Observer":
        """The observation operator of this configuration on ``problem``; ``field_std`` (per field, the training
        data's std) is needed by additive noise only."""
        return Observer(self, problem, field_std)


class Observer:
    """An :class:`ObserverConfig` bound to a problem: the sparse, noisy observation operator.

    Built from the configuration, the problem and (for additive noise) the training data's per-field std; holds
    what the binding computes: ``obs_fields`` (names), ``points`` ``(m_p,)`` (flat grid indices), ``channels``
    ``(C_obs,)``, ``index`` ``(m,)`` (flat state indices) and the noise std ``(m,)``. The configuration's values
    read through (``observer.operator``, ``observer.noise``, ...).

    Observations are flattened point-major, field-minor: ``y[p * n_obs_fields + c]``.
    """

    def __init__(self, config: ObserverConfig, problem: Problem, field_std: tuple[float, ...] = ()):
        self.config, self.problem, self.field_std = config, problem, tuple(field_std)
        pb = problem
        fields = config.fields or pb.default_obs_fields or pb.field_names
        bad = [f for f in fields if f not in pb.field_names]
        if bad:
            raise ConfigError(f"observer fields {bad} do not exist in {pb.name}; valid: {', '.join(pb.field_names)}")
        if config.obs_every > pb.n_cycles:
            raise ConfigError(f"observer obs_every={config.obs_every} leaves no observed cycle: {pb.label} has "
                              f"n_cycles={pb.n_cycles}; valid: 1 .. {pb.n_cycles}")
        self.obs_fields: tuple[str, ...] = tuple(fields)
        self.points = self._points()
        if len(self.points) == 0:
            raise ConfigError(f"observer coverage={config.coverage} rounds to no observed point on the "
                              f"{'x'.join(map(str, pb.spatial_shape))} grid of {pb.name}; raise the coverage")
        chans = [pb.field_names.index(f) for f in fields]
        P = pb.n_points
        self.channels = torch.tensor(chans)
        self.index = (self.channels[None, :] * P + self.points[:, None]).reshape(-1)  # point-major, channel-minor
        self._full = bool(self.index.numel() == math.prod(pb.state_shape) and torch.equal(
            self.index, torch.arange(self.index.numel(), dtype=self.index.dtype)))
        if config.noise_type == "additive" and not self.field_std:
            std = None  # geometry only (validation without a dataset); noise_std() says what is missing
        elif config.noise_type == "additive":
            std = torch.tensor([self.field_std[c] for c in chans], dtype=torch.float64)
            std = (config.noise * std).repeat(len(self.points))
        else:
            std = torch.full((len(self.index),), float(config.noise), dtype=torch.float64)
        self._std = std
        self._dev_cache: dict = {}

    def __repr__(self) -> str:
        return f"Observer({self.label} on {self.problem.label}, {self.n_obs} observations)"

    # ---- the configuration, read through --------------------------------------------------------------------
    layout = property(lambda self: self.config.layout)
    coverage = property(lambda self: self.config.coverage)
    stride = property(lambda self: self.config.stride)
    fields = property(lambda self: self.config.fields)
    operator = property(lambda self: self.config.operator)
    noise = property(lambda self: self.config.noise)
    noise_type = property(lambda self: self.config.noise_type)
    layout_seed = property(lambda self: self.config.layout_seed)
    obs_every = property(lambda self: self.config.obs_every)

    @property
    def label(self) -> str:
        return self.config.label

    def params_dict(self) -> dict:
        return self.config.params_dict()

    def observes_at(self, t: int) -> bool:
        """True when cycle ``t`` (1-based) has an observation (every ``obs_every``-th cycle)."""
        return t % self.config.obs_every == 0

    # ---- layout ---------------------------------------------------------------------------------------------
    def _points(self) -> torch.Tensor:
        pb, cfg = self.problem, self.config
        shape = pb.spatial_shape
        P = pb.n_points
        if cfg.stride == 0 and cfg.coverage * P < 0.5:
            return torch.zeros(0, dtype=torch.long)
        if cfg.layout == "random":
            m = int(round(cfg.coverage * P))
            g = torch.Generator().manual_seed(cfg.layout_seed)
            return torch.randperm(P, generator=g)[:m].sort().values
        stride = cfg.stride or lattice_stride(shape, cfg.coverage)
        axes = [torch.arange(0, n, stride) for n in shape]
        mesh = torch.meshgrid(*axes, indexing="ij")
        flat = torch.zeros_like(mesh[0])
        for ax, n in zip(mesh, shape):
            flat = flat * n + ax
        return flat.reshape(-1)

    @property
    def n_obs(self) -> int:
        return len(self.index)

    @property
    def actual_coverage(self) -> float:
        return len(self.points) / self.problem.n_points

    def _on(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._dev_cache:
            std = None if self._std is None else self._std.to(device=device, dtype=dtype)
            self._dev_cache[key] = (self.index.to(device), std)
        return self._dev_cache[key]

    # ---- the operator ---------------------------------------------------------------------------------------
    @property
    def observes_all(self) -> bool:
        """True when every state entry is observed in storage order (then selection is a free reshape)."""
        return self._full

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Linear point sampling ``(n, *state_shape) -> (n, m)`` (before the operator)."""
        if self.observes_all:
            return x.reshape(x.shape[0], -1)
        idx, _ = self._on(x.device, x.dtype)
        return x.reshape(x.shape[0], -1)[:, idx]

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free observation ``H(x)``: ``(n, *state_shape) -> (n, m)``; differentiable."""
        return OPERATORS[self.operator][0](self.select(x))

    def invert(self, y: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The operator's inverse on observations ``y (..., m)``, clamped to ``[low, high]`` (each ``(m,)``,
        physical units, e.g. the training range of each observed entry): the selected state values for
        noise-free observations of states inside that range. (Noise passes through the inverse: arctan's
        ``tan`` amplifies it by ``1 + x^2``; the clamp keeps a noisy ``|y|`` near ``pi / 2`` finite.)"""
        op, inv = OPERATORS[self.operator]
        lo, hi = low.to(y.device, y.dtype), high.to(y.device, y.dtype)
        return inv(torch.minimum(torch.maximum(y, op(lo)), op(hi)))

    def obs_range(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)``, each ``(m,)`` float64: the training split's range of each observed entry's field."""
        lo = dataset.field_min.double()[self.channels].repeat(len(self.points))
        hi = dataset.field_max.double()[self.channels].repeat(len(self.points))
        return lo, hi

    def noise_std(self, y: torch.Tensor | None = None, device=None, dtype=None) -> torch.Tensor:
        """``(m,)`` observation-error std; for relative noise it is built from ``y`` (the observation)."""
        if self.noise_type == "relative":
            if y is None:
                raise ValueError("relative noise needs the observation to build its std")
            return (self.noise * y.abs()).clamp_min(1e-8 * max(self.noise, 1e-30))
        dev = device if device is not None else (y.device if y is not None else "cpu")
        kind = dtype if dtype is not None else (y.dtype if y is not None else torch.float64)
        std = self._on(dev, kind)[1]
        if std is None:
            raise ConfigError("additive noise needs the training field std: bind the observer to a dataset "
                              "(problems.bind_observer(problem, dataset, ...))")
        return std

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noisy observation of ``x (n, *state_shape)`` -> ``(n, m)``; noise drawn on the CPU from ``generator``."""
        hx = self.observe(x)
        xi = torch.randn(hx.shape, generator=generator, dtype=torch.float64).to(hx.device, hx.dtype)
        if self.noise_type == "relative":
            return hx + self.noise * hx.abs() * xi
        return hx + self.noise_std(device=hx.device, dtype=hx.dtype) * xi

    def loglik_grad(self, x: torch.Tensor, y: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
        """Gradient of ``log p(y | x)`` w.r.t. ``x``, ``(n, *state_shape)``, Gaussian noise, closed form.

        Identity: ``-(x_obs - y) / sigma^2`` at the observed entries; arctan: ``-(atan x - y) / (sigma^2 (1 + x^2))``.
        Zero at unobserved entries (the full-space EnSF's blind spot).
        """
        sigma = self.noise_std(y) if std is None else std
        var = sigma.to(x.device, x.dtype).square() if isinstance(sigma, torch.Tensor) else float(sigma) ** 2
        z = self.select(x)
        y = y.to(x.device, x.dtype)
        if self.operator == "arctan":  # in place: d = 0.05 .. 1e6-sized ensembles are memory-bound
            g = torch.atan(z).sub_(y).neg_()
            g.div_(torch.mul(z, z).add_(1.0).mul_(var))
        else:
            g = torch.sub(y, z).div_(var)
        if self.observes_all:
            return g.reshape(x.shape)
        idx, _ = self._on(x.device, x.dtype)
        out = torch.zeros(x.shape[0], x[0].numel(), device=x.device, dtype=x.dtype)
        out[:, idx] = g.to(x.dtype)
        return out.reshape(x.shape)


def lattice_stride(shape: tuple[int, ...], coverage: float) -> int:
    """Stride whose lattice point count on ``shape`` is nearest ``coverage * prod(shape)`` (ties: smaller).

    The point count ``prod(ceil(n / s))`` does not increase with the stride ``s``, so two binary searches find
    the answer in ``O(log max(shape))`` steps (a huge 1-D state costs no loop over its length).
    """
    P = math.prod(shape)
    target = coverage * P
    hi_s = max(shape)

    def count(s: int) -> int:
        return math.prod(-(-n // s) for n in shape)

    def first_at_most(c: float) -> int:
        """Smallest stride in [1, hi_s] whose count is <= c (hi_s + 1 when none)."""
        lo, hi = 1, hi_s + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if count(mid) <= c:
                hi = mid
            else:
                lo = mid + 1
        return lo

    below = first_at_most(target)  # the largest count <= target starts here
    cands = []
    if below <= hi_s:
        cands.append(below)
    if below > 1:  # the smallest count > target: its first stride
        cands.append(first_at_most(count(below - 1)))
    best, best_err = 1, float("inf")
    for s in sorted(cands):
        err = abs(count(s) - target)
        if err < best_err - 1e-9:
            best, best_err = s, err
    return best


def bind_observer(problem: Problem, dataset: Dataset | None, **params) -> Observer:
    """The :class:`Observer` of ``problem`` for user ``params`` (typed and checked as an :class:`ObserverConfig`);
    ``dataset`` gives the per-field std of additive noise (None: geometry only)."""
    std = tuple(float(s) for s in dataset.field_std) if dataset is not None else ()
    return build(ObserverConfig, params, "observer").bind(problem, std)
