"""The run's stateful methods (:mod:`entropo.algorithms.stateful`) as the controller drives
them: the active ones in config order, their states by name, and one call per hook point of
the step. Nothing here knows a method: each hook comes from its registry entry."""

from __future__ import annotations

from typing import Any

from entropo.algorithms import stateful
from entropo.config import TrainConfig


class StepMethods:
    """The active stateful methods of a run and their states."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.active = stateful.active(cfg.algorithm)
        self.states: dict[str, Any] = stateful.initial_states(self.active, self.info(0))

    def info(self, step: int) -> stateful.StepInfo:
        """The run's facts that stateful methods read, at ``step``."""
        c = self.cfg
        return stateful.StepInfo(step=step, prompts_per_step=c.trainer.prompts_per_step, n=c.rollout.n,
                                 temperature=c.rollout.temperature, entropy_coef=c.algorithm.entropy_coef,
                                 kl_estimator=c.algorithm.kl_estimator)

    def __bool__(self) -> bool:
        return bool(self.active)

    def forward_extras(self) -> frozenset[str]:
        """Per-token π_old extras the methods need of the next π_old pass."""
        out: set[str] = set()
        for m in self.active:
            out |= m.step.forward_extras(m.cfg, self.states[m.name])
        return frozenset(out)

    def logit_scale(self, step: int) -> stateful.LogitScale | None:
        """The sampler's per-token logit scale for ``step``'s rollout, when a method gives one
        (the config allows one sampling method)."""
        for m in self.active:
            if m.step.sampling is not None and (scale := m.step.sampling(m.cfg, self.states[m.name], self.info(step))):
                return scale
        return None

    def shape(self, batch, step: int) -> dict[str, float]:
        """After the rewards: methods that change them (and per-response KL scales)."""
        return self._run("shape", step, batch)

    def inject(self, batch, step: int, generate: stateful.Generate, timer) -> tuple[Any, dict[str, float]]:
        """After the advantages: methods that put rows of an extra generation into the batch
        (each timed under its name)."""
        metrics: dict[str, float] = {}
        for m in self.active:
            if m.step.inject is not None:
                with timer(m.name):
                    batch, out = m.step.inject(m.cfg, self.states[m.name], batch, self.info(step), generate)
                metrics.update(out)
        return batch, metrics

    def context(self, batch, step: int) -> dict[str, Any]:
        """Before the update: the values the objective reads (``StepContext.values``)."""
        return self._run("context", step, batch)

    def observe(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """After the update: each method's state from the step's metrics."""
        return self._run("observe", step, metrics)

    def _run(self, hook: str, step: int, arg) -> dict[str, Any]:
        """Call ``hook(cfg, state, arg, info)`` of every method that has it; the states it
        returns replace the old ones, the outputs are merged."""
        out: dict[str, Any] = {}
        for m in self.active:
            fn = getattr(m.step, hook)
            if fn is not None:
                self.states[m.name], more = fn(m.cfg, self.states[m.name], arg, self.info(step))
                out.update(more)
        return out

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return stateful.state_dicts(self.states)

    def load_state_dict(self, saved: dict[str, dict[str, Any]]) -> None:
        self.states = stateful.from_state_dicts(self.active, saved, self.info(0))
