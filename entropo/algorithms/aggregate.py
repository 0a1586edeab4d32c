"""Loss aggregation modes (docs/algorithms.md §5), with denominators counted over the whole mini-batch.

``ℓ_{i,t}`` is the per-token loss, ``m_{i,t}`` the valid-token mask, ``B`` the sequences of
the mini-batch over all micro-batches and ranks:

    token-mean               L = Σ_i Σ_t m ℓ / Σ_i Σ_t m                       (DAPO, arXiv 2503.14476)
    seq-mean-token-mean      L = (1/|B|) Σ_i [ Σ_t m ℓ / Σ_t m ]               (GRPO, arXiv 2402.03300)
    seq-mean-token-sum       L = (1/|B|) Σ_i Σ_t m ℓ
    seq-mean-token-sum-norm  L = (1/(|B|·L_norm)) Σ_i Σ_t m ℓ                  (Dr.GRPO, arXiv 2503.20783)

:func:`aggregate` returns one micro-batch's share of ``L``: summing the shares of all
micro-batches and ranks gives ``L`` exactly, whatever the micro-batch size or world size,
because the denominators come from :func:`loss_norm` over the whole mini-batch (verl's
``global_batch_info``, https://github.com/volcengine/verl/blob/b178a3cd5/verl/trainer/ppo/core_algos.py).

Deviations and conventions:
- ``seq-mean-token-sum-norm`` follows TRL's ``dr_grpo`` (with the ``1/|B|``); verl's mode of
  the same name omits ``1/|B|`` and differs by that constant factor.
- ``|B|`` counts sequences with at least one valid token: a sequence masked out entirely
  (overlong filtering, a mask that excludes all its tokens) contributes nothing and does
  not dilute the mean.
- Masks that exclude tokens from the denominator (docs/algorithms.md §1, Masks (a)) must be
  applied to ``mask`` before :func:`loss_norm` is called, so the count is taken after all masks
  (docs/algorithms.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropo.algorithms.configs.reduction import AGG_MODES
from entropo.algorithms.reduce import LOCAL, Reducer


@dataclass(frozen=True)
class LossNorm:
    """Denominators of one mini-batch, counted over all of its micro-batches and ranks.

    Attributes:
        num_tokens: ``Σ m`` over the mini-batch.
        num_seqs: ``|B|``, sequences with at least one valid token.
    """

    num_tokens: float
    num_seqs: float


def loss_norm(mask: torch.Tensor, reducer: Reducer = LOCAL) -> LossNorm:
    """Count the mini-batch denominators from this shard's ``mask`` ``[n, T]`` and the reducer."""
    m = mask.detach().to(torch.float64)
    counts = torch.stack([m.sum(), (m.sum(dim=-1) > 0).to(torch.float64).sum()])
    counts = reducer.sum(counts)
    return LossNorm(num_tokens=float(counts[0]), num_seqs=float(counts[1]))


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    norm: LossNorm | None = None,
    l_norm: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``[n, T]`` to this shard's share of the mini-batch loss.

    Args:
        loss: per-token loss ``ℓ``, ``[n, T]``.
        mask: valid-token mask ``m``, ``[n, T]`` (after every denominator-excluding mask).
        mode: one of ``AGG_MODES``.
        norm: mini-batch denominators from :func:`loss_norm`; ``None`` counts them from
            ``mask`` alone (micro-batch scope).
        l_norm: the constant ``L_norm`` of ``seq-mean-token-sum-norm`` (usually the maximum
            response length); required for that mode only.

    Returns:
        A scalar tensor. Positions with ``mask == 0`` contribute exactly nothing (also when
        their loss is inf or NaN).
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode '{mode}'; choose one of {AGG_MODES}")
    if norm is None:
        norm = loss_norm(mask)
    m = mask.to(loss.dtype)
    masked = torch.where(m > 0, loss, torch.zeros_like(loss)) * m  # [n, T]
    if mode == "token-mean":
        return masked.sum() / max(norm.num_tokens, 1.0)
    num_seqs = max(norm.num_seqs, 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / m.sum(-1).clamp(min=1.0)  # [n]
        return per_seq.sum() / num_seqs
    if mode == "seq-mean-token-sum":
        return masked.sum() / num_seqs
    if l_norm is None or l_norm <= 0:
        raise ValueError("seq-mean-token-sum-norm needs a positive l_norm (e.g. max_response_length)")
    return masked.sum() / (num_seqs * l_norm)
