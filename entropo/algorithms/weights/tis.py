"""Rollout importance sampling: per-token weights that correct for the rollout policy not being π_old.

The responses were sampled from π_roll (the rollout engine's weights: one update behind the
learner in the asynchronous mode, or numerically different kernels), while the clipped
surrogate compares π_θ with π_old (the learner's own pass at the update's start). The
token-level importance ratio and its weights:

    ρ_i = π_old(y_i) / π_roll(y_i) = exp(log π_old − log π_roll)
    truncate (TIS):   w_i = min(ρ_i, C)
    mask (token MIS): w_i = ρ_i · 1[ρ_i ≤ C]

The objective multiplies each token's loss by w (``ℓ_i ← w_i·ℓ_i``, no gradient through w);
the aggregation's denominators are unchanged (weights, not masks), as in the papers' code.

- TIS: Yao, Liu, Zhang, Lu, Wang, Gao, "Your Efficient RL Framework Secretly Brings You
  Off-Policy RL Training" (blog, 2025, https://fengyao.notion.site/off-policy-rl), C = 2;
  verl's ``tis_imp_ratio_cap``.
- MIS: Liu, Li, Fu, Wang, Liu, Shen, "When Speed Kills Stability: Demystifying RL Collapse
  from the Training-Inference Mismatch" (blog, 2025); verl's rollout importance sampling
  (``docs/advance/rollout_is.md``, token level, ``mask`` mode).

Deviations and conventions:
- ρ is computed as exp(min(Δ, log C)) for truncation (the same value, no overflow); for the
  mask mode Δ is capped at 20 before exp so that a masked token's ρ stays finite.
- Weights are 1 where both log-probs are equal (no mismatch) and 0 on masked positions.
- Sequence-level ratios are not implemented (their variance grows with the length).
"""

from __future__ import annotations

import math

import torch

from entropo.algorithms.configs.weights import TisConfig
from entropo.algorithms.losses.base import TokenLossInputs, valid_mean
from entropo.algorithms.registry import TOKEN_WEIGHTS

LOG_RATIO_CAP = 20.0  # exp(20) ≈ 5e8: finite, and far above any sensible C


@TOKEN_WEIGHTS.register("tis", config=TisConfig, needs=("rollout_logp",), row_local=True)
def rollout_is_weights(inp: TokenLossInputs, cfg: TisConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights ``[n, T]`` of π_old over π_roll (no gradient; 0 on masked positions).

    Args:
        inp: uses ``old_logp``, ``rollout_logp`` and ``mask``.
        cfg: :class:`TisConfig`.
    """
    if inp.rollout_logp is None:
        raise ValueError("tis token weights need the rollout log-probs (inputs.rollout_logp)")
    valid = inp.mask.bool()
    with torch.no_grad():
        delta = (inp.old_logp - inp.rollout_logp).float()  # log ρ
        over = delta > math.log(cfg.cap)
        if cfg.mode == "truncate":
            w = torch.exp(delta.clamp(max=math.log(cfg.cap)))
        else:
            w = torch.where(over, torch.zeros_like(delta), torch.exp(delta.clamp(max=LOG_RATIO_CAP)))
        w = torch.where(valid, w, torch.zeros_like(w)).to(inp.old_logp.dtype)
        ratio = torch.exp(delta.clamp(max=LOG_RATIO_CAP))
    metrics = {
        "tis/weight_mean": valid_mean(w, valid),
        "tis/ratio_mean": valid_mean(ratio, valid),
        "tis/over_cap_frac": valid_mean(over.to(w.dtype), valid),
    }
    return w, metrics
