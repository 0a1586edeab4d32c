"""Run report: ``entropo report RUN [RUN ...]`` → one self-contained ``report.html`` + PNGs.

Reads each run directory's ``metrics.jsonl`` (the run's record of truth, see
:mod:`entropo.telemetry.sinks`), ``config.yaml`` and ``summary.json`` (both optional) and
draws, with several runs overlaid (one colour per run):

(a) ``entropy/mean`` vs step, with the ``entropy/p80``–``entropy/p95`` band when logged;
(b) ``reward/mean`` and ``eval/pass@1`` vs step;
(c) accuracy vs ``entropy/mean`` with the entropy–performance law ``R = −a·e^H + b`` (Cui et al.,
    arXiv 2505.22617, abstract and Sec. 2; docs/algorithms.md §12) fitted per run by
    :func:`entropo.algorithms.diagnostics.fit_entropy_law` on all points, and its predicted
    ceiling ``R(H=0) = b − a``, only for a fit with R² ≥ ``MIN_LAW_R2`` (0.5);
(d) phase entropy: ``entropy/think`` / ``entropy/answer`` and ``entropy/correct`` /
    ``entropy/wrong`` (docs/metrics.md);
(e) the token fractions of each active control (keys ending in ``_frac`` outside the
    always-logged namespaces, e.g. ``clip_cov/selected_frac``, ``entropy_mask/keep_frac``);
(f) Ĉ (``cov/mean``) and predicted vs realised entropy change (the covariance identity of
    Cui et al., arXiv 2505.22617; docs/algorithms.md §12);

(g) with seed groups (``write_report(..., groups=...)``, e.g. the multi-seed mechanism study):
    each group's ``entropy/mean`` and ``eval/pass@1`` as the mean over its runs at the steps
    all of them logged, with a ± one-standard-error band (sample standard deviation / √n);

plus a summary table per run, with its reward errors. The HTML embeds every PNG as a base64
data URI and has inline CSS only: no script, no external resource (a Content-Security-Policy
forbids them), so the one file can be mailed or attached as it is. The PNGs are also written
next to it.

Choices, stated once:
- ``null`` (NaN or infinity in the run) and missing keys are dropped point by point; a plot
  whose keys no run logs is skipped with a note in the HTML, and so is a run's curve.
- Law points pair ``entropy/mean`` and the accuracy logged at the same step. The accuracy is
  ``eval/pass@1`` when it gives at least ``LAW_MIN_POINTS`` such pairs, else
  ``reward/accuracy`` (training accuracy, a stand-in when evaluations are too few); the legend
  names the source.
  Evaluation at step k follows update k, while ``entropy/mean`` at step k is π_old's, before
  it: a one-update offset. Which pairing the paper fits was not verified against the paper's
  text.
- The law abstains, drawing the points but no curve, no extrapolation and no ceiling, and the
  plot and table say why (``no fit: R² 0.04 …``), when it has fewer than ``LAW_MIN_POINTS``
  points, constant entropy, or R² < ``MIN_LAW_R2`` = 0.5: the ceiling is an extrapolation
  beyond the data, and a curve that explains under half the variance of R says nothing there.
- ``entropy/correct`` is 0 at a step without a correct response, and ``entropy/wrong`` at one
  without a wrong one (an empty group, :func:`~entropo.algorithms.diagnostics.phase_split_means`);
  those points are dropped using ``reward/accuracy`` when it is logged.
- Correctness is only known where the reward ran. ``reward/errors`` counts the step's
  (function, response) calls that fell back (docs/metrics.md), and their responses are
  labelled by the fallback score, so ``reward/accuracy`` and the correct/wrong split at such
  a step are not measurements: the summary table gives the errors (total, steps affected, and
  the worst step's ``reward/error_frac`` where the run logs it; older runs do not), and no note
  claims a step had no correct or wrong response when rewards failed there.
- Sample completions are not shown: the trainer's ``samples`` table goes to the TensorBoard
  and wandb sinks only (:mod:`entropo.telemetry.sinks`), so the run directory holds no plain
  file of it to read.
- ``cov/dH_pred`` logged at step k predicts H[k+1] − H[k], and ``cov/dH_realised`` at step k is
  H[k] − H[k−1]; panel (f) therefore draws each prediction at the step it predicts (k + 1).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from entropo.algorithms.diagnostics import LawFit, fit_entropy_law, law_predict
from entropo.telemetry.sinks import _fmt_duration

REPORT_FILE = "report.html"
LAW_MIN_POINTS = 3
"""Fewest (H, R) pairs :func:`fit_entropy_law` fits; below it no curve is drawn."""
MIN_LAW_R2 = 0.5
"""Lowest R² of a law fit the report draws. The ceiling b − a extrapolates the curve to H = 0,
outside the data; a fit explaining under half the variance of R puts it anywhere (a fit with
R² 0.04 can read −2.75). 0.5 is a judgement, not a calibrated test."""
MARKER_MAX_POINTS = 40
"""Series with at most this many points get markers, so a one-step run still shows a dot."""
DPI = 110
NOT_CONTROLS = frozenset({
    "actor", "adv", "cov", "entropy", "eval", "law", "logprob_gap", "objective", "perf",
    "response_length", "reward", "rollout", "sampling", "timing",
})
"""Namespaces every run logs (docs/metrics.md); any other prefix is a method's control."""


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message names it."""


# ---------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class Run:
    """One run directory, read once.

    Attributes:
        path: the run directory.
        name: its directory name.
        method: ``loss=… advantage=… [mask=…]`` from ``config.yaml``, or None without one.
        records: ``step → {key: value}``, NaN where the file has ``null``, sorted by step.
        summary: ``summary.json`` (``{}`` when absent or unreadable).
        bad_lines: lines of ``metrics.jsonl`` that were not a JSON record with a step.
    """

    path: Path
    name: str
    method: str | None
    records: dict[int, dict[str, float]]
    summary: dict[str, Any] = field(default_factory=dict)
    bad_lines: int = 0

    def has(self, key: str) -> bool:
        """True when ``key`` has at least one finite value."""
        return any(math.isfinite(r.get(key, math.nan)) for r in self.records.values())

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the finite values of ``key``, in step order."""
        pts = [(s, r[key]) for s, r in self.records.items() if math.isfinite(r.get(key, math.nan))]
        steps = np.array([p[0] for p in pts], dtype=np.int64)
        return steps, np.array([p[1] for p in pts], dtype=np.float64)

    def last(self, key: str) -> tuple[int, float] | None:
        """``(step, value)`` of the last finite value of ``key``."""
        steps, values = self.series(key)
        return (int(steps[-1]), float(values[-1])) if steps.size else None

    def metric_keys(self) -> set[str]:
        """Every key any record has (also those that are only ``null``)."""
        return {k for r in self.records.values() for k in r}


