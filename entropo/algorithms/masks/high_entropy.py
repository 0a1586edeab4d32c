"""The ``high_entropy`` token mask: only the highest-entropy tokens keep their loss, over a scope
(the 80/20 rule) or per response (EARL).

High-entropy minority ("forking") tokens (docs/algorithms.md §7.1)
-------------------------------------------------------------------
    k   = max(1, ⌊ρ·N + 0.9999⌋)                  N valid tokens in scope
    S   = the k valid tokens with the largest entropy H (π_θ, rollout temperature, detached)
    ℓ_i = ℓ_i for i ∈ S; other tokens are masked

- Paper: Wang et al., "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective
  RL for LLM Reasoning", arXiv 2506.01939, Eq. 4 (ρ = 0.2).
- Official code: ``get_global_entropy_top_mask`` in
  https://github.com/Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR/tree/6f5dda6f
  (``verl/trainer/ppo/core_algos.py``; fix 137d8d1 included). TRL:
  ``GRPOConfig.top_entropy_quantile`` (f2cd57710).

Deviations and options:
- ``k`` uses the official code's ``int(ρN + 0.9999)``; it differs from the paper's
  ``ceil(ρN)`` only when the fractional part of ρN is in (0, 1e-4].
- Exact top-k on the gathered scope with position tie-breaking (see
  :mod:`entropo.algorithms.select`); TRL's ``H ≥ torch.quantile`` may keep more than k on
  ties and fails above 2^24 tokens.
- ``norm``: ``selected`` (official code: the denominator is |S|) or ``all_valid`` (paper's Eq.
  and TRL: the denominator is all valid tokens). They differ by about 1/ρ in gradient scale.
- Scope: the official code selects over the micro-batch on one rank (``micro``); TRL over
  one micro-step of all ranks. ``global`` (ours, default) selects over the whole
  mini-batch on all ranks, with entropies from a no-grad pass at the mini-batch's
  parameters (equal to the training forward's π_θ entropies), so the selection does not
  change with micro-batch size or GPU count.

Per-response threshold (EARL, ``stat_scope="sequence"``; docs/algorithms.md §7.5)
---------------------------------------------------------------------------------
    k_i = max(1, ⌊ρ·N_i + 0.9999⌋)                N_i valid tokens of response i
    S_i = the k_i valid tokens of response i with the largest H (ties → earliest position)

- Paper: EARL, arXiv 2511.12033 (no code released). Not verified against the paper's text:
  the rule is a summary's ("the 80/20 mask with the threshold taken per response instead of
  over the batch"); the paper was not available here, and k_i reuses the batch mask's rounding
  per response.
- The decision reads each response's own row only, so it needs no collective and gives the
  same tokens on any split into micro-batches or ranks; the objective still prepares it once
  per mini-batch, so that ``norm=selected`` counts the denominator over the whole mini-batch.
- Every response with at least one valid token keeps at least one: the kept fraction is
  above ρ when responses are short (a 1-token response keeps its token).
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.masks import EntropyMaskConfig
from entropo.algorithms.losses.base import TokenLossInputs, valid_frac
from entropo.algorithms.masks.base import TokenMask
from entropo.algorithms.registry import TOKEN_MASKS
from entropo.algorithms.select import ROUND_UP_SLACK, top_count, top_k_mask


def per_response_top_mask(
    entropy: torch.Tensor, mask: torch.Tensor, rho: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k_i = top_count(ρ, N_i)`` highest-entropy valid tokens of each response (EARL).

    Args:
        entropy: ``[n, T]`` token entropies (detached inside).
        mask: ``[n, T]`` valid-token mask.
        rho: ρ, the fraction kept per response.

    Returns:
        ``[n, T]`` bool keep (ties at a response's threshold go to the earliest positions), and
        the mean over responses with a valid token of their k_i-th entropy (NaN if none).
    """
    valid = mask.bool()
    n_i = valid.sum(-1)  # [n]
    k_i = torch.where(n_i > 0, (rho * n_i.to(torch.float64) + ROUND_UP_SLACK).long().clamp(min=1), 0)
    key = torch.where(valid, entropy.detach().to(torch.float64), float("-inf"))  # [n, T]
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # ties: earlier first
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(key.shape[-1], device=key.device).expand_as(order))
    keep = valid & (rank < k_i.unsqueeze(-1))  # [n, T]
    has = n_i > 0
    kth = torch.where(keep, key, float("inf")).min(dim=-1).values  # [n]
    threshold = kth[has].mean() if has.any() else torch.tensor(float("nan"))
    return keep, threshold


@TOKEN_MASKS.register("high_entropy", config=EntropyMaskConfig, needs=("entropy",))
def high_entropy_mask(inp: TokenLossInputs, cfg: EntropyMaskConfig) -> tuple[TokenMask, dict[str, torch.Tensor]]:
    """Keep the top-ρ valid tokens by entropy over the reducer's scope (``sequence``: per response)."""
    if inp.entropy is None:
        raise ValueError("the high_entropy token mask needs token entropies (inputs.entropy)")
    entropy = inp.entropy.detach()
    if cfg.stat_scope == "sequence":
        keep, threshold = per_response_top_mask(entropy, inp.mask, cfg.rho)
    else:
        n_valid = int(inp.reducer.sum(inp.mask.bool().sum().to(torch.float64)))
        keep, threshold = top_k_mask(entropy, inp.mask, top_count(cfg.rho, n_valid), inp.reducer)
    valid = inp.mask.bool()
    dropped = valid & ~keep
    metrics = {
        "entropy_mask/keep_frac": valid_frac(keep, inp.mask),
        "entropy_mask/threshold": threshold,
        "entropy_mask/kept_entropy_mean": (entropy * keep).sum() / keep.sum().clamp(min=1),
        "entropy_mask/dropped_entropy_mean": (entropy * dropped).sum() / dropped.sum().clamp(min=1),
    }
    return TokenMask(keep=keep, exclude_from_denominator=cfg.norm == "selected"), metrics
