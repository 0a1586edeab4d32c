"""Options of the built-in rewards (``reward.<name>``; entropo.rewards.registry): one frozen
dataclass per built-in, each field documented where it is defined. This module imports no
reward and no torch, so :mod:`entropo.config` loads them cheaply; each built-in's module
imports its options from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from entropo.rewards.sandbox import SandboxLimits


@dataclass(frozen=True)
class MathConfig:
    """Options of the ``math`` reward (``reward.math``)."""

    check_timeout_s: int = 5
    """Seconds allowed to each math_verify parse / comparison (whole seconds; 0 = none)."""

    tail_chars: int | None = None
    """Score only the last this many characters of the answer phase; DAPO uses 300."""

    correct_score: float = 1.0
    """Score of an equivalent answer."""

    wrong_score: float = 0.0
    """Score of a wrong or missing answer; DAPO uses −1."""

    def __post_init__(self) -> None:
        if self.check_timeout_s < 0:
            raise ValueError(f"reward.math.check_timeout_s: must be >= 0, got {self.check_timeout_s}")
        if self.tail_chars is not None and self.tail_chars < 1:
            raise ValueError(f"reward.math.tail_chars: must be >= 1 or None, got {self.tail_chars}")


@dataclass(frozen=True)
class CountdownConfig:
    """Options of the ``countdown`` reward (``reward.countdown``)."""

    correct_score: float = 1.0
    """Score of an equation that reaches the target following the rules."""

    format_score: float = 0.0
    """Score of an equation that was found but is wrong; TinyZero uses 0.1."""

    use_all_numbers: bool = True
    """Each given number must be used exactly once (TinyZero); False allows a subset."""


@dataclass(frozen=True)
class FormatConfig:
    """Options of the ``format`` reward (``reward.format``)."""

    answer_tag: bool = False
    """Require the answer to be wrapped in ``<answer>…</answer>``."""


@dataclass(frozen=True)
class CodeConfig:
    """Options of the ``code`` reward (``reward.code``); sandbox limits per response."""

    timeout_s: float = 10.0
    """Wall-clock limit of one response's run (all its cases); keep it below reward.timeout_s."""

    case_timeout_s: float = 4.0
    """Wall-clock limit of one test case."""

    cpu_s: int = 10
    """CPU seconds of one response's run (RLIMIT_CPU)."""

    memory_mb: int = 512
    """Address-space limit of one run in MiB (RLIMIT_AS)."""

    isolation: str = "auto"
    """auto, namespace or plain (see entropo.rewards.sandbox)."""

    seccomp: bool = True
    """Block sockets, processes, ptrace, mounts with a seccomp filter."""

    audit_hook: bool = True
    """Also install the interpreter-level audit hook (not a security boundary)."""

    partial: bool = False
    """Score the fraction of cases passed instead of all-or-nothing."""

    max_cases: int | None = None
    """Run only the first this many cases; None runs all."""

    def limits(self) -> SandboxLimits:
        """The sandbox's limits for one response's run."""
        # imported here: loading a config needs these options, not the sandbox
        from entropo.rewards.sandbox import SandboxLimits

        return SandboxLimits(timeout_s=self.timeout_s, case_timeout_s=self.case_timeout_s,
                             cpu_s=self.cpu_s, memory_mb=self.memory_mb, isolation=self.isolation,
                             seccomp=self.seccomp, audit_hook=self.audit_hook)


@dataclass(frozen=True)
class PEARConfig:
    """Options of the ``pear`` reward (``reward.pear``); defaults are the paper's."""

    alpha: float = 1.0
    """α, weight of H̄_answer in P (ablation over {−1, 0, 0.5, 1, 2} picks 1)."""

    s: float = 1.0
    """s, the reward scale of a correct answer: r = min(1, s − P)."""

    r_fmt: float = 0.0
    """r_fmt, the reward of a wrong or unparseable answer (PEAR's format_score = 0)."""

    pear_clip_min: float | None = None
    """Clip r from below (r < 0 when P > 1); None is the faithful, unclipped reward."""

    inner: str = "auto"
    """Correctness checker: auto (embedded for data_source embedded*, else math) or a
    per-sample built-in name."""


ANSWER_MODES = ("auto", "math", "embedded")


@dataclass(frozen=True)
class EMPOConfig:
    """Options of the ``empo`` reward (``reward.empo``)."""

    answer: str = "auto"
    """Answer extraction and equivalence: auto (embedded for data_source embedded*, else
    math), math, embedded."""

    empty_score: float = 0.0
    """Reward of an empty answer (math variant: 0; the general-domain variant uses −0.5)."""

    check_timeout_s: int = 5
    """Seconds allowed to each math_verify parse / comparison while clustering."""

    def __post_init__(self) -> None:
        if self.answer not in ANSWER_MODES:
            raise ValueError(f"reward.empo.answer: '{self.answer}' is not one of {', '.join(ANSWER_MODES)}")


@dataclass(frozen=True)
class RandomRewardConfig:
    """Options of the ``random`` reward (``reward.random``)."""

    p: float = 0.5
    """Probability of reward 1 (else 0), independent of the response. Spurious Rewards
    (arXiv 2506.10947): 0.5. In [0, 1]."""

    seed: int = 0
    """Seed of the draws; the same seed gives the same rewards to the same (step, prompt,
    group, position)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"reward.random.p must be in [0, 1], got {self.p}")
