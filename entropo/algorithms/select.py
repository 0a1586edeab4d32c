"""Exact token selections over a scope that may span several ranks.

Selections are index sets: they carry no gradient (docs/algorithms.md §1). Both functions see this
shard's ``[n, T]`` tensors, gather the valid entries of every shard through the reducer
(:mod:`entropo.algorithms.reduce`), decide on the whole scope, and return this shard's part.
Because the decision is taken on the gathered vector in shard order, a batch split across
ranks selects exactly what one process selects on the whole batch.

- :func:`top_k_mask` is exact: ``torch.topk`` on the gathered values, no ``torch.quantile``
  (which refuses inputs above 2^24 elements, a limit TRL's 80/20 hits). Ties at the
  threshold are broken by position (earlier first), so exactly ``k`` tokens are selected,
  deterministically.
- :func:`top_count` is how many tokens a top-ρ selection keeps (the 80/20 rule's rounding).
- :func:`random_subset_mask` draws a uniform subset with a caller-seeded generator; every
  rank seeds it identically and draws on the same gathered vector.
"""

from __future__ import annotations

import torch

from entropo.algorithms.reduce import LOCAL, Reducer, gather_valid, scatter_valid

# The 80/20 rule's official code rounds ρN up with int(ρN + 0.9999); we keep its exact rounding.
ROUND_UP_SLACK = 0.9999


def top_count(rho: float, n_valid: int) -> int:
    """``k = max(1, ⌊ρN + 0.9999⌋)`` for ``N > 0``, else 0: how many of ``N`` valid tokens a
    top-ρ selection keeps (the high-entropy mask, the forking-token analysis)."""
    return max(1, int(rho * n_valid + ROUND_UP_SLACK)) if n_valid > 0 else 0


def top_k_mask(
    values: torch.Tensor, mask: torch.Tensor, k: int, reducer: Reducer = LOCAL, largest: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` valid tokens with the largest (or smallest) ``values`` across the scope.

    Args:
        values: ``[n, T]`` scores (detached inside).
        mask: ``[n, T]`` valid-token mask.
        k: how many tokens to select over the whole scope; clipped to ``[0, N]``.
        reducer: gathers the valid values of every shard.
        largest: select the largest values (else the smallest).

    Returns:
        ``[n, T]`` bool, this shard's selected tokens, and the threshold: the k-th value
        over the whole scope (NaN when nothing is selected).
    """
    flat, offset = gather_valid(values, mask, reducer)  # [N_global]
    n_local = int(mask.bool().sum())
    n_total = flat.numel()
    k = max(0, min(int(k), n_total))
    chosen = torch.zeros(n_total, dtype=torch.bool, device=flat.device)
    threshold = torch.tensor(float("nan"))
    if k > 0:
        key = flat if largest else -flat
        kth = torch.topk(key, k).values[-1]
        above = key > kth
        ties = key == kth
        room = k - int(above.sum())
        chosen = above | (ties & (torch.cumsum(ties.to(torch.int64), 0) <= room))
        threshold = kth if largest else -kth
    return scatter_valid(chosen[offset : offset + n_local], mask, fill=False), threshold


def random_subset_mask(
    candidates: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    generator: torch.Generator | None,
    reducer: Reducer = LOCAL,
) -> torch.Tensor:
    """A uniform random subset of ``n`` candidate tokens across the scope (all if fewer).

    Args:
        candidates: ``[n, T]`` bool, the tokens eligible for selection.
        mask: ``[n, T]`` valid-token mask (candidates outside it are ignored).
        n: how many to draw over the whole scope.
        generator: seeded identically on every rank; ``None`` uses torch's global RNG,
            which is only reproducible on one process.
        reducer: gathers the candidate flags of every shard.

    Returns:
        ``[n, T]`` bool: this shard's drawn tokens.
    """
    valid = mask.bool()
    flags, offset = reducer.gather((candidates.bool() & valid)[valid].to(torch.uint8))
    flags = flags.bool()
    idx = torch.nonzero(flags).squeeze(-1)  # [n_candidates]
    chosen = torch.zeros_like(flags)
    if idx.numel() <= n:
        chosen[idx] = True
    else:
        order = torch.randperm(idx.numel(), generator=generator)
        chosen[idx[order[:n]]] = True
    n_local = int(valid.sum())
    return scatter_valid(chosen[offset : offset + n_local], mask, fill=False)
