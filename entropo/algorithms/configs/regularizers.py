"""Hyperparameters of the loss-side regularisers (docs/algorithms.md §9): the adaptive entropy
coefficient and the KL estimators (:mod:`entropo.algorithms.regularizers`), ``siren``
(:mod:`entropo.algorithms.siren`), ``epo`` (:mod:`entropo.algorithms.epo`)."""

from __future__ import annotations

from dataclasses import dataclass

KL_ESTIMATOR_NAMES = ("k1", "k2", "k3")
"""``algorithm.kl_estimator``: the per-token estimators of KL(π_θ ‖ π_ref)
(:data:`entropo.algorithms.regularizers.KL_ESTIMATORS`)."""


@dataclass(frozen=True)
class AdaptiveEntropyConfig:
    """Adaptive entropy-bonus coefficient (Skywork-OR1, arXiv 2505.22312; TRL defaults)."""

    delta: float = 0.005
    """``δ``: coefficient step per optimiser step (TRL ``entropy_coef_delta``). ≥ 0."""

    target: float = 0.2
    """``H_tgt``: target mean token entropy in nats (TRL ``entropy_target``). TRL's docs note that
    0.2 only triggers on near-complete collapse; set it near the early-training entropy."""

    coef_min: float = 0.0
    """``c_min``: lower clamp of the coefficient (TRL ``entropy_coef_min``). ≥ 0."""

    coef_max: float = 1.0
    """``c_max``: upper clamp of the coefficient (TRL ``entropy_coef_max``). ≥ coef_min."""

    def __post_init__(self) -> None:
        if self.delta < 0:
            raise ValueError(f"algorithm.entropy_adaptive.delta must be >= 0, got {self.delta}")
        if not 0 <= self.coef_min <= self.coef_max:
            raise ValueError(
                "algorithm.entropy_adaptive needs 0 <= coef_min <= coef_max, got "
                f"coef_min={self.coef_min}, coef_max={self.coef_max}"
            )


TOP_P_RULES = ("below", "reach")


@dataclass(frozen=True)
class SirenConfig:
    """Hyperparameters of SIREN (arXiv 2509.25133; defaults: the official scripts)."""

    coef: float = 0.005
    """λ (``entropy_coeff``), the weight of ``(H_sel − H_anc)²``. Paper: 0.005. ≥ 0."""

    p_top: float = 0.8
    """p of the top-p entropy (``entropy_topp``). Paper: 0.8. In (0, 1]."""

    top_k: int = 10000
    """K, the top-k logits considered (``entropy_topk``). Paper: 10000. ≥ 1."""

    mask_quantile: float = 0.8
    """q: per-sequence quantile of Ĥ above which tokens are selected (``mask_ratio``; 0.8 keeps
    about the top 20%). In [0, 1]."""

    top_p_rule: str = "below"
    """``below``: keep the tokens whose cumulative probability stays below p (official code);
    ``reach``: the smallest prefix that reaches p (the standard top-p set)."""

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"algorithm.siren.coef must be >= 0, got {self.coef}")
        if not 0.0 < self.p_top <= 1.0:
            raise ValueError(f"algorithm.siren.p_top must be in (0, 1], got {self.p_top}")
        if self.top_k < 1:
            raise ValueError(f"algorithm.siren.top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.mask_quantile <= 1.0:
            raise ValueError(f"algorithm.siren.mask_quantile must be in [0, 1], got {self.mask_quantile}")
        if self.top_p_rule not in TOP_P_RULES:
            raise ValueError(f"algorithm.siren.top_p_rule must be one of {TOP_P_RULES}, got '{self.top_p_rule}'")


EPO_MODES = ("faithful", "differentiable")


@dataclass(frozen=True)
class EpoConfig:
    """Hyperparameters of EPO (arXiv 2509.22576; defaults: the ScienceWorld recipe)."""

    coef: float = 0.001
    """λ (``entropy_coeff``), the entropy bonus weight. Both recipes: 0.001. ≥ 0."""

    smooth_coef: float = 1.0
    """c_s (``entropy_smooth_coeff``), the weight of the corridor penalty. Recipes: 1.0. ≥ 0."""

    kappa_l: float = 0.0
    """κ_l (``entropy_smooth_min_ratio``): lower corridor bound as a multiple of H̄. Recipes: 0."""

    kappa_r: float = 2.0
    """κ_r (``entropy_smooth_max_ratio``): upper corridor bound as a multiple of H̄. Recipes: 2.0."""

    alpha: float = 0.05
    """α (``entropy_smooth_out_range_penalty``): penalty of an out-of-corridor token.
    ScienceWorld 0.05, ALFWorld 0.1. ≥ 0."""

    mode: str = "faithful"
    """``faithful`` (the code: constant penalty, zero gradient) or ``differentiable`` (ours)."""

    phase_K: int = 150
    """K of the phase weight β_k (hard-coded 150 in the submitted code). ≥ 1."""

    enable_smooth_weights: bool = True
    """Multiply the penalty by β_k (``enable_smooth_weights``); False uses β = 1."""

    def __post_init__(self) -> None:
        if self.coef < 0 or self.smooth_coef < 0 or self.alpha < 0:
            raise ValueError(
                "algorithm.epo.coef, algorithm.epo.smooth_coef and algorithm.epo.alpha must be >= 0, "
                f"got {self.coef}, {self.smooth_coef}, {self.alpha}"
            )
        if not 0.0 <= self.kappa_l < self.kappa_r:
            raise ValueError(
                f"algorithm.epo needs 0 <= kappa_l < kappa_r, got kappa_l={self.kappa_l}, kappa_r={self.kappa_r}"
            )
        if self.mode not in EPO_MODES:
            raise ValueError(f"algorithm.epo.mode must be one of {EPO_MODES}, got '{self.mode}'")
        if self.phase_K < 1:
            raise ValueError(f"algorithm.epo.phase_K must be >= 1, got {self.phase_K}")
