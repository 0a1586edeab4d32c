"""Global statistics through an injected reducer.

A statistic that a method defines over a whole mini-batch (a token quantile, covariance
centring, the token-mean loss denominator) is computed by a function that sees only its
own shard of tokens and a :class:`Reducer`. On one process the reducer is the identity
(:data:`LOCAL`); the learner passes one backed by ``torch.distributed`` so that the same
function gives the same answer on a batch split across ranks as on the whole batch.

"Shard order" is the order of ranks: rank 0's tokens first. Within a shard, tokens are
taken in row-major order of the ``[n, T]`` tensors over ``mask == 1`` positions. A single
process holding the concatenation of all shards sees exactly the same order, which is what
makes exact global top-k and seeded random draws reproducible across world sizes.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Reducer(Protocol):
    """Collective operations over the shards that make up one statistic's scope."""

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``x`` over all shards (every shard gets the result)."""
        ...

    def gather(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Concatenate the 1-D ``x`` of all shards in shard order.

        Returns the concatenation and the offset at which this shard's part starts.
        Shards may have different lengths.
        """
        ...


class LocalReducer:
    """The identity reducer: the scope is exactly the tensors this process holds."""

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 0


LOCAL = LocalReducer()


def masked_sum_count(
    x: torch.Tensor, mask: torch.Tensor, reducer: Reducer = LOCAL
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ``(Σ x·m, Σ m)`` in one collective call."""
    m = mask.to(x.dtype)
    both = torch.stack([(x * m).sum(), m.sum()])
    both = reducer.sum(both)
    return both[0], both[1]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, reducer: Reducer = LOCAL) -> torch.Tensor:
    """Global mean of ``x`` over ``mask == 1`` (0 when no position is valid)."""
    total, count = masked_sum_count(x.detach(), mask, reducer)
    return total / count.clamp(min=1.0)


def gather_valid(
    x: torch.Tensor, mask: torch.Tensor, reducer: Reducer = LOCAL
) -> tuple[torch.Tensor, int]:
    """All valid entries of ``x`` (``[n, T]``) across shards, in shard order, and this shard's offset."""
    return reducer.gather(x.detach()[mask.bool()])


def scatter_valid(flat: torch.Tensor, mask: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
    """Inverse of taking ``x[mask]``: put this shard's flat values back into ``mask``'s shape."""
    out = torch.full(mask.shape, fill, dtype=flat.dtype, device=flat.device)
    out[mask.bool()] = flat
    return out
