"""Hyperparameters of the token masks (docs/algorithms.md §7), one dataclass per module of
:mod:`entropo.algorithms.masks`: ``high_entropy``, ``dmmpt``, ``clip_b``."""

from __future__ import annotations

from dataclasses import dataclass

from entropo.algorithms.configs.reduction import STAT_SCOPES

MASK_NORMS = ("selected", "all_valid")
"""``selected``: masked tokens leave the aggregation denominator; ``all_valid``: they stay in
it with zero loss (docs/algorithms.md §1, Masks (a) and (b))."""
HIGH_ENTROPY_SCOPES = (*STAT_SCOPES, "sequence")


@dataclass(frozen=True)
class EntropyMaskConfig:
    """Hyperparameters of high-entropy token masking (arXiv 2506.01939; defaults: the paper)."""

    rho: float = 0.2
    """ρ: fraction of valid tokens kept, the highest-entropy ones. Paper: 0.2. In (0, 1]."""

    norm: str = "selected"
    """``selected``: denominator |S| (official code); ``all_valid``: all valid tokens (paper Eq., TRL)."""

    stat_scope: str = "global"
    """``global``: the whole mini-batch over all ranks; ``micro``: one micro-batch (official code);
    ``sequence``: each response on its own (EARL, arXiv 2511.12033)."""

    @property
    def excludes_from_denominator(self) -> bool:
        """Whether masked tokens leave the aggregation denominator (docs/algorithms.md §1, Masks (a))."""
        return self.norm == "selected"

    def __post_init__(self) -> None:
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"algorithm.high_entropy.rho must be in (0, 1], got {self.rho}")
        if self.norm not in MASK_NORMS:
            raise ValueError(f"algorithm.high_entropy.norm must be one of {MASK_NORMS}, got '{self.norm}'")
        if self.stat_scope not in HIGH_ENTROPY_SCOPES:
            raise ValueError(f"algorithm.high_entropy.stat_scope must be one of {HIGH_ENTROPY_SCOPES}, "
                             f"got '{self.stat_scope}'")


@dataclass(frozen=True)
class DmmptConfig:
    """Hyperparameters of DMMPT (arXiv 2507.19766; docs/algorithms.md §7.2)."""

    tau: float = 0.99
    """τ: a positive token with π_θ(y) ≥ τ is "well mastered". Secondary sources: 0.99. In (0, 1]."""

    sigma: float | None = None
    """σ: the entropy target; MPTs are masked while H̄ < σ. No source gives a value, so no default: must be
    set when ``dmmpt`` is used (e.g. the initial model's H̄). ≥ 0."""

    stat_scope: str = "global"
    """Where the objective computes the mask: ``global`` (mini-batch preparation pass; the
    denominator is counted after the mask) or ``micro``. The mask itself is per token."""

    def __post_init__(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"algorithm.dmmpt.tau must be in (0, 1], got {self.tau}")
        if self.sigma is not None and self.sigma < 0:
            raise ValueError(f"algorithm.dmmpt.sigma must be >= 0, got {self.sigma}")
        if self.stat_scope not in STAT_SCOPES:
            raise ValueError(f"algorithm.dmmpt.stat_scope must be one of {STAT_SCOPES}, got '{self.stat_scope}'")

    @property
    def excludes_from_denominator(self) -> bool:
        """Masked tokens leave the aggregation denominator (docs/algorithms.md §1, Masks (a))."""
        return True

    def validate(self) -> None:
        """Raise unless the config can run: σ must be set (no source gives a default)."""
        if self.sigma is None:
            raise ValueError(
                "algorithm.dmmpt.sigma must be set: the entropy target of DMMPT has no verified "
                "default; e.g. use the initial model's mean token entropy"
            )


LOGP_SOURCES = ("old", "rollout")


@dataclass(frozen=True)
class ClipBConfig:
    """Hyperparameters of Clip_B (arXiv 2602.03392; defaults: the official code)."""

    mu: float = 2.5
    """μ: an A < 0 token is masked when S − S̄ < −μ·σ_S. Official code and example: 2.5. > 0."""

    norm: str = "selected"
    """``selected``: masked tokens leave the loss denominator (official code: response_mask·keep);
    ``all_valid``: they stay in it with zero loss."""

    logp_source: str = "old"
    """p_t from ``old`` (log π_old, the learner's pass; paper, the code's comment) or ``rollout``
    (log π_roll, the rollout engine's; the key the code reads)."""

    stat_scope: str = "global"
    """Scope of S̄, σ_S: ``global`` (the mini-batch on all ranks; the code: the step batch) or
    ``micro`` (one rank's micro-batch; ours)."""

    @property
    def excludes_from_denominator(self) -> bool:
        """Whether masked tokens leave the aggregation denominator (docs/algorithms.md §1, Masks (a))."""
        return self.norm == "selected"

    def __post_init__(self) -> None:
        if not self.mu > 0:
            raise ValueError(f"algorithm.clip_b.mu must be > 0, got {self.mu}")
        if self.norm not in MASK_NORMS:
            raise ValueError(f"algorithm.clip_b.norm must be one of {MASK_NORMS}, got '{self.norm}'")
        if self.logp_source not in LOGP_SOURCES:
            raise ValueError(f"algorithm.clip_b.logp_source must be one of {LOGP_SOURCES}, got '{self.logp_source}'")
        if self.stat_scope not in STAT_SCOPES:
            raise ValueError(f"algorithm.clip_b.stat_scope must be one of {STAT_SCOPES}, got '{self.stat_scope}'")
