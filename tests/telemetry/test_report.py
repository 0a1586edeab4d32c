"""``entropo report``: synthetic runs following a known law → PNGs, one self-contained HTML.

The runs are fabricated ``metrics.jsonl`` files in the trainer's format (step 0 holds only
``eval/*``; NaN is ``null``). Run A follows R = 1 − 0.5·e^H exactly
(H from 0.6 to 0.1 nats, R from 0.089 to 0.447, the hand case of tests/algorithms/test_diagnostics.py), so the law fit must give
a = 0.5, b = 1.0 and the ceiling b − a = 0.5; run B follows R = 0.9 − 0.3·e^H (ceiling 0.6).
The HTML is also rendered by headless Chromium and the screenshot checked not to be blank.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from entropo.algorithms.diagnostics import LawFit, fit_entropy_law
from entropo.cli import main
from entropo.telemetry.report import (
    MIN_LAW_R2,
    PLOTS,
    Ctx,
    ReportError,
    group_band,
    law_abstain,
    law_points,
    load_run,
    plot_law,
    summary_rows,
    write_report,
)

CHROMIUM = "/usr/bin/chromium"
STEMS = [stem for stem, _, _ in PLOTS if stem != "seed_bands"]  # (g) is drawn only for seed groups


def _law(H: float, a: float, b: float) -> float:
    return b - a * math.exp(H)


def _write_run(path: Path, *, steps: int, h0: float, h1: float, a: float, b: float,
               loss: str, mask: list[str], extra: dict | None = None, summary: bool = True,
               phase: bool = True, controls: tuple[str, ...] = ()) -> Path:
    """A run whose entropy falls geometrically from h0 to h1 and whose accuracy obeys the law."""
    path.mkdir(parents=True)
    lines = [{"step": 0, "eval/pass@1": _law(h0 * 1.05, a, b), "eval/maj@1": 0.1}]
    H = [h0 * (h1 / h0) ** (k / max(steps - 1, 1)) for k in range(steps)]
    for k in range(1, steps + 1):
        h = H[k - 1]
        acc = _law(h, a, b)
        rec = {
            "step": k, "reward/mean": acc - 0.05, "reward/accuracy": acc,
            "entropy/mean": h, "entropy/p50": 0.4 * h, "entropy/p80": 1.6 * h, "entropy/p95": 2.6 * h,
            "cov/mean": 0.02 * h,
        }
        if phase:
            rec |= {"entropy/correct": 0.8 * h, "entropy/wrong": 1.2 * h,
                    "entropy/think": 1.1 * h, "entropy/answer": 0.5 * h}
        for c in controls:
            rec[c] = 0.2 + 0.01 * math.sin(k)
        if k >= 3:  # the η_eff fit needs 2 pairs
            rec |= {"cov/dH_pred": -0.9 * 0.02 * h, "cov/dH_realised": h - H[k - 2]}
        if k % 5 == 0:
            rec["eval/pass@1"] = acc
        lines.append(rec)
    for step, kv in (extra or {}).items():
        lines[step].update(kv)
    # json.dumps writes None as null, as JsonlSink does for NaN
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (path / "config.yaml").write_text(
        "algorithm:\n"
        "  advantage: grpo\n"
        f"  loss: {loss}\n"
        f"  token_mask: {json.dumps(mask)}\n"
        "  entropy_coef: 0.0\n"
        "trainer:\n"
        f"  output_dir: {path}\n"
    )
    if summary:
        (path / "summary.json").write_text(json.dumps({"steps": steps, "wall_seconds": 3723.0}))
    return path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Two runs, read-only for the tests (module scope: each render costs a second or two)."""
    tmp_path = tmp_path_factory.mktemp("runs")
    a = _write_run(tmp_path / "run_a", steps=30, h0=0.6, h1=0.1, a=0.5, b=1.0, loss="clip_cov",
                   mask=["high_entropy"], controls=("clip_cov/selected_frac", "entropy_mask/keep_frac"),
                   extra={7: {"reward/mean": None, "entropy/p95": None}})
    b = _write_run(tmp_path / "run_b", steps=25, h0=0.8, h1=0.3, a=0.3, b=0.9, loss="kl_cov",
                   mask=[], summary=False, phase=False, controls=("kl_cov/selected_frac",))
    return [a, b]


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory) -> Path:
    """The two runs' report.html, rendered once."""
    return write_report(two_runs, tmp_path_factory.mktemp("report") / "report")


def _pixels(path: Path) -> np.ndarray:
    img = imread(path)  # float RGBA in [0, 1] for PNG
    return np.asarray(img[..., :3], dtype=np.float64)


