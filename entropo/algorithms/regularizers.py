"""Regularisers added to the aggregated loss: entropy bonus and reference KL (docs/algorithms.md §9).

Entropy bonus, with ``H`` the full-vocabulary entropy of ``π_θ`` (with gradient):

    L ← L_pg − c_H · agg(H_{i,t}; mode)

Adaptive coefficient, after each optimiser step, with ``H̄_w`` the window-global mean entropy:

    c ← clamp(c + δ, c_min, c_max)   if H̄_w ≤ H_tgt
    c ← clamp(c − δ, c_min, c_max)   otherwise
    the bonus is applied at the next step only while H̄_w ≤ H_tgt

Reference KL per token, with ``Δ = log π_ref − log π_θ`` (Schulman's estimators):

    k1 = log π_θ − log π_ref = −Δ
    k2 = ½ (log π_θ − log π_ref)² = ½ Δ²
    k3 = e^Δ − Δ − 1                       ("low_var_kl")
    L ← L + β_ref · agg(k)

Sources:
- Entropy bonus: verl ``entropy_coeff`` (same aggregation mode as the policy loss) and TRL
  ``entropy_coef`` (always a token-mean); verl
  https://github.com/volcengine/verl/blob/b178a3cd5/verl/workers/actor/dp_actor.py, TRL
  ``trl/trainer/grpo_trainer.py`` at f2cd57710.
- Adaptive coefficient: He et al., Skywork-OR1, arXiv 2505.22312 (adaptive entropy control);
  TRL ``use_adaptive_entropy`` (``entropy_coef_delta``, ``entropy_target``,
  ``entropy_coef_min/max``) at f2cd57710.
- KL estimators: J. Schulman, "Approximating KL Divergence" (2020),
  http://joschu.net/blog/kl-approx.html; verl ``kl_penalty`` / ``kl_penalty_forward`` in
  https://github.com/volcengine/verl/blob/b178a3cd5/verl/trainer/ppo/core_algos.py.
  GRPO's ref-KL: Shao et al., arXiv 2402.03300 (β = 0.04).

Deviations and conventions:
- The mode of the entropy bonus is the caller's choice: pass the policy loss's mode for verl,
  ``token-mean`` for TRL. :func:`entropy_bonus` returns this shard's share of the term, like
  :func:`entropo.algorithms.aggregate.aggregate`.
- A strict ``H̄_w < H_tgt`` for the increase is the form written descriptions give (not
  verified against the Skywork-OR1 paper's text); TRL's code increases on ``H̄_w ≤ H_tgt``, the same test that gates the bonus. We follow the code, so "the bonus is
  active" and "the coefficient went up" are one condition.
- k3 follows verl exactly, with both of its clamps: ``Δ`` is clamped to [−20, 20] before
  ``exp``, and the per-token result to [−10, 10] (k3 ≥ 0, so only the upper bound, 10,
  acts). Where either clamp is active the
  token's gradient is exactly 0: with ``k3 > 10`` (``Δ > 2.611``, i.e. ``π_ref/π_θ > 13.6``, or
  ``Δ < −11.0``) the penalty stops pulling that token back. verl's ``+`` variants (``k3+``,
  straight-through k2 gradient) are not implemented.
- k1 and k2 are not clamped (neither is in verl).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from entropo.algorithms.aggregate import LossNorm, aggregate
from entropo.algorithms.configs.regularizers import AdaptiveEntropyConfig
from entropo.algorithms.registry import CONTROLLERS
from entropo.algorithms.stateful import StepInfo, StepMethod

# verl clamps Δ before exp "for numerical stability": e^20 ≈ 4.9e8 is finite in fp32 and bf16,
# while an unclamped Δ ≥ 89 overflows fp32 exp to inf and makes the loss inf.
K3_LOG_RATIO_CLAMP = 20.0
# verl caps each token's k3 at 10 so that a few tokens the policy has pushed far below π_ref
# cannot dominate the loss (and its gradient). Those tokens get zero KL gradient.
K3_MAX = 10.0


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    mode: str,
    norm: LossNorm | None = None,
    l_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss term ``−c_H · agg(H)``; gradient flows through ``entropy``.

    Args:
        entropy: per-token entropy ``H`` of ``π_θ`` ``[n, T]``, with gradient.
        mask: valid-token mask ``[n, T]`` (the policy loss's mask for verl, or TRL's 80/20 mask).
        coef: ``c_H`` (≥ 0; 0 gives a zero term that still carries a graph).
        mode: aggregation mode, one of :data:`entropo.algorithms.configs.reduction.AGG_MODES`.
        norm: mini-batch denominators from :func:`entropo.algorithms.aggregate.loss_norm`;
            ``None`` counts them from ``mask`` (micro-batch scope).
        l_norm: ``L_norm`` for ``seq-mean-token-sum-norm``.

    Returns:
        This shard's share of ``−c_H · agg(H)`` (a scalar) and metrics:
        ``actor/entropy_bonus``, this shard's share of ``c_H · agg(H)`` (the amount subtracted
        from the loss), detached.
    """
    agg_h = aggregate(entropy, mask, mode, norm, l_norm)
    term = -coef * agg_h
    return term, {"actor/entropy_bonus": -term.detach()}


