"""CISPO: the clipped importance-sampling weight, detached, times the log-prob (MiniMax-M1).

    r  = exp(clamp(log π_θ − log π_old, −κ, κ))
    r̂  = clip(r, 1 − ε_low, 1 + ε_high)            ε_low = None: no lower bound, r̂ = min(r, 1 + ε_high)
    ℓ  = −sg(r̂) · A · log π_θ                      so ∂ℓ/∂log π_θ = −r̂·A at every token

PPO drops the gradient of a token whose ratio left the trust region; CISPO keeps it and only
bounds its weight, so rare tokens that move fast (the paper's "forks": However, Wait, ...)
keep contributing. The paper normalises by the batch's token count (1/Σ|o_i|): token-mean.

- Paper: MiniMax, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning
  Attention", arXiv 2506.13585, Sec. 3.1, Eq. 4 (objective) and Eq. 5 (clipped IS weight).
  It sets no lower bound (ε_low large) and tunes only ε_high, whose value it does not give.
- Official code: MiniMax released no training code; the frameworks that ship CISPO, read here:
  verl @ b178a3cd5, ``verl/trainer/ppo/core_algos.py::compute_policy_loss_cispo`` (bounds
  from ``clip_ratio_low/high``, its example ``examples/cispo_trainer/run_cispo_qwen2_5_0_5b_gsm8k.sh``
  sets 10 / 0.2; log r clamped to ±20; ``pg_clipfrac`` counts r ≠ r̂);
  NovaSky-AI/SkyRL @ a9564572e, ``skyrl/backends/skyrl_train/utils/ppo_utils.py::compute_policy_loss_cispo``
  (``cispo_eps_clip_low=1``, ``cispo_eps_clip_high=4`` in ``skyrl/train/config/config.py``:
  r̂ ∈ [0, 5], after ScaleRL, arXiv 2510.13786);
  huggingface/trl @ f2cd5771, ``trl/trainer/grpo_trainer.py`` (``GRPOTrainer``,
  ``loss_type="cispo"``: ``clamp(r, max=epsilon_high)``, the cap itself, 5.0 recommended).

Defaults: no lower bound (the paper) and the cap 1 + ε_high = 5 (ScaleRL's, SkyRL's default,
TRL's recommendation). verl's example caps at 1.2 (``eps_high=0.2``). A token counts as
clipped when r lies outside [1 − ε_low, 1 + ε_high] (verl, SkyRL; at a bound it is not),
whatever the sign of A; TRL counts only A > 0 (our ``actor/clipfrac_pos_adv``).

Note: ℓ's value is not the objective's (only its gradient is), so ``actor/pg_loss`` is not
comparable with ``ppo_clip``'s. No dual clip (r̂ is bounded already).
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.losses import CispoConfig
from entropo.algorithms.losses.base import TokenLossInputs, valid_frac, valid_mean
from entropo.algorithms.losses.clip_bias import clip_bias_metrics
from entropo.algorithms.registry import TOKEN_LOSSES


def cispo_weight(log_ratio: torch.Tensor, cfg: CispoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r̂, clipped)``, both ``[n, T]`` and without gradient, from ``log r`` (clamped already)."""
    ratio = torch.exp(log_ratio.detach())
    low = 0.0 if cfg.eps_low is None else 1.0 - cfg.eps_low
    high = 1.0 + cfg.eps_high
    clipped = (ratio > high) | (ratio < low)
    return ratio.clamp(min=low, max=high), clipped


@TOKEN_LOSSES.register("cispo", config=CispoConfig, vanishes_at_zero_advantage=True)
def cispo_loss(inp: TokenLossInputs, cfg: CispoConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token CISPO loss ``[n, T]``; every token's gradient is ``−r̂·A`` wrt ``inp.logp``."""
    log_ratio = inp.logp - inp.old_logp  # [n, T]
    if cfg.log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    weight, clipped = cispo_weight(log_ratio, cfg)
    loss = -(weight * inp.advantages) * inp.logp
    metrics = {
        "actor/pg_clipfrac": valid_frac(clipped, inp.mask),
        "actor/ppo_kl": valid_mean(inp.old_logp - inp.logp, inp.mask),
        "cispo/weight_mean": valid_mean(weight, inp.mask),
        **clip_bias_metrics(clipped, inp.advantages, inp.mask),
    }
    return loss, metrics
