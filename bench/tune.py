"""`bench tune`: search a method's declared hyperparameters on tuning truths, write a tuned preset.

For each method asked for, the cells of the grid that run it are grouped into *settings*: everything that defines
a cell (problem, observer, ensemble size, initial ensemble, spin-up, dtype, and the method's parameters that are
not searched, e.g. the EnKF variant) except the seed. Each setting is tuned on its own:

1. the search space is the method's class-level ``tunable`` mapping (:class:`methods.base.Tunable`), narrowed by
   ``--params`` and with ranges overridden by ``--range name=LOW:HIGH``;
2. a trial is one parameter choice, scored by the mean of ``metric`` (time-averaged after spin-up) over
   ``tune_seeds`` cells whose truths come from the dataset's **validation** split, so a tuning truth is never a
   test truth (every `bench run` scores on the test split); a failed or diverged cell scores ``FAILED_SCORE``;
3. the trials come from Optuna (a seeded TPE sampler; an exhaustive grid when one parameter is searched, or with
   ``--sampler grid``), at most ``budget // tune_seeds`` trials per setting, the setting's own parameters first;
4. the tuned preset, ``OUT/tuned.yaml``, has one experiment block per setting with the best parameters, the
   original seeds (test truths), ``tuned: [METHOD]`` (the results' ``p_tuned`` column) and a ``tuning:`` record
   of what was searched, the budget and the scores; the grid's other methods are carried over untuned, so
   ``bench run OUT/tuned.yaml`` gives the whole comparison.

A tuning folder ``OUT`` has a run folder's layout (:mod:`bench.store`) and follows its policy:

    OUT/grid.yaml          the grid as given
    OUT/cells/<id>.json    one finished tuning cell (a validation truth), written atomically
    OUT/results.parquet    one row per tuning cell (so `bench show OUT` / `bench report OUT` read the search)
    OUT/run.json           the command, its dates and the search's budget, tuning truths, metric and sampler
    OUT/optuna.journal     the Optuna studies, one per setting and (metric, tuning truths, sampler)
    OUT/tuned.yaml         the tuned preset
    OUT/.lock              held by the running `bench tune`

It holds the cells of one search: cells of another search (other methods, problems, searched parameters or
tuning truths) or of a `bench run` stop the command with exit 2 before anything runs, unless ``--force`` deletes
them and their studies. Rerunning the same command resumes where it stopped (a trial cut off mid-way is marked
failed in its study and its finished cells are reused); a larger ``--budget`` continues the same studies; another
``--metric`` starts studies of its own and reuses the cells they share.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import methods
from assimbench.errors import ConfigError, unknown
from assimbench.naming import content_hash
from bench import store
from bench.config import Cell, expand, freeze
from bench.runner import run_cell
from bench.sweep import _prepare_datasets

#: the score of a trial with a failed, diverged or unscored cell (larger than any filter's relative error)
FAILED_SCORE = 1e3
METRICS = ("rrmse_a", "rmse_a", "crps_a", "rrmse_f", "rmse_f", "rrmse_between")
SAMPLERS = ("auto", "tpe", "grid")
#: the Optuna studies of a tuning folder (beside bench run's layout: grid.yaml, cells/, results.parquet, run.json)
JOURNAL_FILE = "optuna.journal"
TUNED_FILE = "tuned.yaml"


@dataclass(frozen=True)
class Range:
    """One searched parameter: ``[low, high]``, log-spaced when ``log``, integers when ``integer``."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def grid(self, k: int) -> list:
        vals = (np.geomspace if self.log else np.linspace)(self.low, self.high, max(k, 2))
        if self.integer:
            return sorted({int(round(v)) for v in vals})
        return [round_sig(v) for v in vals]

    def clip(self, v: float) -> float:
        v = min(max(float(v), self.low), self.high)
        return int(round(v)) if self.integer else v


def round_sig(v: float, digits: int = 4) -> float:
    """``v`` to ``digits`` significant digits (tidy parametrized names, stable cell ids)."""
    return float(f"{float(v):.{digits}g}")


