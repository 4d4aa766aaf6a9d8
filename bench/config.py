"""YAML -> validated experiments -> cells (the only place where the grid's cross product is taken).

A config file is a mapping::

    name: smoke                       # optional
    plugins: [my_pkg.my_filters]      # optional: modules that register extra methods/problems
    problems:                         # name -> parameters; a list value sweeps (for tuple-typed fields
      lorenz96: {dim: 40}             #   a list of lists sweeps)
    observers: {coverage: [1.0, 0.5], noise: 1.0, noise_type: absolute}
    methods:
      EnKF: {variant: [sqrt, stochastic], inflation: 1.02}
      FreeRun: {}
    n_ens: [20, 40]
    seeds: 3                          # an int n means seeds 0..n-1, or a list
    spinup: 50                        # cycles excluded from time averages
    score_between: 0                  # also score k equally spaced times inside each observation interval
    init: climatology                 # the initial ensemble: climatology, or {perturbed: s} = truth_0 + N(0, s^2 I)
    device: cpu
    dtype: float32

Keys joined by a comma tie parameters together (``"variant, inflation": [[sqrt, 1.02], [stochastic, 1.05]]``);
a method may also be given as a list of parameter mappings. A problem entry may carry an ``observer:`` mapping
that overrides the top-level ``observers`` for that problem. ``experiments:`` is a list of such blocks; the
top-level keys are defaults for each, and the run is their union.

``init`` chooses the initial ensemble (a list sweeps): ``climatology`` (the default) draws the members from the
problem's initial distribution, independently of the truth; ``{perturbed: s}`` starts them near the truth, as the
twin experiments of Sakov & Oke (2008) and DAPPER do: truth and members are independent draws of
``x0 + N(0, s^2 I)`` around a common centre ``x0``, i.e. members ``= truth_0 + s (c + e_i)`` with ``c, e_i ~ N(0, I)``
(``c`` shared, from a seed of the problem and the seed only). The parameters are drawn from the prior either way.
``tuned: [METHOD, ...]`` marks the methods of a block whose parameters were chosen by ``bench tune`` (the results'
``p_tuned`` column); ``bench tune`` writes it.
"""
from __future__ import annotations

import itertools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import methods
import problems
from assimbench.errors import ConfigError, unknown
from assimbench.naming import canonical_key, content_hash, public_fields
from assimbench.registry import load_plugins
from problems.base import ObserverConfig

PRESET_DIR = Path(__file__).parent / "presets"

EXPERIMENT_KEYS = {"problems", "observers", "methods", "n_ens", "seeds", "spinup", "device", "dtype",
                   "score_between", "init", "tuned", "timing_repeats"}
TOP_KEYS = EXPERIMENT_KEYS | {"name", "description", "plugins", "experiments", "expected", "source", "tuning"}
DTYPES = ("float32", "float64")
#: the largest ``seeds: n`` count (a guard against a typo such as ``seeds: 1e9``)
MAX_SEEDS = 100_000


@dataclass(frozen=True)
class Cell:
    """One unit of work: a (problem, observer, method, ensemble size, seed, device) combination."""

    problem: str
    problem_params: tuple
    observer_params: tuple
    method: str
    method_params: tuple
    n_ens: int
    seed: int
    device: str = "cpu"
    dtype: str = "float32"
    spinup: int = 0
    score_between: int = 0
    #: the initial ensemble: ``climatology`` or ``perturbed(std=s)`` (see :func:`parse_init`)
    init: str = "climatology"
    #: where the truth comes from: the ``test`` split (every run) or ``valid`` (``bench tune``'s tuning truths)
    truth_split: str = "test"
    #: the method's parameters were chosen by ``bench tune`` (a results flag; the computation is the same)
    tuned: bool = False
    #: extra timings of each cycle from the same state (a measurement setting: no p_* column, metrics unchanged)
    timing_repeats: int = 0

    @property
    def pdict(self) -> dict:
        return dict(self.problem_params)

    @property
    def odict(self) -> dict:
        return dict(self.observer_params)

    @property
    def mdict(self) -> dict:
        return dict(self.method_params)

    @property
    def cell_id(self) -> str:
        extra = (self.score_between,) if self.score_between else ()  # ids of cells without it stay as they were
        extra += tuple(f"{k}={v}" for k, v, d in (("init", self.init, "climatology"),
                                                  ("truth", self.truth_split, "test"),
                                                  ("tuned", self.tuned, False),
                                                  ("timing_repeats", self.timing_repeats, 0)) if v != d)
        return content_hash(self.problem, self.pdict, self.odict, self.method, self.mdict, self.n_ens,
                            self.seed, self.device, self.dtype, self.spinup, *extra, n=16)

    def to_dict(self) -> dict:
        return {"problem": self.problem, "problem_params": self.pdict, "observer": self.odict,
                "method": self.method, "method_params": self.mdict, "n_ens": self.n_ens, "seed": self.seed,
                "device": self.device, "dtype": self.dtype, "spinup": self.spinup,
                "score_between": self.score_between, "init": self.init, "truth_split": self.truth_split,
                "tuned": self.tuned, "timing_repeats": self.timing_repeats}

    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        return cls(d["problem"], freeze(d["problem_params"]), freeze(d["observer"]), d["method"],
                   freeze(d["method_params"]), d["n_ens"], d["seed"], d["device"], d["dtype"], d["spinup"],
                   d.get("score_between", 0), d.get("init", "climatology"), d.get("truth_split", "test"),
                   d.get("tuned", False), d.get("timing_repeats", 0))


