"""Plot time-to-accuracy curves written by ``scripts/ldnet_ablation.py``: one figure per problem.

Usage::

    python scripts/plot_ablation.py SRC_DIR [SRC_DIR ...] OUT_DIR

For every ``<problem>_<tag>.csv`` (with its ``.json`` summary) under the source folders, draws the test rRMSE
(physical units, the curve's fixed evaluation points per test snapshot) against optimisation minutes (the CPU
time of the one-thread process where the curve records it, else wall-clock time), one colour per recipe tag (20
distinct), with the training error dashed beside it (same points on a fixed training subset; for curves recorded
before that column existed, the square root of the training loss, a normalised-units proxy),
the 0.10 / 0.05 targets and the paper's value. Writes
``OUT_DIR/time_to_accuracy_<problem>.png`` and prints a table of the final errors (full test grid) and times.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

PAPER = {"shallow_water": 0.0168, "kolmogorov": 0.0123}


def load(srcs: list[Path]) -> dict[str, list[tuple[str, pd.DataFrame, dict]]]:
    out: dict[str, list] = {}
    for src in srcs:
        for f in sorted(src.glob("*.csv")):
            problem = "kolmogorov" if f.stem.startswith("kolmogorov") else "shallow_water"
            tag = f.stem[len(problem) + 1:]
            df = pd.read_csv(f)
            if "stage" in df:
                df = df[df["stage"].astype(str).str.startswith("ldnet")]
            summ = json.loads(f.with_suffix(".json").read_text()) if f.with_suffix(".json").exists() else {}
            out.setdefault(problem, []).append((tag, df, summ))
    return out


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    argv = sys.argv[1:] if argv is None else argv
    *srcs, dest = [Path(a) for a in argv]
    data = load(srcs)
    if not data:
        raise SystemExit(f"no curves in {', '.join(map(str, srcs))}")
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for problem, runs in sorted(data.items()):
        fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
        for i, (tag, df, summ) in enumerate(runs):
            color = plt.get_cmap("tab20")(i % 20)  # more recipes than the ten default colours
            # CPU minutes of the (one-thread) process where recorded: robust to a shared machine; else wall
            minutes = (df["train_cpu_s"] if "train_cpu_s" in df and df["train_cpu_s"].notna().all()
                       else df["train_s"]) / 60
            ax.plot(minutes, df["test_rrmse_phys"], color=color, marker=".", label=f"{tag} (test)")
            if "train_rrmse_phys" in df and df["train_rrmse_phys"].notna().any():
                ax.plot(minutes, df["train_rrmse_phys"], color=color, ls="--", lw=1, label=f"{tag} (train)")
            else:  # older curves: the training loss (mean squared error of z-scored fields ~ rRMSE^2, normalised)
                ax.plot(minutes, df["train_loss"] ** 0.5, color=color, ls="--", lw=1,
                        label=f"{tag} (train, sqrt loss)")
            rows.append({"problem": problem, "recipe": tag, "epochs": int(df["epoch"].iloc[-1]),
                         "minutes": round(float(minutes.iloc[-1]), 1),
                         "curve test": round(float(df["test_rrmse_phys"].iloc[-1]), 4),
                         "curve train": round(float(df["train_rrmse_phys"].iloc[-1]), 4)
                         if "train_rrmse_phys" in df else round(float(df["train_loss"].iloc[-1]) ** 0.5, 4),
                         "full-grid test": round(summ.get("test_rrmse_phys", float("nan")), 4)})
        for y, label in ((0.10, "0.10 target"), (0.05, "0.05 target")):
            ax.axhline(y, color="0.5", ls=":", lw=1)
            ax.text(ax.get_xlim()[1], y, label, ha="right", va="bottom", fontsize=7, color="0.4")
        if problem in PAPER:
            ax.axhline(PAPER[problem], color="k", ls="-.", lw=1)
            ax.text(ax.get_xlim()[1], PAPER[problem], "paper (GPU)", ha="right", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("optimisation time [min]: CPU minutes of one thread (older curves: wall, shared machine)")
        ax.set_ylabel("LDNet rRMSE (physical units)")
        ax.set_title(f"{problem}: time to accuracy per training recipe")
        ax.legend(fontsize=7, ncol=2)
        fig.savefig(dest / f"time_to_accuracy_{problem}.png", dpi=110)
        plt.close(fig)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