@dataclass
class Setting:
    """The cells of one method configuration (every seed) that share all but the seed."""

    template: Cell  # seed and searched parameters are replaced per trial
    base: dict  # the method's parameters as the grid gives them (including searched ones, if set)
    seeds: list[int]
    space: list[Range]

    @property
    def key(self) -> str:
        t = dataclasses.replace(self.template, seed=0, method_params=freeze(self.fixed))
        return f"{self.template.method}-{content_hash(t.to_dict(), [dataclasses.astuple(r) for r in self.space])}"

    @property
    def fixed(self) -> dict:
        names = {r.name for r in self.space}
        return {k: v for k, v in self.base.items() if k not in names}

    def describe(self) -> str:
        t = self.template
        extra = "".join(f", {k}={v}" for k, v in self.fixed.items())
        return (f"{t.method}{extra} on {t.problem}{dict(t.problem_params)}, observer {dict(t.observer_params)}, "
                f"N={t.n_ens}, init={t.init}")


# ----------------------------------------------------------------------------------------------------------------
def parse_range(text: str) -> tuple[str, float, float]:
    """``name=LOW:HIGH`` -> ``(name, low, high)``; ConfigError for any other form or an empty range."""
    name, sep, rest = str(text).partition("=")
    lo, sep2, hi = rest.partition(":")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        low = high = float("nan")
    if not sep or not sep2 or not name.strip() or not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"--range {text!r}: give NAME=LOW:HIGH with two numbers, e.g. inflation=1.0:1.2")
    return name.strip(), low, high


def search_space(method: str, params: list[str] | None, ranges: dict[str, tuple[float, float]]) -> list[Range]:
    """The searched ranges of ``method``: its declared tunables (or those named in ``params``), with overrides."""
    mcls = methods.cls(method)
    declared = dict(getattr(mcls, "tunable", {}) or {})
    if not declared:
        tunable = [n for n in methods.names() if getattr(methods.cls(n), "tunable", None)]
        raise ConfigError(f"method {method} declares no tunable hyperparameters; methods with some: "
                          f"{', '.join(tunable)}")
    names = list(params) if params else list(declared)
    if not names:
        raise ConfigError(f"--params is empty; valid for {method}: {', '.join(declared)}")
    for n in [*names, *ranges]:
        if n not in declared:
            raise unknown(f"tunable of {method}", n, declared)
    for n in ranges:
        if n not in names:
            raise ConfigError(f"--range {n}=...: {n} is not among the searched --params ({', '.join(names)})")
    out = []
    for n in names:
        t = declared[n]
        low, high = ranges.get(n, (t.low, t.high))
        if not low < high:
            raise ConfigError(f"--range {n}={low:g}:{high:g} is empty: LOW must be below HIGH (the declared range "
                              f"of {n} is {t.low:g}:{t.high:g})")
        if t.log and low <= 0:
            raise ConfigError(f"--range {n}={low}:{high}: {n} is searched on a log scale, so LOW must be > 0 "
                              f"(declared range {t.low}:{t.high})")
        if t.integer and math.floor(high) < math.ceil(low):
            raise ConfigError(f"--range {n}={low}:{high} holds no integer (declared range {t.low}:{t.high})")
        out.append(Range(n, float(low), float(high), t.log, t.integer))
    return out


