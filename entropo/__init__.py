"""entropo: reinforcement learning for reasoning language models, with entropy control.

The Python API (the same as the command line)::

    from entropo import load_config, train, evaluate

    cfg = load_config("clip_cov", ["trainer.total_steps=4", "trainer.output_dir=runs/mine"])
    summary = train(cfg)        # dict, also in runs/mine/summary.json
    metrics = evaluate(cfg)     # pass@k / maj@k of model.path, also in runs/mine/eval.json

``load_config(path_or_recipe, overrides)`` raises :class:`ConfigError`; ``train`` and
``evaluate`` raise :class:`RunError` for a run that cannot start or go on (the message says
why). Names resolve on first use, so ``import entropo`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"
__all__ = ["ConfigError", "RunError", "TrainConfig", "evaluate", "load_config", "train"]

_EXPORTS = {
    "ConfigError": ("entropo.config", "ConfigError"),
    "TrainConfig": ("entropo.config", "TrainConfig"),
    "load_config": ("entropo.config", "load_config"),
    "RunError": ("entropo.trainer.errors", "RunError"),
    "train": ("entropo.trainer.run", "train"),
    "evaluate": ("entropo.trainer.run", "evaluate_only"),
}


def lazy_exports(package: str, exports: dict[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` that imports each of ``exports`` (name -> (module, attribute))
    on first use, so that importing the package (or one of its submodules) imports nothing else."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        module, attr = exports[name]
        return getattr(importlib.import_module(module), attr)

    return __getattr__


__getattr__ = lazy_exports(__name__, _EXPORTS)
