"""The declared signatures of the token-loss family and the shared clipped surrogate.

Base clipped surrogate (docs/algorithms.md §6.1; PPO, Schulman et al. arXiv 1707.06347, Eq. 7; clip-higher
from DAPO, arXiv 2503.14476, Eq. 10; dual clip from Ye et al. arXiv 1912.09729, Eq. 5):

    r      = exp(log π_θ − log π_old)
    ℓ_clip = max( −A·r, −A·clip(r, 1−ε_low, 1+ε_high) )
    ℓ      = min( ℓ_clip, −A·c )   if A < 0 and dual clip is on, else ℓ_clip

A token counts as clipped when ``−A·clip(r) > −A·r`` (the clipped branch is active and has
no gradient). Official code: verl ``compute_policy_loss_vanilla``,
https://github.com/volcengine/verl/blob/b178a3cd5/verl/trainer/ppo/core_algos.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from entropo.algorithms.reduce import LOCAL, Reducer


@dataclass
class TokenLossInputs:
    """What a token loss sees for one micro-batch (or the whole batch in a test).

    Attributes:
        logp: ``[n, T]`` log π_θ of the sampled tokens, with gradient.
        old_logp: ``[n, T]`` log π_old of the same tokens (no gradient).
        advantages: ``[n, T]`` advantages, already broadcast over tokens.
        mask: ``[n, T]`` valid-token mask (1 for response tokens).
        entropy: ``[n, T]`` π_θ entropy at the rollout temperature, when a method needs it.
        selected: ``[n, T]``, a selection (bool) or per-token statistic (HAPO's ĥ) precomputed
            over the whole mini-batch in ``global`` scope; ``None`` makes the loss decide
            within these tensors (``micro``).
        reducer: reduces statistics over the scope when the loss selects by itself.
        generator: seeded RNG for random selections (Clip-Cov).
        old_entropy: ``[n, T]`` π_old entropy at the rollout temperature (STEER's H_i).
        proxy_logp: ``[n, T]`` log-prob of the sampled token under a proxy distribution built
            from π_old (Lp-Reg's min-p proxy).
        step_entropy: the step batch's token-mean π_old entropy H̄ (step-level gates, DMMPT).
        rollout_logp: ``[n, T]`` log π_roll of the sampled tokens, from the rollout engine
            (rollout importance sampling).
        extras: other per-token tensors a method computes from the logits (SIREN's
            ``topp_entropy``, with gradient).
        kl_scale: ``[n, T]`` per-token factor on β_ref of the KL to π_ref (ARES's per-bucket
            β, broadcast over each response's tokens); None is 1.
    """

    logp: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    reducer: Reducer = LOCAL
    generator: torch.Generator | None = None
    old_entropy: torch.Tensor | None = None
    proxy_logp: torch.Tensor | None = None
    step_entropy: float | None = None
    rollout_logp: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    kl_scale: torch.Tensor | None = None


Metrics = dict[str, torch.Tensor]
PolicyLossFn = Callable[[TokenLossInputs, Any], tuple[torch.Tensor, Metrics]]
"""``fn(inputs, cfg) -> (per_token_loss [n, T], metrics)``."""

SelectionFn = Callable[[TokenLossInputs, Any], tuple[torch.Tensor, Metrics]]
"""``fn(inputs, cfg) -> (selected [n, T] bool, metrics)``: a loss's batch-statistic selection,
run by the learner over the whole mini-batch when the method's scope is ``global``."""


@dataclass(frozen=True)
class Surrogate:
    """The clipped surrogate and its indicator tensors, all ``[n, T]``."""

    loss: torch.Tensor
    clipped: torch.Tensor  # bool: −A·clip(r) > −A·r
    clipped_upper: torch.Tensor  # bool: clipped with A > 0 (r above 1 + ε_high)
    clipped_lower: torch.Tensor  # bool: clipped with A < 0 (r below 1 − ε_low)
    dual_clipped: torch.Tensor  # bool: the dual-clip bound −A·c is active


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: torch.Tensor | float,
    eps_high: torch.Tensor | float,
    dual_clip_c: float | None = None,
) -> Surrogate:
    """The clipped surrogate above on ``[n, T]`` tensors. ``eps_low``/``eps_high`` may be per-token tensors (HAPO)."""
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, min=1.0 - eps_low, max=1.0 + eps_high)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * clipped_ratio
    loss = torch.maximum(unclipped_loss, clipped_loss)
    clipped = (clipped_loss > unclipped_loss).detach()
    dual = torch.zeros_like(clipped)
    if dual_clip_c is not None:
        bound = -advantages * dual_clip_c
        dual = ((advantages < 0) & (loss > bound)).detach()
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)
    return Surrogate(
        loss=loss,
        clipped=clipped,
        clipped_upper=clipped & (advantages > 0),
        clipped_lower=clipped & (advantages < 0),
        dual_clipped=dual,
    )


def valid_frac(flags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of valid tokens where ``flags`` holds (a local metric; 0 if none is valid)."""
    m = mask.to(torch.float32)
    return (flags.to(torch.float32) * m).sum() / m.sum().clamp(min=1.0)


def valid_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Local mean of ``x`` over valid tokens, detached (a metric; 0 if none is valid)."""
    m = mask.to(x.dtype)
    return (x.detach() * m).sum() / m.sum().clamp(min=1.0)