def settings_of(cells: list[Cell], method: str, space: list[Range]) -> list[Setting]:
    """Group the grid's cells of ``method`` into settings (all but the seed and the searched values equal)."""
    names = {r.name for r in space}
    groups: dict[Any, Setting] = {}
    for c in cells:
        if c.method != method:
            continue
        fixed = tuple((k, v) for k, v in c.method_params if k not in names)
        key = dataclasses.replace(c, seed=0, method_params=fixed, tuned=False).cell_id
        if key not in groups:
            groups[key] = Setting(c, c.mdict, [], space)
        groups[key].seeds.append(c.seed)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A validated `bench tune` invocation (nothing computed yet)."""

    config: dict
    name: str
    grid_cells: list[Cell]
    settings: dict[str, list[Setting]]  # method -> settings
    budget: int
    tune_seeds: list[int]
    metric: str
    sampler: str

    @property
    def n_trials(self) -> int:
        return self.budget // len(self.tune_seeds)


def plan(config: dict, name: str, *, methods_: list[str] | None, problem: str | None, params: list[str] | None,
         ranges: list[str], budget: int, tune_seeds: int, metric: str, sampler: str,
         device: str | None = None) -> Plan:
    """Validate every input of `bench tune` and expand the grid; raises ConfigError naming the valid choices."""
    if metric not in METRICS:
        raise unknown("--metric", metric, METRICS)
    if sampler not in SAMPLERS:
        raise unknown("--sampler", sampler, SAMPLERS)
    if isinstance(tune_seeds, bool) or not isinstance(tune_seeds, int) or tune_seeds < 1:
        raise ConfigError(f"--tune-seeds {tune_seeds}: give an integer >= 1 (tuning truths per trial)")
    grid = expand(config, device=device, name=name)
    cells = grid.cells
    if problem is not None:
        present = sorted({c.problem for c in cells})
        if problem not in present:
            raise unknown("--problem", problem, present, where="the grid")
        cells = [c for c in cells if c.problem == problem]
    in_grid = list(dict.fromkeys(c.method for c in cells))
    with_tunables = [m for m in in_grid if getattr(methods.cls(m), "tunable", None)]
    wanted = methods_ or with_tunables
    if not wanted:
        raise ConfigError(f"no method of this grid declares tunable hyperparameters (grid methods: "
                          f"{', '.join(in_grid)})")
    for m in wanted:
        if m not in in_grid:
            raise unknown("--method", m, with_tunables or in_grid, where="the grid")
    if params and len(wanted) > 1:
        raise ConfigError(f"--params names one method's tunables; give a single --method (got {', '.join(wanted)})")
    parsed = {}
    for text in ranges or []:
        n, lo, hi = parse_range(text)
        parsed[n] = (lo, hi)
    if parsed and len(wanted) > 1:
        raise ConfigError(f"--range applies to one method; give a single --method (got {', '.join(wanted)})")
    per_trial = tune_seeds
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < per_trial:
        raise ConfigError(f"--budget {budget} is below one trial: a trial runs {per_trial} cell(s) (one per tuning "
                          f"truth, --tune-seeds {tune_seeds}); valid: an integer >= {per_trial}")
    settings = {}
    for m in wanted:
        space = search_space(m, params, parsed)
        settings[m] = settings_of(cells, m, space)
    return Plan(config, grid.name, grid.cells, settings, budget, list(range(tune_seeds)), metric, sampler)


# ----------------------------------------------------------------------------------------------------------------
def _search_key(cell: Cell, searched: set[str]) -> str:
    """A tuning cell's identity apart from its seed, its searched values and its device: its setting."""
    fixed = tuple((k, v) for k, v in cell.method_params if k not in searched)
    return dataclasses.replace(cell, seed=0, method_params=fixed, truth_split="valid", tuned=False,
                               device="*").cell_id


def belongs(p: Plan):
    """``belongs(cell_dict)``: whether a finished cell of a tuning folder is one this plan could run (a trial or
    the given setting of one of its settings, on one of its tuning truths, on any device)."""
    searched = {m: {r.name for r in ss[0].space} for m, ss in p.settings.items() if ss}
    keys = {_search_key(s.template, searched[m]) for m, ss in p.settings.items() for s in ss}
    seeds = set(p.tune_seeds)

    def check(cell: dict) -> bool:
        try:
            c = Cell.from_dict(cell)
        except (KeyError, TypeError, ValueError):
            return False
        return (c.truth_split == "valid" and c.seed in seeds and c.method in searched
                and _search_key(c, searched[c.method]) in keys)
    return check


