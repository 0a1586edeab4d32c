"""Clip-Cov: detach the gradient of a few high-covariance tokens (docs/algorithms.md §6.3).

    Cov_i   = (log π_θ(y_i) − mean_j log π_θ(y_j)) · (A_i − mean_j A_j)     over valid tokens in scope
    C       = { i : ω_low < Cov_i < ω_high and i not clipped by the surrogate }
    S       = uniform random draw of n_clip = max(⌊r_clip·N⌋, 1) tokens from C (all of C if fewer)
    ℓ_i     = 0 (no gradient)                                   i ∈ S
            = max( −A·r, −A·clip(r, 1−ε_low, 1+ε_high) )         otherwise   ("clipped" surrogate)
            = −A·r                                               otherwise   ("plain" surrogate)

Selected tokens stay in the denominator (docs/algorithms.md §1, Masks (b)); aggregate with token-mean. No dual clip.

- Paper: Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning
  Language Models", arXiv 2505.22617, Sec. 4 (Clip-Cov).
- Official code: ``compute_policy_loss_clip_cov`` in
  https://github.com/PRIME-RL/Entropy-Mechanism-of-RL/tree/8850579 and verl
  (``loss_mode="clip_cov"``, b178a3cd5).

Paper versus code: the code applies the clipped surrogate to the other tokens, and the
official scripts set ε_low = ε_high = 1 (r clamped to [0, 2], nearly unclipped): that is
our default. ``surrogate="plain"`` gives the paper text's ``−A·r`` (not verified against the
paper's equation). With ε = 0.2 (verl's
config default) the method becomes "PPO + Clip-Cov", a different algorithm.

Scope: the official code selects per micro-batch on each GPU (``stat_scope="micro"``), so
its selection changes with the micro-batch size. In ``global`` scope (our default) the
learner runs :func:`clip_cov_select` once over the whole mini-batch across ranks, before
the first micro-batch, with log π_θ from a no-grad pass at the mini-batch's parameters
(which the training forward reproduces, since parameters change only after the mini-batch).
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.losses import ClipCovConfig
from entropo.algorithms.diagnostics import token_covariance
from entropo.algorithms.losses.base import TokenLossInputs, clipped_surrogate, valid_frac
from entropo.algorithms.registry import TOKEN_LOSSES
from entropo.algorithms.select import random_subset_mask


def _surrogate(inp: TokenLossInputs, cfg: ClipCovConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, clipped)`` on the non-selected tokens, both ``[n, T]``."""
    log_ratio = inp.logp - inp.old_logp
    s = clipped_surrogate(log_ratio, inp.advantages, cfg.eps_low, cfg.eps_high)
    if cfg.surrogate == "plain":
        return -inp.advantages * torch.exp(log_ratio), torch.zeros_like(s.clipped)
    return s.loss, s.clipped


def clip_cov_select(inp: TokenLossInputs, cfg: ClipCovConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The tokens whose gradient Clip-Cov detaches, over the reducer's scope."""
    mask = inp.mask.bool()
    cov = token_covariance(inp.logp.detach(), inp.advantages, inp.mask, inp.reducer)  # [n, T]
    _, clipped = _surrogate(
        TokenLossInputs(inp.logp.detach(), inp.old_logp, inp.advantages, inp.mask), cfg
    )
    candidates = mask & (cov > cfg.cov_low) & (cov < cfg.cov_high) & ~clipped
    n_valid = int(inp.reducer.sum(mask.sum().to(torch.float64)))
    n_clip = max(int(cfg.clip_ratio * n_valid), 1) if n_valid > 0 else 0
    selected = random_subset_mask(candidates, inp.mask, n_clip, inp.generator, inp.reducer)
    metrics = {
        "clip_cov/selected_frac": valid_frac(selected, inp.mask),
        "clip_cov/candidate_frac": valid_frac(candidates, inp.mask),
        "clip_cov/cov_mean": (cov * inp.mask).sum() / inp.mask.sum().clamp(min=1),
        "clip_cov/cov_max": cov.masked_fill(~mask, float("-inf")).max() if mask.any() else cov.new_zeros(()),
        "clip_cov/cov_pos_frac": valid_frac(cov > 0, inp.mask),
    }
    return selected, metrics


@TOKEN_LOSSES.register(
    "clip_cov", config=ClipCovConfig, selector=clip_cov_select, needs_adv_variation=True,
    vanishes_at_zero_advantage=True,
)
def clip_cov_loss(inp: TokenLossInputs, cfg: ClipCovConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token Clip-Cov loss ``[n, T]``; selects in scope unless ``inp.selected`` is given."""
    metrics: dict[str, torch.Tensor] = {}
    selected = inp.selected
    if selected is None:
        selected, metrics = clip_cov_select(inp, cfg)
    loss, clipped = _surrogate(inp, cfg)
    loss = torch.where(selected, torch.zeros_like(loss), loss)
    metrics["clip_cov/selected_frac"] = valid_frac(selected, inp.mask)
    metrics["actor/pg_clipfrac"] = valid_frac(clipped, inp.mask)
    return loss, metrics