def _assert_not_blank(path: Path, min_std: float = 0.05, min_ink: float = 0.03) -> None:
    rgb = _pixels(path)
    ink = (rgb.min(axis=-1) < 0.95).mean()  # fraction of pixels visibly not white
    assert rgb.std() > min_std, f"{path.name}: pixel std {rgb.std():.4f} looks blank"
    assert ink > min_ink, f"{path.name}: only {100 * ink:.2f}% non-white pixels"


# ---------------------------------------------------------------------------------------


def test_report_renders_every_plot_and_embeds_it(report):
    out = report.parent
    assert report.name == "report.html"
    text = report.read_text()

    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == len(STEMS) == 6
    for stem, uri in zip(STEMS, uris):
        png = out / f"{stem}.png"
        assert png.stat().st_size > 15_000, f"{stem}.png is only {png.stat().st_size} bytes"
        assert base64.b64decode(uri) == png.read_bytes()  # the HTML embeds exactly that file
        _assert_not_blank(png)
    # Self-contained: no script, no external URL, no link to another file.
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert not re.search(r'(src|href)="(?!data:)', text)
    # Labels carry the method summary from config.yaml; the table has both runs.
    assert "run_a (loss=clip_cov advantage=grpo mask=high_entropy)" in text
    assert "run_b (loss=kl_cov advantage=grpo)" in text
    assert "Plot skipped" not in text
    assert "1h02m" in text  # wall time of run A from summary.json; run B has none
    assert "run_b (loss=kl_cov advantage=grpo): no entropy/think" in text


def test_law_fit_recovers_the_synthetic_law(two_runs):
    law_a, law_b = (law_points(load_run(d)) for d in two_runs)
    # eval/pass@1 at steps 5, 10, ..., 30 pairs with entropy/mean: 6 points, exact law.
    assert law_a.source == "eval/pass@1" and law_a.H.size == 6
    assert law_a.fit.a == pytest.approx(0.5, abs=1e-9)
    assert law_a.fit.b == pytest.approx(1.0, abs=1e-9)
    assert law_a.fit.ceiling == pytest.approx(0.5, abs=1e-9)
    assert law_b.fit.ceiling == pytest.approx(0.6, abs=1e-9)  # 0.9 − 0.3
    assert law_b.fit.ceiling != pytest.approx(0.5, abs=1e-3)  # meta: a wrong value fails


def test_summary_table_numbers(report):
    text = report.read_text()
    h_end, h_start = 0.1, 0.6
    assert "<td>0.1000</td>" in text and f"<td>{h_end / h_start:.3f}</td>" in text  # 0.167
    # final accuracy: eval/pass@1 at step 30 = 1 − 0.5·e^0.1 = 0.447
    assert f"<td>{_law(0.1, 0.5, 1.0):.3f} (eval/pass@1, step 30)</td>" in text
    assert "<td>0.500, 1.000 (1.000)</td><td>0.500</td>" in text  # a, b (R²), ceiling of A
    assert "<td>0.300, 0.900 (1.000)</td><td>0.600</td>" in text  # of B


def test_one_step_run_with_nulls_and_missing_keys(tmp_path):
    # One training step, no phase split, no control, no covariance change, a null value.
    run = _write_run(tmp_path / "tiny", steps=1, h0=4.47, h1=4.47, a=0.0, b=0.0, loss="ppo_clip",
                     mask=[], phase=False, summary=False, extra={1: {"cov/mean": None}})
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "entropy/me')  # the last line of a crashed run, cut mid-write
    out = tmp_path / "out"
    (out).mkdir()
    (out / "controls.png").write_bytes(b"stale")  # left by an earlier report
    text = write_report([run], out).read_text()
    assert "Plot skipped: no control token fractions logged" in text
    assert "Plot skipped: no run logs entropy/think" in text
    assert "Plot skipped: no run logs cov/mean" in text
    assert not (out / "controls.png").exists()
    assert "law not drawn, no fit: needs 3 points (1 point(s) of reward/accuracy)" in text
    assert "1 unreadable line(s)" in text
    for stem in ("entropy", "reward", "law"):
        _assert_not_blank(out / f"{stem}.png")
    assert text.count("data:image/png;base64,") == 3


def test_empty_correctness_group_is_not_drawn_as_zero(tmp_path):
    # Accuracy 0 at every step: entropy/correct is logged as 0 (an empty group), not a value.
    run = _write_run(tmp_path / "all_wrong", steps=3, h0=1.0, h1=0.8, a=0.0, b=0.0,
                     loss="ppo_clip", mask=[])
    text = write_report([run], tmp_path / "out").read_text()
    assert "entropy/correct not drawn, no step had a correct response" in text
    assert "no entropy/wrong" not in text and "entropy/wrong not drawn" not in text


