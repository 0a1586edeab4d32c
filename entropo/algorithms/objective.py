"""The composed token objective of one update (spec 0.8 step 5 and 6, section 7).

For one micro-batch, in the spec's order:

    ℓ_i  = token_loss(i)                        ppo_clip | clip_cov | kl_cov | ...   (one of them)
    ℓ_i += β_ref · KL_est(π_θ ‖ π_ref)_i        when kl_coef > 0 (per token, before masks: TRL's order)
    w_i  = Π_masks keep_i                       token masks (high_entropy, ...)
    m'_i = m_i · Π_{masks excluding from the denominator} keep_i
    L    = agg(w·ℓ, m') − c_H · agg(H, m')      entropy bonus over the loss's denominator tokens m'
                                                (TRL applies it over the 80/20 mask's tokens; that
                                                is this rule with norm=selected)

Global statistics are prepared once per mini-batch by :func:`prepare_minibatch` (run by the
learner on its shard of the whole mini-batch, with the data-parallel reducer): the
selections of every ``global``-scope method and the denominators counted after all masks.
:func:`micro_objective` then computes each micro-batch's share of ``L``; the shares of all
micro-batches and ranks add up to ``L`` exactly. Methods in ``micro`` scope select inside
:func:`micro_objective` on the micro-batch alone, as the official codes do; if any of them
excludes tokens from the denominator, the denominator cannot be known before the
micro-batch and falls back to the micro-batch's own count (logged as ``objective/micro_norm``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from entropo.algorithms.aggregate import LossNorm, aggregate, loss_norm
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.masks import TokenMask
from entropo.algorithms.registry import TOKEN_LOSSES, TOKEN_MASKS
from entropo.algorithms.regularizers import kl_penalty


@dataclass(frozen=True)
class Objective:
    """Which methods make up the token objective, with their own configs.

    Attributes:
        loss: registered token-loss name.
        loss_cfg: that loss's config dataclass.
        masks: ``(name, cfg)`` of each token mask, applied in order.
        agg_mode: loss aggregation mode (spec 0.6).
        l_norm: ``L_norm`` of ``seq-mean-token-sum-norm``.
        entropy_coef: c_H of the entropy bonus (0 turns it off).
        kl_coef: β_ref of the KL to the reference policy (0 turns it off).
        kl_estimator: ``k1``, ``k2`` or ``k3``.
    """

    loss: str
    loss_cfg: Any
    masks: tuple[tuple[str, Any], ...] = ()
    agg_mode: str = "token-mean"
    l_norm: float | None = None
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"

    @property
    def needs_entropy(self) -> bool:
        return self.entropy_coef != 0.0 or bool(self.masks)

    def _global(self, cfg: Any) -> bool:
        return getattr(cfg, "stat_scope", "micro") == "global"

    @property
    def loss_is_global(self) -> bool:
        return TOKEN_LOSSES.get(self.loss).selector is not None and self._global(self.loss_cfg)


@dataclass
class Prepared:
    """Per-mini-batch statistics of one rank's shard, sliced per micro-batch by :meth:`rows`.

    Attributes:
        loss_selected: ``[n, T]`` selection of a global-scope token loss, else None.
        mask_keeps: one entry per mask: its global-scope :class:`TokenMask`, or None (micro).
        norm: the mini-batch denominators, or None when a micro-scope mask prevents it.
        metrics: metrics of the global selections (whole-scope values).
    """

    loss_selected: torch.Tensor | None
    mask_keeps: list[TokenMask | None]
    norm: LossNorm | None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, index: slice | torch.Tensor) -> Prepared:
        """The same statistics restricted to the micro-batch rows ``index``."""
        return Prepared(
            loss_selected=None if self.loss_selected is None else self.loss_selected[index],
            mask_keeps=[
                None if m is None else TokenMask(m.keep[index], m.exclude_from_denominator)
                for m in self.mask_keeps
            ],
            norm=self.norm,
            metrics={},
        )


def prepare_minibatch(inp: TokenLossInputs, obj: Objective) -> Prepared:
    """Global selections and denominators over a mini-batch shard ``[n, T]`` (no grad).

    ``inp.logp`` and ``inp.entropy`` must come from π_θ at the mini-batch's parameters (a
    no-grad pass, or π_old when that is what the method's config asks for); ``inp.reducer``
    spans the data-parallel ranks.
    """
    metrics: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        loss_selected = None
        if obj.loss_is_global:
            loss_selected, m = TOKEN_LOSSES.get(obj.loss).selector(inp, obj.loss_cfg)
            metrics.update(m)
        keeps: list[TokenMask | None] = []
        denom_mask = inp.mask.bool()
        micro_exclusion = False
        for name, cfg in obj.masks:
            if obj._global(cfg):
                keep, m = TOKEN_MASKS.get(name).fn(inp, cfg)
                metrics.update(m)
                keeps.append(keep)
                if keep.exclude_from_denominator:
                    denom_mask = denom_mask & keep.keep
            else:
                keeps.append(None)
                micro_exclusion |= _excludes_from_denominator(cfg)
        norm = None if micro_exclusion else loss_norm(denom_mask, inp.reducer)
    return Prepared(loss_selected, keeps, norm, metrics)


def _excludes_from_denominator(cfg: Any) -> bool:
    return getattr(cfg, "norm", "all_valid") == "selected"


def micro_objective(
    inp: TokenLossInputs,
    obj: Objective,
    prepared: Prepared | None = None,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the mini-batch loss, and its metrics.

    Args:
        inp: the micro-batch; ``inp.logp`` (and ``inp.entropy`` for the bonus) carry gradient.
        obj: the composed objective.
        prepared: :meth:`Prepared.rows` of :func:`prepare_minibatch` for these rows; None
            treats the micro-batch as the whole scope (single process, tests).
        ref_logp: ``[n, T]`` log π_ref, required when ``obj.kl_coef > 0``.
    """
    if prepared is None:
        prepared = prepare_minibatch(inp, obj)
    metrics: dict[str, torch.Tensor] = {}
    loss_inp = inp if prepared.loss_selected is None else _with_selected(inp, prepared.loss_selected)
    per_token, m = TOKEN_LOSSES.get(obj.loss).fn(loss_inp, obj.loss_cfg)  # [n, T]
    metrics.update(m)
    metrics["actor/pg_loss_token_mean"] = (per_token.detach() * inp.mask).sum() / inp.mask.sum().clamp(min=1)

    if obj.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference log-probs (ref_logp)")
        kl = kl_penalty(inp.logp, ref_logp, obj.kl_estimator)  # [n, T]
        per_token = per_token + obj.kl_coef * kl
        metrics["actor/ref_kl"] = (kl.detach() * inp.mask).sum() / inp.mask.sum().clamp(min=1)

    weights = torch.ones_like(per_token)
    denom_mask = inp.mask.bool()
    for (name, cfg), keep in zip(obj.masks, prepared.mask_keeps):
        if keep is None:
            keep, m = TOKEN_MASKS.get(name).fn(inp, cfg)
            metrics.update(m)
        weights = weights * keep.keep.to(weights.dtype)
        if keep.exclude_from_denominator:
            denom_mask = denom_mask & keep.keep
    norm = prepared.norm
    if norm is None:
        norm = loss_norm(denom_mask)
        metrics["objective/micro_norm"] = torch.ones(())

    loss = aggregate(per_token * weights, denom_mask, obj.agg_mode, norm, obj.l_norm)
    metrics["actor/pg_loss"] = loss.detach()
    if obj.entropy_coef != 0.0:
        if inp.entropy is None:
            raise ValueError("entropy_coef != 0 needs token entropies with gradient (inputs.entropy)")
        bonus = aggregate(inp.entropy, denom_mask, obj.agg_mode, norm, obj.l_norm)
        loss = loss - obj.entropy_coef * bonus
        metrics["actor/entropy_bonus"] = (obj.entropy_coef * bonus).detach()
    return loss, metrics


def _with_selected(inp: TokenLossInputs, selected: torch.Tensor) -> TokenLossInputs:
    return dataclasses.replace(inp, selected=selected)
