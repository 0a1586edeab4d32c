"""Hyperparameters of the token weights (docs/algorithms.md §7.3-7.4), one dataclass per module
of :mod:`entropo.algorithms.weights`: ``steer``, ``tis``."""

from __future__ import annotations

from dataclasses import dataclass

from entropo.algorithms.configs.reduction import STAT_SCOPES

STEER_SCHEMES = ("linear", "exponential")


@dataclass(frozen=True)
class SteerConfig:
    """Hyperparameters of STEER token weights (arXiv 2510.10150; defaults: ``run_exp.sh``)."""

    scheme: str = "exponential"
    """``exponential`` (``run_exp.sh``) or ``linear`` (``run_linear.sh``)."""

    w_min: float = 0.8
    """w_min: the smallest weight. Both official scripts: 0.8 (code fallback 0.95). In (0, 1]."""

    w_max: float = 1.2
    """w_max: the largest weight of the linear scheme (``run_linear.sh``: 1.2; code fallback
    1.05). The exponential scheme ignores it (its weights are capped at 1). ≥ w_min."""

    stat_scope: str = "global"
    """Scope of Ω_min/Ω_max: ``micro`` (official code) or ``global`` (whole mini-batch). Default ``global``: the
    method must not change with the micro-batch size or the number of ranks."""

    def __post_init__(self) -> None:
        if self.scheme not in STEER_SCHEMES:
            raise ValueError(f"algorithm.steer.scheme must be one of {STEER_SCHEMES}, got '{self.scheme}'")
        if not 0.0 < self.w_min <= 1.0:
            raise ValueError(f"algorithm.steer.w_min must be in (0, 1], got {self.w_min}")
        if self.w_max < self.w_min:
            raise ValueError(f"algorithm.steer.w_max must be >= w_min, got {self.w_max} < {self.w_min}")
        if self.stat_scope not in STAT_SCOPES:
            raise ValueError(f"algorithm.steer.stat_scope must be one of {STAT_SCOPES}, got '{self.stat_scope}'")


TIS_MODES = ("truncate", "mask")


@dataclass(frozen=True)
class TisConfig:
    cap: float = 2.0
    """C, the largest importance ratio π_old/π_roll kept (TIS blog: 2)."""

    mode: str = "truncate"
    """truncate: w = min(ρ, C) (TIS); mask: w = ρ where ρ <= C, else 0 (token-level MIS)."""

    def __post_init__(self) -> None:
        if not self.cap > 0:
            raise ValueError(f"cap must be > 0, got {self.cap}")
        if self.mode not in TIS_MODES:
            raise ValueError(f"mode must be one of {', '.join(TIS_MODES)}, got '{self.mode}'")