def freeze(d: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


# ----------------------------------------------------------------------------------------------------------------
class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (naming both lines) and reads
    ``1e-1`` / ``5E3`` as floats (YAML 1.1 wants a dot in a float; a user writing 1e-1 means the number)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: let the base class report it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise ConfigError(f"key {key!r} is given twice in one mapping (lines {first} and {line}); "
                                      f"merge the two, the second one would silently replace the first")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """YAML text -> Python data with :class:`StrictLoader` (duplicate keys are a ConfigError)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {source!r} is not valid YAML: {str(e).splitlines()[0]} "
                          f"({' '.join(str(e).split())[:200]})") from None
    except ConfigError as e:
        raise ConfigError(f"config file {source!r}: {e}") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist; give a YAML file or --preset NAME "
                          f"(presets: {', '.join(preset_names())})")
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} is not a file; give a YAML file or --preset NAME")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must be a YAML mapping with keys such as "
                          f"problems, methods, observers, n_ens, seeds; got {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise unknown("preset", name, preset_names())
    return load_yaml(path)


# ----------------------------------------------------------------------------------------------------------------
def _is_tuple_field(cls, key: str) -> bool:
    try:
        tp = typing.get_type_hints(cls).get(key)
    except Exception:
        return False
    if typing.get_origin(tp) is tuple:
        return True
    # ``int | tuple[int, ...]`` (e.g. warm_restart): a flat list is one tuple value, a list of lists a sweep
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and \
        any(typing.get_origin(a) is tuple for a in typing.get_args(tp))


def _as_choices(cls, key: str, value: Any) -> list:
    """The list of values a key sweeps over."""
    if _is_tuple_field(cls, key):
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return [tuple(v) for v in value]
        return [tuple(value) if isinstance(value, list) else value]
    return list(value) if isinstance(value, list) else [value]


def expand_params(cls, spec: Any, where: str) -> list[dict]:
    """Cross product of a parameter mapping (or a list of mappings) for dataclass ``cls``."""
    if spec is None:
        spec = {}
    if isinstance(spec, list):
        out = []
        for s in spec:
            out.extend(expand_params(cls, s, where))
        return out
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: parameters must be a mapping of name -> value(s), got {spec!r}")
    valid = {f.name for f in public_fields(cls)}
    axes: list[list[dict]] = []
    for key, value in spec.items():
        keys = [canonical_key(cls, k.strip(), where) for k in str(key).split(",")]
        for k in keys:
            if k not in valid:
                raise unknown("key", k, valid, where=f"{where} (its parameters)")
        if isinstance(value, list) and not value and not (len(keys) == 1 and _is_tuple_field(cls, keys[0])):
            raise ConfigError(f"{where}: {key}: [] sweeps over no value, so the grid would have no cell; give "
                              f"at least one value (or leave the key out for the default)")
        if len(keys) == 1:
            axes.append([{keys[0]: v} for v in _as_choices(cls, keys[0], value)])
        else:
            if not isinstance(value, list) or not all(isinstance(v, list) and len(v) == len(keys) for v in value):
                raise ConfigError(f"{where}: tied key {key!r} needs a list of {len(keys)}-element lists")
            axes.append([dict(zip(keys, v)) for v in value])
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*axes)] or [{}]


def _check_keys(d: dict, valid: set[str], where: str) -> None:
    for k in d:
        if k not in valid:
            raise unknown("key", k, valid, where=where)


def _int_list(v: Any, key: str, minimum: int) -> list[int]:
    vals = v if isinstance(v, list) else [v]
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
            raise ConfigError(f"{key}={v!r}: every value must be an integer >= {minimum}")
    return vals


def _one_int(exp: dict, key: str, meaning: str) -> int:
    """The single integer >= 0 under ``key`` (default 0)."""
    v = _int_list(exp.get(key, 0), key, 0)
    if len(v) != 1:
        raise ConfigError(f"{key}={exp.get(key)!r}: give one integer >= 0 ({meaning})")
    return v[0]


INIT_FORMS = "climatology, or {perturbed: s} with a number s > 0 (members = truth_0 + N(0, s^2 I))"
TRUTH_SPLITS = ("test", "valid")


def parse_init(value: Any) -> str:
    """The canonical name of an initial-ensemble choice: ``climatology`` or ``perturbed(std=s)``.

    Accepts ``climatology``, a mapping ``{perturbed: s}`` and the canonical string itself; anything else raises
    ConfigError naming the valid forms.
    """
    if value == "climatology":
        return value
    s = None
    if isinstance(value, dict) and list(value) == ["perturbed"]:
        s = value["perturbed"]
    elif isinstance(value, str) and value.startswith("perturbed(std=") and value.endswith(")"):
        try:
            s = float(value[len("perturbed(std="):-1])
        except ValueError:
            s = None
    if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0:
        return f"perturbed(std={float(s):g})"
    raise ConfigError(f"init={value!r} is not an initial ensemble; valid: {INIT_FORMS}")


def init_std(init: str) -> float:
    """The perturbation std of a canonical ``perturbed(std=s)`` init (NaN for climatology)."""
    return float(init[len("perturbed(std="):-1]) if init.startswith("perturbed") else float("nan")


@dataclass
class Grid:
    """The expanded, validated grid."""

    name: str
    cells: list[Cell]
    plugins: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


def expand(config: dict, device: str | None = None, name: str = "custom") -> Grid:
    """Validate a config mapping and expand it into cells; every bad input raises ConfigError."""
    _check_keys(config, TOP_KEYS, "the config's top level")
    plugins = config.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"plugins must be a list of module names, got {plugins!r}")
    for p in plugins:
        if not all(part.isidentifier() for part in p.split(".")):
            raise ConfigError(f"plugin {p!r} is not a module name (dotted Python identifiers, e.g. my_pkg.filters)")
    load_plugins(plugins)
    defaults = {k: v for k, v in config.items() if k in EXPERIMENT_KEYS}
    blocks = config.get("experiments")
    if blocks is None:
        blocks = [{}]
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError("experiments must be a list of mappings")
    cells: list[Cell] = []
    checked: set = set()
    for bi, block in enumerate(blocks):
        where = f"experiments[{bi}]" if config.get("experiments") else "config"
        _check_keys(block, EXPERIMENT_KEYS, where)
        exp = {**defaults, **block}
        for req in ("problems", "methods"):
            if not exp.get(req):
                raise ConfigError(f"{where}: '{req}' is missing or empty; e.g. problems: {{lorenz96: {{}}}}, "
                                  f"methods: {{EnKF: {{}}}}; problems: {', '.join(problems.names())}; "
                                  f"methods: {', '.join(methods.names())}")
            if not isinstance(exp[req], dict):
                raise ConfigError(f"{where}: '{req}' must be a mapping of name -> parameters")
        n_ens = _int_list(exp.get("n_ens", 20), "n_ens", 1)
        if not n_ens:
            raise ConfigError(f"{where}: n_ens=[] gives no ensemble size, so the grid would have no cell; give "
                              f"one or more sizes, e.g. n_ens: [20, 40]")
        seeds = exp.get("seeds", 1)
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if not 1 <= seeds <= MAX_SEEDS:
                raise ConfigError(f"seeds={seeds!r}: a count must lie in [1, {MAX_SEEDS}] (seeds: 0 would give a grid "
                                  f"without cells), or give a list of seeds")
            seeds = list(range(seeds))
        else:
            seeds = _int_list(seeds, "seeds", 0)
            if not seeds:
                raise ConfigError(f"{where}: seeds=[] gives no seed, so the grid would have no cell; give a count "
                                  f"(seeds: 3 means 0, 1, 2) or a list of seeds")
        spinup = _one_int(exp, "spinup", "cycles left out of the averages")
        between = _one_int(exp, "score_between", "times scored inside each observation interval")
        repeats = _one_int(exp, "timing_repeats", "extra timings of each cycle")
        dev = device or exp.get("device", "cpu")
        check_device(dev)
        inits = [parse_init(v) for v in (exp["init"] if isinstance(exp.get("init"), list) else
                                         [exp.get("init", "climatology")])]
        if not inits:
            raise ConfigError(f"{where}: init is an empty list; valid: {INIT_FORMS}")
        tuned = exp.get("tuned") or []
        if not isinstance(tuned, list) or not all(isinstance(t, str) for t in tuned):
            raise ConfigError(f"{where}: tuned must be a list of method names (those bench tune tuned), got {tuned!r}")
        for t in tuned:
            if t not in exp["methods"]:
                raise unknown("tuned method", t, list(exp["methods"]), where=where)
        dtype = exp.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype={dtype!r} is not supported; valid: {', '.join(DTYPES)}")
        obs_spec = exp.get("observers") or {}
        if not isinstance(obs_spec, (dict, list)):
            raise ConfigError(f"{where}: observers must be a mapping of observer parameters")
        for pname, pspec in exp["problems"].items():
            pcls = problems.cls(pname)
            if pspec is not None and not isinstance(pspec, dict):
                raise ConfigError(f"problem {pname}: parameters must be a mapping, got {pspec!r}")
            pspec = dict(pspec or {})
            p_obs = pspec.pop("observer", None)
            for pp in expand_params(pcls, pspec, f"problem {pname}"):
                prob = problems.get(pname, **pp)
                prob.validate()
                if spinup >= prob.n_cycles:
                    raise ConfigError(f"spinup={spinup} leaves no cycle to average: {prob.label} has n_cycles="
                                      f"{prob.n_cycles}; give spinup < n_cycles")
                check_memory(prob.dataset_nbytes(), "cpu", f"building the dataset of {prob.label} "
                             f"({prob.n_traj} trajectories x {prob.n_cycles + 1} snapshots x {prob.dim} values)",
                             "lower n_traj, n_cycles or the resolution")
                if between:
                    prob.check_subdivision(between + 1)
                ospec = obs_spec if p_obs is None else (
                    {**obs_spec, **p_obs} if isinstance(obs_spec, dict) and isinstance(p_obs, dict) else p_obs)
                for op in expand_params(ObserverConfig, ospec, "observers"):
                    problems.bind_observer(prob, None, **op)  # validates against the problem geometry
                    for mname, mspec in exp["methods"].items():
                        mcls = methods.cls(mname)
                        for mp in expand_params(mcls, mspec, f"method {mname}"):
                            meth = methods.get(mname, **mp)
                            for n in n_ens:
                                key = (mname, freeze(mp), pname, freeze(pp), freeze(op), n, dev, dtype)
                                if key in checked:
                                    continue
                                checked.add(key)
                                obs = problems.bind_observer(prob, None, **op)
                                meth.validate(prob, obs, n)
                                check_memory(meth.memory_nbytes(prob, obs, n, ITEMSIZE[dtype]), dev,
                                             f"{meth.label} with n_ens={n} on {prob.label} ({dtype})",
                                             "lower n_ens or the problem size")
                            for n, s, ini in itertools.product(n_ens, seeds, inits):
                                cells.append(Cell(pname, freeze(pp), freeze(op), mname, freeze(mp), n, s,
                                                  dev, dtype, spinup, between, ini, "test", mname in tuned,
                                                  repeats))
    seen, unique = set(), []
    for c in cells:
        if c.cell_id not in seen:
            seen.add(c.cell_id)
            unique.append(c)
    if not unique:
        raise ConfigError("the grid has no cell; give at least one problem, method, n_ens and seed")
    return Grid(name=config.get("name", name), cells=unique, plugins=plugins, raw=config)


ITEMSIZE = {"float32": 4, "float64": 8}


def memory_limit_bytes(device: str) -> int | None:
    """Total memory of ``device`` in bytes (physical RAM for ``cpu``, the GPU's memory for ``cuda*``), or None
    when unknown. ``ASSIMBENCH_MEMORY_LIMIT`` (bytes, or a number with a K/M/G/T suffix) overrides it."""
    env = os.environ.get("ASSIMBENCH_MEMORY_LIMIT", "").strip()
    if env:
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        try:
            return int(float(env[:-1]) * units[env[-1].upper()]) if env[-1].upper() in units else int(float(env))
        except ValueError:
            raise ConfigError(f"ASSIMBENCH_MEMORY_LIMIT={env!r} is not a size (e.g. 16G or 17179869184)") from None
    if device.startswith("cuda"):
        import torch
        try:
            index = int(device.split(":")[1]) if ":" in device else 0
            return int(torch.cuda.get_device_properties(index).total_memory)
        except Exception:  # no such device: check_device reports it
            return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, device: str, what: str, fix: str) -> None:
    """Refuse (ConfigError) a configuration whose estimated memory exceeds the device's total memory."""
    limit = memory_limit_bytes(device)
    if limit is not None and nbytes > limit:
        raise ConfigError(f"{what} needs about {_size(nbytes)} of memory, more than the {_size(limit)} of {device} "
                          f"here; {fix}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_device(device: str) -> None:
    import torch
    if not isinstance(device, str):
        raise ConfigError(f"device {device!r} is not supported; valid: cpu, cuda, cuda:N")
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} was requested but CUDA is not available here "
                              f"(torch {torch.__version__}, cuda build: {torch.version.cuda or 'none'}); "
                              f"valid here: cpu. A GPU user installs a CUDA build of torch first (see README)")
        return
    raise ConfigError(f"device {device!r} is not supported; valid: cpu, cuda, cuda:N")