def method_summary(config: dict[str, Any]) -> str | None:
    """``loss=clip_cov advantage=grpo mask=high_entropy`` from a run's ``config.yaml``."""
    algo = config.get("algorithm") if isinstance(config, dict) else None
    if not isinstance(algo, dict):
        return None
    parts = [f"loss={algo.get('loss', '?')}", f"advantage={algo.get('advantage', '?')}"]
    masks = algo.get("token_mask") or []
    masks = [masks] if isinstance(masks, str) else masks
    if masks:
        parts.append("mask=" + ",".join(map(str, masks)))
    for coef in ("entropy_coef", "kl_coef"):
        value = algo.get(coef)
        if isinstance(value, int | float) and value:
            parts.append(f"{coef}={value:g}")
    return " ".join(parts)


def _number(value: Any) -> float | None:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # a string or list is not a metric
    return float(value)


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory. Raises :class:`ReportError` naming it when it has no metrics."""
    path = Path(run_dir)
    if not path.exists():
        raise ReportError(f"run directory '{path}' does not exist")
    if not path.is_dir():
        raise ReportError(f"'{path}' is not a directory (expected a run directory)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(
            f"run directory '{path}' has no metrics.jsonl (is it a trainer.output_dir "
            "of a run with the jsonl logger backend?)"
        )
    records: dict[int, dict[str, float]] = {}
    bad = 0
    for line in metrics.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            step = obj["step"]
            if not isinstance(step, int) or isinstance(step, bool):
                raise TypeError(step)
        except (ValueError, KeyError, TypeError):
            bad += 1  # e.g. the last line of a crashed run, cut mid-write
            continue
        row = records.setdefault(step, {})
        for key, value in obj.items():
            number = _number(value)
            if key != "step" and number is not None:
                row[key] = number
    if not records:
        raise ReportError(f"'{metrics}' holds no metric records")
    method = None
    config = path / "config.yaml"
    if config.is_file():
        import yaml

        try:
            method = method_summary(yaml.safe_load(config.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError:
            method = None
    summary: dict[str, Any] = {}
    if (path / "summary.json").is_file():
        try:  # Python's json writes NaN in summary.json; json.loads reads it back
            loaded = json.loads((path / "summary.json").read_text(encoding="utf-8"))
            summary = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            summary = {}
    return Run(path=path, name=path.resolve().name, method=method,
               records=dict(sorted(records.items())), summary=summary, bad_lines=bad)


def _labels(runs: Sequence[Run]) -> list[str]:
    """Legend labels: the directory name, plus the method summary when there is one."""
    labels = [f"{r.name} ({r.method})" if r.method else r.name for r in runs]
    for i, label in enumerate(labels):  # two runs of the same name: add the parent folder
        if labels.count(label) > 1:
            labels[i] = f"{runs[i].path.resolve().parent.name}/{label}"
    return [f"{lab} #{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def reward_errors(run: Run) -> dict[int, float]:
    """``step → reward/errors`` for the steps where reward calls fell back (count > 0)."""
    steps, counts = run.series("reward/errors")
    return {int(s): float(n) for s, n in zip(steps, counts) if n > 0}


# ---------------------------------------------------------------------------------------
# the law


@dataclass(frozen=True)
class LawPoints:
    """(H, R) pairs of one run and the law fitted to them.

    Attributes:
        H: ``entropy/mean`` per paired step.
        R: the accuracy at the same steps.
        source: the accuracy's key (``eval/pass@1`` or ``reward/accuracy``).
        fit: the least-squares fit, None below ``LAW_MIN_POINTS`` points or with constant H.
        abstain: why the report draws no fit (``no fit: R² 0.04 …``), None when it draws ``fit``.
    """

    H: np.ndarray
    R: np.ndarray
    source: str
    fit: LawFit | None
    abstain: str | None = None

    @property
    def shown(self) -> LawFit | None:
        """The fit the report draws and tabulates: ``fit`` unless the report abstains."""
        return None if self.abstain is not None else self.fit


def law_abstain(fit: LawFit | None, n_points: int) -> str | None:
    """Why a fit is not drawn (too few points, constant entropy, R² < ``MIN_LAW_R2``), or None."""
    if n_points < LAW_MIN_POINTS:
        return f"no fit: needs {LAW_MIN_POINTS} points"
    if fit is None:
        return "no fit: entropy/mean constant"
    if not fit.r2 >= MIN_LAW_R2:  # `not >=` also rejects a NaN R²
        return f"no fit: R² {fit.r2:.2f} below MIN_LAW_R2 = {MIN_LAW_R2:g}"
    return None


def law_points(run: Run) -> LawPoints:
    """Pair ``entropy/mean`` with ``eval/pass@1`` (or ``reward/accuracy``) per step; fit the law."""
    h_steps, h = run.series("entropy/mean")
    by_step = dict(zip(h_steps.tolist(), h.tolist()))
    best = None
    for source in ("eval/pass@1", "reward/accuracy"):
        steps, r = run.series(source)
        pairs = [(by_step[s], v) for s, v in zip(steps.tolist(), r.tolist()) if s in by_step]
        if best is None or len(pairs) > len(best[1]):
            best = (source, pairs)
        if len(pairs) >= LAW_MIN_POINTS:
            best = (source, pairs)
            break
    source, pairs = best  # type: ignore[misc]
    H = np.array([p[0] for p in pairs], dtype=np.float64)
    R = np.array([p[1] for p in pairs], dtype=np.float64)
    fit = fit_entropy_law(H, R) if H.size else None
    return LawPoints(H=H, R=R, source=source, fit=fit, abstain=law_abstain(fit, int(H.size)))


# ---------------------------------------------------------------------------------------
# plots: each returns a Figure, or a str saying why it was skipped; ``notes`` collects
# per-run omissions


@dataclass
class Ctx:
    runs: list[Run]
    labels: list[str]
    colors: list[Any]
    laws: list[LawPoints]
    notes: list[str] = field(default_factory=list)
    groups: dict[str, list[int]] = field(default_factory=dict)
    """Seed groups: a name → the indices of its runs in ``runs``."""


def _figure(ncols: int = 1, nrows: int = 1, height: float = 4.4) -> tuple[Figure, list]:
    fig = Figure(figsize=(8.0 if ncols == 1 else 5.2 * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, list(axes.flat)


def _plot(ax, run: Run, key: str, color, style: str = "-", marker: str = "o",
          mask: Callable[[int], bool] | None = None, shift: int = 0) -> bool:
    """Draw the finite points of ``key`` (``mask`` keeps steps); False when there are none."""
    steps, values = run.series(key)
    if mask is not None:
        keep = np.array([mask(int(s)) for s in steps], dtype=bool)
        steps, values = steps[keep], values[keep]
    if not steps.size:
        return False
    ax.plot(steps + shift, values, style, color=color, linewidth=1.6, markersize=4,
            marker=marker if steps.size <= MARKER_MAX_POINTS else None)
    return True


def _run_legend(fig: Figure, c: Ctx, drawn: set[int]) -> None:
    """One colour per run, below the axes: run labels are long, so they are shown once."""
    handles = [Line2D([], [], color=c.colors[i], linewidth=2.5, label=c.labels[i]) for i in sorted(drawn)]
    if handles:
        wide = max(len(h.get_label()) for h in handles) > 48
        fig.legend(handles=handles, loc="outside lower center", ncols=1 if wide else min(3, len(handles)),
                   fontsize=8.5, frameon=False)


def _style_legend(ax, styles: Sequence[tuple[str, str | None, str]], loc: str = "best") -> None:
    """What each line style means in this panel: ``(linestyle, marker, label)``."""
    ax.legend(handles=[Line2D([], [], color="dimgray", linestyle=ls, marker=m, label=lab)
                       for ls, m, lab in styles], fontsize=8, loc=loc)


def plot_entropy(c: Ctx) -> Figure | str:
    if not any(r.has("entropy/mean") for r in c.runs):
        return "no run logs entropy/mean"
    fig, (ax,) = _figure()
    drawn, band = set(), False
    for i, (run, label, color) in enumerate(zip(c.runs, c.labels, c.colors)):
        if not _plot(ax, run, "entropy/mean", color):
            c.notes.append(f"{label}: no entropy/mean")
            continue
        drawn.add(i)
        p80, p95 = (dict(zip(*map(np.ndarray.tolist, run.series(k)))) for k in ("entropy/p80", "entropy/p95"))
        steps = sorted(set(p80) & set(p95))
        if steps:
            band = True
            ax.fill_between(steps, [p80[s] for s in steps], [p95[s] for s in steps], color=color,
                            alpha=0.15, linewidth=0)
    handles = [Line2D([], [], color="dimgray", marker="o", label="entropy/mean")]
    if band:
        handles.append(Patch(color="dimgray", alpha=0.25, label="entropy/p80 – entropy/p95"))
    ax.legend(handles=handles, fontsize=8)
    ax.set(xlabel="step", ylabel="token entropy (nats)", title="(a) Token entropy of π_old")
    _run_legend(fig, c, drawn)
    return fig


def plot_reward(c: Ctx) -> Figure | str:
    keys = ("reward/mean", "eval/pass@1")
    if not any(r.has(k) for r in c.runs for k in keys):
        return "no run logs reward/mean or eval/pass@1"
    fig, (ax,) = _figure()
    drawn = set()
    for i, (run, label, color) in enumerate(zip(c.runs, c.labels, c.colors)):
        for key, style, marker in (("reward/mean", "-", "o"), ("eval/pass@1", "--", "s")):
            if _plot(ax, run, key, color, style, marker):
                drawn.add(i)
            else:
                c.notes.append(f"{label}: no {key}")
    _style_legend(ax, [("-", "o", "reward/mean (training batch)"), ("--", "s", "eval/pass@1 (held out)")])
    ax.set(xlabel="step", ylabel="reward / accuracy", title="(b) Reward and held-out accuracy")
    _run_legend(fig, c, drawn)
    return fig


def plot_law(c: Ctx) -> Figure | str:
    if not any(p.H.size for p in c.laws):
        return "no run logs entropy/mean together with eval/pass@1 or reward/accuracy"
    fig, (ax,) = _figure(height=5.0)
    drawn = set()
    for i, (law, label, color) in enumerate(zip(c.laws, c.labels, c.colors)):
        if not law.H.size:
            c.notes.append(f"{label}: no step with both entropy/mean and an accuracy")
            continue
        drawn.add(i)
        ax.scatter(law.H, law.R, color=color, s=18, zorder=3)
        errors = _law_reward_errors(c.runs[i], law)
        if errors:
            c.notes.append(f"{label}: {errors}")
        fit = law.shown
        if fit is None:
            what = f"{law.abstain} ({law.H.size} point(s) of {law.source})"
            ax.plot([], [], "o", color=color, markersize=4, label=what)  # the legend says why
            c.notes.append(f"{label}: law not drawn, {what}")
            continue
        lo, hi = float(law.H.min()), float(law.H.max())
        grid = np.linspace(lo, hi, 200)
        ax.plot(grid, law_predict(fit, grid).numpy(), "-", color=color, linewidth=1.4,
                label=f"R = {fit.b:.3f} − {fit.a:.3f}·e^H  (R² {fit.r2:.3f}, {fit.n_points} pts of {law.source})")
        ext = np.linspace(0.0, lo, 100)  # extrapolation to H = 0, where the ceiling is read
        ax.plot(ext, law_predict(fit, ext).numpy(), ":", color=color, linewidth=1.2)
        ax.plot([0.0], [fit.ceiling], marker="*", markersize=12, color=color, zorder=4)
        ax.annotate(f"ceiling {fit.ceiling:.3f}", (0.0, fit.ceiling), xytext=(8, 4),
                    textcoords="offset points", fontsize=8, color=color)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.set_xlim(left=-0.03 * max(float(p.H.max()) for p in c.laws if p.H.size) - 0.01)
    ax.set(xlabel="entropy/mean (nats)", ylabel="accuracy R",
           title="(c) Entropy–performance law R = −a·e^H + b (dotted: extrapolation to H = 0)")
    _run_legend(fig, c, drawn)
    return fig


def _law_reward_errors(run: Run, law: LawPoints) -> str | None:
    """A note when the law's training accuracy comes from steps whose rewards partly failed."""
    if law.source != "reward/accuracy":
        return None  # eval/pass@1 has its own eval/reward_error_frac
    paired = set(run.series("entropy/mean")[0].tolist()) & set(run.series(law.source)[0].tolist())
    failed = {s: n for s, n in reward_errors(run).items() if s in paired}
    if not failed:
        return None
    return (f"rewards failed on {sum(failed.values()):g} call(s) at {len(failed)} of the law's "
            f"{len(paired)} step(s), where reward/accuracy counts those responses by the fallback score")


