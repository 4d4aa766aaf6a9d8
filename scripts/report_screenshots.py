"""Screenshots of a run's HTML report for the README: headless Chromium at 1280 px.

    python scripts/report_screenshots.py RUN_DIR [--out docs/img] [--page shallow-water] [--height 1800]

Builds ``RUN_DIR/report`` (``bench report``) and writes ``report-index.png`` (the index) and
``report-<page>.png`` (the problem page whose name starts with ``--page``) into ``--out``, plus a copy of that
problem's rRMSE-over-cycles figure as ``<page>_cycles.png``. Needs ``chromium`` (``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def screenshot(chromium: str, page: Path, out: Path, width: int, height: int, profile: Path) -> None:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
           f"--window-size={width},{height}", "--virtual-time-budget=15000", f"--screenshot={out}",
           page.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a results folder")
    ap.add_argument("--out", type=Path, default=Path("docs/img"), help="where the PNG files go (default: docs/img)")
    ap.add_argument("--page", default="shallow-water", help="problem page to capture (default: shallow-water)")
    ap.add_argument("--width", type=int, default=1280, help="browser width in px (default: 1280)")
    ap.add_argument("--height", type=int, default=1800, help="screenshot height in px (default: 1800)")
    args = ap.parse_args(argv)
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        print("no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    from bench.report import build_report
    index = build_report(args.run_dir)
    # the page of that exact name first (``shallow-water`` before ``shallow-water-arctan``)
    pages = sorted(index.parent.glob(f"{args.page}*.html"), key=lambda p: (p.stem != args.page, p.name))
    if not pages:
        print(f"no problem page starting with {args.page!r} in {index.parent}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    profile = args.run_dir / "report" / ".chromium-profile"
    try:
        screenshot(chromium, index, args.out / "report-index.png", args.width, args.height, profile)
        screenshot(chromium, pages[0], args.out / f"report-{args.page}.png", args.width, args.height, profile)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    cycles = sorted(index.parent.glob(f"img/{pages[0].stem}_cycles*.png"))
    if cycles:
        shutil.copyfile(cycles[0], args.out / f"{args.page}_cycles.png")
    print("\n".join(str(p) for p in sorted(args.out.glob("report-*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
