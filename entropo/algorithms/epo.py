"""EPO: entropy bonus with a historical-entropy corridor penalty (docs/algorithms.md §9).

With H the π_θ token entropy (with gradient), H̄ the historical reference of the token's turn,
β_k the phase weight at training iteration k, λ = ``coef``, c_s = ``smooth_coef``:

    in_t  = 1[ κ_l·H̄ < H_t < κ_r·H̄ ]
    P_t   = 0 if in_t else α                                   (faithful: a constant)
    L     = L_pg − λ·( agg(H) − c_s·agg(β_k·P) )
    β_k   = 1 − 0.2·(1 − e^{−2k/⌊K/2⌋})            k ≤ ⌊K/2⌋
          = 0.8·e^{−3(k − ⌊K/2⌋)/(K − ⌊K/2⌋)}      ⌊K/2⌋ < k ≤ K   (k is clamped to [0, K])
    H̄     = cumulative mean over all iterations so far of the rollout's mean entropy (per turn)

``differentiable`` mode (our extension, not the paper's): the bonus only on in-range tokens and
a squared hinge instead of the constant P:

    L = L_pg − λ·( agg(H·in) − c_s·agg(β_k·(α·max(0, H − κ_r H̄)² + α·max(0, κ_l H̄ − H)²)) )

- Paper: Xu et al., "EPO: Entropy-regularized Policy Optimization for LLM Agents RL",
  arXiv 2509.22576 (the penalty's equation was not verified against the paper's text).
- Official code: ``generate_entropy_penalty``, ``_calculate_epoch_based_entropy_weight`` and
  ``update_policy`` in ``verl/workers/actor/dp_actor.py``; the history in ``fit`` of
  ``verl/trainer/ppo/ray_trainer.py``; https://github.com/WujiangXu/EPO/tree/5b6fa98 (read at
  5d1ef12, the version stored).

What the code does and what we change:
- P is built from constants, so in ``faithful`` mode the corridor contributes **zero gradient**:
  the update is the plain ``λ`` entropy bonus, and the corridor only shifts the loss value. We
  keep that (and log the in-corridor fraction); ``differentiable`` is the variant that acts.
- The code applies the penalty only when some sample of the micro-batch comes from a turn
  ≥ ``max_step // 2`` (25 with its misspelt config key), so a single-turn run never gets it.
  Here the caller decides through ``smooth`` (default on).
- The history is appended with the current rollout's entropy before the update, so H̄ includes
  the current iteration (:func:`epo_history_update` then :func:`epo_term`). The code's
  multi-turn history left-pads per-turn means with zeros to ``max_steps``; single-turn use has
  one turn and no padding. Before any history exists the code's branch is broken (it returns
  one tensor where two are unpacked); we apply no corridor then (``turn_mean_H=None``).
- The in-corridor test and the metrics count valid tokens only (the code counts padding);
  ``seq`` mask mode (per-response mean entropy) is not implemented, only ``token`` (the
  default of both recipes).
- The code's β_k uses ``⌊K/2⌋`` and clamps k to [0, K]: β jumps from 0.827 to 0.8 at ⌊K/2⌋ and
  stays at 0.8·e^{−3} ≈ 0.040 after K (its docstring's "to 0.0" is not what it computes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from entropo.algorithms.aggregate import LossNorm, aggregate
from entropo.algorithms.configs.regularizers import EpoConfig
from entropo.algorithms.registry import REGULARIZERS
from entropo.algorithms.stateful import StepInfo, StepMethod


def epo_phase_weight(k: int, K: int) -> float:
    """β_k, the code's two-phase decay of the penalty over training iterations.

    Args:
        k: training iteration (the code's ``epoch`` meta field).
        K: horizon (``phase_K``).
    """
    if K <= 0:
        return 1.0
    k = max(0, min(k, K))
    half = K // 2
    if k <= half:
        return 1.0 if half == 0 else 1.0 - 0.2 * (1.0 - math.exp(-2.0 * k / half))
    return 0.8 * math.exp(-3.0 * (k - half) / (K - half))


@dataclass(frozen=True)
class EpoHistory:
    """Cumulative mean of the per-iteration rollout entropy (one turn), kept by the controller.

    Attributes:
        count: iterations recorded.
        total: sum of their mean entropies.
    """

    count: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float | None:
        """H̄, or None before the first iteration."""
        return self.total / self.count if self.count else None


def epo_history_update(history: EpoHistory, step_entropy: float) -> EpoHistory:
    """Record this iteration's mean rollout entropy (before the update, as the code does).

    Args:
        history: the state so far.
        step_entropy: the token-mean π_old entropy of this iteration's rollout batch.
    """
    if not math.isfinite(step_entropy):
        raise ValueError(f"step_entropy must be finite, got {step_entropy}")
    return EpoHistory(history.count + 1, history.total + float(step_entropy))


def epo_term(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    turn_mean_H: float | torch.Tensor | None,
    cfg: EpoConfig,
    step: int,
    agg_mode: str,
    norm: LossNorm | None = None,
    l_norm: float | None = None,
    smooth: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This shard's share of ``−λ·(agg(H) − c_s·agg(β_k·P))`` (replaces the plain entropy bonus).

    Args:
        entropy: ``[n, T]`` π_θ token entropy, with gradient.
        mask: ``[n, T]`` valid-token mask (the policy loss's).
        turn_mean_H: H̄: a scalar (single turn) or ``[n, T]`` per token (its turn's H̄); None
            before any history (no corridor: the plain bonus).
        cfg: :class:`EpoConfig`.
        step: training iteration k of β_k.
        agg_mode: aggregation mode, the policy loss's (``loss_agg_mode`` in the code).
        norm: mini-batch denominators (:func:`entropo.algorithms.aggregate.loss_norm`).
        l_norm: ``L_norm`` for ``seq-mean-token-sum-norm``.
        smooth: apply the corridor term (the code's turn-index gate decides this).

    Returns:
        The share (scalar) and metrics: ``epo/bonus_agg`` and ``epo/penalty_agg`` (this shard's
        shares of agg(H[·in]) and agg(β·P)), ``epo/term``, ``epo/phase_weight`` (β_k),
        ``epo/ref_entropy`` (mean H̄ over valid tokens) and ``epo/in_range_frac`` (valid tokens
        of this shard inside the corridor; NaN without a reference).
    """
    valid = mask.detach() > 0
    beta = epo_phase_weight(step, cfg.phase_K) if cfg.enable_smooth_weights else 1.0
    h = entropy.detach()
    nan = h.new_full((), float("nan"))
    if turn_mean_H is None:
        bonus = aggregate(entropy, mask, agg_mode, norm, l_norm)
        term = -cfg.coef * bonus
        return term, {
            "epo/bonus_agg": bonus.detach(),
            "epo/penalty_agg": torch.zeros_like(nan),
            "epo/term": term.detach(),
            "epo/phase_weight": torch.tensor(beta),
            "epo/ref_entropy": nan,
            "epo/in_range_frac": nan,
        }
    ref = torch.as_tensor(turn_mean_H, dtype=h.dtype, device=h.device).detach().expand_as(h)
    low, high = cfg.kappa_l * ref, cfg.kappa_r * ref
    in_range = (h > low) & (h < high)  # strict, as the code
    if cfg.mode == "faithful":
        bonus = aggregate(entropy, mask, agg_mode, norm, l_norm)
        penalty = torch.where(in_range, h.new_zeros(()), h.new_full((), cfg.alpha))  # constant: no gradient
    else:
        bonus = aggregate(entropy * in_range.to(entropy.dtype), mask, agg_mode, norm, l_norm)
        penalty = cfg.alpha * ((entropy - high).clamp(min=0) ** 2 + (low - entropy).clamp(min=0) ** 2)
    penalty_agg = aggregate(beta * penalty, mask, agg_mode, norm, l_norm) if smooth else torch.zeros_like(bonus)
    term = -cfg.coef * (bonus - cfg.smooth_coef * penalty_agg)
    n_valid = valid.sum().clamp(min=1)
    metrics = {
        "epo/bonus_agg": bonus.detach(),
        "epo/penalty_agg": penalty_agg.detach(),
        "epo/term": term.detach(),
        "epo/phase_weight": torch.tensor(beta),
        "epo/ref_entropy": (ref * valid).sum() / n_valid,
        "epo/in_range_frac": (in_range & valid).sum() / n_valid,
    }
    return term, metrics


# ---------------------------------------------------------------- the method, as the trainer runs it


def _context(cfg: EpoConfig, state: EpoHistory, batch, info: StepInfo) -> tuple[EpoHistory, dict]:
    """Record this step's token-mean π_old entropy; H̄ is the cumulative mean, this step included."""
    h = float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp(min=1))
    state = epo_history_update(state, h)
    return state, {"epo_reference": state.mean}


@REGULARIZERS.register("epo", config=EpoConfig, needs=("entropy",),
                       share_metrics=("epo/term", "epo/bonus_agg", "epo/penalty_agg"),
                       step=StepMethod(init=lambda cfg, info: EpoHistory(), state_cls=EpoHistory, context=_context))
def epo_regularizer(inp, cfg: EpoConfig, ctx, denom_mask: torch.Tensor, norm: LossNorm, agg_mode: str,
                    l_norm: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of EPO's term (:func:`epo_term`) over the loss's denominator tokens."""
    if inp.entropy is None:
        raise ValueError("epo needs token entropies with gradient (inputs.entropy)")
    return epo_term(inp.entropy, denom_mask, ctx.values.get("epo_reference"), cfg, ctx.step, agg_mode, norm, l_norm)
