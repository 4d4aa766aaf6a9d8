"""Report, summary and compare on a synthetic run directory in the results format of bench/store.py.

The fixture writes what the runner writes (results.parquet, cycles.parquet, run.json, snapshots/, extras/)
with metric values given by a closed form, so the expected summary is known exactly.
"""
from __future__ import annotations

import html.parser
import json
import warnings
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.compare import compare, format_compare
from assimbench.errors import ConfigError
from bench.report import build_report, format_summary, summary_table

# rRMSE of method m at seed s, N, coverage c: BASE[m] * (1 + 0.1 s) * (20 / N)**0.5 * (0.2 / c)**0.25
BASE = {"FreeRun": 0.8, "EnKF[inflation=1.05,variant=sqrt]": 0.10, "EnSF": 0.14, "LD-EnSF": 0.12}
ONLINE = {"FreeRun": 2e-4, "EnKF[inflation=1.05,variant=sqrt]": 4e-3, "EnSF": 8e-3, "LD-EnSF": 1e-3}
SEEDS = (0, 1, 2)
N_CYCLES = 8
PROBLEMS = {  # name -> (state shape, parameter names)
    "shallow_water": ((3, 12, 12), ("a",)),
    "lorenz96[dim=40]": ((40,), ("F",)),
}
FAILED = ("lorenz96[dim=40]", "EnSF", 40, 0.5, 1)  # (problem, method, N, coverage, seed)
SKIPPED_METHOD, SKIPPED_PROBLEM = "LD-EnSF", "lorenz96[dim=40]"


def expected_rrmse(method: str, seed: int, n_ens: int, coverage: float) -> float:
    return BASE[method] * (1 + 0.1 * seed) * (20 / n_ens) ** 0.5 * (0.2 / coverage) ** 0.25


