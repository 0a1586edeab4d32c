"""Stateful methods: running state carried from one training step to the next, kept by the
method behind one small, pure interface.

SIREN's anchor, EPO's entropy history, HAPO's temperature statistics, AEPO's entropy
estimate, ARES's α/β and the adaptive entropy coefficient each register a
:class:`StepMethod` with their registry entry (``REGULARIZERS``, ``SAMPLERS`` or
``CONTROLLERS``). The controller holds ``{name: state}`` and nothing else of theirs; it calls
the hooks at fixed points of the step, each active method in config order:

    forward_extras(cfg, state)                 before a π_old pass: per-token extras it needs
    sampling(cfg, state, info)                 before a rollout: a logit scale for the sampler
    shape(cfg, state, batch, info)             after the rewards, before the advantages
    inject(cfg, state, batch, info, generate)  after the advantages: a batch with extra rows
    context(cfg, state, batch, info)           before the update: values for the objective
    observe(cfg, state, metrics, info)         after the update, with the step's metrics

Every hook is optional. A state is a frozen dataclass: hooks return a new one rather than
change it, and it is saved in checkpoints by method name (:func:`state_dicts`). ``cfg`` is the
method's own section of the algorithm config (``algorithm.<section>``), ``info`` the run's
step facts (:class:`StepInfo`), and ``batch`` the controller's step batch (read through the
field names of ``entropo.trainer.batch.StepBatch``; ``shape`` may set ``rewards``,
``reward_components`` and ``kl_scale``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from entropo.algorithms.registry import CONTROLLERS, REGULARIZERS, SAMPLERS, TOKEN_EXTRAS, Entry

LogitScale = Callable[[Any], Any]
"""``scores [n, V] -> scores [n, V]``: replaces ``z / T`` at a decode step (HAPO's per-token
temperature). Must be picklable: it travels to the rollout workers."""

Generate = Callable[[list, float, int], Any]
"""``generate(prompt_rows, temperature, seed) -> batch``: ``rollout.n`` responses per row at
``temperature``, with their π_old pass (at the rollout temperature) and rewards (AEPO)."""


@dataclass(frozen=True)
class StepInfo:
    """Facts of the run and the step that stateful methods read (never the whole config).

    Attributes:
        step: the training step being taken (1-based; 0 before the first).
        prompts_per_step: B, prompts per step.
        n: G, samples per prompt.
        temperature: T of the rollout (every π_old quantity is at this T).
        entropy_coef: c_H, the configured entropy-bonus coefficient.
        kl_estimator: the per-token KL estimator of the KL to π_ref.
    """

    step: int
    prompts_per_step: int
    n: int
    temperature: float
    entropy_coef: float = 0.0
    kl_estimator: str = "k3"


def _no_extras(cfg: Any, state: Any) -> frozenset[str]:
    return frozenset()


@dataclass(frozen=True)
class StepMethod:
    """A stateful method's hooks (see the module docstring for when each runs).

    Attributes:
        init: ``(cfg, info) -> state`` before step 1.
        state_cls: the state's frozen dataclass (restored from a checkpoint with ``state_cls(**d)``).
        forward_extras: ``(cfg, state) -> names`` of :data:`~entropo.algorithms.registry.TOKEN_EXTRAS`
            the next π_old pass must compute.
        sampling: ``(cfg, state, info) -> LogitScale | None`` for the next rollout.
        shape: ``(cfg, state, batch, info) -> (state, metrics)``; may change the batch's rewards.
        inject: ``(cfg, state, batch, info, generate) -> (batch, metrics)``.
        context: ``(cfg, state, batch, info) -> (state, values)``: named values for
            :class:`~entropo.algorithms.objective.StepContext` (``entropy_coef`` overrides c_H).
        observe: ``(cfg, state, metrics, info) -> (state, metrics)``.
        reads_old_before_update: a hook reads π_old's quantities of the step batch before the
            update, so π_old cannot come from the update's own forward (the fused pass).
    """

    init: Callable[[Any, StepInfo], Any]
    state_cls: type
    forward_extras: Callable[[Any, Any], frozenset[str]] = _no_extras
    sampling: Callable[[Any, Any, StepInfo], LogitScale | None] | None = None
    shape: Callable[..., tuple[Any, dict[str, float]]] | None = None
    inject: Callable[..., tuple[Any, dict[str, float]]] | None = None
    context: Callable[..., tuple[Any, dict[str, Any]]] | None = None
    observe: Callable[..., tuple[Any, dict[str, float]]] | None = None
    reads_old_before_update: bool = True


@dataclass(frozen=True)
class Active:
    """One active stateful method: its name, hooks and config section."""

    name: str
    step: StepMethod
    cfg: Any


def section(algorithm: Any, entry: Entry) -> Any:
    """The method's own hyperparameters, ``algorithm.<section>``."""
    return getattr(algorithm, entry.section or entry.name)


def _flag(algorithm: Any, dotted: str) -> bool:
    value = algorithm
    for part in dotted.split("."):
        value = getattr(value, part)
    return bool(value)


def active(algorithm: Any) -> list[Active]:
    """The stateful methods the algorithm config turns on, in a fixed order: regularisers and
    sampling methods as listed, then the step controllers whose switch is on."""
    entries = [REGULARIZERS.get(n) for n in algorithm.regularizer] + [SAMPLERS.get(n) for n in algorithm.sampling]
    entries += [CONTROLLERS.get(n) for n in CONTROLLERS.names() if _flag(algorithm, CONTROLLERS.get(n).switch)]
    return [Active(e.name, e.step if e.step is not None else e.fn, section(algorithm, e)) for e in entries
            if (e.step if e.step is not None else e.fn) is not None]


def extra_fn(name: str, algorithm: Any, temperature: float) -> Callable[[Any, Any], Any]:
    """The per-token function ``(logits, labels) -> [n]`` of the extra ``name``."""
    entry = TOKEN_EXTRAS.get(name)
    return entry.fn(section(algorithm, entry), temperature)


def state_dicts(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: fields}`` of every state, for a checkpoint."""
    return {name: dataclasses.asdict(state) for name, state in states.items()}


def initial_states(methods: list[Active], info: StepInfo) -> dict[str, Any]:
    """Every method's state before step 1."""
    return {m.name: m.step.init(m.cfg, info) for m in methods}


def from_state_dicts(methods: list[Active], saved: dict[str, dict[str, Any]], info: StepInfo) -> dict[str, Any]:
    """The states of ``methods`` from :func:`state_dicts`; a method the checkpoint does not
    have starts from its initial state (it was switched on at resume)."""
    out = {}
    for m in methods:
        fields = saved.get(m.name)
        if fields is None:
            out[m.name] = m.step.init(m.cfg, info)
            continue
        typed = {f.name: f for f in dataclasses.fields(m.step.state_cls)}
        out[m.name] = m.step.state_cls(**{k: tuple(v) if isinstance(v, list) and k in typed else v
                                         for k, v in fields.items()})
    return out