def _empty_group_mask(run: Run, key: str) -> Callable[[int], bool]:
    """Drop ``entropy/correct`` where nothing was correct, ``entropy/wrong`` where nothing was wrong."""
    empty = 0.0 if key == "entropy/correct" else 1.0

    def keep(step: int) -> bool:
        return run.records[step].get("reward/accuracy", math.nan) != empty

    return keep


def _empty_group_note(run: Run, key: str) -> str:
    """Why ``entropy/correct`` or ``entropy/wrong`` drew no point though logged.

    ``reward/accuracy`` said the group was empty at every step. That is a fact about the
    responses only where every reward call ran; at a step with ``reward/errors`` the failed
    calls were scored by the fallback, so whether a correct (or wrong) response was there is
    unknown, and the note says so instead of claiming there was none.
    """
    kind = key.split("/")[1]
    steps = set(run.series(key)[0].tolist())
    failed = {s: n for s, n in reward_errors(run).items() if s in steps}
    if not failed:
        return f"{key} not drawn, no step had a {kind} response (reward/accuracy)"
    clean = len(steps) - len(failed)
    return (f"{key} not drawn: reward/accuracy counts no {kind} response at any of its "
            f"{len(steps)} step(s), but rewards failed on {sum(failed.values()):g} call(s) at "
            f"{len(failed)} of them, so correctness is unknown for those steps"
            + (f" ({clean} step(s) without reward errors)" if clean else ""))


