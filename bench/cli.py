"""The `bench` command line: run, list, show, report, compare, train, tune.

Every bad input (unknown name, misspelled key, wrong type, impossible value, unreadable YAML, a missing GPU)
ends with exit code 2 and a one-paragraph message, never a traceback.

Exit codes of ``bench run``: 0 the grid ran (some cells may be ``failed`` or ``skipped``: that is data); 1 every
cell of the grid failed; 2 bad input, found before anything is computed; 130 / 143 interrupted by Ctrl-C /
SIGTERM (finished cells are kept; rerunning the same command resumes).

Each subcommand imports what it needs inside its function: ``bench --help`` and a bad flag answer in well under
a second, without importing torch (several seconds on a cold start).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from assimbench.errors import ConfigError


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help text as written, with ``(default: X)`` appended where an option has a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings and not isinstance(action, argparse._VersionAction)):
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("assimbench")
    except Exception:  # not installed (a plain checkout on PYTHONPATH): the package's own constant
        from bench import __version__
        return __version__


def _common() -> argparse.ArgumentParser:
    """-q / -v, accepted by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print only results and errors: no progress bars, no status lines")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail: -v logs what runs (INFO), -vv debug output and full tracebacks")
    return p


EPILOG = """examples:
  bench run                                  the default preset into results/<timestamp>/
  bench run --preset smoke --out runs/smoke  seconds
  bench show runs/smoke                      summary table in the terminal
  bench report runs/smoke                    HTML report in runs/smoke/report/
  bench COMMAND --help                       the options of one command
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description="assimbench: data-assimilation benchmark suite",
                                 epilog=EPILOG, formatter_class=_HelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s (assimbench) {_version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", title="commands")
    common = [_common()]

    def add(name: str, help: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", parents=common,
                              formatter_class=_HelpFormatter, **kw)

    r = add("run", "run a grid (default: the `default` preset into results/<timestamp>/)")
    r.add_argument("config", nargs="?", help="YAML grid file (see bench/config.py); default: --preset default")
    r.add_argument("--preset", help="a named preset instead of a file (see `bench list`); default: default")
    r.add_argument("--out", metavar="DIR",
                   help="output folder; rerunning into it resumes (default: results/<timestamp>)")
    r.add_argument("--device", help="cpu, cuda or cuda:N; overrides the config (default: the config's, else cpu)")
    r.add_argument("--executor", choices=("local", "dask"), default=None,
                   help="where cells run: local (this machine; default) or dask (a dask.distributed cluster; "
                        "pip install 'assimbench[dask]')")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="--executor local: cells in parallel in a process pool (1: sequential)")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--executor dask: start a local cluster of N worker processes on 127.0.0.1 "
                        "(default: one per core)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="--executor dask: address of a running scheduler, e.g. tcp://10.0.0.5:8786 "
                        "(default: start a local cluster)")
    r.add_argument("--cache", metavar="DIR",
                   help="dataset/model cache folder (default: $ASSIMBENCH_CACHE or ~/.cache/assimbench)")
    r.add_argument("--raise", dest="raise_errors", action="store_true",
                   help="stop at the first failing cell with its traceback (default: record it as failed)")
    r.add_argument("--retry-failed", action="store_true",
                   help="rerun cells recorded as failed (default: keep them)")
    r.add_argument("--force", action="store_true",
                   help="run into an --out folder that holds another grid's cells, deleting those cells "
                        "(default: refuse; see README, results folders)")
    r.add_argument("--no-report", action="store_true", help="skip the HTML report at the end (default: write it)")
    r.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per cell (default: the cores divided by the cells run side by side, "
                        "--jobs or --workers); recorded in the results")
    r.add_argument("--timing-repeats", type=int, default=None, metavar="R",
                   help="time every cycle R more times from the same state (metrics unchanged; default: the "
                        "grid's timing_repeats, else 0)")

    add("list", "problems, methods and presets with their parameters and defaults")

    s = add("show", "summary table of a results folder, sized to the terminal")
    s.add_argument("dir", metavar="DIR", help="a results folder (the --out of `bench run`)")

    rp = add("report", "build the HTML report of a results folder")
    rp.add_argument("dir", metavar="DIR", help="a results folder; the report goes to DIR/report/")

    c = add("compare", "compare two results folders cell by cell")
    c.add_argument("dir_a", metavar="DIR_A", help="the reference results folder")
    c.add_argument("dir_b", metavar="DIR_B", help="the candidate results folder")
    c.add_argument("--threshold", type=float, default=0.1,
                   help="accuracy: relative growth of the seed-mean rRMSE flagged (if also beyond the seed spread)")
    c.add_argument("--min-effect", type=float, default=0.5,
                   help="time: smallest slowdown judged (0.5: median B/A > 1.5)")
    c.add_argument("--alpha", type=float, default=0.01, help="time: significance level of the Mann-Whitney test")
    c.add_argument("--floor-ms", type=float, default=5.0, help="time: phases below this median are not judged")
    c.add_argument("--time-basis", choices=("auto", "cpu", "wall"), default="auto",
                   help="per-cycle samples tested: process CPU time (immune to other load), wall time, or auto "
                        "(CPU time for CPU cells that recorded it)")
    c.add_argument("--pair", metavar="NAME[=A,B]",
                   help="match cells that differ in this one parameter (e.g. inflation, or inflation=1.05,1.1 "
                        "to pick a value from each run; give one folder twice to compare inside a run; "
                        "default: cells match on every parameter)")
    c.add_argument("--fail-on-regression", action="store_true", help="exit 1 when something regressed")
    c.add_argument("--only-regressions", action="store_true", help="list only the flagged cells")

    g = add("gpu-check", "run every method and problem, and the default preset's PDE block, on the GPU and the "
                         "CPU; print a CPU / GPU table")
    g.add_argument("--out", metavar="DIR", default="results/gpu-check",
                   help="folder for the run folders and gpu_check.csv")
    g.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: dry-run the check without a GPU)")
    g.add_argument("--part", action="append", choices=("coverage", "pde"),
                   help="run only this part (repeatable; default: both)")
    g.add_argument("--seeds", type=int, default=1, help="seeds of the PDE block")
    g.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: every core)")
    g.add_argument("--cache", metavar="DIR",
                   help="dataset/model cache folder (default: $ASSIMBENCH_CACHE or ~/.cache/assimbench)")

    t = add("train", "train the networks of the learned methods in a grid, without assimilating")
    t.add_argument("config", nargs="?", help="YAML grid file; default: --preset default")
    t.add_argument("--preset", help="a named preset instead of a file; default: default")
    t.add_argument("--cache", metavar="DIR",
                   help="dataset/model cache folder (default: $ASSIMBENCH_CACHE or ~/.cache/assimbench)")
    t.add_argument("--ship", action="store_true", help="also copy the artifacts into methods/artifacts/")
    t.add_argument("--curve", metavar="PREFIX",
                   help="write time-to-accuracy curves to PREFIX-<method>-<problem>.csv (default: none)")
    t.add_argument("--recipe", help="training recipe for every learned method, e.g. cpu or paper "
                                    "(default: each method's own)")

    tu = add("tune", "tune methods' declared hyperparameters on validation truths; writes a tuned preset "
                     "(OUT/tuned.yaml) for `bench run`")
    tu.add_argument("config", nargs="?", help="YAML grid file (default: --preset default)")
    tu.add_argument("--preset", help="a named preset instead of a file (default: default)")
    tu.add_argument("--method", action="append", help="method to tune (repeatable; default: every method of the "
                                                      "grid that declares tunables)")
    tu.add_argument("--problem", help="only this problem's cells of the grid (default: every problem)")
    tu.add_argument("--params", help="comma-separated tunables to search (default: all the method declares)")
    tu.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH",
                    help="override a tunable's search range (repeatable; default: the method's declared range)")
    tu.add_argument("--budget", type=int, default=24, help="cells per setting (a trial costs --tune-seeds cells)")
    tu.add_argument("--tune-seeds", type=int, default=2, help="validation truths per trial")
    tu.add_argument("--metric", default="rrmse_a", help="score to minimise")
    tu.add_argument("--sampler", default="auto", help="auto (grid for one parameter, else TPE), tpe or grid")
    tu.add_argument("--out", metavar="DIR",
                    help="tuning folder (rerunning into it resumes; default: results/tune-<timestamp>)")
    tu.add_argument("--force", action="store_true",
                    help="tune into an --out folder that holds another search's (or grid's) cells, deleting them")
    tu.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's, else cpu)")
    tu.add_argument("--cache", metavar="DIR",
                    help="dataset/model cache folder (default: $ASSIMBENCH_CACHE or ~/.cache/assimbench)")
    return ap


def _progress(args) -> bool:
    """Progress bars only for a person at a terminal: never with -q, never into a log file or a pipe."""
    return not args.quiet and sys.stderr.isatty()


def _status(args, msg: str) -> None:
    """A status line on stderr (silenced by -q)."""
    if not args.quiet:
        print(msg, file=sys.stderr)


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
    cache = _cache_arg(args.cache)
    _writable_dir(out, "--out")
    _preflight(out, grid.cells, args.force)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _status(args, f"bench run: {len(grid.cells)} cells ({grid.name}) -> {out}")
    t0 = time.perf_counter()
    # where the cells ran is part of the outcome (kept under -q, like the counts below)
    print(f"executor: {executor.describe()}", file=sys.stderr)
    # grid.yaml is written by run_grid once it holds the folder's lock and the folder policy passed
    counts = run_grid(grid.cells, out, cache_dir=cache, raise_errors=args.raise_errors,
                      retry_failed=args.retry_failed, progress=_progress(args), executor=executor,
                      plugins=grid.plugins, force=args.force, grid_config=config)
    store.run_info_path(out).write_text(json.dumps({
        "config": config, "name": grid.name, "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": time.perf_counter() - t0,
        "command": " ".join(sys.argv), "executor": executor.describe(), "counts": counts}, indent=2, default=str))
    # the counts line is kept under -q: it is the run's result, and scripts read "N already done" from it
    print(f"cells: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped, "
          f"{counts['cached']} already done", file=sys.stderr)
    _print_summary(out)
    if not args.no_report:
        try:
            from bench.report import build_report
            path = build_report(out)
            print(f"report: {path}")
        except ImportError:
            pass
    print(f"results: {store.results_path(out)}")
    df = store.load_results(out)
    status = df[df.cell_id.isin({c.cell_id for c in grid.cells})].status if "cell_id" in df else df.status
    if len(status) and (status == "failed").all():
        print(f"bench run: every cell failed (exit 1); the error column says why: bench show {out}",
              file=sys.stderr)
        return 1
    return 0


def _preflight(out: Path, cells: list, force: bool) -> None:
    """A busy folder or one holding another grid stops the run before its first message (run_grid checks
    both again under the lock it keeps)."""
    from bench import store
    with store.RunLock(out):
        if not force:
            store.check_grid(out, cells, store.finished_cells(out, remove_corrupt=False))


def _writable_dir(path: Path, flag: str) -> None:
    """Create ``path`` (a folder the command writes into) or stop with a ConfigError naming ``flag``."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be created ({e.strerror or e}); give a folder you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} is not writable; give a folder you can write")


