"""Hyperparameters of the sampling-stage methods (docs/algorithms.md §11): ``hapo_temperature``
(:mod:`entropo.algorithms.hapo_temperature`) and ``aepo`` (:mod:`entropo.algorithms.aepo`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HapoTemperatureConfig:
    """HAPO adaptive sampling temperature (docs/algorithms.md §11.1; defaults: the released code)."""

    tau: float = 0.05
    """τ (``temperature_tau``): T_t = T·(1 + τ·clip(ĥ_t, −1, 1)). Lower it if training collapses."""

    entropy_pivot: float = 0.8
    """Quantile of the log-entropy used as the pivot μ of ĥ."""

    code_compat: bool = False
    """Reproduce the released code's sign of s⁻ (T only ever rises); default: the paper's signed ĥ."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"algorithm.hapo_temperature.tau must be in [0, 1), got {self.tau}")
        if not 0.0 <= self.entropy_pivot <= 1.0:
            raise ValueError(f"algorithm.hapo_temperature.entropy_pivot must be in [0, 1], got {self.entropy_pivot}")


@dataclass(frozen=True)
class AepoConfig:
    """Hyperparameters of AEPO (arXiv 2510.08141; defaults: the official config and example script)."""

    T_high: float = 1.2
    """T' when Ĥ ≤ H_tgt (``temperature_high``). > 0."""

    T_low: float = 0.8
    """T' when Ĥ > H_tgt (``temperature_low``). > 0."""

    entropy_target: float = 0.5
    """H_tgt (``entropy_base``); the example script uses 0.5, the README reports H = 0.75."""

    reinforce_sample_num: int = 60
    """Maximum number of injected samples per step (``reinforce_sample_num``). ≥ 0."""

    positive_threshold: float = 0.05
    """A re-generated response is injected when its GRPO advantage exceeds this (code: 0.05)."""

    prompt_fraction: float = 0.25
    """Fraction of the step's prompts that are re-generated at T' (code: the first quarter)."""

    def __post_init__(self) -> None:
        if not (self.T_high > 0 and self.T_low > 0):
            raise ValueError(f"algorithm.aepo.T_high and T_low must be > 0, got {self.T_high}, {self.T_low}")
        if self.reinforce_sample_num < 0:
            raise ValueError(f"algorithm.aepo.reinforce_sample_num must be >= 0, got {self.reinforce_sample_num}")
        if not 0.0 < self.prompt_fraction <= 1.0:
            raise ValueError(f"algorithm.aepo.prompt_fraction must be in (0, 1], got {self.prompt_fraction}")