def plot_phase(c: Ctx) -> Figure | str:
    panels = [p for p in (("entropy/think", "entropy/answer"), ("entropy/correct", "entropy/wrong"))
              if any(r.has(k) for r in c.runs for k in p)]
    if not panels:
        return "no run logs entropy/think, entropy/answer, entropy/correct or entropy/wrong"
    fig, axes = _figure(ncols=len(panels), height=4.6)
    drawn = set()
    for ax, keys in zip(axes, panels):
        for i, (run, label, color) in enumerate(zip(c.runs, c.labels, c.colors)):
            for key, style, marker in zip(keys, ("-", "--"), ("o", "s")):
                mask = _empty_group_mask(run, key) if key in ("entropy/correct", "entropy/wrong") else None
                if _plot(ax, run, key, color, style, marker, mask):
                    drawn.add(i)
                elif run.has(key):  # logged, but every step had an empty group (logged as 0)
                    c.notes.append(f"{label}: {_empty_group_note(run, key)}")
                else:
                    c.notes.append(f"{label}: no {key}")
        _style_legend(ax, [("-", "o", keys[0]), ("--", "s", keys[1])])
        ax.set(xlabel="step", ylabel="token entropy (nats)",
               title=f"(d) {keys[0].split('/')[1]} vs {keys[1].split('/')[1]}")
    _run_legend(fig, c, drawn)
    return fig


