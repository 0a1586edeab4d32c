"""Clip_B: mask negative-advantage tokens whose update would lower entropy the most.

    S_t    = p_t·(H_t + log p_t)            p_t = π_old(y_t), H_t = π_old entropy (rollout temperature)
    S̄, σ_S = mean and population std (÷N) of S over the N valid tokens of the scope
    keep_t = 1                              A_t ≥ 0 (every A > 0 token; A = 0 tokens too)
    keep_t = [S_t − S̄ ≥ −μ·σ_S]            A_t < 0
    keep   ≡ 1                              σ_S < 1e-12 (S constant: nothing stands out)

Why: a policy-gradient step on token t changes the entropy at its state by about
``−α·A_t·(S_t − E_π[S])`` (Theorem 3.3; :mod:`entropo.algorithms.diagnostics`, docs/algorithms.md §12). Clip_B
replaces the vocabulary expectation E_π[S] by the batch mean S̄. A token with A < 0 and S far
below S̄ (an unlikely token, log p < −H) would then lower entropy strongly: penalising it
moves its probability mass onto the likely tokens. Those tokens are dropped.

- Paper: Wang, Xie, Zhang, Sun, Chen, Li, Zhang, "On the Entropy Dynamics in Reinforcement
  Fine-Tuning of Large Language Models", arXiv 2602.03392 (Clip_B, built on Thm. 3.2/3.3;
  the PDF was not read here, only summaries; the formula above is the code's).
- Official code: agentscope-ai/Trinity-RFT, ``trinity/algorithm/advantage_fn/clipb_advantage.py``,
  ``ClipBAdvantageFn.__call__`` (defaults ``mu=2.5``), with ``examples/entropy/clipb.yaml``
  and ``clipb_trainer.patch``; read at the fork pan-x-c/Trinity-RFT @ e8be774 (the upstream
  snapshot is too large to fetch here).

What the code does, and where we differ (each difference a named option or stated here):
- Denominator: the code replaces verl's ``response_mask`` by ``response_mask·keep``, so masked
  tokens leave the loss denominator (docs/algorithms.md §1, Masks (a)); ``norm="selected"``
  (default) does the same, ``norm="all_valid"`` keeps them in it with zero loss (Masks (b)).
- p_t: the code reads the key ``rollout_log_probs`` (the rollout engine's log-probs) though
  its comment says "recomputed logprobs ... from current model (not rollout)", and its Clip_V
  sibling uses the recomputed ``old_log_probs``. ``logp_source="old"`` (default) takes log π_old
  from the learner's pass, consistent with H_t (which the code also takes from that pass);
  ``logp_source="rollout"`` takes log π_roll as the code literally does. They agree up to
  the engine mismatch (``logprob_gap/mean``).
- Scope: the code decides once per step over the whole step batch (advantage stage, driver).
  ``stat_scope="global"`` (default) decides over the mini-batch on all ranks: the same when a
  step has one mini-batch (the default); with ``learner.mini_batch_prompts`` set, each
  mini-batch gets its own S̄, σ_S. S is from π_old, so the decision does not change across
  epochs. ``micro`` (one rank's micro-batch) is ours, for comparison with the other masks.
- Precision: the code computes in float32; we compute in float64 on the gathered S of all
  shards, so a batch split across ranks gives bitwise the whole-batch decision. A token within
  float32 rounding of the threshold can fall on the other side.
- The A = 0 tokens are kept, as in the code (``keep_zero``); under any token loss that
  vanishes with A this only matters for the denominator.
- Validated: the code's formula re-expressed on random inputs (tests). Not validated: training.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.masks import ClipBConfig
from entropo.algorithms.diagnostics import discriminator_stats, entropy_discriminator
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.masks.base import TokenMask
from entropo.algorithms.reduce import scatter_valid
from entropo.algorithms.registry import TOKEN_MASKS

# The official code keeps every token when std(S) < 1e-12: S is then constant up to rounding,
# and rounding noise alone must not mask tokens.
MIN_STD = 1e-12


@TOKEN_MASKS.register("clip_b", config=ClipBConfig, needs=("old_entropy",), reads_policy=False)
def clip_b_mask(inp: TokenLossInputs, cfg: ClipBConfig) -> tuple[TokenMask, dict[str, torch.Tensor]]:
    """Keep A ≥ 0 tokens; keep A < 0 tokens unless ``S − S̄ < −μ·σ_S`` over the reducer's scope.

    Args:
        inp: uses ``old_logp`` (or ``rollout_logp``), ``old_entropy`` (π_old H), ``advantages``,
            ``mask`` and ``reducer``.
        cfg: :class:`ClipBConfig`.
    """
    logp = inp.old_logp if cfg.logp_source == "old" else inp.rollout_logp
    if inp.old_entropy is None or logp is None:
        raise ValueError(f"the clip_b token mask needs π_old entropies (inputs.old_entropy) and "
                         f"{'inputs.old_logp' if cfg.logp_source == 'old' else 'inputs.rollout_logp'}")
    valid = inp.mask.bool()
    s = entropy_discriminator(logp.detach()[valid].to(torch.float64),
                              inp.old_entropy.detach()[valid].to(torch.float64))  # [N_loc]
    s_all, _ = inp.reducer.gather(s)  # [N], shard order
    s_mean, s_std = discriminator_stats(s_all)
    neg = inp.advantages.detach()[valid] < 0  # [N_loc]
    drop = neg & (s - s_mean < -cfg.mu * s_std) if s_std >= MIN_STD else torch.zeros_like(neg)
    keep = scatter_valid(~drop, inp.mask, fill=False)  # [n, T], False on padding
    counts = inp.reducer.sum(torch.stack([drop.sum(), neg.sum()]).to(torch.float64))  # whole scope
    metrics = {
        "clip_b/masked_frac": counts[0] / max(float(s_all.numel()), 1.0),
        "clip_b/masked_frac_neg": counts[0] / counts[1].clamp(min=1.0),
        "clip_b/s_mean": s_mean,
        "clip_b/s_std": s_std,
        "clip_b/threshold": s_mean - cfg.mu * s_std,
    }
    return TokenMask(keep=keep, exclude_from_denominator=cfg.excludes_from_denominator), metrics
