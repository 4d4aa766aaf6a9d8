"""Plot LDNet time-to-accuracy curves written by ``scripts/ldnet_ablation.py``.

Usage::

    python scripts/plot_ablation.py results/ablation docs/img/ldnet_time_to_accuracy.png

One panel per problem: test rRMSE (physical units, 256 fixed points per test snapshot) against optimisation
seconds, one line per recipe tag; prints a table of the final errors and times.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    argv = sys.argv[1:] if argv is None else argv
    src, dest = Path(argv[0]), Path(argv[1])
    curves = sorted(src.glob("*.csv"))
    if not curves:
        raise SystemExit(f"no curves in {src}")
    by_problem: dict[str, list[Path]] = {}
    for c in curves:
        problem = "kolmogorov" if c.stem.startswith("kolmogorov") else "shallow_water"
        by_problem.setdefault(problem, []).append(c)
    fig, axes = plt.subplots(2, len(by_problem), figsize=(5.5 * len(by_problem), 7), squeeze=False,
                             layout="constrained")
    rows = []
    for col, (problem, files) in enumerate(sorted(by_problem.items())):
        for f in files:
            tag = f.stem[len(problem) + 1:]
            df = pd.read_csv(f)
            if "stage" in df:
                df = df[df["stage"].astype(str).str.startswith("ldnet")]
            axes[0, col].plot(df["epoch"], df["test_rrmse_phys"], marker=".", label=tag)
            axes[1, col].plot(df["train_s"] / 60, df["test_rrmse_phys"], marker=".", label=tag)
            summ = json.loads(f.with_suffix(".json").read_text()) if f.with_suffix(".json").exists() else {}
            rows.append({"problem": problem, "recipe": tag, "epochs": int(df["epoch"].iloc[-1]),
                         "minutes": round(df["train_s"].iloc[-1] / 60, 1),
                         "test_rrmse_phys (full grid)": round(summ.get("test_rrmse_phys", float("nan")), 4)})
        for row, xl in enumerate(("epoch", "optimisation time [min], 1 thread (shared machine: noisy)")):
            ax = axes[row, col]
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel("test rRMSE (physical)")
            ax.set_title(problem)
            ax.axhline(0.05, color="0.5", ls=":", lw=1)
            ax.legend(fontsize=8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
