"""Per-token policy losses, one module per family (docs/algorithms.md §6).

Every loss has the signature :data:`PolicyLossFn`: it takes :class:`TokenLossInputs` and its
own frozen config dataclass, and returns ``(per_token_loss [n, T], metrics)``. Aggregation
happens once, in :mod:`entropo.algorithms.aggregate`; token weights and masks are applied
by :mod:`entropo.algorithms.objective`.
"""

from entropo.algorithms.losses.base import PolicyLossFn, SelectionFn, TokenLossInputs

__all__ = ["PolicyLossFn", "SelectionFn", "TokenLossInputs"]
