"""The HTML report in a real browser: headless Chromium renders the index and one problem page of a smoke run at
1280 px; the page must not overflow horizontally (wide tables scroll inside their own box) and every image must
load and decode.

Skipped, with the reason, where no Chromium is installed (``apt-get install chromium``; CI installs it). Set
``ASSIMBENCH_REPORT_RUN`` to a run folder (e.g. of the default preset) to check that run's report instead of a
fresh smoke run.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome",
                                                        "google-chrome-stable")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium): the "
                                                         "browser check of the report is skipped")
WIDTH = 1280

#: measures, once the page and its images have loaded, what a reader would see go wrong
PROBE = """<script>
window.addEventListener('load', () => {
  const de = document.documentElement;
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const wide = [...document.querySelectorAll('body *')]
    .filter(e => !e.closest('.tbl, pre, script') && e.getBoundingClientRect().right > de.clientWidth + 1)
    .slice(0, 8).map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')
                           + ' right=' + Math.round(e.getBoundingClientRect().right));
  document.body.setAttribute('data-probe', JSON.stringify({
    viewport: de.clientWidth, scroll_width: de.scrollWidth, images: imgs.length, broken: broken, wide: wide}));
});
</script>"""


def chromium(*args: str, profile: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--mute-audio", f"--user-data-dir={profile}", f"--window-size={WIDTH},1000"]
    return subprocess.run(base + list(args), capture_output=True, text=True, timeout=timeout)


def probe(page: Path, profile: Path) -> dict:
    """Render ``page`` at 1280 px with the probe script in a copy beside it (same relative image links)."""
    copy = page.with_name(f"_probe_{page.name}")
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    try:
        r = chromium("--virtual-time-budget=15000", "--dump-dom", copy.resolve().as_uri(), profile=profile)
    finally:
        copy.unlink()
    m = re.search(r'data-probe="([^"]*)"', r.stdout)
    assert m, f"the page did not finish loading in Chromium: {r.stderr[-1500:]}"
    return json.loads(html.unescape(m.group(1)))


@pytest.fixture(scope="module")
def report(tmp_path_factory, cache_dir) -> Path:
    given = os.environ.get("ASSIMBENCH_REPORT_RUN")
    if given:
        run = Path(given)
    else:
        run = tmp_path_factory.mktemp("browser") / "smoke"
        env = {**os.environ, "ASSIMBENCH_CACHE": str(cache_dir)}
        r = subprocess.run([sys.executable, "-m", "bench", "run", "--preset", "smoke", "--out", str(run), "-q",
                            "--no-report"], capture_output=True, text=True, env=env, timeout=1200)
        assert r.returncode == 0, r.stderr[-2000:]
    from bench.report import build_report
    return build_report(run, strict=True)


def _pages(index: Path) -> list[Path]:
    problem_pages = sorted(p for p in index.parent.glob("*.html") if p.name != "index.html")
    assert problem_pages, "the report has no problem page"
    # the page with the most figures: the one most likely to overflow
    busiest = max(problem_pages, key=lambda p: p.read_text(encoding="utf-8").count("<img"))
    return [index, busiest]


def test_pages_fit_1280px_and_every_image_loads(report, tmp_path):
    for page in _pages(report):
        got = probe(page, tmp_path / "profile")
        assert got["scroll_width"] <= got["viewport"], (page.name, got)
        assert not got["wide"], (page.name, got["wide"])
        n_img = page.read_text(encoding="utf-8").count("<img")
        assert got["images"] == n_img and not got["broken"], (page.name, got)


def test_screenshot_renders(report, tmp_path):
    shot = tmp_path / "shot.png"
    r = chromium(f"--screenshot={shot}", "--virtual-time-budget=15000", report.resolve().as_uri(),
                 profile=tmp_path / "profile")
    assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-1500:]
