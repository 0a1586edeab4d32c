"""Clip-bias metrics: which side of the advantage a clip removes signal from.

For a token loss that marks each token as clipped (PPO: the clipped branch or the dual bound
is active, so the token has no gradient; CISPO: its IS weight is truncated), split by the
sign of A:

    clipfrac_pos_adv      = #{clipped, A > 0} / #valid
    clipfrac_neg_adv      = #{clipped, A < 0} / #valid
    clipped_adv_mass_pos  = Σ_{clipped, A > 0}  A  / #valid
    clipped_adv_mass_neg  = Σ_{clipped, A < 0} −A  / #valid

Every value is a mean over all valid tokens (the denominator of ``actor/pg_clipfrac``), so the
learner's token-weighted sum over micro-batches and its all-reduce over ranks give the exact
global value; the share of the positive-advantage tokens that is clipped is
``clipfrac_pos_adv / cov/adv_pos_frac``.

Source: Chen, Li, Li, Yin, Chen, Lin, "Exploration vs Exploitation: Rethinking RLVR through
Clipping, Entropy, and Spurious Reward", arXiv 2512.16912 (clipping bias under random
rewards), after Shao et al., "Spurious Rewards", arXiv 2506.10947, Sec. 4 (clipping bias of
GRPO). The paper's own statistics could not be read here (only its abstract and summaries were
available), so these definitions are ours, not the paper's; no official code was found.
"""

from __future__ import annotations

import torch

from entropo.algorithms.losses.base import valid_frac, valid_mean


def clip_bias_metrics(clipped: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four clip-bias metrics of the module docstring (local means over valid tokens).

    Args:
        clipped: ``[n, T]`` bool, the tokens the loss clips.
        advantages: ``[n, T]`` advantages.
        mask: ``[n, T]`` valid-token mask.
    """
    a = advantages.detach()
    pos = clipped & (a > 0)
    neg = clipped & (a < 0)
    return {
        "actor/clipfrac_pos_adv": valid_frac(pos, mask),
        "actor/clipfrac_neg_adv": valid_frac(neg, mask),
        "actor/clipped_adv_mass_pos": valid_mean(torch.where(pos, a, torch.zeros_like(a)), mask),
        "actor/clipped_adv_mass_neg": valid_mean(torch.where(neg, -a, torch.zeros_like(a)), mask),
    }
