"""Hyperparameters of the token losses (docs/algorithms.md §6), one dataclass per module of
:mod:`entropo.algorithms.losses`: ``ppo_clip``, ``clip_cov``, ``kl_cov``, ``hapo_clip``, ``lp_reg``,
``cispo``."""

from __future__ import annotations

from dataclasses import dataclass

from entropo.algorithms.configs.reduction import STAT_SCOPES


@dataclass(frozen=True)
class PPOClipConfig:
    """Hyperparameters of the clipped surrogate (docs/algorithms.md §6.2)."""

    eps_low: float = 0.2
    """ε_low: r is clipped below at 1 − ε_low. PPO/GRPO: 0.2. ≥ 0."""

    eps_high: float = 0.2
    """ε_high: r is clipped above at 1 + ε_high. DAPO clip-higher: 0.28. ≥ 0."""

    dual_clip_c: float | None = None
    """c > 1: the loss of a negative-advantage token is bounded by −A·c; None turns dual clip
    off. verl: 3; DAPO-family scripts: 10."""

    log_ratio_clamp: float | None = 20.0
    """κ: log r is clamped to [−κ, κ] before exp, against overflow (verl: 20); None disables it."""

    clip: bool = True
    """False turns clipping off: ℓ = −A·r, no token clipped (the spurious-reward control,
    arXiv 2512.16912; ``configs/spurious_reward.yaml``). Needs ``dual_clip_c`` None."""

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError("algorithm.ppo_clip.eps_low and eps_high must be >= 0")
        if not self.clip and self.dual_clip_c is not None:
            raise ValueError("algorithm.ppo_clip.clip=false turns every clip off: set dual_clip_c to null")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1:
            raise ValueError(f"algorithm.ppo_clip.dual_clip_c must be > 1, got {self.dual_clip_c}")


