"""An :class:`~entropo.algorithms.objective.Objective` for tests: the default configuration's,
with the loss and whatever else a test sets replaced (the config holds the defaults)."""

from __future__ import annotations

import dataclasses
from typing import Any

from entropo.algorithms.objective import Objective
from entropo.config import TrainConfig


def objective(loss: str, loss_cfg: Any, **fields: Any) -> Objective:
    """``TrainConfig().objective()`` with ``loss``, ``loss_cfg`` and ``fields`` replaced."""
    return dataclasses.replace(TrainConfig().objective(), loss=loss, loss_cfg=loss_cfg, **fields)
