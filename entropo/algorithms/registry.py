"""Name -> implementation registries, so that configs pick methods by name.

Each family (advantage estimators, token losses, token masks, token weights, ...) has one
:class:`Registry`. Modules register themselves with a decorator at import time;
:func:`load_all` imports every module so that the registries are complete.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from entropo.algorithms.stateful import StepMethod


@dataclass(frozen=True)
class Entry:
    """One registered method.

    Attributes:
        name: the name configs use.
        fn: the implementation.
        config_cls: the method's own frozen dataclass of hyperparameters (None if it has none).
        selector: for a token loss with a batch statistic, the function that computes its
            selection over a whole scope (run once per mini-batch in ``global`` scope).
        needs: per-token or step inputs the method reads beyond log-probs, advantages and
            mask (names of :class:`~entropo.algorithms.losses.base.TokenLossInputs` fields:
            ``entropy``, ``old_entropy``, ``proxy_logp``, ``step_entropy``), so the learner
            computes them only when a selected method asks.
        needs_adv_variation: the method's statistic is degenerate unless advantages vary
            inside its scope (Cov ≡ 0 when A is constant: docs/algorithms.md §1); the config
            validator warns about it.
        vanishes_at_zero_advantage: for a token loss, ℓ_i and its gradient are 0 wherever
            A_i = 0 (given its selection), so rows with no advantage need no backward.
        row_local: for a token weight or mask, the decision at a token reads that token's row
            only (no statistic over other rows), so it does not depend on which rows share a
            micro-batch.
        reads_policy: for a token weight or mask, the decision reads π_θ (its log-probs or
            ``entropy``); False when it reads π_old's quantities only, so a global decision
            needs no π_θ pre-pass of the mini-batch.
        step: for a stateful method, its hooks and running state
            (:class:`~entropo.algorithms.stateful.StepMethod`).
        share_metrics: metrics that are each micro-batch's share of the mini-batch value (a
            regulariser's term), summed over micro-batches instead of averaged.
        token_scale: for an advantage estimator, ``(loss_agg_mode, max_new_tokens) -> c``, a
            constant the token advantages are multiplied by (CANON's 1/D).
        section: the config section of the method's hyperparameters (``algorithm.<section>``)
            when it is not the method's name.
        switch: for a step controller, the boolean field of ``algorithm`` (dotted, e.g.
            ``ares.enable``) that turns it on.
    """

    name: str
    fn: Callable[..., Any]
    config_cls: type | None = None
    selector: Callable[..., Any] | None = None
    needs_adv_variation: bool = False
    needs: frozenset[str] = frozenset()
    vanishes_at_zero_advantage: bool = False
    row_local: bool = False
    reads_policy: bool = True
    step: StepMethod | None = None
    share_metrics: frozenset[str] = frozenset()
    token_scale: Callable[[str, int], float] | None = None
    section: str | None = None
    switch: str | None = None


class Registry:
    """A named family of interchangeable implementations."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, config: type | None = None, **attributes: Any
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register the function as ``name`` (``attributes`` as :class:`Entry`'s)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, fn, config=config, **attributes)
            return fn

        return decorator

    def add(self, name: str, fn: Any, *, config: type | None = None, needs: tuple[str, ...] = (),
            share_metrics: tuple[str, ...] = (), **attributes: Any) -> None:
        """Register ``fn`` as ``name``; ``fn`` is a :class:`StepMethod` for a method whose whole
        implementation is its step hooks (a sampling method)."""
        if name in self._entries:
            raise ValueError(f"{self.family} '{name}' is registered twice")
        self._entries[name] = Entry(name, fn, config, needs=frozenset(needs),
                                    share_metrics=frozenset(share_metrics), **attributes)

    def get(self, name: str) -> Entry:
        load_all()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.family} '{name}'; registered: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        load_all()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        load_all()
        return name in self._entries


ADVANTAGES = Registry("advantage estimator")
TOKEN_LOSSES = Registry("token loss")
TOKEN_MASKS = Registry("token mask")
TOKEN_WEIGHTS = Registry("token weight")
ADVANTAGE_RESHAPERS = Registry("advantage reshaper")
REGULARIZERS = Registry("regularizer")
SAMPLERS = Registry("sampling method")
CONTROLLERS = Registry("step controller")
"""Stateful methods switched on by a flag of their own section rather than a list (ARES,
the adaptive entropy coefficient): each entry's ``step.switch`` names that flag."""
TOKEN_EXTRAS = Registry("per-token extra")
"""Per-token functions of the logits that a method reads beyond log-probs and entropies
(``proxy_logp``, ``topp_entropy``, ``topk_entropy``): each entry's ``fn(cfg, temperature)``
returns ``(logits [n, V], labels [n]) -> [n]``, where ``cfg`` is ``algorithm.<section>``."""

_MODULES = (
    "entropo.algorithms.advantages",
    "entropo.algorithms.masks",
    "entropo.algorithms.clip_b",
    "entropo.algorithms.losses.ppo_clip",
    "entropo.algorithms.losses.clip_cov",
    "entropo.algorithms.losses.kl_cov",
    "entropo.algorithms.hapo",
    "entropo.algorithms.losses.steer",
    "entropo.algorithms.losses.tis",
    "entropo.algorithms.losses.lp_reg",
    "entropo.algorithms.losses.dmmpt",
    "entropo.algorithms.losses.cispo",
    "entropo.algorithms.canon",
    "entropo.algorithms.qae",
    "entropo.algorithms.reshapers",
    "entropo.algorithms.siren",
    "entropo.algorithms.epo",
    "entropo.algorithms.aepo",
    "entropo.algorithms.hapo_temperature",
    "entropo.algorithms.ares",
    "entropo.algorithms.regularizers",
)


def load_all() -> None:
    """Import every module that registers methods (idempotent)."""
    for module in _MODULES:
        importlib.import_module(module)