def _scattered_run(path: Path) -> Path:
    """20 steps, entropy falling 1.0 → 0.43 nats, accuracy alternating 0.2 / 0.6 around a flat
    line: nothing for the law to explain, so its R² is near 0 (asserted by the test)."""
    lines = [{"step": k, "entropy/mean": 1.0 - 0.03 * k, "reward/accuracy": 0.2 + 0.4 * (k % 2)}
             for k in range(1, 20)]
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_law_abstains_on_a_meaningless_fit(tmp_path):
    run = load_run(_scattered_run(tmp_path / "scattered"))
    law = law_points(run)
    raw = fit_entropy_law(law.H, law.R)
    assert law.fit == raw and raw.r2 < 0.05  # the fit exists, and explains nothing
    assert law.shown is None and law.abstain == f"no fit: R² {raw.r2:.2f} below MIN_LAW_R2 = 0.5"

    row = summary_rows([run], ["scattered"], [law])[0]
    assert row["law a, b (R²)"].startswith("no fit: R² 0.0") and row["law ceiling"] == "n/a"
    text = write_report([run.path], tmp_path / "out").read_text()
    assert "no fit: R²" in text
    assert f"{raw.ceiling:.3f}" not in text and f"{raw.a:.3f}, {raw.b:.3f}" not in text

    # The plot draws the points, but no curve, no extrapolation and no ceiling star or label.
    fig = plot_law(Ctx(runs=[run], labels=["scattered"], colors=["C0"], laws=[law]))
    ax = fig.axes[0]
    assert not [ln for ln in ax.lines if len(ln.get_xdata())]  # only the empty legend entry
    assert not [t for t in ax.texts if "ceiling" in t.get_text()]
    assert any("no fit: R²" in t.get_text() for t in ax.get_legend().get_texts())


def test_law_abstain_threshold():
    def fit(r2: float) -> LawFit:
        return LawFit(a=0.5, b=1.0, r2=r2, residual_rms=0.0, ceiling=0.5, n_points=5)

    assert law_abstain(fit(MIN_LAW_R2), 5) is None
    assert law_abstain(fit(0.04), 5) == "no fit: R² 0.04 below MIN_LAW_R2 = 0.5"
    assert law_abstain(fit(math.nan), 5) is not None
    assert law_abstain(None, 2) == "no fit: needs 3 points"
    assert law_abstain(None, 6) == "no fit: entropy/mean constant"


@pytest.mark.parametrize("with_frac", [True, False], ids=["error_frac", "older_run"])
def test_reward_errors_are_shown_and_no_correctness_claim_is_made(tmp_path, with_frac):
    # Accuracy 1 at every step because every failed call fell back: entropy/wrong is an empty
    # group by reward/accuracy, yet nobody knows whether the responses were right.
    errors = {k: {"reward/errors": 8.0, "reward/errors/exception": 8.0}
              | ({"reward/error_frac": 1.0 if k == 2 else 0.5} if with_frac else {})
              for k in range(1, 4)}
    run = _write_run(tmp_path / "failing", steps=3, h0=1.0, h1=0.8, a=0.0, b=1.0,
                     loss="ppo_clip", mask=[], extra=errors)
    text = write_report([run], tmp_path / "out").read_text()
    assert "no step had a wrong response" not in text
    assert ("entropy/wrong not drawn: reward/accuracy counts no wrong response at any of its 3 "
            "step(s), but rewards failed on 24 call(s) at 3 of them, so correctness is unknown "
            "for those steps") in text
    assert "failing: rewards failed on 24 call(s) at 3 step(s) (reward/errors)" in text
    cell = "24 at 3/3 step(s)" + ("; worst step 2: 100.0% of calls" if with_frac else "")
    assert f"<td>{cell}</td>" in text


def test_reward_errors_without_failures(tmp_path, two_runs):
    # A run that logs reward/errors = 0 keeps the plain empty-group note; one without the key says n/a.
    run = _write_run(tmp_path / "all_right", steps=3, h0=1.0, h1=0.8, a=0.0, b=1.0, loss="ppo_clip",
                     mask=[], extra={k: {"reward/errors": 0.0} for k in range(1, 4)})
    text = write_report([run, two_runs[1]], tmp_path / "out").read_text()
    assert "entropy/wrong not drawn, no step had a wrong response (reward/accuracy)" in text
    assert "<td>0 at 0/3 step(s)</td>" in text and "rewards failed" not in text
    rows = summary_rows([load_run(two_runs[1])], ["b"], [law_points(load_run(two_runs[1]))])
    assert rows[0]["reward errors"] == "n/a"


