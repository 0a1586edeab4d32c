"""PPO clipped surrogate with clip-higher, dual clip and a log-ratio clamp (spec 0.7, L1).

    r = exp(clamp(log π_θ − log π_old, −κ, κ))
    ℓ = max( −A·r, −A·clip(r, 1−ε_low, 1+ε_high) ),   then min(ℓ, −A·c) where A < 0 (dual clip)

- PPO: Schulman et al., arXiv 1707.06347, Eq. 7. Clip-higher (ε_high > ε_low): DAPO,
  arXiv 2503.14476, Eq. 10 (ε_low = 0.2, ε_high = 0.28). Dual clip: Ye et al., arXiv
  1912.09729, Eq. 5.
- Official code: verl ``compute_policy_loss_vanilla``,
  https://github.com/volcengine/verl/blob/b178a3cd5/verl/trainer/ppo/core_algos.py
  (clamps log r to [−20, 20]; applies dual clip with c = 3 by default).

Deviation: dual clip is off unless ``dual_clip_c`` is set (verl always applies it); the
DAPO-family recipes set c = 10 as their scripts do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropo.algorithms.losses.base import (
    TokenLossInputs,
    clipped_surrogate,
    valid_frac,
    valid_mean,
)
from entropo.algorithms.registry import TOKEN_LOSSES


@dataclass(frozen=True)
class PPOClipConfig:
    """Hyperparameters of the clipped surrogate (spec 0.7, L1)."""

    eps_low: float = 0.2
    """ε_low: r is clipped below at 1 − ε_low. PPO/GRPO: 0.2. ≥ 0."""

    eps_high: float = 0.2
    """ε_high: r is clipped above at 1 + ε_high. DAPO clip-higher: 0.28. ≥ 0."""

    dual_clip_c: float | None = None
    """c > 1: the loss of a negative-advantage token is bounded by −A·c; None turns dual clip
    off. verl: 3; DAPO-family scripts: 10."""

    log_ratio_clamp: float | None = 20.0
    """κ: log r is clamped to [−κ, κ] before exp, against overflow (verl: 20); None disables it."""

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError("algorithm.ppo_clip.eps_low and eps_high must be >= 0")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1:
            raise ValueError(f"algorithm.ppo_clip.dual_clip_c must be > 1, got {self.dual_clip_c}")


@TOKEN_LOSSES.register("ppo_clip", config=PPOClipConfig, vanishes_at_zero_advantage=True)
def ppo_clip_loss(inp: TokenLossInputs, cfg: PPOClipConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate ``[n, T]`` and its clip statistics."""
    log_ratio = inp.logp - inp.old_logp  # [n, T]
    if cfg.log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    s = clipped_surrogate(log_ratio, inp.advantages, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c)
    metrics = {
        "actor/pg_clipfrac": valid_frac(s.clipped, inp.mask),
        "actor/pg_clipfrac_upper": valid_frac(s.clipped_upper, inp.mask),
        "actor/pg_clipfrac_lower": valid_frac(s.clipped_lower, inp.mask),
        "actor/pg_clipfrac_dual": valid_frac(s.dual_clipped, inp.mask),
        "actor/ppo_kl": valid_mean(inp.old_logp - inp.logp, inp.mask),
    }
    return s.loss, metrics
