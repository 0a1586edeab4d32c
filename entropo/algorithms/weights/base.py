"""The declared signature of the token-weight family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from entropo.algorithms.losses.base import TokenLossInputs

TokenWeightFn = Callable[[TokenLossInputs, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``fn(inputs, cfg) -> (weights [n, T], metrics)``: multiplicative, detached token weights,
with their statistics taken over ``inputs.reducer``'s scope."""