def _cache_arg(cache: str | None) -> Path | None:
    """The ``--cache`` folder, created, or a ConfigError (a file, an unwritable place)."""
    if not cache:
        return None
    path = Path(cache).expanduser()
    _writable_dir(path, "--cache")
    return path


def _print_summary(run_dir: Path) -> None:
    """The summary tables of a run folder on stdout: in colour and at the terminal's width on a terminal,
    plain text otherwise (``$COLUMNS`` wide where set)."""
    from rich.console import Console

    from bench.report import format_summary, summary_renderables, summary_table
    from bench.scaling import format_slopes, scaling_table
    from bench.store import load_cycles, load_results
    summary = summary_table(run_dir)
    console = Console(highlight=False, emoji=False)
    if console.is_terminal and not summary.empty:
        for r in summary_renderables(summary, console.width):
            console.print(r)
    else:
        print(format_summary(summary))
    # a grid that sweeps the state dimension: each method's log-log slope of time per cycle against it
    res = load_results(run_dir)
    if "state_dim" in res.columns and res["state_dim"].nunique() > 1:
        slopes = format_slopes(scaling_table(res, load_cycles(run_dir)),
                               width=console.width if console.is_terminal else None)
        if slopes:
            print("\n" + slopes)


def _print_compare(df, only_regressions: bool) -> None:
    """``bench compare``'s report at the terminal's width (``$COLUMNS`` where set): long names wrap inside
    their cell instead of widening the table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from bench.compare import compare_table
    head, table = compare_table(df, only_regressions)
    console = Console(highlight=False, emoji=False, soft_wrap=False)
    console.print(head, markup=False)
    if table.empty:
        return
    if "" in table.columns:  # the regression marker first, where no narrow terminal can cut it off
        table = table[[""] + [c for c in table.columns if c != ""]]
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for c in table.columns:
        wide = c in ("problem", "method", "slower phases")
        longest = int(table[c].astype(str).str.len().max())  # numbers keep their digits; headers may wrap
        t.add_column(c, overflow="fold", justify="left" if wide or c == "" else "right",
                     ratio=1 if wide else None, min_width=min(longest, 10) if wide else longest)
    for row in table.itertuples(index=False):
        t.add_row(*[str(v) for v in row])
    console.print(t)


def cmd_list(args) -> int:
    import dataclasses
    import methods
    import problems
    from bench.config import preset_names, load_preset
    from assimbench.naming import public_fields
    from problems.base import ObserverConfig

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
    print(textwrap.indent(textwrap.fill(describe(ObserverConfig), 100), "      "))
    section("methods", methods)
    print("presets:")
    for p in preset_names():
        desc = load_preset(p).get("description", "")
        print(f"  {p}: {desc}")
    return 0


def cmd_show(args) -> int:
    from bench.store import load_results
    load_results(args.dir)  # clear error for a folder that is not a (current) results folder
    _print_summary(Path(args.dir))
    return 0


def cmd_report(args) -> int:
    from bench.report import build_report
    from bench.store import load_results
    load_results(args.dir)  # clear error for a folder that is not a results folder
    print(build_report(Path(args.dir)))
    return 0


def cmd_compare(args) -> int:
    from bench.compare import compare
    from bench.store import load_results
    for d in (args.dir_a, args.dir_b):
        load_results(d)  # clear error for a folder that is not a results folder
    df = compare(Path(args.dir_a), Path(args.dir_b), threshold=args.threshold, min_effect=args.min_effect,
                 alpha=args.alpha, floor_s=args.floor_ms / 1e3, time_basis=args.time_basis, pair=args.pair)
    _print_compare(df, args.only_regressions)
    return 1 if args.fail_on_regression and bool(df["regression"].any()) else 0


def cmd_gpu_check(args) -> int:
    from bench.gpucheck import format_table, gpu_check
    table = gpu_check(Path(args.out), args.device, parts=tuple(args.part or ("coverage", "pde")), seeds=args.seeds,
                      cache_dir=Path(args.cache) if args.cache else None, progress=_progress(args),
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
    train_grid(grid, cache_dir=_cache_arg(args.cache), ship=args.ship, curve=args.curve, recipe=args.recipe,
               progress=_progress(args))
    return 0


def cmd_tune(args) -> int:
    from bench.tune import plan, preflight, run_tune
    config, name = _load_config(args)
    params = [p.strip() for p in args.params.split(",")] if args.params is not None else None
    p = plan(config, name, methods_=args.method, problem=args.problem, params=params, ranges=args.range,
             budget=args.budget, tune_seeds=args.tune_seeds, metric=args.metric, sampler=args.sampler,
             device=args.device)
    out = Path(args.out) if args.out else Path("results") / datetime.now().strftime("tune-%Y%m%d-%H%M%S")
    cache = _cache_arg(args.cache)
    _writable_dir(out, "--out")
    preflight(p, out, args.force)
    n = sum(len(s) for s in p.settings.values())
    _status(args, f"bench tune: {n} setting(s), up to {p.n_trials} trial(s) x {len(p.tune_seeds)} cell(s) each "
                  f"-> {out}")
    path = run_tune(p, out, cache_dir=cache, progress=_progress(args),
                    command=shlex.join(["bench", *args.argv]), force=args.force)
    print(f"tuned preset: {path}  (bench run {path})")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "show": cmd_show, "report": cmd_report, "compare": cmd_compare,
            "train": cmd_train, "tune": cmd_tune, "gpu-check": cmd_gpu_check}


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) turned into an interrupt, so a terminated run stops its workers as Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM/SIGHUP raise :class:`Interrupted` in the main thread while the block runs."""
    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupted) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _logging(args) -> None:
    """-v: INFO log lines of the project (and its libraries) on stderr; -vv: DEBUG. Without -v logging is left
    as the libraries set it up (dask keeps its own quiet defaults)."""
    if args.verbose:
        import logging
        logging.basicConfig(level=logging.INFO if args.verbose == 1 else logging.DEBUG,
                            format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bench`` console script; returns the exit code (0 ok, 1 every cell of the run
    failed, 2 bad input, 130 / 143 interrupted by Ctrl-C / SIGTERM)."""
    ap = _parser()
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given (recorded by bench tune)
    if args.cmd is None:  # `bench` alone: the help, as a successful answer to "what can this do?"
        ap.print_help()
        return 0
    _logging(args)
    try:
        with _terminate_as_interrupt():
            return COMMANDS[args.cmd](args)
    except ConfigError as e:
        if args.verbose >= 2:
            import traceback
            traceback.print_exc()
        print(f"bench {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        what = "run" if args.cmd == "run" else args.cmd
        tail = ("finished cells are saved, rerun the same command to resume" if args.cmd == "run"
                else "rerun the same command to continue")
        print(f"bench {what}: interrupted ({signal.Signals(signum).name}); {tail}", file=sys.stderr)
        return 128 + int(signum)


if __name__ == "__main__":
    sys.exit(main())
