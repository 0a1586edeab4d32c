"""The declared signature of the token-mask family and what a mask returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from entropo.algorithms.losses.base import TokenLossInputs


@dataclass(frozen=True)
class TokenMask:
    """The outcome of one token mask.

    Attributes:
        keep: ``[n, T]`` bool, tokens whose loss is kept.
        exclude_from_denominator: dropped tokens also leave the aggregation denominator
            (docs/algorithms.md §1, Masks (a)); otherwise they stay in it with zero loss (Masks (b)).
    """

    keep: torch.Tensor
    exclude_from_denominator: bool


TokenMaskFn = Callable[[TokenLossInputs, Any], tuple[TokenMask, dict[str, torch.Tensor]]]
"""``fn(inputs, cfg) -> (TokenMask, metrics)``, selecting over ``inputs.reducer``'s scope. A mask's
config has an ``excludes_from_denominator`` property, known before the mask runs, so the
objective can count denominators ahead of the micro-batches."""