def make_run(root: Path, n_ens=(20, 40), coverages=(0.2, 0.5), noise=(0.05,), problems=tuple(PROBLEMS)) -> Path:
    """Write a synthetic run directory in the runner's format; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, cyc_rows = [], []
    (root / "snapshots").mkdir(exist_ok=True)
    (root / "extras").mkdir(exist_ok=True)
    k = 0
    for problem in problems:
        shape, pnames = PROBLEMS[problem]
        for method in BASE:
            for N in n_ens:
                for cov in coverages:
                    for nz in noise:
                        for seed in SEEDS:
                            k += 1
                            cid = f"c{k:04d}"
                            status, error = "ok", None
                            if (problem, method, N, cov, seed) == FAILED:
                                status = "failed"
                                error = ("Traceback (most recent call last):\n  File \"runner.py\", line 1\n"
                                         "assimbench.errors.Diverged: diverged at cycle 3")
                            if (problem, method) == (SKIPPED_PROBLEM, SKIPPED_METHOD):
                                status, error = "skipped", "LD-EnSF needs a gridded problem"
                            r = expected_rrmse(method, seed, N, cov)
                            on = ONLINE[method] * N / 20
                            ok = status == "ok"
                            nan = float("nan")
                            row = {
                                "cell_id": cid, "p_problem": problem, "p_method": method,
                                "p_method_name": method.split("[")[0], "p_problem_name": problem.split("[")[0],
                                "p_n_ens": N, "p_coverage": cov, "p_noise": nz, "p_seed": seed, "p_device": "cpu",
                                "p_problem_dim": 40.0 if "lorenz" in problem else nan,
                                "p_obs_layout": "random", "p_method_inflation": 1.05 if "EnKF" in method else nan,
                                "rmse_f": 2 * r if ok else nan, "rmse_a": r if ok else nan,
                                "rrmse_f": 1.5 * r if ok else nan, "rrmse_a": r if ok else nan,
                                "rrmse_member_a": 1.2 * r if ok else nan, "spread_a": 0.9 * r if ok else nan,
                                "crps_a": 0.5 * r if ok else nan, "param_rmse_a": 0.3 * r if ok else nan,
                                "spread_error_a": 0.9 if ok else nan,
                                "rank_hist_a": [int(50 + 40 * abs(k - N / 2) / N * (1 + seed)) for k in range(N + 1)]
                                if ok else None,
                                "obs_coverage": cov, "n_obs": 10.0,
                                "time_fit_s": (3.0 if method == "LD-EnSF" else 0.0) if ok else nan,
                                "time_forecast_s": 0.5 * on if ok else nan, "time_analysis_s": 0.4 * on if ok else nan,
                                "time_reconstruct_s": 0.1 * on if ok else nan, "time_online_s": on if ok else nan,
                                "time_per_cycle_s": 1.1 * on if ok else nan, "time_total_s": 10 * on if ok else nan,
                                "peak_mem_mb": 100.0 if ok else nan, "status": status, "error": error,
                                "git_sha": "abc1234", "torch_version": "2.13.0", "device_name": "cpu",
                                "dtype": "float32", "threads": 1, "host": "testhost",
                                "date": "2026-01-01T00:00:00",
                            }
                            rows.append(row)
                            if not ok:
                                continue
                            truth_p = {n: 1.0 + 0.1 * seed for n in pnames}
                            for c in range(1, N_CYCLES + 1):
                                decay = r * (1 + 2 * np.exp(-c / 2))
                                cr = {"cell_id": cid, **{kk: v for kk, v in row.items() if kk.startswith("p_")},
                                      "cycle": c, "time": 0.1 * c, "rmse_f": 2 * decay, "rmse_a": decay,
                                      "rrmse_f": 1.5 * decay, "rrmse_a": decay, "rrmse_member_a": 1.2 * decay,
                                      "spread_a": 0.9 * decay, "crps_a": 0.5 * decay, "param_rmse_a": 0.3 * decay,
                                      "t_forecast": 0.5 * on, "t_analysis": 0.4 * on, "t_reconstruct": 0.1 * on,
                                      "spinup": c <= 2}
                                for n in pnames:
                                    est = None if method == "FreeRun" else truth_p[n] + 0.5 * np.exp(-c / 3)
                                    cr[f"param_mean_{n}"], cr[f"param_true_{n}"] = est, truth_p[n]
                                cyc_rows.append(cr)
                            if len(shape) == 3:
                                C, H, W = shape
                                cyc_ids = np.array([2, 5, 8])
                                truth = rng.standard_normal((3, C, H, W)).astype(np.float32)
                                np.savez(root / "snapshots" / f"{cid}.npz", cycles=cyc_ids, truth=truth,
                                         mean=truth + r * rng.standard_normal(truth.shape).astype(np.float32),
                                         obs_points=rng.choice(H * W, size=int(cov * H * W), replace=False),
                                         field_names=np.array(["u", "v", "eta"]))
                            if method == "LD-EnSF":
                                (root / "extras" / f"{cid}.json").write_text(json.dumps(
                                    {"surrogate": {"test_rrmse": 0.02 + 0.001 * seed, "latent_dim": 8}}))
                                np.savez(root / "extras" / f"{cid}.latent.npz", cycles=np.arange(1, N_CYCLES + 1),
                                         truth=rng.standard_normal((N_CYCLES, 8)),
                                         ensemble=rng.standard_normal((N_CYCLES, N, 8)))
    pd.DataFrame(rows).to_parquet(root / "results.parquet", index=False)
    pd.DataFrame(cyc_rows).to_parquet(root / "cycles.parquet", index=False)
    (root / "run.json").write_text(json.dumps({
        "config": {"problems": list(problems), "methods": list(BASE), "n_ens": list(n_ens),
                   "coverage": list(coverages), "noise": list(noise), "seeds": list(SEEDS)},
        "provenance": {"git_sha": "abc1234", "torch_version": "2.13.0", "host": "testhost"},
        "started": "2026-01-01T00:00:00", "finished": "2026-01-01T00:01:00", "command": "bench run --preset test"}))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    # any warning while drawing (a matplotlib layout warning: collapsed axes, clipped text) fails the build
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return build_report(run_dir, strict=True)


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.hrefs, self.ids, self.scripts = [], [], set(), 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src"))
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])
        if tag in ("script", "link"):
            self.scripts += 1


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _png_ok(path: Path) -> tuple[int, int]:
    """Check the PNG signature, chunk CRCs and that the image data inflate; returns (width, height)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
        if kind == b"IEND":
            break
    assert size and size[0] > 50 and size[1] > 50, f"{path}: tiny image {size}"
    raw = zlib.decompress(idat)
    assert len(raw) > size[1], path
    return size


