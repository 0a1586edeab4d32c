"""The reward stage's one entry point: :class:`RewardManager`.

``RewardManager(cfg.reward, tokenizer)`` parses and loads ``reward.fns`` (failing at
start-up with the entry named), starts the worker pool, and ``score(samples)`` returns a
:class:`~entropo.rewards.api.RewardResult`: total rewards, weighted components, ``correct``,
answer-cluster ids, per-function failures and metrics. A failure never stops the scoring:
an exception, a timeout or a non-finite score gives that (function, sample)
``reward.fallback_score`` (then weighted) and is counted; the first failure of each
function and reason in the manager's lifetime (the run) is printed with its traceback, later
ones only counted (``reward/errors`` per step).
:func:`check_failures` turns a function that fell back on more than
``reward.max_error_frac`` of the samples into a :class:`RewardFailureError`.

``correct`` is the first reported ``acc``, else ``total reward ≥ reward.correct_threshold``
(:meth:`RewardManager.correctness_rule` says it in words, for the start-up log).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from entropo.rewards import registry
from entropo.rewards.api import EntryFailures, RewardResult, Sample
from entropo.rewards.evaluator import ERROR_REASONS, OK, SKIPPED, Evaluator, Job, Outcome
from entropo.rewards.loader import CLUSTERS_TARGET, FnSpec, RewardSpecError, parse_entries
from entropo.rewards.pool import LocalBackend, RayBackend, execute
from entropo.rewards.registry import RewardContext

MODES = ("ray", "local")
THINK_CLOSE = "</think>"


def make_context(tokenizer: Any) -> RewardContext:
    """The :class:`RewardContext` of a tokenizer: the ``</think>`` id when it is one token.

    Args:
        tokenizer: an HF tokenizer, or None.

    Returns:
        The context; it carries the tokenizer itself only when ``</think>`` is not a
        single token (PEAR then locates it by decoding).
    """
    if tokenizer is None:
        return RewardContext()
    tid = None
    try:
        tid = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    except (KeyError, ValueError, TypeError):
        tid = None
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
        return RewardContext(think_close_id=None, tokenizer=tokenizer, has_tokenizer=True)
    return RewardContext(think_close_id=int(tid), tokenizer=None, has_tokenizer=True)


class RewardFailureError(RuntimeError):
    """A reward function fell back on more than ``reward.max_error_frac`` of the samples."""


def last_line(message: str) -> str:
    """The last non-empty line of a traceback or reason (the exception and its text)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no detail"


def check_failures(result: RewardResult, max_error_frac: float, where: str) -> None:
    """Raise when a function fell back on more than ``max_error_frac`` of the samples.

    Args:
        result: a :meth:`RewardManager.score` result.
        max_error_frac: ``reward.max_error_frac``.
        where: what was scored, for the message ("step 3", "the evaluation").

    Raises:
        RewardFailureError: one line naming the function, the fraction and the first
            failure's last line.
    """
    for f in result.failures:
        if f.failed > max_error_frac * f.total:
            raise RewardFailureError(
                f"reward '{f.label}' failed on {f.failed}/{f.total} samples of {where} "
                f"({f.failed / f.total:.0%} > reward.max_error_frac={max_error_frac:g}); first: {f.first}. "
                "Fix the function (its first traceback is in the log above), or raise reward.max_error_frac")


