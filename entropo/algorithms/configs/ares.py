"""Hyperparameters of ARES (arXiv 2510.08457; docs/algorithms.md §10b; :mod:`entropo.algorithms.ares`)."""

from __future__ import annotations

from dataclasses import dataclass

ENTROPY_SOURCES = ("exact", "topk")
WINDOW_STARTS = ("next", "current")
THRESHOLD_SCOPES = ("sequence", "global")


@dataclass(frozen=True)
class AresConfig:
    """Hyperparameters of ARES (arXiv 2510.08457; defaults: the official code and config)."""

    enable: bool = False
    """Add ARES's difficulty-bucketed HWE term to the reward (and, with ``adaptive_kl``, scale
    the KL to the reference per bucket)."""

    entropy: str = "exact"
    """Token entropy the windows average: ``exact`` (full vocabulary, π_old at T) or ``topk``
    (the code's approximation from the top-``top_k`` probabilities, an extra learner output)."""

    top_k: int = 10
    """k of ``entropy=topk`` (the code asks vLLM for 10 log-probs). ≥ 1."""

    window_size: int = 4
    """w, tokens per window (the code's ``rollout.window_size``). ≥ 1."""

    window_start: str = "next"
    """``next``: the w tokens after t (code); ``current``: t..t+w−1 (the paper's H̄_{t:w})."""

    percentile: float = 95.0
    """p of the threshold τ̂, in [0, 100] (code: 95)."""

    threshold_scope: str = "sequence"
    """``sequence``: median over responses of each one's p-th percentile (code); ``global``: the
    p-th percentile of every full window of the batch."""

    threshold_ema: float = 0.99
    """ρ_τ of τ_k = ρ_τ·τ_{k−1} + (1 − ρ_τ)·τ̂_k (code: 0.99); 0 uses the last batch's τ̂. In [0, 1)."""

    easy_min_acc: float = 2 / 3
    """A group is easy when its accuracy is ≥ this (code: 2/3)."""

    medium_min_acc: float = 1 / 3
    """A group that is not easy is medium when its accuracy is ≥ this, hard otherwise (code: 1/3).
    ≤ ``easy_min_acc``."""

    alpha_init: float = 0.5
    """α_b before the first step, every bucket (``alpha_entropy_init_*``)."""

    alpha_lr: float = 0.05
    """η_α of the α_b update (``alpha_entropy_lr``). ≥ 0."""

    alpha_min: float = 0.0
    """Lower bound of α_b (``alpha_entropy_min``)."""

    alpha_max: float = 2.0
    """Upper bound of α_b (``alpha_entropy_max``)."""

    adaptive_kl: bool = True
    """Scale the KL to the reference by β_b per difficulty bucket (code: ``dynamic_kl_loss``);
    needs ``algorithm.kl_coef > 0``. false: the plain β_ref."""

    kl_target_easy: float = 0.01
    """target_b of the easy bucket's KL (``kl_target_easy``, default ``kl_target_default``). > 0."""

    kl_target_medium: float = 0.01
    """target_b of the medium bucket (``kl_target_medium``). > 0."""

    kl_target_hard: float = 0.01
    """target_b of the hard bucket (``kl_target_hard``). > 0."""

    kl_beta_init: float = 1.0
    """β_b before the first step (``kl_beta_init``). In [kl_beta_min, kl_beta_max]."""

    kl_beta_lr: float = 0.05
    """η_β, the step in log β (``kl_beta_lr``). ≥ 0."""

    kl_beta_clip: float = 0.2
    """c, the cap on |E_b| per update (``kl_beta_clip``). ≥ 0."""

    kl_ema_decay: float = 0.97
    """ρ of the KL and error EMAs (``kl_ema_decay``). In [0, 1)."""

    kl_deadzone: float = 0.02
    """No update while |e| is below this (``kl_deadzone``). ≥ 0."""

    kl_beta_min: float = 1e-4
    """Lower bound of β_b (``kl_beta_min``). > 0."""

    kl_beta_max: float = 100.0
    """Upper bound of β_b (``kl_beta_max``)."""

    kl_update_every: int = 1
    """Update β every this many steps (the code: every 100th micro-batch call). ≥ 1."""

    def __post_init__(self) -> None:
        k = "algorithm.ares."
        for name, value, choices in (("entropy", self.entropy, ENTROPY_SOURCES),
                                     ("window_start", self.window_start, WINDOW_STARTS),
                                     ("threshold_scope", self.threshold_scope, THRESHOLD_SCOPES)):
            if value not in choices:
                raise ValueError(f"{k}{name} must be one of {choices}, got '{value}'")
        if self.top_k < 1 or self.window_size < 1 or self.kl_update_every < 1:
            raise ValueError(f"{k}top_k, window_size and kl_update_every must be >= 1")
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"{k}percentile must be in [0, 100], got {self.percentile}")
        if not (0.0 <= self.threshold_ema < 1.0 and 0.0 <= self.kl_ema_decay < 1.0):
            raise ValueError(f"{k}threshold_ema and kl_ema_decay must be in [0, 1)")
        if not 0.0 <= self.medium_min_acc <= self.easy_min_acc <= 1.0:
            raise ValueError(f"{k}medium_min_acc <= easy_min_acc must hold in [0, 1]")
        if not self.alpha_min <= self.alpha_init <= self.alpha_max:
            raise ValueError(f"{k}alpha_init must be in [alpha_min, alpha_max]")
        if min(self.kl_target_easy, self.kl_target_medium, self.kl_target_hard) <= 0:
            raise ValueError(f"{k}kl_target_* must be > 0")
        if not 0.0 < self.kl_beta_min <= self.kl_beta_init <= self.kl_beta_max:
            raise ValueError(f"{k}kl_beta_init must be in [kl_beta_min, kl_beta_max] with kl_beta_min > 0")
        if min(self.alpha_lr, self.kl_beta_lr, self.kl_beta_clip, self.kl_deadzone) < 0:
            raise ValueError(f"{k}alpha_lr, kl_beta_lr, kl_beta_clip and kl_deadzone must be >= 0")

    @property
    def kl_targets(self) -> tuple[float, float, float]:
        return (self.kl_target_easy, self.kl_target_medium, self.kl_target_hard)