def test_report_files_exist(report, run_dir):
    out = run_dir / "report"
    assert report == out / "index.html"
    for name in ("index.html", "summary.md", "summary.csv", "results.csv", "shallow-water.html",
                 "lorenz96-dim-40.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    names = {p.name for p in (out / "img").glob("*.png")}
    for expected in ("shallow-water_cycles_N20.png", "shallow-water_vs_n_ens.png", "shallow-water_vs_coverage.png",
                     "shallow-water_cost_accuracy.png", "shallow-water_time_split.png", "shallow-water_fit_time.png",
                     "shallow-water_snapshot_c8.png", "shallow-water_params.png", "shallow-water_latent.png",
                     "lorenz96-dim-40_cycles_N40.png", "lorenz96-dim-40_params.png",
                     "shallow-water_rank_hist.png", "shallow-water_spread_error.png",
                     "lorenz96-dim-40_rank_hist.png"):
        assert expected in names, (expected, sorted(names))
    assert not any(n.startswith("lorenz96") and "snapshot" in n for n in names)  # 1-D: no fields
    assert "shallow-water_vs_noise.png" not in names  # noise does not vary


def test_links_and_images_resolve(report):
    out = report.parent
    pages = sorted(out.glob("*.html"))
    assert len(pages) == 3
    n_img = 0
    for page in pages:
        links = _parse(page)
        assert links.scripts == 0, f"{page.name} needs scripts or external styles"
        for src in links.imgs:
            assert src and "://" not in src and not src.startswith("/"), src
            target = (page.parent / src).resolve()
            assert target.is_file(), f"{page.name}: <img src={src}> missing"
            _png_ok(target)
            n_img += 1
        for href in links.hrefs:
            assert "://" not in href and not href.startswith("/"), href
            path, _, frag = href.partition("#")
            target = page if not path else (page.parent / path)
            assert target.is_file(), f"{page.name}: <a href={href}> missing"
            if frag:
                assert frag in _parse(target).ids, f"{page.name}: anchor #{frag} missing"
    assert n_img >= 12
    for png in (out / "img").glob("*.png"):
        _png_ok(png)


def test_index_content(report):
    text = report.read_text()
    assert "diverged at cycle 3" in text  # failed cell with its error
    assert "LD-EnSF needs a gridded problem" in text  # skip reason
    assert "abc1234" in text and "testhost" in text  # provenance
    assert 'class="best"' in text
    md = (report.parent / "summary.md").read_text()
    assert "## shallow_water" in md and "| **EnKF** |" in md
    assert "| EnKF | `EnKF[inflation=1.05,variant=sqrt]` |" in md  # the labels' legend


def test_summary_values(run_dir):
    s = summary_table(run_dir)
    assert len(s) == len(PROBLEMS) * len(BASE) * 2 * 2
    for _, r in s.iterrows():
        seeds = [sd for sd in SEEDS if r["n_failed"] == 0 or sd != FAILED[4]]
        if r["n_skipped"]:
            assert r["n_skipped"] == 3 and r["n_ok"] == 0 and np.isnan(r["rrmse_a_mean"])
            continue
        vals = [expected_rrmse(r["method"], sd, r["n_ens"], r["coverage"]) for sd in seeds]
        assert r["rrmse_a_mean"] == pytest.approx(np.mean(vals), rel=1e-12)
        assert r["rrmse_a_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-9)
        assert r["n_ok"] == len(seeds)
    failed = s[s["n_failed"] > 0]
    assert len(failed) == 1 and failed.iloc[0]["method"] == "EnSF"
    # EnKF has the lowest base rRMSE: best in every setting
    best = s[s["best"]]
    assert len(best) == len(PROBLEMS) * 4 and (best["method"] == "EnKF[inflation=1.05,variant=sqrt]").all()
    # the DataFrame form gives the same table
    pd.testing.assert_frame_equal(s, summary_table(pd.read_parquet(run_dir / "results.parquet")))


@pytest.mark.parametrize("width", [120, 80])
def test_terminal_summary_fits_and_aligns(run_dir, width):
    """`bench show`: every line within the width, the best marker in its own first column, short labels with a
    legend to the full names, units in the headers."""
    text = format_summary(summary_table(run_dir), width=width)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width, max(lines, key=len)
    best = [ln for ln in lines if ln.startswith("*") and "lowest mean" not in ln]
    assert len(best) == len(PROBLEMS) * 4  # one per (problem, N, coverage)
    # the marker column is one character wide: every table row's method starts at the same offset
    assert all(ln.split()[1:2] != ["*"] for ln in lines)
    assert all(" EnKF " in ln for ln in best)  # the short label; never the full parametrized name in a row
    assert re.search(r"^  EnKF =\s+EnKF\[inflation=1.05,variant=sqrt\]$", text, re.M)  # the legend
    assert "rRMSE_a [rel.]" in text and "± " in text


def test_summary_csv_matches(report, run_dir):
    csv = pd.read_csv(report.parent / "summary.csv")
    s = summary_table(run_dir)
    np.testing.assert_allclose(csv["rrmse_a_mean"], s["rrmse_a_mean"], rtol=1e-12)


def _perturbed(run_dir: Path, tmp: Path, method: str, time_factor: float, acc_factor: float) -> Path:
    out = tmp / f"b_{time_factor}_{acc_factor}"
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("report"))
    df = pd.read_parquet(out / "results.parquet")
    m = df["p_method"] == method
    for c in ("time_online_s", "time_per_cycle_s"):
        df.loc[m, c] *= time_factor
    df.loc[m, "rrmse_a"] *= acc_factor
    df["git_sha"] = "def5678"  # provenance differs: must not stop the match
    df = df.sample(frac=1.0, random_state=0)  # order must not matter
    df.to_parquet(out / "results.parquet", index=False)
    cyc = pd.read_parquet(out / "cycles.parquet")
    for c in ("t_forecast", "t_analysis", "t_reconstruct"):
        cyc.loc[cyc["p_method"] == method, c] *= time_factor
    cyc.to_parquet(out / "cycles.parquet", index=False)
    return out


@pytest.mark.parametrize("time_factor, acc_factor, flagged", [
    (1.0, 1.0, False), (1.05, 1.05, False), (2.0, 1.0, True), (1.0, 1.5, True), (0.5, 0.8, False),
    (1.0, 1.15, False),
], ids=["same", "within", "slower", "less-accurate", "better", "within-seed-spread"])
def test_compare_flags(run_dir, tmp_path, time_factor, acc_factor, flagged):
    b = _perturbed(run_dir, tmp_path, "EnSF", time_factor, acc_factor)
    df = compare(run_dir, b, threshold=0.1)
    assert (df["match"] == "both").all() and len(df) == len(pd.read_parquet(run_dir / "results.parquet"))
    ensf_ok = (df["p_method"] == "EnSF") & (df["status_A"] == "ok")
    assert df.loc[ensf_ok, "regression"].all() == flagged and df.loc[ensf_ok, "regression"].any() == flagged
    assert not df.loc[~ensf_ok, "regression"].any()
    np.testing.assert_allclose(df.loc[ensf_ok, "time_online_s_ratio"], time_factor, rtol=1e-12)
    np.testing.assert_allclose(df.loc[ensf_ok, "rrmse_a_diff"],
                               df.loc[ensf_ok, "rrmse_a_A"] * (acc_factor - 1), rtol=1e-9, atol=1e-15)
    text = format_compare(df)
    assert ("!!" in text) == flagged and "matched cells" in text


def test_compare_newly_failed_and_unmatched(run_dir, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(run_dir, b, ignore=shutil.ignore_patterns("report"))
    df = pd.read_parquet(b / "results.parquet")
    i = df.index[(df["status"] == "ok") & (df["p_method"] == "EnKF[inflation=1.05,variant=sqrt]")][0]
    df.loc[i, ["status", "rrmse_a"]] = ["failed", np.nan]
    df = df.drop(df.index[(df["p_method"] == "FreeRun") & (df["p_seed"] == 2)])
    df.to_parquet(b / "results.parquet", index=False)
    out = compare(run_dir, b)
    assert int(out["newly_failed"].sum()) == 1 and int(out["regression"].sum()) == 1
    assert (out["match"] == "only_a").sum() == len(PROBLEMS) * 2 * 2  # FreeRun, seed 2: problems x N x coverage
    assert "only in A" in format_compare(out)


def test_bad_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(ConfigError, match="results.parquet"):
        summary_table(tmp_path)


def test_report_without_optional_files(tmp_path):
    """No cycles, snapshots, extras or run.json, a single setting: the report still builds."""
    d = make_run(tmp_path / "r", n_ens=(20,), coverages=(0.2,), problems=("shallow_water",))
    for p in ("cycles.parquet", "run.json"):
        (d / p).unlink()
    shutil.rmtree(d / "snapshots")
    shutil.rmtree(d / "extras")
    index = build_report(d, strict=True)
    names = {p.name for p in (index.parent / "img").glob("*.png")}
    assert not any("cycles" in n or "snapshot" in n or "latent" in n or "_vs_" in n for n in names)
    assert "shallow-water_cost_accuracy.png" in names
    build_report(d, strict=True)  # a rebuild replaces the old report


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chrome on PATH: headless browser check skipped "
                                              "(apt-get install chromium)")
def test_browser_renders(report, tmp_path):
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    for page in (report, report.parent / "shallow-water.html"):
        r = subprocess.run(base + ["--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                                   "--window-size=1200,2000", page.resolve().as_uri()],
                           capture_output=True, text=True, timeout=120)
        assert shot.is_file() and _png_ok(shot) == (1200, 2000), r.stderr[-2000:]
        bad = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Failed to load" in ln
               or "ERR_FILE_NOT_FOUND" in ln]
        assert not bad, bad
        shot.unlink()
    # every image decodes in the browser: a throw-away harness page (the report itself has no script) loads
    # them all and writes how many decoded into the DOM, which --dump-dom prints
    imgs = sorted((report.parent / "img").glob("*.png"))
    tags = "".join(f'<img src="{p.resolve().as_uri()}">' for p in imgs)
    harness = tmp_path / "harness.html"
    harness.write_text(f"<!DOCTYPE html><html><body>{tags}<script>window.onload = () => {{"
                       "const a = [...document.images]; const ok = a.filter(i => i.complete && i.naturalWidth > 0);"
                       "document.body.setAttribute('data-decoded', ok.length + '/' + a.length);};</script>"
                       "</body></html>")
    dom = subprocess.run(base + ["--virtual-time-budget=10000", "--dump-dom", harness.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert f'data-decoded="{len(imgs)}/{len(imgs)}"' in dom.stdout, (dom.stdout[:300], dom.stderr[-2000:])


def test_short_labels_and_fixed_colours():
    from bench.labels import method_colour, short_labels, split_name
    names = ["EnKF[inflation=1.04]", "EnKF[inflation=1.06,loc_radius=4,variant=stochastic]", "EnSF[n_steps=100]",
             "LD-EnSF[epochs=3,latent_dim=4]", "FreeRun"]
    lab = short_labels(names)
    assert lab == {"EnKF[inflation=1.04]": "EnKF[inflation=1.04]",
                   "EnKF[inflation=1.06,loc_radius=4,variant=stochastic]": "EnKF[inflation=1.06]",
                   "EnSF[n_steps=100]": "EnSF", "LD-EnSF[epochs=3,latent_dim=4]": "LD-EnSF", "FreeRun": "FreeRun"}
    assert split_name("EnKF[fields=(u,v),inflation=1.1]") == ("EnKF", {"fields": "(u,v)", "inflation": "1.1"})
    # a colour per method, whatever else is on the page, and no two of the paper's methods alike
    assert method_colour("EnKF[inflation=1.04]") == method_colour("EnKF") == method_colour("EnKF[variant=x]")
    core = {method_colour(m) for m in ("EnKF", "EnSF", "Latent-EnSF", "LD-EnSF", "FreeRun")}
    assert len(core) == 5
    assert method_colour("MyFilter") == method_colour("MyFilter[a=1]")


def test_bands_are_valid_on_log_axes():
    """The uncertainty band over seeds stays inside the data: positive errors give a positive band."""
    from bench.plots import _mean_band
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"cycle": np.repeat(np.arange(1, 6), 3),
                      "rrmse_a": np.exp(rng.normal(-3, 1.5, 15))})  # heavy spread: mean - std < 0
    x, mean, lo, hi = _mean_band(d, "cycle", "rrmse_a", n_seeds=3)
    g = d.groupby("cycle")["rrmse_a"]
    assert (lo > 0).all() and (lo <= mean).all() and (mean <= hi).all()
    assert (mean - g.std().to_numpy() < 0).any()  # the old mean ± std band would have crossed zero here


def test_pages_name_methods_by_label_with_a_legend(report):
    page = (report.parent / "shallow-water.html").read_text()
    assert "Methods on this page" in page and "EnKF[inflation=1.05,variant=sqrt]" in page
    summary = page[page.index("<h2>Summary</h2>"):]
    summary = summary[:summary.index("</table>")]
    assert "EnKF[inflation" not in summary and ">EnKF<" in summary  # the short label in the table
    assert 'class="tbl"' in page  # tables scroll inside their own box when wider than the page


def test_summary_keeps_observation_operators_and_intervals_apart(run_dir):
    """Cells that differ only in the observation operator or interval are separate settings, never averaged."""
    res = pd.read_parquet(run_dir / "results.parquet")
    sparse = res.assign(p_obs_operator="identity", p_obs_obs_every=2, rrmse_a=res["rrmse_a"] * 10)
    both = pd.concat([res.assign(p_obs_operator="identity", p_obs_obs_every=1), sparse], ignore_index=True)
    summ = summary_table(both)
    assert len(summ) == 2 * len(summary_table(res))
    one = summ[(summ.obs_every == 1)].set_index(["problem", "n_ens", "coverage", "noise", "method"]).rrmse_a_mean
    two = summ[(summ.obs_every == 2)].set_index(["problem", "n_ens", "coverage", "noise", "method"]).rrmse_a_mean
    assert np.allclose(two.dropna(), 10 * one.dropna())
    text = format_summary(summ, width=200)
    assert "obs every" in text and "operator" not in text  # the varying key is a column; identity is not stated
