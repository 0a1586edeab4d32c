"""Hyperparameters of the advantage estimators and reshapers (docs/algorithms.md §4): ``grpo``
(:mod:`entropo.algorithms.advantages`), ``hapo`` (:mod:`entropo.algorithms.hapo`), ``canon``
(:mod:`entropo.algorithms.canon`), ``qae`` (:mod:`entropo.algorithms.qae`), and the reshapers
``seed`` and ``ettrl`` (:mod:`entropo.algorithms.reshapers`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GRPOConfig:
    """Hyperparameters of ``grpo`` (DeepSeekMath, arXiv 2402.03300; docs/algorithms.md §4)."""

    eps: float = 1e-6
    """ε in ``(R − mean)/(std + ε)``. verl uses 1e-6 (our default); TRL uses 1e-4. > 0."""

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"algorithm.grpo.eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class HapoAdvantageConfig:
    """Hyperparameters of the ``hapo`` advantage estimator (docs/algorithms.md §4.1)."""

    eps: float = 1e-6
    """ε in ``(R − μ_tok)/(σ_tok + ε)``, also passed to the GRPO fallback. Code: 1e-6. > 0."""

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"algorithm.hapo.eps must be > 0, got {self.eps}")


CANON_METRICS = ("entropy", "length")


@dataclass(frozen=True)
class CanonConfig:
    """Hyperparameters of CANON (arXiv 2509.23962; defaults: the official scripts)."""

    alpha: float = 1.0
    """α (paper Eq. 8): weight of the own-reward / other-half terms. Official scripts: 1.0."""

    mu: float = 1.0
    """μ (paper Eq. 5, ``_lambda`` in the code), in [0, 1]: 1 = inter-group comparison
    (default), 0 = intra-group comparison. The annealing variants move μ over training."""

    beta: float = 0.0
    """β: bonus of the high-metric half U over the low half L. Official scripts: 0."""

    singleton_zero: bool = False
    """A group of one response gets ``A = 0`` (True) or the code's ``A = R + μ·β`` (False)."""

    metric: str = "entropy"
    """Split metric: ``entropy`` (token-mean π_old entropy, ``dr_entropy_token_budget``) or
    ``length`` (response length, ``dr_length_on_mean``)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.mu <= 1.0:
            raise ValueError(f"algorithm.canon.mu must be in [0, 1], got {self.mu}")
        if self.metric not in CANON_METRICS:
            raise ValueError(
                f"algorithm.canon.metric must be one of {CANON_METRICS}, got '{self.metric}'"
            )


QAE_INTERPOLATIONS = ("linear", "lower", "higher", "midpoint", "nearest", "inverted_cdf")


@dataclass(frozen=True)
class QaeConfig:
    """Hyperparameters of QAE (arXiv 2509.22611; defaults: the official scripts)."""

    k: float = 0.4
    """K, the baseline's quantile level, in (0, 1). Official scripts: 0.4 (``quantile_k``).
    Binary rewards: prompts with success rate ≤ 1 − K train only their correct responses,
    the others only their incorrect ones; larger K penalises more and rewards less."""

    interpolation: str = "linear"
    """How Q_K reads between two sorted rewards: ``linear`` (official code, torch.quantile's
    default), ``lower``, ``higher``, ``midpoint``, ``nearest`` (torch.quantile), or
    ``inverted_cdf`` (the smallest reward whose empirical CDF is ≥ K: the paper's gate
    ``p ≤ 1 − K`` exactly, at every group size)."""

    std_norm: bool = True
    """Divide by the group's unbiased std + ε, as verl's GRPO with
    ``norm_adv_by_std_in_grpo=True`` (the official code). False: ``A = R − Q_K``."""

    eps: float = 1e-6
    """ε in ``(R − Q_K)/(std + ε)``; verl's 1e-6. > 0."""

    def __post_init__(self) -> None:
        if not 0.0 < self.k < 1.0:
            raise ValueError(f"algorithm.qae.k must be in (0, 1), got {self.k} (K outside it is grpo's mean)")
        if self.interpolation not in QAE_INTERPOLATIONS:
            raise ValueError(
                f"algorithm.qae.interpolation must be one of {QAE_INTERPOLATIONS}, got '{self.interpolation}'"
            )
        if not self.eps > 0:
            raise ValueError(f"algorithm.qae.eps must be > 0, got {self.eps}")


SEED_F_FORMS = ("linear",)
SEED_F_UNVERIFIED = ("exponential", "focal")
SEED_SE_FORMS = ("mc", "plugin")


@dataclass(frozen=True)
class SeedConfig:
    """Hyperparameters of SEED-GRPO (arXiv 2505.12346; not verified against the paper's text)."""

    alpha: float | None = None
    """α, the strength of the down-weighting ``f(α·SE/SE_max)``. Required: no source we read confirms
    the paper's default. ≥ 0; α ≤ 1 keeps the linear ``f`` ≥ 0 for every prompt."""

    f: str = "linear"
    """The scale function: ``linear`` (``f(x) = 1 − x``). ``exponential`` and ``focal`` raise:
    no source we read gives their exact forms."""

    se_form: str = "mc"
    """``mc``: the paper's ``−(1/K) Σ_k log p(C_k)``; ``plugin``: ``−Σ_k p log p``."""

    def __post_init__(self) -> None:
        if self.alpha is not None and not self.alpha >= 0:
            raise ValueError(f"algorithm.seed.alpha must be >= 0, got {self.alpha}")
        if self.f in SEED_F_UNVERIFIED:
            raise ValueError(
                f"algorithm.seed.f='{self.f}' is not implemented: the exact form of the "
                f"{SEED_F_UNVERIFIED} variants is unverified; use 'linear'"
            )
        if self.f not in SEED_F_FORMS:
            raise ValueError(f"algorithm.seed.f must be one of {SEED_F_FORMS}, got '{self.f}'")
        if self.se_form not in SEED_SE_FORMS:
            raise ValueError(
                f"algorithm.seed.se_form must be one of {SEED_SE_FORMS}, got '{self.se_form}'"
            )


ETTRL_MODES = ("res", "clip")


@dataclass(frozen=True)
class EttrlConfig:
    """Hyperparameters of ETTRL's entropy-based advantage reshaping (arXiv 2508.11356; not verified
    against the paper's text)."""

    mode: str = "res"
    """``res``: Adv-Res, ``Y_i·A_i`` (the paper's main method); ``clip``: Adv-Clip,
    ``clip(A, −β, β)``."""

    clip_Y_min: float | None = None
    """Floor on ``Y`` in ``res`` mode (``None``: faithful, Y may go negative when H_i > 2·H̄_g)."""

    clip_beta: float = 2.0
    """β of Adv-Clip (paper: 2). > 0."""

    def __post_init__(self) -> None:
        if self.mode not in ETTRL_MODES:
            raise ValueError(f"algorithm.ettrl.mode must be one of {ETTRL_MODES}, got '{self.mode}'")
        if not self.clip_beta > 0:
            raise ValueError(f"algorithm.ettrl.clip_beta must be > 0, got {self.clip_beta}")
