"""The composed token objective of one update (docs/algorithms.md §8).

For one micro-batch, in this order (weights, then masks, then aggregation):

    ℓ_i  = token_loss(i)                      ppo_clip | clip_cov | kl_cov | hapo_clip | lp_reg (one)
    ℓ_i += β_ref · KL_est(π_θ ‖ π_ref)_i      when kl_coef > 0 (per token, before masks: TRL's order)
    ℓ_i ← w_i · ℓ_i                           token weights (STEER), multiplied in order
    k_i  = Π_masks keep_i                     token masks (high_entropy, dmmpt, clip_b)
    m'_i = m_i · Π_{masks excluding from the denominator} keep_i
    L    = agg(k·ℓ, m')                       aggregation (docs/algorithms.md §5), denominators after all masks
         − c_H · agg(H, m')                   entropy bonus over the loss's denominator tokens m'
                                              (TRL's rule for the 80/20 mask with norm=selected)
         + regularisers                       SIREN or EPO (docs/algorithms.md §9), each its own share

Global statistics are prepared once per mini-batch by :func:`prepare_minibatch` (run by the
learner on its shard of the whole mini-batch, with the data-parallel reducer): the
selections and weights of every ``global``-scope method and the denominators counted after
all masks. :func:`micro_objective` then computes each micro-batch's share of ``L``; the
shares of all micro-batches and ranks add up to ``L``. Methods in ``micro`` scope decide
inside :func:`micro_objective` on the micro-batch alone, as the official codes do; if one of
them excludes tokens from the denominator, the denominator cannot be known before the
micro-batch and falls back to the micro-batch's own count (logged as ``objective/micro_norm``).

Step-level inputs (the adaptive c_H, SIREN's anchor, EPO's reference entropy, the step batch
entropy for DMMPT's gate) arrive in a :class:`StepContext`: the config stays immutable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from entropo.algorithms.aggregate import LossNorm, aggregate, loss_norm
from entropo.algorithms.losses.base import TokenLossInputs, valid_mean
from entropo.algorithms.masks.base import TokenMask
from entropo.algorithms.registry import (
    REGULARIZERS,
    TOKEN_EXTRAS,
    TOKEN_LOSSES,
    TOKEN_MASKS,
    TOKEN_WEIGHTS,
)
from entropo.algorithms.regularizers import entropy_bonus, kl_penalty

BASE_SHARE_METRICS = frozenset({"actor/pg_loss", "actor/entropy_bonus"})
"""The objective's own metrics that are each micro-batch's share of the mini-batch value."""


@dataclass(frozen=True)
class Objective:
    """Which methods make up the token objective, with their own configs.

    No field has a default: :meth:`entropo.config.TrainConfig.objective` sets each from the
    configuration, whose fields hold the defaults.

    Attributes:
        loss: registered token-loss name.
        loss_cfg: that loss's config dataclass.
        weights: ``(name, cfg)`` of each token-weight method (STEER), applied in order.
        masks: ``(name, cfg)`` of each token mask, applied in order.
        agg_mode: loss aggregation mode (docs/algorithms.md §5).
        l_norm: ``L_norm`` of ``seq-mean-token-sum-norm``.
        entropy_coef: c_H of the entropy bonus (0 turns it off).
        kl_coef: β_ref of the KL to the reference policy (0 turns it off).
        kl_estimator: ``k1``, ``k2`` or ``k3``.
        regularizers: ``(name, cfg)`` of loss-side regularisers: ``siren``, ``epo``.
    """

    loss: str
    loss_cfg: Any
    masks: tuple[tuple[str, Any], ...]
    agg_mode: str
    l_norm: float | None
    entropy_coef: float
    kl_coef: float
    kl_estimator: str
    weights: tuple[tuple[str, Any], ...]
    regularizers: tuple[tuple[str, Any], ...]

    @property
    def needs(self) -> frozenset[str]:
        """Inputs beyond log-probs/advantages/mask that the selected methods read."""
        out = set(TOKEN_LOSSES.get(self.loss).needs)
        for name, _ in self.weights:
            out |= TOKEN_WEIGHTS.get(name).needs
        for name, _ in self.masks:
            out |= TOKEN_MASKS.get(name).needs
        for name, _ in self.regularizers:
            out |= REGULARIZERS.get(name).needs
        if self.entropy_coef != 0.0:
            out.add("entropy")
        return frozenset(out)

    @property
    def needs_entropy(self) -> bool:
        return "entropy" in self.needs

    @property
    def old_extras(self) -> frozenset[str]:
        """Per-token extras (``TOKEN_EXTRAS``) that a loss, weight or mask reads of π_old: the
        learner's π_old pass computes them (Lp-Reg's ``proxy_logp``)."""
        inputs = set(TOKEN_LOSSES.get(self.loss).needs)
        for family, chosen in ((TOKEN_WEIGHTS, self.weights), (TOKEN_MASKS, self.masks)):
            for name, _ in chosen:
                inputs |= family.get(name).needs
        return frozenset(n for n in inputs if n in TOKEN_EXTRAS)

    @property
    def grad_extras(self) -> frozenset[str]:
        """Per-token extras that a regulariser reads of π_θ, with gradient: the update's forward
        computes them into ``inputs.extras`` (SIREN's ``topp_entropy``)."""
        return frozenset(n for name, _ in self.regularizers for n in REGULARIZERS.get(name).needs
                         if n in TOKEN_EXTRAS)

    @property
    def share_metrics(self) -> frozenset[str]:
        """Metrics that are each micro-batch's share of the mini-batch value: the learner sums
        them over micro-batches (and averages over optimizer steps) instead of averaging."""
        out = set(BASE_SHARE_METRICS)
        for name, _ in self.regularizers:
            out |= REGULARIZERS.get(name).share_metrics
        return frozenset(out)

    @property
    def loss_is_global(self) -> bool:
        return TOKEN_LOSSES.get(self.loss).selector is not None and _global(self.loss_cfg)

    @property
    def inert_at_zero_advantage(self) -> bool:
        """A row whose advantage is 0 at every token adds nothing to the gradient, and leaving
        it out of a micro-batch changes no other row's loss: the token loss vanishes with A,
        nothing is added that does not (no KL to π_ref, entropy bonus or regulariser), and
        every batch statistic is either taken over the whole mini-batch before the
        micro-batches (global scope) or read from the token's own row. A micro-scope mask
        that leaves the denominator also breaks it (the denominator becomes per micro-batch).
        An adaptive entropy coefficient is decided per step; the learner checks it there."""
        loss = TOKEN_LOSSES.get(self.loss)
        if not loss.vanishes_at_zero_advantage or (loss.selector is not None and not _global(self.loss_cfg)):
            return False
        if self.kl_coef != 0.0 or self.entropy_coef != 0.0 or self.regularizers:
            return False
        for name, cfg in self.weights:
            if not (_global(cfg) or TOKEN_WEIGHTS.get(name).row_local):
                return False
        for name, cfg in self.masks:
            if not (_global(cfg) or (TOKEN_MASKS.get(name).row_local and not cfg.excludes_from_denominator)):
                return False
        return True

    @property
    def needs_policy_prepass(self) -> bool:
        """Some global-scope decision reads π_θ (log-probs or entropies) of the mini-batch."""
        chosen = [(TOKEN_WEIGHTS, w) for w in self.weights] + [(TOKEN_MASKS, m) for m in self.masks]
        return self.loss_is_global or any(_global(cfg) and family.get(name).reads_policy
                                          for family, (name, cfg) in chosen)


@dataclass(frozen=True)
class StepContext:
    """Step-level inputs of the objective, owned by the controller.

    Attributes:
        step: the training step (EPO's phase weight β_k).
        step_entropy: the step batch's token-mean π_old entropy (DMMPT's gate).
        values: what the stateful methods' ``context`` hooks gave for this step
            (:mod:`entropo.algorithms.stateful`), by name: ``entropy_coef`` (the adaptive c_H),
            ``siren_anchor`` (SIREN's H_anc), ``epo_reference`` (EPO's H̄).
    """

    step: int = 1
    step_entropy: float | None = None
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def entropy_coef(self) -> float | None:
        """c_H of this update when a method sets it (adaptive c_H); None keeps the config's."""
        return self.values.get("entropy_coef")


RegularizerFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``fn(inp, cfg, ctx, denom_mask, norm, agg_mode, l_norm) -> (share, metrics)``: a loss-side
regulariser's share of the mini-batch term for this micro-batch (``REGULARIZERS`` entries)."""


# Scopes decided once per mini-batch by prepare_minibatch: ``global`` (a statistic over all of
# it) and ``sequence`` (each response on its own, EARL's mask: the same wherever it is decided,
# and preparing it lets the denominators be counted after it over the whole mini-batch).
PREPARED_SCOPES = ("global", "sequence")


def _global(cfg: Any) -> bool:
    return getattr(cfg, "stat_scope", "micro") in PREPARED_SCOPES


@dataclass
class Prepared:
    """Per-mini-batch statistics of one rank's shard, sliced per micro-batch by :meth:`rows`.

    Attributes:
        loss_selected: ``[n, T]`` selection (or per-token statistic) of a global-scope token
            loss, else None.
        weights: one entry per token-weight method: its global-scope ``[n, T]`` weights, or None.
        mask_keeps: one entry per mask: its global-scope :class:`TokenMask`, or None (micro).
        norm: the mini-batch denominators, or None when a micro-scope mask prevents it.
        metrics: metrics of the global decisions (whole-scope values).
    """

    loss_selected: torch.Tensor | None
    mask_keeps: list[TokenMask | None]
    norm: LossNorm | None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: list[torch.Tensor | None] = field(default_factory=list)

    def rows(self, index: slice | torch.Tensor, width: int | None = None) -> Prepared:
        """The same statistics restricted to the micro-batch rows ``index`` (and to the first
        ``width`` response positions, when the micro-batch's padding was trimmed)."""
        cols = slice(None) if width is None else slice(0, width)
        return Prepared(
            loss_selected=None if self.loss_selected is None else self.loss_selected[index][:, cols],
            mask_keeps=[
                None if m is None else TokenMask(m.keep[index][:, cols], m.exclude_from_denominator)
                for m in self.mask_keeps
            ],
            norm=self.norm,
            metrics={},
            weights=[None if w is None else w[index][:, cols] for w in self.weights],
        )


def prepare_minibatch(inp: TokenLossInputs, obj: Objective) -> Prepared:
    """Global selections, weights and denominators over a mini-batch shard ``[n, T]`` (no grad).

    ``inp.logp`` and ``inp.entropy`` must come from π_θ at the mini-batch's parameters (a
    no-grad pass, or π_old when they coincide); ``inp.reducer`` spans the data-parallel ranks.
    """
    metrics: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        loss_selected = None
        if obj.loss_is_global:
            loss_selected, m = TOKEN_LOSSES.get(obj.loss).selector(inp, obj.loss_cfg)
            metrics.update(m)
        weights: list[torch.Tensor | None] = []
        for name, cfg in obj.weights:
            if _global(cfg):
                w, m = TOKEN_WEIGHTS.get(name).fn(inp, cfg)
                metrics.update(m)
                weights.append(w)
            else:
                weights.append(None)
        keeps: list[TokenMask | None] = []
        denom_mask = inp.mask.bool()
        micro_exclusion = False
        for name, cfg in obj.masks:
            if _global(cfg):
                keep, m = TOKEN_MASKS.get(name).fn(inp, cfg)
                metrics.update(m)
                keeps.append(keep)
                if keep.exclude_from_denominator:
                    denom_mask = denom_mask & keep.keep
            else:
                keeps.append(None)
                micro_exclusion |= cfg.excludes_from_denominator
        norm = None if micro_exclusion else loss_norm(denom_mask, inp.reducer)
    return Prepared(loss_selected, keeps, norm, metrics, weights)


def micro_objective(
    inp: TokenLossInputs,
    obj: Objective,
    prepared: Prepared | None = None,
    ref_logp: torch.Tensor | None = None,
    ctx: StepContext | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the mini-batch loss, and its metrics.

    Args:
        inp: the micro-batch; ``inp.logp`` (and ``inp.entropy`` for the bonus, and
            ``inp.extras["topp_entropy"]`` for SIREN) carry gradient.
        obj: the composed objective.
        prepared: :meth:`Prepared.rows` of :func:`prepare_minibatch` for these rows; None
            treats the micro-batch as the whole scope (single process, tests).
        ref_logp: ``[n, T]`` log π_ref, required when ``obj.kl_coef > 0``.
        ctx: step-level inputs (see :class:`StepContext`).
    """
    ctx = ctx or StepContext()
    metrics: dict[str, torch.Tensor] = {}
    if prepared is None:
        prepared = prepare_minibatch(inp, obj)
        metrics.update(prepared.metrics)
    if ctx.step_entropy is not None and inp.step_entropy is None:
        inp = dataclasses.replace(inp, step_entropy=ctx.step_entropy)
    loss_inp = inp if prepared.loss_selected is None else dataclasses.replace(inp, selected=prepared.loss_selected)
    per_token, m = TOKEN_LOSSES.get(obj.loss).fn(loss_inp, obj.loss_cfg)  # [n, T]
    metrics.update(m)
    metrics["actor/pg_loss_token_mean"] = valid_mean(per_token, inp.mask)
    metrics["actor/neg_logp"] = valid_mean(-inp.logp, inp.mask)

    if obj.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference log-probs (ref_logp)")
        kl = kl_penalty(inp.logp, ref_logp, obj.kl_estimator)  # [n, T]
        coef = obj.kl_coef if inp.kl_scale is None else obj.kl_coef * inp.kl_scale.detach().to(kl.dtype)  # ARES's β_b
        per_token = per_token + coef * kl
        metrics["actor/ref_kl"] = valid_mean(kl, inp.mask)

    for (name, cfg), w in zip(obj.weights, prepared.weights or [None] * len(obj.weights)):
        if w is None:
            w, m = TOKEN_WEIGHTS.get(name).fn(inp, cfg)
            metrics.update(m)
        per_token = per_token * w.detach()

    keep_all = torch.ones_like(per_token)
    denom_mask = inp.mask.bool()
    for (name, cfg), keep in zip(obj.masks, prepared.mask_keeps):
        if keep is None:
            keep, m = TOKEN_MASKS.get(name).fn(inp, cfg)
            metrics.update(m)
        keep_all = keep_all * keep.keep.to(keep_all.dtype)
        if keep.exclude_from_denominator:
            denom_mask = denom_mask & keep.keep
    norm = prepared.norm
    if norm is None:
        norm = loss_norm(denom_mask)
        metrics["objective/micro_norm"] = torch.ones(())

    loss = aggregate(per_token * keep_all, denom_mask, obj.agg_mode, norm, obj.l_norm)
    metrics["actor/pg_loss"] = loss.detach()
    coef = obj.entropy_coef if ctx.entropy_coef is None else ctx.entropy_coef
    if coef != 0.0:
        if inp.entropy is None:
            raise ValueError("entropy_coef != 0 needs token entropies with gradient (inputs.entropy)")
        term, bonus_metrics = entropy_bonus(inp.entropy, denom_mask, coef, obj.agg_mode, norm, obj.l_norm)
        loss = loss + term
        metrics.update(bonus_metrics)
    return loss + _regularizers(inp, obj, ctx, denom_mask, norm, metrics), metrics


def _regularizers(inp: TokenLossInputs, obj: Objective, ctx: StepContext, denom_mask: torch.Tensor,
                  norm: LossNorm, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """The regularisers' shares of this micro-batch (0 when there are none)."""
    total = torch.zeros((), dtype=inp.logp.dtype, device=inp.logp.device)
    for name, cfg in obj.regularizers:
        term, m = REGULARIZERS.get(name).fn(inp, cfg, ctx, denom_mask, norm, obj.agg_mode, obj.l_norm)
        total = total + term
        metrics.update(m)
    return total
