"""Where the cells of a grid run: in this process, in a local process pool, or on a Dask cluster.

Every executor runs the same task, :func:`run_task`, which runs one cell and writes its file atomically *in the
process that ran it* (``bench.executors.run_and_write``); the client only gathers ``(cell_id, status)`` pairs and
consolidates. A worker that dies mid-cell therefore leaves no cell file (at most a hidden ``.tmp`` file that the
next run removes) and the cell is run again: by Dask on another worker, or by the next ``bench run``.

========================  =============================================================================
``SequentialExecutor``    one cell after another in this process (the default)
``LocalPoolExecutor``     ``--executor local --jobs N``: N spawned processes on this machine
``DaskExecutor``          ``--executor dask --workers N`` (a LocalCluster on 127.0.0.1) or
                          ``--executor dask --scheduler ADDRESS`` (a running ``dask.distributed`` cluster)
========================  =============================================================================

On Dask, a cell whose ``device`` is ``cuda*`` is submitted with ``resources={"GPU": 1}``, so it only runs on a
worker started with ``--resources GPU=1`` (one GPU cell at a time per such worker). The run folder and the
dataset cache must be visible to the workers at the same paths (a shared filesystem on a multi-node cluster).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


from assimbench.errors import ConfigError
from assimbench.registry import load_plugins
from bench import store
from bench.config import Cell
from bench.runner import CellResult, param_columns, run_cell

#: seconds to wait for a Dask scheduler before giving up with a ConfigError
CONNECT_TIMEOUT_S = 5.0
DASK_INSTALL = "pip install 'assimbench[dask]'"


def run_and_write(cell: Cell, run_dir: Path, cache_dir: Path | None, raise_errors: bool,
                  threads: int | None = None, jobs: int | None = None) -> tuple[str, str]:
    """Run a cell (``threads`` torch threads, ``jobs`` cells side by side, both recorded) and write its result
    atomically (in whichever process runs it)."""
    result = run_cell(cell, cache_dir=cache_dir, raise_errors=raise_errors, threads=threads, jobs=jobs)
    store.write_result(run_dir, result)
    return cell.cell_id, result.status


def run_task(cell: Cell, run_dir: Path, cache_dir: Path | None, raise_errors: bool, plugins: Sequence[str] = (),
             threads: int | None = None, jobs: int | None = None) -> tuple[str, str]:
    """Run one cell in whichever process executes this and write its file atomically.

    Parameters
    ----------
    cell : the cell to run.
    run_dir : the run folder (must be the same path for the client and every worker).
    cache_dir : the dataset/model cache (resolved by the client, so every worker uses the same one).
    raise_errors : re-raise a failing cell's exception instead of recording it.
    plugins : modules to import first, so methods/problems they register exist in a fresh worker process.
    threads : torch intra-op threads for this process and cell, or None to keep the process default.
    jobs : how many cells the executor runs side by side (recorded in the row).

    Returns
    -------
    ``(cell_id, status)`` with status ``ok``, ``failed`` or ``skipped``.
    """
    if threads:
        import torch
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    load_plugins(list(plugins))
    return run_and_write(cell, Path(run_dir), Path(cache_dir) if cache_dir is not None else None, raise_errors,
                         threads=threads, jobs=jobs)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(parallel: int) -> int:
    """The threads rule of every executor: the available cores divided by the cells run side by side."""
    return max(1, available_cores() // max(1, parallel))


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"--threads {threads}: must be an integer >= 1")


class Executor:
    """Runs :func:`run_task` over cells; use as a context manager around :meth:`run`."""

    name = "executor"

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def describe(self) -> str:
        return self.name

    def run(self, cells: list[Cell], run_dir: Path, cache_dir: Path | None, raise_errors: bool,
            plugins: Sequence[str]) -> Iterator[tuple[str, str]]:
        """Yield ``(cell_id, status)`` as cells finish (in any order)."""
        raise NotImplementedError


class SequentialExecutor(Executor):
    """One cell after another in this process, each with ``threads`` torch threads (default: every core)."""

    name = "sequential"

    def __init__(self, threads: int | None = None):
        _check_threads(threads)
        self.threads = threads or default_threads(1)

    def describe(self) -> str:
        return f"sequential (1 process x {self.threads} threads)"

    def run(self, cells, run_dir, cache_dir, raise_errors, plugins):
        for c in cells:
            yield run_task(c, run_dir, cache_dir, raise_errors, plugins, self.threads, 1)


#: seconds between two checks of a pool worker's watchdog that its parent is still alive
WATCHDOG_INTERVAL_S = 0.5
#: seconds a terminated pool worker gets to exit before it is killed
TERMINATE_GRACE_S = 3.0


def die_with_parent(parent_pid: int, interval: float = WATCHDOG_INTERVAL_S) -> None:
    """Make this (worker) process exit when ``parent_pid`` dies, however it dies (SIGKILL included).

    On Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon
    thread polls ``os.getppid()`` (a re-parented process has another parent) and ends the process. A worker
    left alive would go on writing cells outside the run lock.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog below still holds
    if os.getppid() != parent_pid:  # the parent died before the line above ran
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="assimbench-parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in this process while it starts child processes, which inherit the ignored disposition.

    A Ctrl-C at the terminal reaches the whole process group; workers born ignoring it leave the interrupt to
    this process, which stops them (no tracebacks of their own, no cell computed after the interrupt). A Ctrl-C
    during the start itself (milliseconds for a pool, a few seconds for a Dask LocalCluster) is ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _pool_init(threads: int, parent_pid: int | None = None) -> None:
    import torch
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    if parent_pid is not None:
        die_with_parent(parent_pid)
    torch.set_num_threads(threads)


