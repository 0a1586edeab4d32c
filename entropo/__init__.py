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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'entropo' has no attribute '{name}'")
    import importlib

    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
