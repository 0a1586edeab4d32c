"""Built-in rewards, registered by name.

A built-in is a *factory*: ``build(options, ctx) -> scorer``, where ``options`` is the
built-in's own frozen config dataclass (``reward.<name>`` in the config, defaults otherwise)
and ``ctx`` the :class:`RewardContext`. The scorer is per-sample (``level="sample"``,
``scorer(sample)``) or per-group (``level="group"``, ``scorer(samples_of_one_group)``; EMPO
needs the whole group). An optional ``summarise`` turns the numeric extras the scorer
returns into step metrics, on the driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the config loads the registry's names without torch
    import torch

LEVELS = ("sample", "group")
BUILTIN_MODULES = (
    "entropo.rewards.embedded",
    "entropo.rewards.math_answer",
    "entropo.rewards.countdown",
    "entropo.rewards.think_format",
    "entropo.rewards.code_exec",
    "entropo.rewards.pear",
    "entropo.rewards.empo",
    "entropo.rewards.spurious",
)

Summarise = Callable[[dict[str, "torch.Tensor"], "torch.Tensor", "torch.Tensor"], dict[str, float]]
"""``summarise(extras name -> [N] (NaN where absent), acc [N], group_ids [N]) -> metrics``;
metric names are relative (``"p_mean"``) and get the ``reward/<label>/`` prefix."""


@dataclass(frozen=True)
class RewardContext:
    """Run facts a built-in may need, computed once by the manager (picklable, so it
    travels to the reward workers).

    Attributes:
        think_close_id: the id of the single ``</think>`` token, or None when the tokenizer
            has no such token (or no tokenizer was given).
        tokenizer: the tokenizer, only when ``</think>`` is *not* a single token and a
            built-in must locate it by decoding (PEAR); else None.
        has_tokenizer: whether the manager was given a tokenizer at all.
    """

    think_close_id: int | None = None
    tokenizer: Any = None
    has_tokenizer: bool = False


@dataclass(frozen=True)
class Builtin:
    name: str
    level: str
    build: Callable[[Any, RewardContext], Callable]
    options: type | None = None
    summarise: Summarise | None = None
    reads_policy: bool = True
    """The scorer may read ``Sample.entropy`` or ``Sample.old_logp`` (π_old's numbers), so the
    trainer must run its π_old pass before the rewards; a built-in that never does declares
    False, which lets the trainer take π_old from the update's own forward."""


BUILTINS: dict[str, Builtin] = {}


def register(name: str, level: str = "sample", options: type | None = None,
             summarise: Summarise | None = None, reads_policy: bool = True) -> Callable:
    """Register a built-in factory under ``name`` (decorator).

    Args:
        name: the name used in ``reward.fns``.
        level: ``"sample"`` or ``"group"``.
        options: the built-in's frozen config dataclass, or None.
        summarise: turns returned extras into metrics (see :data:`Summarise`).
        reads_policy: the scorer may read π_old's entropies or log-probs of the sample.

    Returns:
        The decorator; it returns the factory unchanged.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got '{level}'")

    def deco(build: Callable) -> Callable:
        if name in BUILTINS and BUILTINS[name].build is not build:
            raise ValueError(f"reward built-in '{name}' is registered twice")
        BUILTINS[name] = Builtin(name, level, build, options, summarise, reads_policy)
        return build

    return deco


def load_all() -> None:
    """Import every built-in module (each registers itself)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get(name: str) -> Builtin:
    """The built-in called ``name``; an unknown name raises a KeyError listing them."""
    load_all()
    if name not in BUILTINS:
        raise KeyError(f"unknown reward '{name}'; built-ins: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]


def names() -> list[str]:
    """The registered built-in names, sorted."""
    load_all()
    return sorted(BUILTINS)


def make_options(builtin: Builtin, given: Any) -> Any:
    """The built-in's options from a config value: None (defaults), a mapping or an instance.

    Args:
        builtin: the built-in.
        given: ``reward.<name>`` as found on the config (None when absent).

    Returns:
        An instance of ``builtin.options`` (or None when the built-in takes none).
    """
    cls = builtin.options
    if cls is None:
        return None
    if given is None:
        return cls()
    if isinstance(given, cls):
        return given
    if isinstance(given, Mapping):
        return cls(**given)
    if is_dataclass(given):  # e.g. an equal dataclass from another import path
        return cls(**{k: getattr(given, k) for k in cls.__dataclass_fields__})
    raise TypeError(f"reward.{builtin.name}: expected {cls.__name__} or a mapping, got {type(given).__name__}")