class RewardManager:
    """Scores step batches with the configured reward functions (module docstring).

    Args:
        cfg: ``reward``, a ``RewardConfig``: each built-in's options are its section
            (``reward.math``, ...), which every built-in with options has.
        tokenizer: the policy's tokenizer; PEAR needs it to find ``</think>``.

    Raises:
        RewardSpecError: an entry that cannot be parsed or loaded (named in the message).
        ValueError: a bad mode, worker count or timeout.
    """

    def __init__(self, cfg: Any, tokenizer: Any = None) -> None:
        self.fallback = float(cfg.fallback_score)
        self.timeout_s = float(cfg.timeout_s)
        self.threshold = float(cfg.correct_threshold)
        self.reported: set[tuple[str, str]] = set()
        mode, workers = cfg.mode, int(cfg.workers)
        if mode not in MODES:
            raise ValueError(f"reward.mode: '{mode}' is not one of {', '.join(MODES)}")
        if workers < 1:
            raise ValueError(f"reward.workers: must be >= 1, got {workers}")
        if not self.timeout_s > 0:
            raise ValueError(f"reward.timeout_s: must be > 0, got {self.timeout_s}")
        specs = parse_entries(list(cfg.fns))
        if not specs:
            raise RewardSpecError("reward.fns is empty: give at least one reward function")
        if cfg.cluster_answers and not any(s.target == "empo" for s in specs):
            specs.append(FnSpec("_clusters", CLUSTERS_TARGET, 0.0, "reward.cluster_answers"))
        options = {}
        for name in registry.names():
            b = registry.get(name)
            if b.options is not None:
                try:
                    options[name] = registry.make_options(b, getattr(cfg, name))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"reward.{name}: {e}") from None
        ctx = make_context(tokenizer)
        # Loading here validates every entry in this process, whatever the mode.
        self.evaluator = Evaluator(specs, options, ctx, self.timeout_s)
        self.specs = specs
        self.levels = [e.level for e in self.evaluator.entries]
        self.summarisers: dict[int, Callable] = {}
        for i, s in enumerate(specs):
            if s.is_builtin and registry.get(s.target).summarise is not None:
                self.summarisers[i] = registry.get(s.target).summarise
        if mode == "local":
            self.backend: Any = LocalBackend(self.evaluator, workers)
        else:
            memory = float(cfg.worker_memory_growth_mb)
            self.backend = RayBackend(specs, options, ctx, self.timeout_s, workers,
                                      float(cfg.worker_cpus), memory if memory > 0 else None, tuple(cfg.pass_env),
                                      int(cfg.standby_workers), cfg.isolation)

    def ready(self) -> None:
        """Wait until the reward workers are up (Ray workers start in the background, so that
        they overlap the trainer's start-up); a worker that cannot start raises RuntimeError."""
        self.backend.wait_started()

    @property
    def reads_policy(self) -> bool:
        """Whether some reward reads π_old's numbers of a sample (a function of the user's, or a
        built-in that does): the trainer then runs its π_old pass before scoring."""
        return any(not s.is_builtin or registry.get(s.target).reads_policy for s in self.specs)

    def correctness_rule(self) -> str:
        """How ``correct`` is decided, in one line (printed once at start-up)."""
        return (f"[reward] correct = the 'acc' a reward function reports (first in reward.fns), "
                f"else total reward >= reward.correct_threshold={self.threshold:g}")

    # ---- scoring ------------------------------------------------------------------------
    def score(self, samples: list[Sample]) -> RewardResult:
        """Score ``N`` samples with every entry of ``reward.fns``.

        Args:
            samples: the step's responses; ``Sample.group`` ties a prompt's responses together.

        Returns:
            The :class:`RewardResult`.
        """
        n = len(samples)
        done, stats = execute(self.backend, self._jobs(samples), self.timeout_s)
        table: list[list[Outcome | None]] = [[None] * n for _ in self.specs]  # [entry][row]
        for job, out in done:
            for row, o in zip(job.rows, out.outcomes):
                table[job.entry][row] = o
        for job, o in stats.failures:
            for row in job.rows:
                table[job.entry][row] = o
        result = self._assemble(samples, table)
        result.metrics["reward/workers_replaced"] = float(stats.replaced)
        result.metrics["reward/workers_recycled"] = float(stats.recycled)
        result.metrics["reward/quarantined"] = float(len(stats.quarantined))
        return result

    def _jobs(self, samples: list[Sample]) -> list[Job]:
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(s.group, []).append(i)
        jobs = []
        for e, level in enumerate(self.levels):
            units = list(groups.values()) if level == "group" else [[i] for i in range(len(samples))]
            size = self.backend.chunk_size(len(units))
            for k in range(0, len(units), size):
                chunk = units[k : k + size]
                rows = [i for u in chunk for i in u]
                pos, offsets = 0, []
                for u in chunk:
                    offsets.append(list(range(pos, pos + len(u))))
                    pos += len(u)
                jobs.append(Job(e, rows, [samples[i] for i in rows], offsets))
        return jobs

    def _assemble(self, samples: list[Sample], table: list[list[Outcome | None]]) -> RewardResult:
        n = len(samples)
        components: dict[str, torch.Tensor] = {}
        correct = torch.full((n,), float("nan"))
        cluster_ids = torch.full((n,), -1, dtype=torch.int64)
        counts = dict.fromkeys(ERROR_REASONS, 0)
        skipped = 0
        failures: list[EntryFailures] = []
        metrics: dict[str, float] = {}
        group_ids = torch.tensor([s.group for s in samples], dtype=torch.int64)
        for e, spec in enumerate(self.specs):
            scores = torch.full((n,), self.fallback, dtype=torch.float64)
            acc = torch.full((n,), float("nan"), dtype=torch.float64)
            extras: dict[str, torch.Tensor] = {}
            failed, first = 0, ""
            for row in range(n):
                o = table[e][row] or Outcome("exception", message="no result came back (internal error)")
                if o.status == OK:
                    scores[row] = o.score
                    if o.acc is not None:
                        acc[row] = o.acc
                        if math.isnan(correct[row]):
                            correct[row] = o.acc
                    if o.cluster is not None and cluster_ids[row] < 0:
                        cluster_ids[row] = o.cluster
                    for k, v in o.extras.items():
                        extras.setdefault(k, torch.full((n,), float("nan"), dtype=torch.float64))[row] = v
                elif o.status == SKIPPED:
                    skipped += 1
                else:
                    counts[o.status] += 1
                    failed += 1
                    first = first or f"{o.status}: {last_line(o.message)}"
                    self._report(spec.label, row, o)
            if failed:
                failures.append(EntryFailures(spec.label, failed, n, first))
            if spec.target != CLUSTERS_TARGET:
                components[spec.label] = (spec.weight * scores).to(torch.float32)
            metrics.update(self._summary(e, spec.label, extras, acc, group_ids))
        rewards = torch.stack(list(components.values())).sum(0) if components else torch.zeros(n)
        by_threshold = (rewards >= self.threshold).float()
        correct = torch.where(torch.isnan(correct), by_threshold, correct).to(torch.float32)
        metrics["reward/errors"] = float(sum(counts.values()))
        calls = n * sum(s.target != CLUSTERS_TARGET for s in self.specs)  # the internal clustering is no reward
        metrics["reward/error_frac"] = float(sum(counts.values())) / max(calls, 1)
        for reason, c in counts.items():
            metrics[f"reward/errors/{reason}"] = float(c)
        metrics["reward/skipped"] = float(skipped)
        return RewardResult(rewards.to(torch.float32), components, correct, cluster_ids, metrics, failures)

    def _report(self, label: str, row: int, o: Outcome) -> None:
        """Print the first failure of each (function, reason) with its traceback; count the rest."""
        if (label, o.status) in self.reported:
            return
        self.reported.add((label, o.status))
        print(f"[reward] '{label}' failed on sample {row} ({o.status}); scored {self.fallback:g}. Later "
              f"{o.status} failures of '{label}' are only counted (reward/errors):\n{o.message}",
              file=sys.stderr, flush=True)

    def _summary(self, e: int, label: str, extras: dict[str, torch.Tensor], acc: torch.Tensor,
                 group_ids: torch.Tensor) -> dict[str, float]:
        if not extras:
            return {}
        if e in self.summarisers:
            out = self.summarisers[e](extras, acc, group_ids)
        else:  # the mean of each numeric extra over the samples that reported it
            out = {k: float(v[~torch.isnan(v)].mean()) for k, v in extras.items() if (~torch.isnan(v)).any()}
        return {f"reward/{label}/{k}": float(v) for k, v in out.items()}

    # ---- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (Ray actors are killed; local threads are told to end)."""
        self.backend.close()

    def __enter__(self) -> RewardManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