def control_keys(runs: Sequence[Run]) -> list[str]:
    """``prefix/..._frac`` keys with a finite value in some run, outside :data:`NOT_CONTROLS`."""
    keys = {k for r in runs for k in r.metric_keys()
            if k.endswith("_frac") and "/" in k and k.split("/")[0] not in NOT_CONTROLS and r.has(k)}
    return sorted(keys)


def plot_controls(c: Ctx) -> Figure | str:
    keys = control_keys(c.runs)
    if not keys:
        return "no control token fractions logged (no run uses a token-level control)"
    ncols = min(3, len(keys))
    fig, axes = _figure(ncols=ncols, nrows=math.ceil(len(keys) / ncols), height=3.6)
    drawn = set()
    for ax, key in zip(axes, keys):
        for i, (run, color) in enumerate(zip(c.runs, c.colors)):
            if _plot(ax, run, key, color):
                drawn.add(i)
        ax.set(xlabel="step", ylabel="fraction of tokens", title=key)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # headroom: a fraction near its maximum stays visible
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("(e) Token fractions of each active control")
    _run_legend(fig, c, drawn)
    return fig


def plot_covariance(c: Ctx) -> Figure | str:
    has_cov = any(r.has("cov/mean") for r in c.runs)
    has_dh = any(r.has(k) for r in c.runs for k in ("cov/dH_pred", "cov/dH_realised"))
    if not (has_cov or has_dh):
        return "no run logs cov/mean, cov/dH_pred or cov/dH_realised"
    panels = [p for p, on in (("cov", has_cov), ("dH", has_dh)) if on]
    fig, axes = _figure(ncols=len(panels), height=4.6)
    drawn = set()
    for ax, panel in zip(axes, panels):
        ax.axhline(0.0, color="black", linewidth=0.8)
        for i, (run, label, color) in enumerate(zip(c.runs, c.labels, c.colors)):
            series = ([("cov/mean", "-", "o", 0)] if panel == "cov" else
                      # dH_pred logged at k predicts H[k+1] − H[k]: drawn at k + 1
                      [("cov/dH_realised", "-", "o", 0), ("cov/dH_pred", "--", "x", 1)])
            for key, style, marker, shift in series:
                if _plot(ax, run, key, color, style, marker, shift=shift):
                    drawn.add(i)
                else:
                    c.notes.append(f"{label}: no {key}")
        if panel == "cov":
            ax.set(xlabel="step", ylabel="Ĉ (nats)",
                   title="(f) Ĉ = mean (log π_old − mean)(A − mean)")
        else:
            _style_legend(ax, [("-", "o", "realised ΔH (cov/dH_realised)"),
                               ("--", "x", "predicted −η_eff·Ĉ (cov/dH_pred)")])
            ax.set(xlabel="step (whose entropy change is shown)", ylabel="ΔH (nats)",
                   title="(f) Entropy change: realised vs predicted")
    _run_legend(fig, c, drawn)
    return fig