def adaptive_entropy_coef(
    coef: float, window_entropy: float, cfg: AdaptiveEntropyConfig
) -> tuple[float, bool]:
    """One controller update, run once after each optimiser step.

    Args:
        coef: the current ``c_H`` (initially the static entropy coefficient).
        window_entropy: ``H̄_w``, the token-mean entropy over every micro-batch and rank of the
            step just taken (the learner's single ``.item()`` of the step).
        cfg: the controller config.

    Returns:
        ``(new_coef, active)``: the coefficient for the next step, and whether the bonus is
        applied at the next step (``H̄_w ≤ H_tgt``); when inactive, use a coefficient of 0 but
        keep ``new_coef`` as the controller's state. Before the first measurement there is no
        ``H̄_w``; the caller decides that first step.
    """
    active = window_entropy <= cfg.target
    step = cfg.delta if active else -cfg.delta
    return min(max(coef + step, cfg.coef_min), cfg.coef_max), active


@dataclass(frozen=True)
class AdaptiveEntropyState:
    """The adaptive controller's running state.

    Attributes:
        coef: c_H for the next update while the bonus is active (starts at ``algorithm.entropy_coef``).
    """

    coef: float


def _adaptive_context(cfg: AdaptiveEntropyConfig, state: AdaptiveEntropyState, batch, info: StepInfo):
    """c_H of this update: the bonus applies only while the current policy's entropy (this
    step's π_old batch mean) is at most the target."""
    h = float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp(min=1))
    return state, {"entropy_coef": state.coef if h <= cfg.target else 0.0}


def _adaptive_observe(cfg: AdaptiveEntropyConfig, state: AdaptiveEntropyState, metrics: dict[str, float],
                      info: StepInfo):
    """One controller update from the step's token-mean entropy (``entropy/mean``)."""
    h = metrics["entropy/mean"]
    out = {"actor/entropy_coef": state.coef, "actor/entropy_bonus_active": float(h <= cfg.target)}
    coef, _ = adaptive_entropy_coef(state.coef, h, cfg)
    return AdaptiveEntropyState(coef), out


CONTROLLERS.add("adaptive_entropy", StepMethod(
    init=lambda cfg, info: AdaptiveEntropyState(info.entropy_coef), state_cls=AdaptiveEntropyState,
    context=_adaptive_context, observe=_adaptive_observe),
    config=AdaptiveEntropyConfig, section="entropy_adaptive", switch="adaptive_entropy")


def _k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def _k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp).square()


def _k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    delta = (ref_logp - logp).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (delta.exp() - delta - 1).clamp(max=K3_MAX)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL estimate of ``π_θ`` from ``π_ref`` ``[n, T]``; aggregate it with the mask.

    Args:
        logp: ``log π_θ`` of the sampled tokens ``[n, T]``, with gradient.
        ref_logp: ``log π_ref`` of the same tokens ``[n, T]`` (detached here).
        estimator: ``k1``, ``k2`` or ``k3`` (see the module docstring).

    Returns:
        The per-token estimate ``[n, T]``. Padding positions hold whatever the inputs give;
        the aggregation's mask removes them.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator '{estimator}'; choose one of {sorted(KL_ESTIMATORS)}"
        )
    return KL_ESTIMATORS[estimator](logp, ref_logp.detach())
