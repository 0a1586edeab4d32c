"""Name -> implementation registries, so that configs pick methods by name.

Each family (advantage estimators, token losses, token masks, token weights, ...) has one
:class:`Registry` with a table of its names and the module that implements each. The names
come from the table, so validating a config imports no method (and no torch); :meth:`Registry.get`
imports the one module it needs, which registers its functions with a decorator at import
time. A test checks that each table row's module registers exactly that name; :func:`load_all`
imports every module.
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
    """A named family of interchangeable implementations.

    Args:
        family: what a member is, for messages (``"token loss"``).
        modules: name -> the module that registers it.
    """

    def __init__(self, family: str, modules: dict[str, str]) -> None:
        self.family = family
        self.modules = modules
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
        implementation is its step hooks (a sampling method). ``name`` must be in the table."""
        if name not in self.modules:
            raise ValueError(f"{self.family} '{name}' is not in its registry's table in "
                             "entropo/algorithms/registry.py: add it there with its module")
        if name in self._entries:
            raise ValueError(f"{self.family} '{name}' is registered twice")
        self._entries[name] = Entry(name, fn, config, needs=frozenset(needs),
                                    share_metrics=frozenset(share_metrics), **attributes)

    def get(self, name: str) -> Entry:
        """The entry of ``name``, importing its module on first use.

        Raises:
            KeyError: an unknown name; the message lists the registered ones.
        """
        if name not in self.modules:
            known = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown {self.family} '{name}'; registered: {known}")
        if name not in self._entries:
            importlib.import_module(self.modules[name])
        if name not in self._entries:
            raise LookupError(f"{self.modules[name]} does not register the {self.family} '{name}' "
                              "its registry's table names it for")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self.modules)

    def __contains__(self, name: str) -> bool:
        return name in self.modules


ADVANTAGES = Registry("advantage estimator", {
    "grpo": "entropo.algorithms.advantages",
    "dr_grpo": "entropo.algorithms.advantages",
    "rloo": "entropo.algorithms.advantages",
    "reinforce_pp_baseline": "entropo.algorithms.advantages",
    "hapo": "entropo.algorithms.hapo",
    "canon": "entropo.algorithms.canon",
    "qae": "entropo.algorithms.qae",
})
TOKEN_LOSSES = Registry("token loss", {
    "ppo_clip": "entropo.algorithms.losses.ppo_clip",
    "clip_cov": "entropo.algorithms.losses.clip_cov",
    "kl_cov": "entropo.algorithms.losses.kl_cov",
    "hapo_clip": "entropo.algorithms.losses.hapo_clip",
    "lp_reg": "entropo.algorithms.losses.lp_reg",
    "cispo": "entropo.algorithms.losses.cispo",
})
TOKEN_MASKS = Registry("token mask", {
    "high_entropy": "entropo.algorithms.masks.high_entropy",
    "dmmpt": "entropo.algorithms.masks.dmmpt",
    "clip_b": "entropo.algorithms.masks.clip_b",
})
TOKEN_WEIGHTS = Registry("token weight", {
    "steer": "entropo.algorithms.weights.steer",
    "tis": "entropo.algorithms.weights.tis",
})
ADVANTAGE_RESHAPERS = Registry("advantage reshaper", {
    "seed": "entropo.algorithms.reshapers",
    "ettrl": "entropo.algorithms.reshapers",
})
REGULARIZERS = Registry("regularizer", {
    "siren": "entropo.algorithms.siren",
    "epo": "entropo.algorithms.epo",
})
SAMPLERS = Registry("sampling method", {
    "hapo_temperature": "entropo.algorithms.hapo_temperature",
    "aepo": "entropo.algorithms.aepo",
})
CONTROLLERS = Registry("step controller", {
    "ares": "entropo.algorithms.ares",
    "adaptive_entropy": "entropo.algorithms.regularizers",
})
"""Stateful methods switched on by a flag of their own section rather than a list (ARES,
the adaptive entropy coefficient): each entry's ``step.switch`` names that flag."""
TOKEN_EXTRAS = Registry("per-token extra", {
    "proxy_logp": "entropo.algorithms.losses.lp_reg",
    "topp_entropy": "entropo.algorithms.siren",
    "topk_entropy": "entropo.algorithms.ares",
})
"""Per-token functions of the logits that a method reads beyond log-probs and entropies
(``proxy_logp``, ``topp_entropy``, ``topk_entropy``): each entry's ``fn(cfg, temperature)``
returns ``(logits [n, V], labels [n]) -> [n]``, where ``cfg`` is ``algorithm.<section>``."""

FAMILIES = (ADVANTAGES, TOKEN_LOSSES, TOKEN_MASKS, TOKEN_WEIGHTS, ADVANTAGE_RESHAPERS, REGULARIZERS, SAMPLERS,
            CONTROLLERS, TOKEN_EXTRAS)


def load_all() -> None:
    """Import every module that registers methods (idempotent)."""
    for module in sorted({m for family in FAMILIES for m in family.modules.values()}):
        importlib.import_module(module)