def group_band(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(steps, mean, standard error)`` of ``key`` over ``runs`` at the steps every run logged
    it finitely; the error is 0 for a single run; None when no step is common to all."""
    series = [dict(zip(*map(np.ndarray.tolist, r.series(key)))) for r in runs]
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not common:
        return None
    values = np.array([[s[step] for step in common] for s in series], dtype=np.float64)  # [runs, steps]
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(mean)
    return np.array(common), mean, se


def plot_seed_bands(c: Ctx) -> Figure | str:
    if not c.groups:
        return "no seed groups"
    fig, axes = _figure(ncols=2)
    cmap = colormaps["tab10"]
    handles = []
    for g, (name, idx) in enumerate(c.groups.items()):
        color = cmap(g % 10)
        runs = [c.runs[i] for i in idx]
        drew = False
        for ax, key in zip(axes, ("entropy/mean", "eval/pass@1")):
            band = group_band(runs, key)
            if band is None:
                c.notes.append(f"{name}: no step where all {len(runs)} run(s) logged {key}")
                continue
            steps, mean, se = band
            ax.plot(steps, mean, "-", color=color, linewidth=1.6,
                    marker="o" if steps.size <= MARKER_MAX_POINTS else None, markersize=4)
            ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.2, linewidth=0)
            drew = True
        if drew:
            handles.append(Line2D([], [], color=color, linewidth=2.5, label=f"{name} (n={len(runs)})"))
    axes[0].set(xlabel="step", ylabel="token entropy (nats)", title="Token entropy: mean ± s.e. over seeds")
    axes[1].set(xlabel="step", ylabel="eval/pass@1", title="Held-out accuracy: mean ± s.e. over seeds")
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8.5,
                   frameon=False)
    return fig


PLOTS: tuple[tuple[str, str, Callable[[Ctx], Figure | str]], ...] = (
    ("entropy", "Token entropy", plot_entropy),
    ("reward", "Reward and accuracy", plot_reward),
    ("law", "Entropy–performance law (arXiv 2505.22617)", plot_law),
    ("phase_entropy", "Phase entropy", plot_phase),
    ("controls", "Control token fractions", plot_controls),
    ("covariance", "Covariance Ĉ and entropy change (arXiv 2505.22617)", plot_covariance),
    ("seed_bands", "Seed groups: mean ± standard error", plot_seed_bands),
)
"""(PNG stem, HTML heading, plot function), in report order."""


# ---------------------------------------------------------------------------------------
# summary table and HTML


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def reward_error_summary(run: Run) -> str:
    """Total failed reward calls, steps affected and the worst ``reward/error_frac``, as text.

    ``n/a`` when the run logs no ``reward/errors``; the worst fraction is left out when the run
    predates ``reward/error_frac`` (it is not reconstructed from the counts).
    """
    if not run.has("reward/errors"):
        return "n/a"
    failed = reward_errors(run)
    text = f"{sum(failed.values()):g} at {len(failed)}/{run.series('reward/errors')[0].size} step(s)"
    steps, frac = run.series("reward/error_frac")
    if frac.size and failed:
        worst = int(np.argmax(frac))
        text += f"; worst step {int(steps[worst])}: {frac[worst]:.1%} of calls"
    return text


def summary_rows(runs: Sequence[Run], labels: Sequence[str], laws: Sequence[LawPoints]) -> list[dict[str, str]]:
    """One row of display strings per run (the HTML table; also handy in tests)."""
    rows = []
    for run, label, law in zip(runs, labels, laws):
        acc = run.last("eval/pass@1")
        acc_src = "eval/pass@1"
        if acc is None:
            acc, acc_src = run.last("reward/accuracy"), "reward/accuracy"
        _, h = run.series("entropy/mean")
        steps = run.summary.get("steps", max(run.records))
        wall = run.summary.get("wall_seconds")
        fit = law.shown
        rows.append({
            "run": label,
            "path": str(run.path),
            "steps": str(steps),
            "wall time": _fmt_duration(wall) if isinstance(wall, int | float) and math.isfinite(wall) else "n/a",
            "final accuracy": "n/a" if acc is None else f"{acc[1]:.3f} ({acc_src}, step {acc[0]})",
            "final entropy": _f(float(h[-1]) if h.size else None, ".4f"),
            "entropy end/start": _f(float(h[-1] / h[0]) if h.size and h[0] != 0 else None),
            "reward errors": reward_error_summary(run),
            "law a, b (R²)": (law.abstain or "n/a") if fit is None else f"{fit.a:.3f}, {fit.b:.3f} ({fit.r2:.3f})",
            "law ceiling": "n/a" if fit is None else f"{fit.ceiling:.3f}",
        })
    return rows


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1180px; color: #1d1d1f; background: #fff; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border: 1px solid #ccc; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f2f4f7; } tr:nth-child(even) td { background: #fafbfc; }
td.path { font-family: monospace; font-size: 11px; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.skip { color: #8a5300; background: #fff6e5; padding: 8px 12px; border-left: 3px solid #f0a020; }
ul.notes { color: #555; font-size: 12px; }
"""


def _html(runs: Sequence[Run], rows: list[dict[str, str]],
          sections: list[tuple[str, str, str | None, str | None, list[str]]]) -> str:
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Self-contained by construction: nothing may load from outside this file.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>entropo report: {e(', '.join(r.name for r in runs))}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>entropo run report</h1>",
        f'<p class="meta">{len(runs)} run(s); generated '
        f"{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} by "
        "<code>entropo report</code>. Metrics: docs/metrics.md.</p>",
        "<h2>Summary</h2><table><tr>",
    ]
    cols = [k for k in rows[0] if k != "path"]
    out.append("".join(f"<th>{e(k)}</th>" for k in cols) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{e(row[k])}</td>" for k in cols) + "</tr>")
        out.append(f'<tr><td class="path" colspan="{len(cols)}">{e(row["path"])}</td></tr>')
    out.append("</table>")
    bad = [f"{r.name}: {r.bad_lines} unreadable line(s) in metrics.jsonl skipped" for r in runs if r.bad_lines]
    bad += [f"{r.name}: rewards failed on {sum(f.values()):g} call(s) at {len(f)} step(s) (reward/errors); "
            "correctness (reward/accuracy, entropy/correct, entropy/wrong) is unknown for those calls"
            for r in runs if (f := reward_errors(r))]
    if bad:
        out.append('<ul class="notes">' + "".join(f"<li>{e(b)}</li>" for b in bad) + "</ul>")
    for heading, caption, data_uri, skip, notes in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        if skip is not None:
            out.append(f'<p class="skip">Plot skipped: {e(skip)}.</p>')
            continue
        out.append(f'<img src="{data_uri}" alt="{e(caption)}">')
        if notes:
            out.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path,
                 groups: dict[str, Sequence[str | Path]] | None = None) -> Path:
    """Write ``out_dir/report.html`` and one PNG per drawn plot; return the HTML's path.

    Args:
        run_dirs: run directories (``trainer.output_dir``), overlaid in this order.
        out_dir: where the report goes (created if missing). PNGs of plots skipped this time
            are removed, so the folder never mixes two reports.
        groups: seed groups, a name → some of ``run_dirs`` (plot (g)); without them that plot
            is left out.

    Raises:
        ReportError: no run given, or a directory missing or without ``metrics.jsonl``.
    """
    if not run_dirs:
        raise ReportError("no run directory given")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(runs)
    cmap = colormaps["tab10"]
    index = {Path(d).resolve(): i for i, d in enumerate(run_dirs)}
    try:
        members = {name: [index[Path(d).resolve()] for d in dirs] for name, dirs in (groups or {}).items()}
    except KeyError as e:
        raise ReportError(f"a seed group names {e.args[0]}, which is not one of the run directories") from None
    ctx = Ctx(runs=runs, labels=labels, colors=[cmap(i % 10) for i in range(len(runs))],
              laws=[law_points(r) for r in runs], groups={k: v for k, v in members.items() if v})
    sections = []
    for stem, heading, fn in PLOTS:
        if fn is plot_seed_bands and not ctx.groups:
            (out / f"{stem}.png").unlink(missing_ok=True)
            continue
        ctx.notes = []
        png = out / f"{stem}.png"
        result = fn(ctx)
        if isinstance(result, str):
            png.unlink(missing_ok=True)
            sections.append((heading, heading, None, result, []))
            continue
        result.savefig(png, dpi=DPI, facecolor="white")
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        sections.append((heading, heading, uri, None, list(dict.fromkeys(ctx.notes))))
    path = out / REPORT_FILE
    path.write_text(_html(runs, summary_rows(runs, labels, ctx.laws), sections), encoding="utf-8")
    return path
