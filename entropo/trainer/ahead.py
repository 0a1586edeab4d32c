"""Asynchronous rollout (``trainer.async_rollout``): the next step's prompts are drawn and
generated in a background thread while this step's forward, rewards and update run.

Each batch is then sampled by the policy one update behind the one it is trained from
(``rollout/off_policy_steps`` = 1); ``algorithm.token_weight=[tis]`` corrects for it. The
generation is also scored in the background when no reward reads π_old (the fused π_old pass
guarantees it) and no dynamic sampling decides on more batches, so that slow rewards overlap
the update too. A checkpoint stores the data position before the pending draw
(:attr:`RolloutAhead.sampler_state`), so a resumed run draws it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from entropo.trainer.batch import StepBatch
from entropo.trainer.engine import SamplingParams


class RolloutAhead:
    """One generation in flight at a time, in a background thread."""

    def __init__(self, rollout: Callable[[list, SamplingParams], StepBatch], sampler,
                 score: Callable[[StepBatch, int], dict[str, float]] | None) -> None:
        self.rollout = rollout
        self.sampler = sampler
        self.score = score  # None: the batch is scored by the step that trains it
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead")
        self._future: Future | None = None
        self.sampler_state: dict | None = None  # the data position before the pending draw

    @property
    def pending(self) -> bool:
        return self._future is not None

    def start(self, step: int, params: SamplingParams) -> None:
        """Draw ``step``'s prompts now and generate (and perhaps score) them in the background."""
        self.sampler_state = self.sampler.state_dict()
        prompts = self.sampler.next_batch()

        def run() -> tuple[StepBatch, float, dict[str, float] | None, float]:
            start = time.perf_counter()
            batch = self.rollout(prompts, params)
            seconds = time.perf_counter() - start
            if self.score is None:
                return batch, seconds, None, 0.0
            start = time.perf_counter()
            metrics = self.score(batch, step)
            return batch, seconds, metrics, time.perf_counter() - start

        self._future = self._pool.submit(run)

    def take(self) -> tuple[StepBatch, float, dict[str, float] | None, float]:
        """The pending generation's ``(batch, rollout seconds, reward metrics or None, reward
        seconds)``, waiting for it."""
        future, self._future = self._future, None
        return future.result()

    def wait(self) -> None:
        """Wait for the pending generation; it stays pending (its batch is for the next step)."""
        if self._future is not None:
            self._future.result()