def stop_pool(pool) -> None:
    """Cancel a process pool's queued cells and end its workers now (Ctrl-C, SIGTERM, an error).

    A cell that a worker was running leaves no cell file (at most a hidden ``.tmp`` file that the next run
    removes), so the next `bench run` reruns it.
    """
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(TERMINATE_GRACE_S)
            if p.is_alive():
                p.kill()
                p.join(TERMINATE_GRACE_S)


class LocalPoolExecutor(Executor):
    """``jobs`` spawned worker processes on this machine, each with ``threads`` torch threads (default: the
    cores divided by ``jobs``).

    The workers ignore SIGINT and die with this process (:func:`die_with_parent`); on Ctrl-C, SIGTERM or an
    error the queued cells are cancelled and the workers terminated (:func:`stop_pool`).
    """

    name = "local"

    def __init__(self, jobs: int, threads: int | None = None):
        if jobs < 1:
            raise ConfigError(f"--jobs {jobs}: must be >= 1")
        _check_threads(threads)
        self.jobs = jobs
        self.threads = threads or default_threads(jobs)

    def describe(self) -> str:
        return f"local process pool ({self.jobs} processes x {self.threads} threads)"

    def run(self, cells, run_dir, cache_dir, raise_errors, plugins):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        pool = ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"), initializer=_pool_init,
                                   initargs=(self.threads, os.getpid()))
        finished = False
        try:
            with sigint_ignored():  # submit starts the worker processes
                futs = [pool.submit(run_task, c, run_dir, cache_dir, raise_errors, tuple(plugins),
                                    self.threads, self.jobs) for c in cells]
            try:
                for f in as_completed(futs):
                    yield f.result()
            except BrokenProcessPool:
                raise RuntimeError("a worker process of the local pool died (killed, or out of memory?); the "
                                   "finished cells are saved, rerun the same command to run the rest") from None
            finished = True
        finally:
            if finished:
                pool.shutdown(wait=True)
            else:  # interrupted (KeyboardInterrupt, SIGTERM, the generator closed) or failed: stop now
                stop_pool(pool)


