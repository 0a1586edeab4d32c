"""Seeded, resumable prompt batches: an endless stream of reshuffled epochs.

Epoch ``e`` visits every row once, in the order of a permutation seeded by ``(seed, e)``
alone, so any batch can be reproduced from ``(epoch, position)`` without replaying the
earlier ones. Batches are always full: a batch that reaches the end of an epoch continues
with the start of the next (so, with fewer rows than ``batch_size``, a batch can hold a row
twice). Nothing is dropped, unlike a ``drop_last`` data loader.

Resuming: ``state_dict()`` after step k, then ``load_state_dict`` in a fresh sampler over
the same rows, gives exactly the batches the original would have drawn from step k+1 on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from entropo.data.loading import PromptRow


class PromptSampler:
    """Draws batches of prompt rows; the order depends only on ``seed`` and the row count.

    Args:
        rows: the dataset (not copied; do not mutate it while sampling).
        batch_size: rows per batch (``trainer.prompts_per_step``).
        seed: the shuffling seed (``trainer.seed``).
    """

    def __init__(self, rows: Sequence[PromptRow], batch_size: int, seed: int) -> None:
        if not rows:
            raise ValueError("PromptSampler needs at least one row")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        """Epoch of the next row to draw."""
        self.position = 0
        """Position in that epoch's permutation of the next row to draw."""
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        # A string seed is hashed with SHA-512 by `random.seed`: stable across processes and
        # Python versions, unlike `hash()`.
        order = list(range(len(self.rows)))
        random.Random(f"entropo.sampler:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[PromptRow]:
        """The next ``batch_size`` rows, continuing into a new reshuffled epoch as needed.

        Returns:
            The batch, in draw order.
        """
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            batch.append(self.rows[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position, for a checkpoint.

        Returns:
            ``{"epoch", "position", "seed", "n_rows"}`` (plain ints).
        """
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`.

        Args:
            state: a state from a sampler with the same seed and the same number of rows.

        Raises:
            ValueError: the seed or row count differs (the resumed order would not be the
                one the checkpointed run would have drawn), or the position is out of range.
        """
        if state["seed"] != self.seed or state["n_rows"] != len(self.rows):
            raise ValueError(
                f"sampler state is for seed={state['seed']} over {state['n_rows']} rows, but this "
                f"sampler has seed={self.seed} over {len(self.rows)} rows; resuming would not "
                "reproduce the data order"
            )
        if not 0 <= state["position"] <= len(self.rows) or state["epoch"] < 0:
            raise ValueError(f"sampler state out of range: {state}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
