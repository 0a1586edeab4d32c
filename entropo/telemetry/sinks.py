"""Metric sinks: one ``log(step, metrics)`` per training step, fanned out to every backend.

Step convention: ``step`` is the 1-based index of the training step just finished, and a
resumed run passes ``start_step`` = the first step it will log again. Sinks that keep a
history (jsonl, TensorBoard) drop whatever an earlier run wrote at steps ``>= start_step``,
so a resume never duplicates a step; ``start_step=0`` (a fresh run) drops all of it.

Backends (``logger.backends``):

* ``console``: a rich progress bar with ETA and one compact line per step; plain lines
  (no control codes) when the console is not a terminal (CI, a redirected log).
* ``jsonl``: ``run_dir/metrics.jsonl``, one JSON object per step, ``"step"`` first,
  flushed and fsynced every step. JSON has no NaN or infinity: they are written as ``null``.
* ``tensorboard``: ``run_dir/tensorboard`` via ``torch.utils.tensorboard.SummaryWriter``.
* ``wandb``: one run per run directory; its id is kept in ``run_dir/wandb_id`` so a
  resume continues the same wandb run. ``step`` is the x-axis of every metric.
  ``WANDB_MODE`` (e.g. ``offline``) is read from the environment by wandb itself.
  Not handled: rows an earlier process logged at steps ``>= start_step`` stay in the
  wandb history (wandb cannot delete rows; its ``resume_from`` rewinds only in the cloud).

Failure policy: a sink that raises in ``log``/``log_table``/``log_histogram`` is reported
once (a ``RuntimeWarning`` naming it) and disabled; the others keep logging. A dashboard
(tensorboard, wandb) that fails to start is skipped the same way; console and jsonl are
local and their errors propagate.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

BACKENDS = ("console", "jsonl", "tensorboard", "wandb")
DASHBOARDS = ("tensorboard", "wandb")
"""Backends whose start-up failure is a warning, not an error (an outage must not stop a run)."""

HEADLINE_KEYS = ("reward/mean", "reward/accuracy", "entropy/mean", "response_length/mean", "timing/step")
"""Metrics the console line shows by default (those present in a step's metrics). Besides
them the line shows ``reward/error_frac`` as ``rerr`` when it is above 0, and the last
``eval/pass@1`` seen with the step it was measured at (``eval 0.31@s4``): evaluations are
logged on their own steps, so the line keeps showing the last one until the next."""

LABELS = {"reward/accuracy": "acc", "response_length/mean": "len", "timing/step": "time"}
"""Console labels of keys that would be long; other keys show without their ``/mean``
(``time`` is the step's wall time)."""


@runtime_checkable
class MetricSink(Protocol):
    """A destination for per-step metrics.

    Sinks may also define ``log_table(step, name, columns, rows)`` and
    ``log_histogram(step, name, values)``; :class:`MultiSink` calls them only where defined.
    """

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``float(v)`` for every value: tensors, numpy scalars, ints and bools become floats."""
    return {str(k): float(v) for k, v in metrics.items() if k != "step"}


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on GPU
        values = values.detach().float().cpu()
    return np.asarray(values, dtype=np.float64).ravel()


# ---------------------------------------------------------------------------------------
# console


def _fmt(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits (3: enough to follow a run, and short)."""
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def _fmt_duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ConsoleSink:
    """A progress bar with ETA over ``total_steps`` and one line of headline metrics per step.

    Args:
        total_steps: steps of the whole run (the bar's length).
        keys: metrics shown on the line, in order; absent ones are skipped. ``rerr`` and the
            last eval (see :data:`HEADLINE_KEYS`) follow them whatever the keys.
        start_step: first step this process logs (a resumed run starts the bar there).
        console: the rich console to print to (default: a new one on stdout). When it is not
            a terminal, no live bar is drawn and each line carries the step count and ETA.
    """

    def __init__(
        self,
        total_steps: int,
        keys: Sequence[str] = HEADLINE_KEYS,
        start_step: int = 0,
        console: Console | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.keys = tuple(keys)
        self.console = console or Console()
        self._t0 = time.monotonic()
        self._first: tuple[int, float] | None = None  # (step, time) of the first log call
        self._eval: tuple[int, float] | None = None  # (step, eval/pass@1) of the last evaluation
        self._progress: Progress | None = None
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("eta {task.fields[eta]}"),
                console=self.console,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=max(start_step - 1, 0), eta="?")
            self._progress.start()

    def _eta(self, step: int) -> float:
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)
        first_step, first_t = self._first
        # Rate from the steps after the first one when there are any: the first step also
        # pays for start-up (model loading, compilation), which must not set the ETA.
        per_step = (now - first_t) / (step - first_step) if step > first_step else now - self._t0
        return per_step * max(self.total_steps - step, 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        metrics = _floats(metrics)
        parts = []
        for key in self.keys:
            if key in metrics:
                label = LABELS.get(key, key.removesuffix("/mean"))
                unit = "s" if key.startswith("timing/") else ""
                parts.append(f"{label} {_fmt(metrics[key])}{unit}")
        if metrics.get("reward/error_frac", 0.0) > 0:  # some reward calls fell back to fallback_score
            parts.append(f"rerr {_fmt(metrics['reward/error_frac'], 2)}")
        if "eval/pass@1" in metrics:
            self._eval = (step, metrics["eval/pass@1"])
        if self._eval is not None:
            parts.append(f"eval {_fmt(self._eval[1])}@s{self._eval[0]}")
        eta = _fmt_duration(self._eta(step))
        if self._progress is not None:
            self._progress.update(self._task, completed=step, eta=eta)
            line = f"step {step:>{len(str(self.total_steps))}} | " + " | ".join(parts)
            self._progress.console.print(line, markup=False)
        else:
            head = f"[{step:>{len(str(self.total_steps))}}/{self.total_steps}]"
            # markup/highlight off and soft_wrap on: one plain line per step in a log file.
            self.console.print(
                " | ".join([head, *parts, f"eta {eta}"]), markup=False, highlight=False, soft_wrap=True
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# ---------------------------------------------------------------------------------------
# metrics.jsonl


class JsonlSink:
    """Appends ``{"step": k, key: value, ...}`` lines to ``run_dir/metrics.jsonl``.

    Args:
        run_dir: the run directory (created if missing).
        start_step: lines of an existing file with ``step >= start_step`` are dropped before
            appending (0: a fresh run drops them all); so are unreadable lines (a line cut by
            a crash).
    """

    def __init__(self, run_dir: str | Path, start_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate(start_step)
        self._file = self.path.open("a", encoding="utf-8")

    def _truncate(self, start_step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                keep = json.loads(line)["step"] < start_step
            except (ValueError, KeyError, TypeError):
                continue
            if keep:
                kept.append(line + "\n")
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)  # atomic: a crash here leaves the old or the new file

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record: dict[str, float | int | None] = {"step": int(step)}
        for key, value in _floats(metrics).items():
            record[key] = value if math.isfinite(value) else None
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------------------
# TensorBoard


class TensorBoardSink:
    """Scalars, histograms and text tables in ``run_dir/tensorboard``.

    Args:
        run_dir: the run directory.
        start_step: events of an earlier run at steps ``>= start_step`` are purged
            (``SummaryWriter(purge_step=...)``).
    """

    def __init__(self, run_dir: str | Path, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in _floats(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_histogram(self, step: int, name: str, values: Any) -> None:
        self.writer.add_histogram(name, _array(values), global_step=step)

    def log_table(self, step: int, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        def cell(x: Any) -> str:
            return str(x).replace("|", "\\|").replace("\n", "<br>")

        lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), global_step=step)

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------
# Weights & Biases


class WandbSink:
    """One wandb run per run directory, resumed through the id in ``run_dir/wandb_id``.

    Args:
        run_dir: the run directory; wandb writes under ``run_dir/wandb``.
        project: the wandb project.
        run_name: the display name of the run.
        config: the resolved training config, as a dict.

    In offline mode, wandb 0.31's ``run.finish()`` can return a moment before wandb-core has
    written ``run-<id>.wandb`` (the service process finishes it); readers should wait for
    its ``exit`` record, as ``tests/telemetry/test_sinks.py`` does.
    """

    def __init__(self, run_dir: str | Path, project: str, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb_id"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:8]  # wandb's own ids are 8 lowercase alphanumerics
            id_file.write_text(run_id + "\n")
        self._wandb = wandb
        self.run = wandb.init(
            project=project, dir=str(run_dir), name=run_name, config=config, id=run_id, resume="allow"
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({"step": int(step), **_floats(metrics)})

    def log_table(self, step: int, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        table = self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])
        self.run.log({"step": int(step), name: table})

    def log_histogram(self, step: int, name: str, values: Any) -> None:
        self.run.log({"step": int(step), name: self._wandb.Histogram(_array(values))})

    def close(self) -> None:
        self.run.finish()


# ---------------------------------------------------------------------------------------
# fan-out


class MultiSink:
    """Sends every call to each sink; a sink that raises is warned about once and dropped.

    Values are converted to floats here once; a key whose value is not a number (e.g. a
    string, or a tensor of several elements) is dropped with one warning naming it.
    A dropped sink is not closed: closing a broken remote (wandb) can block.
    """

    def __init__(self, sinks: Iterable[MetricSink]) -> None:
        self.sinks = list(sinks)
        self._bad_keys: set[str] = set()

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                clean[str(key)] = float(value)
            except (TypeError, ValueError, RuntimeError):
                if key not in self._bad_keys:
                    self._bad_keys.add(key)
                    warnings.warn(f"metric '{key}' is not a number ({type(value).__name__}); not logged",
                                  RuntimeWarning, stacklevel=2)
        self._each("log", int(step), clean)

    def log_table(self, step: int, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self._each("log_table", int(step), name, list(columns), [list(r) for r in rows])

    def log_histogram(self, step: int, name: str, values: Any) -> None:
        self._each("log_histogram", int(step), name, _array(values))

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as e:  # a dashboard outage must never kill training
                self.sinks.remove(sink)
                warnings.warn(
                    f"metric sink {type(sink).__name__} failed in {method} ({type(e).__name__}: {e}); "
                    "it is disabled for the rest of the run",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as e:
                warnings.warn(f"metric sink {type(sink).__name__} failed to close ({type(e).__name__}: {e})",
                              RuntimeWarning, stacklevel=2)

    def __enter__(self) -> MultiSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_sinks(
    backends: Sequence[str],
    run_dir: str | Path,
    total_steps: int,
    project: str,
    run_name: str,
    config: dict[str, Any],
    start_step: int = 0,
    is_main: bool = True,
) -> MultiSink:
    """The sinks named in ``backends`` (``logger.backends``), behind one :class:`MultiSink`.

    Args:
        backends: any of console, jsonl, tensorboard, wandb; repeats are ignored.
        run_dir: the run directory.
        total_steps: steps of the whole run (console bar and ETA).
        project: the wandb project.
        run_name: the wandb run name.
        config: the resolved training config as a dict (stored by wandb).
        start_step: first step this process logs; history at steps >= it is dropped.
        is_main: False on every process but the main one, which gets no sinks at all.
    """
    if not is_main:
        return MultiSink([])
    sinks: list[MetricSink] = []
    for name in dict.fromkeys(backends):
        if name not in BACKENDS:
            raise ValueError(f"logger.backends: unknown backend '{name}'; known: {', '.join(BACKENDS)}")
        try:
            if name == "console":
                sinks.append(ConsoleSink(total_steps, start_step=start_step))
            elif name == "jsonl":
                sinks.append(JsonlSink(run_dir, start_step=start_step))
            elif name == "tensorboard":
                sinks.append(TensorBoardSink(run_dir, start_step=start_step))
            else:
                sinks.append(WandbSink(run_dir, project, run_name, config))
        except Exception as e:
            if name not in DASHBOARDS:
                raise
            warnings.warn(f"metric sink '{name}' failed to start ({type(e).__name__}: {e}); "
                          "running without it", RuntimeWarning, stacklevel=2)
    return MultiSink(sinks)