def test_missing_directory_or_metrics_is_a_clear_error(tmp_path, two_runs):
    with pytest.raises(ReportError, match=r"'.*nowhere' does not exist"):
        write_report([tmp_path / "nowhere"], tmp_path / "out")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ReportError, match=r"'.*empty_run' has no metrics.jsonl"):
        write_report([two_runs[0], empty], tmp_path / "out")
    (empty / "metrics.jsonl").write_text("\n")
    with pytest.raises(ReportError, match="empty_run/metrics.jsonl' holds no metric records"):
        write_report([empty], tmp_path / "out")
    with pytest.raises(ReportError, match="not a directory"):
        write_report([empty / "metrics.jsonl"], tmp_path / "out")
    with pytest.raises(ReportError, match="no run directory"):
        write_report([], tmp_path / "out")


def test_cli_report(two_runs, tmp_path, capsys, monkeypatch):
    run_a = shutil.copytree(two_runs[0], tmp_path / "run_a")  # the default out is inside it
    assert main(["report", str(run_a), str(two_runs[1])]) == 0
    default = run_a / "report" / "report.html"
    assert capsys.readouterr().out.strip() == str(default) and default.is_file()
    calls = []
    monkeypatch.setattr("entropo.telemetry.report.write_report",
                        lambda runs, out: calls.append((runs, out)) or out / "report.html")
    assert main(["report", str(run_a), str(two_runs[1]), "--out", str(tmp_path / "x")]) == 0
    assert calls == [([run_a, two_runs[1]], tmp_path / "x")]
    assert capsys.readouterr().out.strip() == str(tmp_path / "x" / "report.html")
    monkeypatch.undo()
    assert main(["report", str(two_runs[0]), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "entropo: error:" in err and "missing' does not exist" in err


# ---------------------------------------------------------------------------------------
# a real browser render


def _chromium(path: str = CHROMIUM) -> str | None:
    if Path(path).is_file():
        return path
    if os.environ.get("ENTROPO_REQUIRE_CHROMIUM"):
        pytest.fail(f"ENTROPO_REQUIRE_CHROMIUM is set but {path} is missing "
                    "(apt-get install chromium; scripts/test.sh does it as root in CI)")
    pytest.skip(f"{path} not installed (set ENTROPO_REQUIRE_CHROMIUM=1 to make this a failure)")
    return None


def test_missing_chromium_skips_only_when_not_required(tmp_path, monkeypatch):
    absent = str(tmp_path / "no-chromium")
    monkeypatch.delenv("ENTROPO_REQUIRE_CHROMIUM", raising=False)
    with pytest.raises(pytest.skip.Exception):
        _chromium(absent)
    monkeypatch.setenv("ENTROPO_REQUIRE_CHROMIUM", "1")
    with pytest.raises(pytest.fail.Exception, match="ENTROPO_REQUIRE_CHROMIUM is set"):
        _chromium(absent)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = _chromium()
    html_path = report
    shot = tmp_path / "screenshot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chrome-profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    keep = os.environ.get("ENTROPO_KEEP_SCREENSHOT")
    if keep:  # for a human look: ENTROPO_KEEP_SCREENSHOT=/tmp/report_screenshot.png
        shutil.copy(shot, keep)
    rgb = _pixels(shot)
    assert rgb.shape[:2] == (2000, 1200)
    # A page that failed to load (blocked images, an error page) is near-uniform white or grey.
    _assert_not_blank(shot, min_std=0.08, min_ink=0.05)


def test_seed_groups_draw_mean_and_standard_error_bands(tmp_path):
    runs = [_write_run(tmp_path / f"seed{k}", steps=10, h0=0.6 + 0.1 * k, h1=0.1, a=0.5, b=1.0, loss="ppo_clip",
                       mask=[]) for k in range(3)]
    steps, mean, se = group_band([load_run(r) for r in runs], "entropy/mean")
    assert steps.tolist() == list(range(1, 11))
    # step 1: H = h0 = 0.6, 0.7, 0.8 -> mean 0.7, sample sd 0.1, s.e. 0.1 / √3
    assert mean[0] == pytest.approx(0.7, abs=1e-12) and se[0] == pytest.approx(0.1 / math.sqrt(3), abs=1e-12)
    assert se[-1] == pytest.approx(0.0, abs=1e-12)  # every run ends at h1
    assert group_band([load_run(r) for r in runs], "no/such_key") is None
    path = write_report(runs, tmp_path / "report", groups={"grpo": runs})
    assert (tmp_path / "report" / "seed_bands.png").stat().st_size > 15_000
    _assert_not_blank(tmp_path / "report" / "seed_bands.png")
    assert "Seed groups: mean ± standard error" in path.read_text()
    write_report(runs, tmp_path / "report")  # without groups the plot is left out, and its PNG removed
    assert not (tmp_path / "report" / "seed_bands.png").exists()
    with pytest.raises(ReportError, match="not one of the run directories"):
        write_report(runs[:1], tmp_path / "report", groups={"grpo": runs})
