"""The generic training loop of the learned methods (Adam stages with evaluation, best-weight selection and
checkpoints), its log, the learning-rate schedules, the named training recipes and the relative error the trainers
report. Each network's trainer sits beside its network (:mod:`methods.ldnet_train`, :mod:`methods.vae_train`);
the artifact cache that stores what they train is :mod:`methods.artifact_cache`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from assimbench.errors import ConfigError

log = logging.getLogger("assimbench.training")

Schedule = Literal["constant", "cosine", "onecycle", "step"]


# --------------------------------------------------------------------------------------------------------------
# Named training recipes
# --------------------------------------------------------------------------------------------------------------
def recipe_values(recipes: dict, recipe: str, problem_name: str | None) -> dict[str, Any]:
    """The field values of ``recipe`` for ``problem_name`` (its ``"*"`` entries, then the problem's own)."""
    if recipe not in recipes:
        raise ConfigError(f"unknown training recipe {recipe!r}; valid: {', '.join(sorted(recipes))}")
    out = dict(recipes[recipe].get("*", {}))
    if problem_name is not None:
        out.update(recipes[recipe].get(problem_name, {}))
    return out


def train_field(**kw) -> Any:
    """A field of a learned method that is a training hyperparameter (``dataclasses.field`` keywords): the ones
    :func:`resolve_recipe` collects into the training configuration, whose identity is hashed into the artifact
    key (the filter's own fields are not)."""
    return dataclasses.field(metadata={"train": True}, **kw)


def user_set(method, name: str) -> bool:
    """Whether training field ``name`` of ``method`` was set by the user: given to :func:`methods.get` (recorded in
    ``method.explicit_fields``) or differing from the class default."""
    default = next(f.default for f in dataclasses.fields(method) if f.name == name)
    return name in getattr(method, "explicit_fields", frozenset()) or getattr(method, name) != default


def resolve_recipe(method, recipes: dict, problem_name: str | None) -> dict[str, Any]:
    """Training values of ``method`` under its ``recipe``: a field the user set (given to :func:`methods.get`,
    recorded in ``method.explicit_fields``, or differing from the class default) wins; any other field takes the
    recipe's value; keys that are not fields of the method are returned as given by the recipe (they configure
    the trainer directly)."""
    vals = recipe_values(recipes, method.recipe, problem_name)
    fields = [f.name for f in dataclasses.fields(method) if f.metadata.get("train")]
    out = {k: getattr(method, k) for k in fields}
    for k, v in vals.items():
        if k not in out or not user_set(method, k):
            out[k] = v
    out["recipe"] = method.recipe
    return out


# --------------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------------
class TrainLog:
    """Learning-curve rows, log lines and the cumulative optimisation time of one training pipeline."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.rows: list[dict] = []
        self.lines: list[str] = []
        self.train_s = 0.0
        self.train_cpu_s = 0.0  # CPU seconds of this process in the optimisation steps (robust to a shared machine)
        self.t0 = time.perf_counter()

    def info(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:8.1f}s] {msg}"
        self.lines.append(line)
        log.info(msg)
        if self.progress:
            tqdm.write(line, file=sys.stderr)

    def record(self, **row: Any) -> None:
        row = dict(train_s=round(self.train_s, 3), train_cpu_s=round(self.train_cpu_s, 3),
                   wall_s=round(time.perf_counter() - self.t0, 3), **row)
        self.rows.append(row)


def lr_lambda(schedule: Schedule, total: int, final_frac: float = 1e-2, warmup: float = 0.02,
              step_gamma: float = 0.6) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimisation step ``i`` of ``total`` (``step``: ten decays by
    ``step_gamma`` spread evenly over the run, i.e. a StepLR every ``total / 10`` steps)."""
    n_warm = max(1, int(warmup * total))

    def f(i: int) -> float:
        if schedule == "constant":
            return 1.0
        if schedule == "step":  # LD-EnSF: StepLR, 10 decays of 0.6 over the run
            return step_gamma ** min(9, int(10 * i / max(total, 1)))
        if schedule == "onecycle":  # 25 % linear warm-up from lr/25, then cosine to lr * final_frac
            w = max(1, int(0.25 * total))
            if i < w:
                return 0.04 + 0.96 * i / w
            p = min(1.0, (i - w) / max(1, total - w))
            return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p))
        # cosine with a short warm-up
        if i < n_warm:
            return (i + 1) / n_warm
        p = min(1.0, (i - n_warm) / max(1, total - n_warm))
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_stage(name: str, modules: dict[str, nn.Module], params: list[nn.Parameter],
              batches: Callable[[int], Iterable[torch.Tensor]], *, epochs: int, steps_per_epoch: int, lr: float,
              schedule: Schedule, evaluate: Callable[[], dict[str, float]], select: str, eval_every: int,
              tlog: TrainLog, weight_decay: float = 0.0, grad_clip: float = 0.0,
              checkpoint: Path | str | None = None, rng: torch.Generator | None = None,
              step_gamma: float = 0.6, stop_at: int | None = None,
              resume_from: Path | str | None = None) -> dict[str, float]:
    """Adam over ``epochs`` epochs of ``batches(epoch)`` (each yields scalar losses), keeping the best weights.

    Every ``eval_every`` epochs (and after the last) ``evaluate()`` is called outside the training clock; its
    ``select`` entry (lower is better) picks the weights restored into ``modules`` at the end. Shows a tqdm bar
    with the running loss, the last validation error and the time estimate; returns the best evaluation.

    ``checkpoint``: a file written after every evaluation (weights, optimiser, schedule, best weights, ``rng``'s
    state, the learning curve and the optimisation time so far); when it exists at the start, training resumes
    from it, so an interrupted run continues and reaches the same weights as an uninterrupted one. Calling again
    with a larger ``epochs`` continues a finished run (the schedule is re-laid over the new total).

    ``stop_at``: stop after that epoch of the ``epochs``-epoch run (its schedule unchanged): a snapshot along the
    training curve. The run's state at the stop is written to ``checkpoint`` (so a later call continues the same
    run), the current weights are evaluated once more (a curve row; not part of the run's own selection, which
    stays that of the uninterrupted run), and the best weights up to the stop are restored and returned.
    ``resume_from``: a checkpoint of the same run to start from instead of ``checkpoint`` (read only).
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay > 0 \
        else torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, epochs * steps_per_epoch,
                                                             step_gamma=step_gamma))
    best: dict[str, float] = {select: float("inf")}
    best_state: dict[str, dict] = {}
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    src = Path(resume_from) if resume_from is not None and Path(resume_from).exists() else ckpt
    stop = epochs if stop_at is None else min(int(stop_at), epochs)
    if src is not None and src.exists():
        st = torch.load(src, map_location="cpu", weights_only=False)
        for k, m in modules.items():
            m.load_state_dict(st["modules"][k])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        best, best_state, start = st["best"], st["best_state"], st["epoch"]
        if rng is not None:
            rng.set_state(st["rng"])
        tlog.rows, tlog.lines, tlog.train_s = st["rows"], st["lines"], st["train_s"]
        tlog.train_cpu_s = st.get("train_cpu_s", 0.0)
        tlog.info(f"{name}: resumed from {src} at epoch {start} ({tlog.train_s:.0f} s of optimisation)")
        if start > stop:
            raise ValueError(f"{name}: checkpoint {src} is at epoch {start}, past the stop at epoch {stop}")
    bar = None
    if tlog.progress:
        bar = tqdm(total=epochs, initial=min(start, epochs), desc=name, unit="ep", leave=False,
                   dynamic_ncols=True)
    ev: dict[str, float] = {}

    def save(epoch: int) -> None:
        _save_checkpoint(ckpt, dict(
            modules={k: m.state_dict() for k, m in modules.items()}, opt=opt.state_dict(),
            sched=sched.state_dict(), best=best, best_state=best_state, epoch=epoch,
            rng=rng.get_state() if rng is not None else None, rows=tlog.rows, lines=tlog.lines,
            train_s=tlog.train_s, train_cpu_s=tlog.train_cpu_s))

    for ep in range(start, stop):
        t0, c0 = time.perf_counter(), time.process_time()
        tot, n = 0.0, 0
        for loss in batches(ep):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            tot += float(loss.detach())
            n += 1
        tlog.train_s += time.perf_counter() - t0
        tlog.train_cpu_s += time.process_time() - c0
        train_loss = tot / max(n, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{name}: training loss became {train_loss} at epoch {ep}; lower the lr")
        if (ep + 1) % eval_every == 0 or ep == epochs - 1:
            with torch.no_grad():
                ev = evaluate()
            tlog.record(stage=name, epoch=ep + 1, lr=opt.param_groups[0]["lr"], train_loss=train_loss, **ev)
            if ev[select] < best[select]:
                best = dict(ev, epoch=ep + 1)
                best_state = {k: {n_: t.detach().clone() for n_, t in m.state_dict().items()}
                              for k, m in modules.items()}
            tlog.lines.append(f"{name} ep {ep + 1}: loss {train_loss:.3e} "
                              + " ".join(f"{k} {v:.4g}" for k, v in ev.items()))
            if ckpt is not None:
                save(ep + 1)
        if bar is not None:
            bar.set_postfix_str(f"loss {train_loss:.2e} {select} {ev.get(select, float('nan')):.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if stop < epochs:  # a snapshot: keep the run's state, then select among the evaluations up to here
        if ckpt is not None and start < stop:
            save(stop)
        with torch.no_grad():
            ev = evaluate()
        tlog.record(stage=name, epoch=stop, lr=opt.param_groups[0]["lr"], snapshot=True, **ev)
        if ev[select] < best[select]:
            best = dict(ev, epoch=stop)
            best_state = {}  # the current weights are the best: nothing to restore
    for k, m in modules.items():
        if k in best_state:
            m.load_state_dict(best_state[k])
    tlog.info(f"{name}: best {select} {best[select]:.4g} at epoch {best.get('epoch')} "
              f"({tlog.train_s:.0f} s of optimisation so far)")
    return best




# --------------------------------------------------------------------------------------------------------------
# Training budgets: snapshots along one run's training curve
# --------------------------------------------------------------------------------------------------------------
def check_fraction(value: Any, who: str) -> None:
    """A training budget must be a number in (0, 1] (a fraction of the recipe's epochs); else ConfigError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= 1
    if not ok:
        raise ConfigError(f"{who} train_fraction={value!r} must be a number in (0, 1]: the fraction of the recipe's "
                          "epochs after which the network is taken (1 = the whole run)")


def stop_epoch(epochs: int, fraction: float) -> int:
    """The epoch at which a run of ``epochs`` epochs is taken for the training budget ``fraction`` (at least 1)."""
    return max(1, min(epochs, round(fraction * epochs)))


class SnapshotRun:
    """The checkpoints of one training run kept at the epochs where snapshots were taken (``ep<epoch>.pt`` in
    ``folder``): a snapshot at a later epoch continues the run from the nearest earlier one instead of starting
    over, so the snapshots of a budget sweep cost one run. :meth:`lock` serialises the processes that train the
    same run (the cells of a parallel sweep)."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def path(self, epoch: int) -> Path:
        return self.folder / f"ep{epoch:07d}.pt"

    def latest(self, upto: int) -> Path | None:
        """The checkpoint of the largest epoch <= ``upto`` (None: none yet)."""
        found = sorted(p for p in self.folder.glob("ep*.pt") if p.stem[2:].isdigit() and int(p.stem[2:]) <= upto)
        return found[-1] if found else None

    @contextlib.contextmanager
    def lock(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def checkpoint_epoch(path: Path | str) -> int:
    """The epoch a :func:`run_stage` checkpoint was written at."""
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def snapshot_files(snapshots: SnapshotRun | None, stop: int, epochs: int) -> tuple[Path | None, Path | None]:
    """``(checkpoint, resume_from)`` for :func:`run_stage` of a run taken at epoch ``stop`` of ``epochs``: a
    snapshot keeps the run's state at its stop; every run (the whole one too) starts from the nearest earlier
    kept state."""
    if snapshots is None:
        return None, None
    return (snapshots.path(stop) if stop < epochs else None), snapshots.latest(stop)


def rel_l2(pred: torch.Tensor, true: torch.Tensor, mean: torch.Tensor | None = None,
           std: torch.Tensor | None = None) -> torch.Tensor:
    """Per-snapshot relative L2 over points and fields ``(..., n, C) -> (...)``.

    With ``mean``/``std`` ``(C,)`` the error is measured in physical units (all fields pooled, as the paper).
    """
    if std is not None:
        s = std.to(pred.device, pred.dtype)
        err = (pred - true) * s
        ref = true * s + mean.to(pred.device, pred.dtype)
    else:
        err, ref = pred - true, true
    return (err.pow(2).sum((-1, -2)) / ref.pow(2).sum((-1, -2)).clamp_min(1e-30)).sqrt()

