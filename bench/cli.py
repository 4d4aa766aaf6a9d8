"""The `bench` command line: run, list, show, report, compare, train, tune.

Every bad input (unknown name, misspelled key, wrong type, impossible value, unreadable YAML, a missing GPU)
ends with exit code 2 and a one-paragraph message, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

from assimbench.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description="assimbench: data-assimilation benchmark suite")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a grid (default: the `default` preset into results/<timestamp>/)")
    r.add_argument("config", nargs="?", help="YAML grid file (see bench/config.py)")
    r.add_argument("--preset", help="a named preset instead of a file (see `bench list`)")
    r.add_argument("--out", help="output folder (rerunning into it resumes)")
    r.add_argument("--device", help="cpu, cuda or cuda:N (overrides the config)")
    r.add_argument("--executor", choices=("local", "dask"), default=None,
                   help="where cells run: local (this machine; default) or dask (a dask.distributed cluster; "
                        "pip install 'assimbench[dask]')")
    r.add_argument("--jobs", type=int, default=1,
                   help="--executor local: cells in parallel in a process pool (default 1: sequential)")
    r.add_argument("--workers", type=int, default=None,
                   help="--executor dask: start a local cluster of N worker processes on 127.0.0.1")
    r.add_argument("--scheduler", default=None,
                   help="--executor dask: address of a running scheduler, e.g. tcp://10.0.0.5:8786")
    r.add_argument("--cache", help="dataset/model cache folder (default $ASSIMBENCH_CACHE or ~/.cache/assimbench)")
    r.add_argument("--raise", dest="raise_errors", action="store_true", help="stop at the first failing cell")
    r.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed")
    r.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--threads", type=int, default=None,
                   help="torch threads per cell (default: the cores divided by the cells run side by side, "
                        "--jobs or --workers); recorded in the results")
    r.add_argument("--timing-repeats", type=int, default=None, metavar="R",
                   help="time every cycle R more times from the same state (metrics unchanged; overrides the "
                        "grid's timing_repeats)")

    sub.add_parser("list", help="problems, methods and presets with their parameters and defaults")

    s = sub.add_parser("show", help="summary table of a results folder")
    s.add_argument("dir")

    rp = sub.add_parser("report", help="build the HTML report of a results folder")
    rp.add_argument("dir")

    c = sub.add_parser("compare", help="compare two results folders cell by cell")
    c.add_argument("dir_a")
    c.add_argument("dir_b")
    c.add_argument("--threshold", type=float, default=0.1,
                   help="accuracy: relative growth of the seed-mean rRMSE flagged (if also beyond the seed spread)")
    c.add_argument("--min-effect", type=float, default=0.25,
                   help="time: smallest slowdown judged (0.25: median B/A > 1.25)")
    c.add_argument("--alpha", type=float, default=0.01, help="time: significance level of the Mann-Whitney test")
    c.add_argument("--floor-ms", type=float, default=5.0, help="time: phases below this median are not judged")
    c.add_argument("--time-basis", choices=("auto", "cpu", "wall"), default="auto",
                   help="per-cycle samples tested: process CPU time (immune to other load), wall time, or auto "
                        "(CPU time for CPU cells that recorded it)")
    c.add_argument("--pair", metavar="NAME[=A,B]",
                   help="match cells that differ in this one parameter (e.g. inflation, or inflation=1.05,1.1 "
                        "to pick a value from each run; give one folder twice to compare inside a run)")
    c.add_argument("--fail-on-regression", action="store_true", help="exit 1 when something regressed")
    c.add_argument("--only-regressions", action="store_true", help="list only the flagged cells")

    g = sub.add_parser("gpu-check", help="run every method and problem, and the default preset's PDE block, on "
                                         "the GPU and the CPU; print a CPU / GPU table")
    g.add_argument("--out", default="results/gpu-check", help="folder for the run folders and gpu_check.csv")
    g.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: dry-run the check without a GPU)")
    g.add_argument("--part", action="append", choices=("coverage", "pde"),
                   help="run only this part (repeatable; default both)")
    g.add_argument("--seeds", type=int, default=1, help="seeds of the PDE block (default 1)")
    g.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: every core)")
    g.add_argument("--cache", help="dataset/model cache folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="train the networks of the learned methods in a grid, without assimilating")
    t.add_argument("config", nargs="?")
    t.add_argument("--preset")
    t.add_argument("--cache")
    t.add_argument("--ship", action="store_true", help="also copy the artifacts into methods/artifacts/")
    t.add_argument("--curve", help="CSV path prefix for time-to-accuracy curves")
    t.add_argument("--recipe", help="training recipe for every learned method (e.g. cpu, paper)")

    tu = sub.add_parser("tune", help="tune methods' declared hyperparameters on validation truths; writes a tuned "
                                     "preset (OUT/tuned.yaml) for `bench run`")
    tu.add_argument("config", nargs="?", help="YAML grid file (default: --preset default)")
    tu.add_argument("--preset")
    tu.add_argument("--method", action="append", help="method to tune (repeatable; default: every method of the "
                                                      "grid that declares tunables)")
    tu.add_argument("--problem", help="only this problem's cells of the grid")
    tu.add_argument("--params", help="comma-separated tunables to search (default: all the method declares)")
    tu.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH",
                    help="override a tunable's search range (repeatable)")
    tu.add_argument("--budget", type=int, default=24, help="cells per setting (a trial costs --tune-seeds cells)")
    tu.add_argument("--tune-seeds", type=int, default=2, help="validation truths per trial (default 2)")
    tu.add_argument("--metric", default="rrmse_a", help="score to minimise (default rrmse_a)")
    tu.add_argument("--sampler", default="auto", help="auto (grid for one parameter, else TPE), tpe or grid")
    tu.add_argument("--out", help="tuning folder (rerunning into it resumes; default tune/<timestamp>)")
    tu.add_argument("--device", help="cpu, cuda or cuda:N (overrides the config)")
    tu.add_argument("--cache")
    tu.add_argument("--quiet", action="store_true")
    return ap


def _load_config(args) -> tuple[dict, str]:
    from bench.config import load_preset, load_yaml
    if args.config and args.preset:
        raise ConfigError("give either a CONFIG file or --preset NAME, not both")
    if args.config:
        return load_yaml(args.config), Path(args.config).stem
    name = args.preset or "default"
    return load_preset(name), name


def cmd_run(args) -> int:
    from bench.config import expand
    import yaml

    from bench import store
    from bench.sweep import run_grid

    from bench.executors import make_executor

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be >= 1")
    # validates the flag combination and that dask imports, before any work (connecting happens in run_grid)
    executor = make_executor(args.executor, jobs=args.jobs, workers=args.workers, scheduler=args.scheduler,
                             threads=args.threads)
    config, name = _load_config(args)
    if args.timing_repeats is not None:
        if args.timing_repeats < 0:
            raise ConfigError(f"--timing-repeats {args.timing_repeats}: must be >= 0")
        config = {**config, "timing_repeats": args.timing_repeats}
        if isinstance(config.get("experiments"), list):
            config["experiments"] = [{**b, "timing_repeats": args.timing_repeats} if isinstance(b, dict) else b
                                     for b in config["experiments"]]
    grid = expand(config, device=args.device, name=name)
    out = Path(args.out) if args.out else Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    cache = Path(args.cache) if args.cache else None
    out.mkdir(parents=True, exist_ok=True)
    store.grid_path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"bench run: {len(grid.cells)} cells ({grid.name}) -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    print(f"executor: {executor.describe()}", file=sys.stderr)
    counts = run_grid(grid.cells, out, cache_dir=cache, raise_errors=args.raise_errors,
                      retry_failed=args.retry_failed, progress=not args.quiet, executor=executor,
                      plugins=grid.plugins)
    store.run_info_path(out).write_text(json.dumps({
        "config": config, "name": grid.name, "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": time.perf_counter() - t0,
        "command": " ".join(sys.argv), "executor": executor.describe(), "counts": counts}, indent=2, default=str))
    print(f"cells: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped, "
          f"{counts['cached']} already done", file=sys.stderr)
    print(_summary_text(out))
    if not args.no_report:
        try:
            from bench.report import build_report
            path = build_report(out)
            print(f"report: {path}")
        except ImportError:
            pass
    print(f"results: {store.results_path(out)}")
    return 0


def _summary_text(run_dir: Path) -> str:
    import pandas as pd
    from bench.store import load_results
    try:
        from bench.report import format_summary, summary_table
        return format_summary(summary_table(run_dir))
    except ImportError:
        df = load_results(run_dir)
        ok = df[df.status == "ok"]
        keys = ["p_problem", "p_method", "p_n_ens", "p_coverage", "p_noise"]
        tab = ok.groupby(keys).agg(rrmse_a=("rrmse_a", "mean"), rmse_a=("rmse_a", "mean"),
                                   time_online_s=("time_online_s", "mean"), seeds=("p_seed", "count")).reset_index()
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 200):
        return tab.to_string(index=False)


def cmd_list(args) -> int:
    import dataclasses
    import methods
    import problems
    from bench.config import preset_names, load_preset
    from assimbench.naming import public_fields
    from problems.base import Observer

    def describe(cls) -> str:
        parts = []
        for f in public_fields(cls):
            d = f.default if f.default is not dataclasses.MISSING else "required"
            parts.append(f"{f.name}={d!r}")
        return ", ".join(parts) or "(no parameters)"

    def section(title: str, registry) -> None:
        print(f"{title}:")
        for n in registry.names():
            try:
                cls = registry.cls(n)
            except ConfigError as e:
                print(f"  {n}: unavailable ({e})")
                continue
            print(f"  {n}: {(cls.__doc__ or '').strip().splitlines()[0]}")
            print(textwrap.indent(textwrap.fill(describe(cls), 100), "      "))
            tun = getattr(cls, "tunable", None) or {}
            if tun:
                print(textwrap.indent(textwrap.fill("bench tune searches: " + ", ".join(
                    f"{k} [{t.low:g}, {t.high:g}]{' log' if t.log else ''}" for k, t in tun.items()), 100), "      "))

    section("problems", problems)
    print("observer parameters:")
    print(textwrap.indent(textwrap.fill(describe(Observer), 100), "      "))
    section("methods", methods)
    print("presets:")
    for p in preset_names():
        desc = load_preset(p).get("description", "")
        print(f"  {p}: {desc}")
    return 0


def cmd_show(args) -> int:
    from bench.store import load_results
    load_results(args.dir)  # clear error for a folder that is not a (current) results folder
    print(_summary_text(Path(args.dir)))
    return 0


def cmd_report(args) -> int:
    from bench.report import build_report
    from bench.store import load_results
    load_results(args.dir)  # clear error for a folder that is not a results folder
    print(build_report(Path(args.dir)))
    return 0


def cmd_compare(args) -> int:
    from bench.compare import compare, format_compare
    from bench.store import load_results
    for d in (args.dir_a, args.dir_b):
        load_results(d)  # clear error for a folder that is not a results folder
    df = compare(Path(args.dir_a), Path(args.dir_b), threshold=args.threshold, min_effect=args.min_effect,
                 alpha=args.alpha, floor_s=args.floor_ms / 1e3, time_basis=args.time_basis, pair=args.pair)
    print(format_compare(df, only_regressions=args.only_regressions))
    return 1 if args.fail_on_regression and bool(df["regression"].any()) else 0


def cmd_gpu_check(args) -> int:
    from bench.gpucheck import format_table, gpu_check
    table = gpu_check(Path(args.out), args.device, parts=tuple(args.part or ("coverage", "pde")), seeds=args.seeds,
                      cache_dir=Path(args.cache) if args.cache else None, progress=not args.quiet,
                      threads=args.threads)
    print(format_table(table, table.attrs.get("gpu_name", args.device)))
    print(f"table: {Path(args.out) / 'gpu_check.csv'}")
    mismatch = "device_mismatch" in table.columns and bool(table["device_mismatch"].any())
    return 1 if mismatch else 0  # a cell that fails on one device only


def cmd_train(args) -> int:
    from bench.config import expand
    from bench.train import train_grid
    config, name = _load_config(args)
    grid = expand(config, name=name)
    train_grid(grid, cache_dir=Path(args.cache) if args.cache else None, ship=args.ship, curve=args.curve,
               recipe=args.recipe)
    return 0


def cmd_tune(args) -> int:
    from bench.tune import plan, run_tune
    config, name = _load_config(args)
    params = [p.strip() for p in args.params.split(",")] if args.params is not None else None
    p = plan(config, name, methods_=args.method, problem=args.problem, params=params, ranges=args.range,
             budget=args.budget, tune_seeds=args.tune_seeds, metric=args.metric, sampler=args.sampler,
             device=args.device)
    out = Path(args.out) if args.out else Path("tune") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    n = sum(len(s) for s in p.settings.values())
    print(f"bench tune: {n} setting(s), up to {p.n_trials} trial(s) x {len(p.tune_seeds)} cell(s) each -> {out}",
          file=sys.stderr)
    path = run_tune(p, out, cache_dir=Path(args.cache) if args.cache else None, progress=not args.quiet,
                    command=" ".join(["bench", *sys.argv[1:]]))
    print(f"tuned preset: {path}  (bench run {path})")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "show": cmd_show, "report": cmd_report, "compare": cmd_compare,
            "train": cmd_train, "tune": cmd_tune, "gpu-check": cmd_gpu_check}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except ConfigError as e:
        print(f"bench {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