class DaskExecutor(Executor):
    """Cells as tasks on a ``dask.distributed`` cluster.

    Parameters
    ----------
    scheduler : address of a running scheduler (``tcp://host:8786``); None starts a LocalCluster.
    workers : worker processes of the LocalCluster (default: one per CPU core); ignored with ``scheduler``.
    timeout : seconds to wait for the scheduler before a ConfigError.
    threads : torch threads per cell (default on a LocalCluster: the cores divided by ``workers``; on a running
        cluster: the workers' own setting unless given).
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 timeout: float = CONNECT_TIMEOUT_S, threads: int | None = None):
        if scheduler is not None and workers is not None:
            raise ConfigError("give either --scheduler ADDRESS (a running cluster) or --workers N (a local "
                              "cluster), not both")
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers {workers}: must be >= 1")
        if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
            raise ConfigError(f"--scheduler {scheduler!r}: give an address such as tcp://10.0.0.5:8786")
        self.distributed = import_distributed()
        self.scheduler = scheduler.strip() if scheduler else None
        _check_threads(threads)
        self.workers = workers if workers is not None else available_cores()
        self.timeout = timeout
        self.threads = threads
        self.cluster = None
        self.client = None
        self._worker_pids: set[int] = set()
        self._log_level = logging.NOTSET  # the 'distributed' logger's level before __enter__, restored on exit

    def describe(self) -> str:
        if self.scheduler:
            return f"dask cluster at {self.scheduler}" + (f" ({self.threads} threads per cell)" if self.threads
                                                            else "")
        return f"dask LocalCluster ({self.workers} worker processes x {self._threads()} threads, 127.0.0.1)"

    def __enter__(self) -> "DaskExecutor":
        d = self.distributed
        # the scheduler of a LocalCluster runs in this process and logs to the 'distributed' logger at INFO,
        # including connection tracebacks while workers stop: keep only errors for the executor's lifetime
        self._log_level = logging.getLogger("distributed").level
        logging.getLogger("distributed").setLevel(logging.ERROR)
        if self.scheduler is None:
            # worker processes born ignoring SIGINT (and told again by a plugin, for restarted ones): a Ctrl-C at
            # the terminal interrupts only this process, and __exit__ closes the workers without tracebacks
            with sigint_ignored():
                self.cluster = d.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                              host="127.0.0.1", dashboard_address=":0", silence_logs=40)
                self.client = d.Client(self.cluster)
                self.client.register_plugin(ignore_sigint_plugin(d), name="assimbench-ignore-sigint")
                self._worker_pids = set(self.client.run(os.getpid).values())
        else:
            try:
                self.client = d.Client(self.scheduler, timeout=self.timeout)
            except Exception as e:  # OSError / TimeoutError / ValueError for a malformed address
                raise ConfigError(f"cannot connect to the Dask scheduler at {self.scheduler!r} within "
                                  f"{self.timeout:g} s ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                  f"); start one with `dask scheduler` and `dask worker ADDRESS`, or use "
                                  f"--executor dask --workers N for a cluster on this machine") from None
        return self

    def __exit__(self, exc_type=None, *exc) -> None:
        try:
            self._close(exc_type)
        finally:
            logging.getLogger("distributed").setLevel(self._log_level)

    def _close(self, exc_type) -> None:
        if exc_type is not None:
            # stopping mid-run: the closed connections of killed workers are expected, not news to the user
            logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)
        if exc_type is not None and self.cluster is not None:
            # interrupted or failed: the local workers' running cells are abandoned (no cell file is written
            # for them; the next run reruns them), so end those processes now rather than wait for the cells
            for nanny in getattr(self.cluster, "workers", {}).values():
                nanny.auto_restart = False  # the nannies would start new workers (and warnings) in their place
            for pid in self._worker_pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def _threads(self) -> int | None:
        # a LocalCluster shares this machine: split its cores between the worker processes; on a remote
        # cluster the workers keep their own default (set OMP_NUM_THREADS when starting `dask worker`)
        if self.threads:
            return self.threads
        return default_threads(self.workers) if self.scheduler is None else None

    def run(self, cells, run_dir, cache_dir, raise_errors, plugins):
        if self.client is None:
            raise RuntimeError("use DaskExecutor as a context manager")
        threads = self._threads()
        futs = {}
        for c in cells:
            kw = {"resources": {"GPU": 1}} if c.device.startswith("cuda") else {}
            f = self.client.submit(run_task, c, run_dir, cache_dir, raise_errors, tuple(plugins), threads,
                                   self.workers if self.scheduler is None else None,
                                   key=f"cell-{c.cell_id}", pure=False, **kw)
            futs[f] = c
        finished = False
        try:
            yield from self._gather(futs, run_dir)
            finished = True
        finally:
            if not finished:  # interrupted or failed: drop the queued cells now (__exit__ then closes the cluster)
                with contextlib.suppress(Exception):
                    self.client.cancel(list(futs), force=True)

    def _gather(self, futs: dict, run_dir: Path) -> Iterator[tuple[str, str]]:
        d = self.distributed
        for f in d.as_completed(list(futs)):
            c = futs[f]
            try:
                cell_id, status = f.result()
            except d.KilledWorker:
                # the cell killed every worker it ran on (segfault, out of memory): that is data, not a crash
                cell_id, status = c.cell_id, _record_killed(c, run_dir)
            if not store.cell_path(run_dir, cell_id).exists():
                raise ConfigError(f"a Dask worker finished cell {cell_id} but its file is not in "
                                  f"{store.cells_dir(run_dir)} as this machine sees it: the run folder (--out) "
                                  f"must be on a filesystem shared by the client and every worker, at the same path")
            yield cell_id, status


def _ignore_sigint(worker=None) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def ignore_sigint_plugin(distributed):
    """A Dask worker plugin: the worker process ignores SIGINT (its LocalCluster client handles Ctrl-C)."""

    class IgnoreSigint(distributed.WorkerPlugin):
        def setup(self, worker) -> None:
            _ignore_sigint(worker)

    return IgnoreSigint()


def _record_killed(cell: Cell, run_dir: Path) -> str:
    """Write a ``failed`` cell for a cell that killed its Dask workers (so the sweep goes on)."""
    row = {"cell_id": cell.cell_id, "status": "failed", "n_cycles": 0,
           "error": "KilledWorker: every Dask worker that ran this cell died (out of memory or a crash in native "
                    "code); rerun with --retry-failed after fixing the cause",
           **param_columns(cell)}
    store.write_result(Path(run_dir), CellResult(cell.to_dict(), row, []))
    return "failed"


def import_distributed():
    """``dask.distributed``, or a ConfigError naming the install command."""
    try:
        import distributed
    except ImportError as e:
        raise ConfigError(f"--executor dask needs the optional dependency dask.distributed ({e}); install it with "
                          f"{DASK_INSTALL}") from None
    return distributed


def make_executor(kind: str | None = None, *, jobs: int = 1, workers: int | None = None,
                  scheduler: str | None = None, threads: int | None = None) -> Executor:
    """The executor for the CLI flags ``--executor``, ``--jobs``, ``--workers``, ``--scheduler``.

    ``kind`` None means ``dask`` when ``workers`` or ``scheduler`` is given, else ``local``. ``local`` with
    ``jobs == 1`` is the sequential executor.
    """
    if kind is None:
        kind = "dask" if (workers is not None or scheduler is not None) else "local"
    if kind == "local":
        if scheduler is not None or workers is not None:
            raise ConfigError("--scheduler and --workers are for --executor dask; with --executor local use "
                              "--jobs N")
        if jobs < 1:
            raise ConfigError(f"--jobs {jobs}: must be >= 1")
        return SequentialExecutor(threads) if jobs == 1 else LocalPoolExecutor(jobs, threads)
    if kind == "dask":
        if jobs != 1:
            raise ConfigError(f"--jobs {jobs} is for --executor local; with --executor dask give --workers N "
                              f"(a local cluster) or --scheduler ADDRESS")
        return DaskExecutor(scheduler=scheduler, workers=workers, threads=threads)
    raise ConfigError(f"--executor {kind!r} is not supported; valid: local, dask")