def _own_command(out: Path) -> str:
    try:
        import json
        cmd = json.loads(store.run_info_path(out).read_text()).get("command")
    except (OSError, ValueError):
        cmd = None
    return f"Rerun that folder's own command ({cmd}) to resume it" if cmd else "Rerun that folder's own command"


def preflight(p: Plan, out: Path, force: bool = False) -> None:
    """The folder policy of `bench run`, for a tuning folder: it holds the cells of one tuning search. Cells of
    another search (or of a `bench run`) stop the command with a ConfigError before anything runs, unless
    ``force``; a rerun of the same command, or one that only raises the budget, resumes."""
    out = Path(out)
    with store.RunLock(out):
        if not force:
            store.check_folder(out, belongs(p), store.finished_cells(out, remove_corrupt=False),
                               own=_own_command(out))


def _trial_cells(setting: Setting, values: dict, seeds: list[int]) -> list[Cell]:
    mp = freeze({**setting.base, **values})
    return [dataclasses.replace(setting.template, method_params=mp, seed=s, truth_split="valid", tuned=False)
            for s in seeds]


def _score(cells: list[Cell], out: Path, cache_dir: Path | None, metric: str) -> tuple[float, list[dict]]:
    """Mean ``metric`` over the cells (run now or read from ``out/cells``); FAILED_SCORE when any cell failed."""
    rows = []
    for c in cells:
        path = store.cell_path(out, c.cell_id)
        payload = store.read_cell(path) if path.exists() else None
        if payload is None:
            res = run_cell(c, cache_dir=cache_dir)
            payload = {"cell": res.cell, "row": res.row, "cycles": []}
            store.write_cell(out, c.cell_id, payload)
        rows.append(payload["row"])
    vals = [r.get(metric) for r in rows]
    if any(r["status"] != "ok" for r in rows) or any(v is None or not math.isfinite(v) for v in vals):
        return FAILED_SCORE, rows
    return float(np.mean(vals)), rows


def _kind(setting: Setting, kind: str) -> str:
    return ("grid" if len(setting.space) == 1 else "tpe") if kind == "auto" else kind


def _grid(setting: Setting, n_trials: int) -> dict[str, list]:
    k = max(2, int(math.floor(n_trials ** (1.0 / len(setting.space)) + 1e-9)))
    return {r.name: r.grid(k) for r in setting.space}


