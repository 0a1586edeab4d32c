"""PPO clipped surrogate with clip-higher, dual clip and a log-ratio clamp
(docs/algorithms.md §6.2).

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

``clip=False`` (the spurious-reward control of Chen et al., arXiv 2512.16912: clipping off)
gives the plain importance-weighted surrogate ℓ = −A·r (the κ clamp stays, dual clip must be
off), so no token is clipped. The clip-bias metrics (:mod:`.clip_bias`) split the tokens
whose gradient a clip removes (the clipped branch or the dual bound is active) by the sign of
A: ``actor/clipfrac_pos_adv`` equals ``actor/pg_clipfrac_upper`` (A > 0 is clipped only
above), ``actor/clipfrac_neg_adv`` is ``actor/pg_clipfrac_lower`` + ``actor/pg_clipfrac_dual``.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.losses import PPOClipConfig
from entropo.algorithms.losses.base import (
    Surrogate,
    TokenLossInputs,
    clipped_surrogate,
    valid_frac,
    valid_mean,
)
from entropo.algorithms.losses.clip_bias import clip_bias_metrics
from entropo.algorithms.registry import TOKEN_LOSSES


@TOKEN_LOSSES.register("ppo_clip", config=PPOClipConfig, vanishes_at_zero_advantage=True)
def ppo_clip_loss(inp: TokenLossInputs, cfg: PPOClipConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate ``[n, T]`` and its clip statistics."""
    log_ratio = inp.logp - inp.old_logp  # [n, T]
    if cfg.log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    s = clipped_surrogate(log_ratio, inp.advantages, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c)
    if not cfg.clip:  # ℓ = −A·r and nothing is clipped (dual clip is off by validation)
        none = torch.zeros_like(s.clipped)
        s = Surrogate(-inp.advantages * torch.exp(log_ratio), none, none, none, none)
    metrics = {
        "actor/pg_clipfrac": valid_frac(s.clipped, inp.mask),
        "actor/pg_clipfrac_upper": valid_frac(s.clipped_upper, inp.mask),
        "actor/pg_clipfrac_lower": valid_frac(s.clipped_lower, inp.mask),
        "actor/pg_clipfrac_dual": valid_frac(s.dual_clipped, inp.mask),
        "actor/ppo_kl": valid_mean(inp.old_logp - inp.logp, inp.mask),
        **clip_bias_metrics(s.clipped | s.dual_clipped, inp.advantages, inp.mask),
    }
    return s.loss, metrics