@dataclass(frozen=True)
class ClipCovConfig:
    """Hyperparameters of Clip-Cov (arXiv 2505.22617; defaults: the paper's scripts)."""

    clip_ratio: float = 2e-4
    """r_clip: fraction of valid tokens whose gradient is detached. Paper: 2e-4. In [0, 1]."""

    cov_low: float = 1.0
    """ω_low: lower covariance bound of the candidate set. Paper: 1."""

    cov_high: float = 5.0
    """ω_high: upper covariance bound of the candidate set. Paper: 5."""

    eps_low: float = 1.0
    """ε_low of the surrogate on the other tokens. Official scripts: 1.0 (verl default 0.2)."""

    eps_high: float = 1.0
    """ε_high of the surrogate on the other tokens. Official scripts: 1.0."""

    surrogate: str = "clipped"
    """``clipped`` (official code) or ``plain`` (the paper's text, −A·r)."""

    stat_scope: str = "global"
    """``global``: the whole mini-batch over all ranks; ``micro``: one micro-batch (official code)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_ratio <= 1.0:
            raise ValueError(f"algorithm.clip_cov.clip_ratio must be in [0, 1], got {self.clip_ratio}")
        if self.cov_low >= self.cov_high:
            raise ValueError("algorithm.clip_cov.cov_low must be smaller than clip_cov.cov_high")
        if self.surrogate not in ("clipped", "plain"):
            raise ValueError(f"algorithm.clip_cov.surrogate must be 'clipped' or 'plain', got '{self.surrogate}'")
        if self.stat_scope not in STAT_SCOPES:
            raise ValueError(f"algorithm.clip_cov.stat_scope must be one of {STAT_SCOPES}, got '{self.stat_scope}'")


@dataclass(frozen=True)
class KLCovConfig:
    """Hyperparameters of KL-Cov (arXiv 2505.22617; defaults: the paper, Qwen2.5-7B)."""

    k: float = 2e-3
    """Fraction of valid tokens penalised. Paper: 2e-3 (7B), 2e-4 (32B). In [0, 1]."""

    kl_coef: float = 1.0
    """β: weight of |log r| on the selected tokens. Paper: 1 (verl's default 0.1 is not)."""

    stat_scope: str = "global"
    """``global``: the whole mini-batch over all ranks; ``micro``: one micro-batch (official code)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.k <= 1.0:
            raise ValueError(f"algorithm.kl_cov.k must be in [0, 1], got {self.k}")
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.kl_cov.kl_coef must be >= 0, got {self.kl_coef}")
        if self.stat_scope not in STAT_SCOPES:
            raise ValueError(f"algorithm.kl_cov.stat_scope must be one of {STAT_SCOPES}, got '{self.stat_scope}'")


@dataclass(frozen=True)
class HapoClipConfig:
    """Hyperparameters of HAPO's adaptive clipping and advantage redistribution (docs/algorithms.md §6.5)."""

    entropy_pivot: float = 0.8
    """q: the pivot μ is the q-quantile of the valid log-entropies. HAPO: 0.8. In [0, 1]."""

    clip_alpha: float = 1.0
    """α_c: how far ĥ widens the clip bounds (up to (1 + α_c)·ε). HAPO: 1.0. ≥ 0."""

    adv_beta: float = 1.0
    """β_a: advantage redistribution strength, A' = A·(1 + β_a·ĥ). HAPO: 1.0. ≥ 0."""

    eps_low: float = 0.2
    """ε_low before adaptation. HAPO: 0.2. ≥ 0."""

    eps_high: float = 0.2
    """ε_high before adaptation. HAPO: 0.2. ≥ 0."""

    dual_clip_c: float | None = 10.0
    """c > 1: the loss of a token with A' < 0 is bounded by −A'·c; None turns dual clip off.
    HAPO's DAPO-based scripts: 10."""

    code_compat: bool = False
    """Reproduce the released code's non-negative ĥ (sign bug: the code's s⁻ = 1/neg_min < 0; docs/algorithms.md §6.5) instead of the
    paper's signed ĥ."""

    stat_scope: str = "global"
    """Scope of ĥ's statistics: ``micro`` (official code) or ``global`` (whole mini-batch). Default ``global``: the
    method must not change with the micro-batch size or the number of ranks."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.entropy_pivot <= 1.0:
            raise ValueError(f"algorithm.hapo_clip.entropy_pivot must be in [0, 1], got {self.entropy_pivot}")
        for name in ("clip_alpha", "adv_beta", "eps_low", "eps_high"):
            if getattr(self, name) < 0:
                raise ValueError(f"algorithm.hapo_clip.{name} must be >= 0, got {getattr(self, name)}")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1:
            raise ValueError(f"algorithm.hapo_clip.dual_clip_c must be > 1, got {self.dual_clip_c}")
        if self.stat_scope not in STAT_SCOPES:
            raise ValueError(f"algorithm.hapo_clip.stat_scope must be one of {STAT_SCOPES}, got '{self.stat_scope}'")


@dataclass(frozen=True)
class LpRegConfig:
    """Hyperparameters of Lp-Reg (arXiv 2510.03222; defaults: the Qwen3-14B scripts)."""

    kappa: float = 0.02
    """κ (``minp_p_threshold``): the proxy keeps tokens with p ≥ κ·max p. Qwen3-14B: 0.02
    (code fallback 0.1). In (0, 1]. Used by the learner to build ``proxy_logp``."""

    rho_neg: float = 0.01
    """ρ_neg: fraction of negative-advantage tokens considered, the least likely ones.
    Qwen3-14B: 0.01; Qwen2.5-32B: 0.005. In [0, 1]."""

    kl_coef: float = 1.0
    """β (``ppo_kl_coef``): weight of k3 on the regularised tokens. Scripts: 1. ≥ 0."""

    eps_low: float = 1.0
    """ε_low of the surrogate on the other tokens. Scripts: 1.0 (r clamped below at 0). ≥ 0."""

    eps_high: float = 9.0
    """ε_high of the surrogate on the other tokens. Scripts: 9.0 (r clamped above at 10). ≥ 0."""

    stat_scope: str = "global"
    """Scope of the selection: ``micro`` (official code) or ``global`` (whole mini-batch). Default ``global``: the
    method must not change with the micro-batch size or the number of ranks."""

    def __post_init__(self) -> None:
        if not 0.0 < self.kappa <= 1.0:
            raise ValueError(f"algorithm.lp_reg.kappa must be in (0, 1], got {self.kappa}")
        if not 0.0 <= self.rho_neg <= 1.0:
            raise ValueError(f"algorithm.lp_reg.rho_neg must be in [0, 1], got {self.rho_neg}")
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.lp_reg.kl_coef must be >= 0, got {self.kl_coef}")
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError("algorithm.lp_reg.eps_low and eps_high must be >= 0")
        if self.stat_scope not in STAT_SCOPES:
            raise ValueError(f"algorithm.lp_reg.stat_scope must be one of {STAT_SCOPES}, got '{self.stat_scope}'")


@dataclass(frozen=True)
class CispoConfig:
    """Bounds of CISPO's clipped IS weight (MiniMax-M1, arXiv 2506.13585, Eq. 5)."""

    eps_low: float | None = None
    """ε_low^IS: r̂ is clipped below at 1 − ε_low; None: no lower bound (the paper). verl's
    example: 10, SkyRL: 1 (both no bound, as r > 0). ≥ 0."""

    eps_high: float = 4.0
    """ε_high^IS: r̂ is capped at 1 + ε_high. 4 (cap 5): ScaleRL, SkyRL's default, TRL's
    recommended ``epsilon_high=5``; verl's example: 0.2. ≥ 0."""

    log_ratio_clamp: float | None = 20.0
    """κ: log r is clamped to [−κ, κ] before exp, against overflow (verl, SkyRL: 20); None disables it."""

    def __post_init__(self) -> None:
        if (self.eps_low is not None and self.eps_low < 0) or self.eps_high < 0:
            raise ValueError("algorithm.cispo.eps_low and eps_high must be >= 0")
        if self.log_ratio_clamp is not None and not self.log_ratio_clamp > 0:
            raise ValueError(f"algorithm.cispo.log_ratio_clamp must be > 0, got {self.log_ratio_clamp}")