def _sampler(setting: Setting, kind: str, n_trials: int):
    import optuna
    seed = int(content_hash(setting.key, n=8), 16)
    if kind == "grid":
        space = _grid(setting, n_trials)
        return optuna.samplers.GridSampler(space, seed=seed), math.prod(len(v) for v in space.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
        s = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                       n_startup_trials=min(8, max(2, n_trials // 3)))
    return s, n_trials


def study_name(setting: Setting, metric: str, tune_seeds: list[int], kind: str) -> str:
    """The Optuna study of one setting: its key plus what the scores mean (metric, tuning truths, sampler), so
    a rerun with another metric starts a study of its own (and reuses the cells it shares with the first)."""
    return f"{setting.key}-{content_hash(metric, list(tune_seeds), kind, n=8)}"


def _suggest(trial, r: Range):
    if r.integer:
        return trial.suggest_int(r.name, int(math.ceil(r.low)), int(math.floor(r.high)), log=r.log)
    return round_sig(trial.suggest_float(r.name, r.low, r.high, log=r.log))


def tune_setting(setting: Setting, out: Path, storage, *, budget: int, tune_seeds: list[int], metric: str,
                 sampler: str, cache_dir: Path | None, progress: bool) -> dict:
    """Run (or resume) the study of one setting; returns its record for the tuned preset."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    n_trials = budget // len(tune_seeds)
    kind = _kind(setting, sampler)
    # The grid's own choice is scored too, so tuning never ends worse on the tuning truths: as the first trial when
    # the sampler can propose it, else (a value outside the searched range, a parameter left at the method's
    # default such as a calibrated sigma_lat = 0, or a point off the search grid) once beside the study, from the
    # same budget.
    given = {r.name: setting.base[r.name] for r in setting.space if r.name in setting.base}
    start = {r.name: r.clip(v) for r in setting.space if (v := given.get(r.name)) is not None}
    in_study = len(start) == len(setting.space) and start == given and (
        kind == "tpe" or all(start[n] in vals for n, vals in _grid(setting, n_trials).items()))
    if not in_study:
        n_trials -= 1
    samp, n_max = _sampler(setting, kind, max(n_trials, 1))
    n_trials = min(n_trials, n_max)
    study = optuna.create_study(study_name=study_name(setting, metric, tune_seeds, kind), storage=storage,
                                sampler=samp, direction="minimize",
                                load_if_exists=True)
    for t in study.trials:  # a trial cut off by an interruption: closed as failed; its finished cells are reused
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    done = lambda: [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]  # noqa: E731
    given_score = None
    if not in_study:
        given_score, _ = _score(_trial_cells(setting, {}, tune_seeds), out, cache_dir, metric)
        if progress:
            print(f"  given {given or '(the method defaults)'} -> {metric} {given_score:.4g}", file=sys.stderr)
    elif kind == "tpe" and not study.trials:
        study.enqueue_trial(start)  # the grid's own choice first

    def objective(trial) -> float:
        values = {r.name: _suggest(trial, r) for r in setting.space}
        score, rows = _score(_trial_cells(setting, values, tune_seeds), out, cache_dir, metric)
        trial.set_user_attr("values", values)
        trial.set_user_attr("failed", sum(r["status"] != "ok" for r in rows))
        if progress:
            print(f"  trial {trial.number + 1}: {values} -> {metric} {score:.4g}", file=sys.stderr)
        return score

    remaining = n_trials - len(done())
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    trials = done()
    best = min(trials, key=lambda t: t.value) if trials else None
    if in_study:
        baseline = [t.value for t in trials if t.user_attrs.get("values") == start]
        given_score = baseline[0] if baseline else None
    kept = given_score is not None and given_score < FAILED_SCORE and (best is None or given_score <= best.value)
    best_score = given_score if kept or best is None else best.value
    ok = best_score is not None and best_score < FAILED_SCORE
    values = dict(given) if kept else best.user_attrs["values"] if ok else {}
    return {"method": setting.template.method, "setting": setting.describe(), "sampler": kind,
            "trials": len(trials), "cells": (len(trials) + (not in_study)) * len(tune_seeds),
            "searched": {r.name: [r.low, r.high] + (["log"] if r.log else []) for r in setting.space},
            "best": values, "tuning_score": round_sig(best_score) if ok else None,
            "given": start if in_study else given,
            "given_score": round_sig(given_score) if given_score is not None and given_score < FAILED_SCORE
            else None, "kept_given": kept, "all_failed": not ok}


def _block(cell: Cell, seeds: list[int]) -> dict:
    b = {"problems": {cell.problem: dict(cell.pdict)}, "observers": dict(cell.odict), "n_ens": [cell.n_ens],
         "seeds": sorted(set(seeds)), "spinup": cell.spinup, "dtype": cell.dtype}
    if cell.score_between:
        b["score_between"] = cell.score_between
    if cell.init != "climatology":
        b["init"] = cell.init
    return b


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def run_tune(p: Plan, out: Path, *, cache_dir: Path | None = None, progress: bool = True,
             command: str = "", force: bool = False) -> Path:
    """Tune every setting of the plan into ``out``; returns the path of the tuned preset.

    ``out`` follows `bench run`'s folder policy (:func:`bench.store.check_folder`): it holds one search, the
    cells of another stop the command unless ``force`` deletes them (with their studies)."""
    import optuna
    import yaml
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    tuned_blocks: list[tuple[Cell, dict, list[int], bool]] = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with store.RunLock(out):
        store.remove_stale_tmp(out)
        store.check_folder(out, belongs(p), store.finished_cells(out), force, own=_own_command(out))
        storage = JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))
        if force:  # the studies of another search go with its cells
            names = {study_name(s, p.metric, p.tune_seeds, _kind(s, p.sampler)) for ss in p.settings.values()
                     for s in ss}
            for st in storage.get_all_studies():
                if st.study_name not in names:
                    optuna.delete_study(study_name=st.study_name, storage=storage)
        store.write_grid(out, p.config)
        _prepare_datasets([c for ss in p.settings.values() for s in ss for c in [s.template]], cache_dir, progress)
        try:
            for method, settings in p.settings.items():
                for i, s in enumerate(settings, 1):
                    if progress:
                        print(f"bench tune: {method} setting {i}/{len(settings)}: {s.describe()}", file=sys.stderr)
                    rec = tune_setting(s, out, storage, budget=p.budget, tune_seeds=p.tune_seeds, metric=p.metric,
                                       sampler=p.sampler, cache_dir=cache_dir, progress=progress)
                    records.append(rec)
                    tuned_blocks.append((s.template, {**s.base, **rec["best"]}, s.seeds, not rec["all_failed"]))
        finally:
            # interrupted or not, the tables hold every tuning cell finished so far (`bench show OUT` reads them)
            if store.finished_cells(out):
                store.consolidate(out)
            import json
            store.atomic_write_bytes(store.run_info_path(out), json.dumps({
                "config": p.config, "name": p.name, "command": command, "started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "tuning": {"budget_cells_per_setting": p.budget, "tune_seeds": p.tune_seeds, "metric": p.metric,
                           "sampler": p.sampler, "settings": len(records)}}, indent=2, default=str).encode())
    # the tuned preset: tuned settings, then every other cell of the grid as it was
    tuned_methods = set(p.settings)
    experiments, index = [], {}

    def add(cell: Cell, mparams: dict, seeds: list[int], tuned: bool) -> None:
        b = _block(cell, seeds)
        key = content_hash(b)
        if key not in index:
            index[key] = {**b, "methods": {}, "tuned": []}
            experiments.append(index[key])
        e = index[key]
        e["methods"].setdefault(cell.method, [])
        mp = {k: _plain(v) for k, v in sorted(mparams.items())}
        if mp not in e["methods"][cell.method]:
            e["methods"][cell.method].append(mp)
        if tuned and cell.method not in e["tuned"]:
            e["tuned"].append(cell.method)

    for tmpl, mp, seeds, tuned in tuned_blocks:  # every trial failed: the grid's own values, not marked tuned
        add(tmpl, mp, seeds, tuned=tuned)
    rest: dict[str, tuple[Cell, list[int]]] = {}
    for c in p.grid_cells:
        if c.method in tuned_methods and any(c.problem == s.template.problem for s in p.settings[c.method]):
            continue
        k = dataclasses.replace(c, seed=0).cell_id
        rest.setdefault(k, (c, []))[1].append(c.seed)
    for c, seeds in rest.values():  # a config that is itself a tuned preset keeps its marks: tuning chains
        add(c, c.mdict, seeds, tuned=c.tuned)
    for e in experiments:
        if not e["tuned"]:
            del e["tuned"]
    doc = {
        "name": p.name if p.name.endswith("-tuned") else f"{p.name}-tuned",
        "description": f"{p.name} with {', '.join(sorted(tuned_methods))} tuned by bench tune (budget {p.budget} "
                       f"cells per setting on {len(p.tune_seeds)} validation truths, metric {p.metric})"
                       + (f"; earlier: {p.config['description']}" if p.config.get("tuning") else ""),
        "tuning": {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "budget_cells_per_setting": p.budget, "tuning_truths": "validation split, seeds "
                   f"{p.tune_seeds} (test truths are never used)", "metric": p.metric,
                   "failed_score": FAILED_SCORE, "settings": records,
                   **({"earlier": p.config["tuning"]} if p.config.get("tuning") else {})},
        "experiments": experiments,
    }
    if p.config.get("plugins"):
        doc["plugins"] = p.config["plugins"]
    path = out / TUNED_FILE
    store.atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False, width=120).encode())
    return path
