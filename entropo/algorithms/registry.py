"""Name -> implementation registries, so that configs pick methods by name.

Each family (advantage estimators, token losses, token masks, token weights, ...) has one
:class:`Registry`. Modules register themselves with a decorator at import time;
:func:`load_all` imports every module so that the registries are complete.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


class Registry:
    """A named family of interchangeable implementations."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        config: type | None = None,
        selector: Callable[..., Any] | None = None,
        needs_adv_variation: bool = False,
        needs: tuple[str, ...] = (),
        vanishes_at_zero_advantage: bool = False,
        row_local: bool = False,
        reads_policy: bool = True,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.family} '{name}' is registered twice")
            self._entries[name] = Entry(name, fn, config, selector, needs_adv_variation, frozenset(needs),
                                        vanishes_at_zero_advantage, row_local, reads_policy)
            return fn

        return decorator

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
)


def load_all() -> None:
    """Import every module that registers methods (idempotent)."""
    for module in _MODULES:
        importlib.import_module(module)
