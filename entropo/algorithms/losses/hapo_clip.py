"""HAPO's adaptive clip ``hapo_clip``: per-token clip bounds and advantage redistribution from
the normalised entropy ĥ (:func:`entropo.algorithms.hapo.entropy_h_hat`), then the clipped
surrogate (docs/algorithms.md §6.1 and §6.5; dual clip c):

    ĥ ≤ 0: ε_low' = ε_low·(1 − α_c·ĥ), ε_high' = ε_high;   ĥ > 0: ε_high' = ε_high·(1 + α_c·ĥ), ε_low' = ε_low
    Z = (1 − ε_low'/2, 1 + ε_high'/2), r detached
    ĥ > 0: A' = A if r ∈ Z else A·(1 + β_a·ĥ);     ĥ ≤ 0: A' = A·(1 + β_a·ĥ) if r ∈ Z else A
    ℓ = max(−A'·r, −A'·clip(r, 1 − ε_low', 1 + ε_high')), then min(ℓ, −A'·c) where A' < 0

- Paper: Liu et al., "HAPO: Heterogeneous Adaptive Policy Optimization" (2025); no arXiv id
  or equation numbers (:mod:`entropo.algorithms.hapo` says why).
- Official code: https://github.com/starriver030515/HAPO/tree/7671dde,
  ``verl/trainer/ppo/core_algos.py`` (``ada_clip``, ``ada_advantage``, ``compute_policy_loss``).

Deviations and conventions (those of ĥ itself are :mod:`entropo.algorithms.hapo`'s):
- Scope of ĥ: ``micro`` (the code: each micro-batch on its own rank) or ``global``, in
  which case the learner runs :func:`hapo_clip_select` over the whole mini-batch and passes ĥ
  as ``inputs.selected`` (a float tensor here, not a bool selection).
- Validated: hand-computed cases (tests/algorithms/test_hapo.py). Not validated: training
  behaviour.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.losses import HapoClipConfig
from entropo.algorithms.hapo import entropy_h_hat
from entropo.algorithms.losses.base import (
    TokenLossInputs,
    clipped_surrogate,
    valid_frac,
    valid_mean,
)
from entropo.algorithms.registry import TOKEN_LOSSES


def hapo_clip_select(inp: TokenLossInputs, cfg: HapoClipConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ĥ ``[n, T]`` (float) over the reducer's scope, from ``inp.entropy`` (π_θ, detached)."""
    if inp.entropy is None:
        raise ValueError("the hapo_clip loss needs π_θ token entropies (inputs.entropy)")
    h_hat, stats = entropy_h_hat(inp.entropy, inp.mask, cfg.entropy_pivot, cfg.code_compat, inp.reducer)
    metrics = {
        "hapo/mu": stats.mu,
        "hapo/sigma": stats.sigma,
        "hapo/s_pos": stats.s_pos,
        "hapo/s_neg": stats.s_neg,
    }
    return h_hat, metrics


def adaptive_bounds_and_advantage(
    h_hat: torch.Tensor, advantages: torch.Tensor, log_ratio: torch.Tensor, cfg: HapoClipConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``(ε_low', ε_high', A')``, each ``[n, T]``, all without gradient.

    Args:
        h_hat: ``[n, T]`` ĥ.
        advantages: ``[n, T]`` A.
        log_ratio: ``[n, T]`` log r (detached inside: the neutral zone is a no-grad test).
        cfg: :class:`HapoClipConfig` (α_c, β_a, ε_low, ε_high).
    """
    high = h_hat > 0
    eps_low = torch.where(high, cfg.eps_low, cfg.eps_low * (1.0 - cfg.clip_alpha * h_hat))
    eps_high = torch.where(high, cfg.eps_high * (1.0 + cfg.clip_alpha * h_hat), cfg.eps_high)
    ratio = torch.exp(log_ratio.detach())
    in_zone = (ratio > 1.0 - eps_low / 2) & (ratio < 1.0 + eps_high / 2)  # Z, open interval
    scaled = advantages * (1.0 + cfg.adv_beta * h_hat)
    adv = torch.where(high ^ in_zone, scaled, advantages)  # high & out of Z, or low & in Z
    return eps_low, eps_high, adv.detach()


@TOKEN_LOSSES.register("hapo_clip", config=HapoClipConfig, selector=hapo_clip_select, needs=("entropy",),
                       vanishes_at_zero_advantage=True)
def hapo_clip_loss(inp: TokenLossInputs, cfg: HapoClipConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token HAPO loss ``[n, T]``; ĥ from ``inp.selected`` when given, else over the scope."""
    metrics: dict[str, torch.Tensor] = {}
    h_hat = inp.selected
    if h_hat is None:
        h_hat, metrics = hapo_clip_select(inp, cfg)
    h_hat = h_hat.detach().to(inp.logp.dtype)
    log_ratio = inp.logp - inp.old_logp  # [n, T]
    eps_low, eps_high, adv = adaptive_bounds_and_advantage(h_hat, inp.advantages, log_ratio, cfg)
    s = clipped_surrogate(log_ratio, adv, eps_low, eps_high, cfg.dual_clip_c)
    high = h_hat > 0

    mask = inp.mask
    nonzero = mask.bool() & (inp.advantages != 0)
    seq_len = mask.sum(-1).to(torch.float32)  # [n]
    seq_adv = (inp.advantages * mask).sum(-1)  # [n]; outcome advantages share one sign per row
    pos, neg = seq_adv > 0, seq_adv <= 0
    metrics.update({
        "hapo/h_pos_frac": valid_frac(high, mask),
        "hapo/eps_low_mean": valid_mean(eps_low, mask),
        "hapo/eps_high_mean": valid_mean(eps_high, mask),
        "hapo/adv_changed_frac": valid_frac(adv != inp.advantages, mask),
        "hapo/adv_abs_scale_mean": valid_mean((adv / torch.where(nonzero, inp.advantages, 1.0)).abs(), nonzero),
        "hapo/code_compat": inp.logp.new_tensor(float(cfg.code_compat)).detach(),
        "hapo/pos_len_mean": (seq_len * pos).sum() / pos.sum().clamp(min=1),
        "hapo/neg_len_mean": (seq_len * neg).sum() / neg.sum().clamp(min=1),
        "actor/pg_clipfrac": valid_frac(s.clipped, mask),
        "actor/pg_clipfrac_dual": valid_frac(s.dual_clipped, mask),
        "actor/ppo_kl": valid_mean(-log_ratio, mask),
    })
    return s.loss, metrics
