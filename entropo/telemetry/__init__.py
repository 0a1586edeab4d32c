"""Where a run's per-step metrics go: console, metrics.jsonl, TensorBoard, wandb.

The learner reduces each step's metrics to plain floats once (STYLE.md item 21) and hands
them to one :class:`~entropo.telemetry.sinks.MultiSink`, built by
:func:`~entropo.telemetry.sinks.make_sinks` from ``logger.backends``. Keys are namespaced
``prefix/name`` (``entropy/mean``, ``actor/pg_loss``); every sink keeps them as they are.
``metrics.jsonl`` is the run's record of truth; the other sinks are views of it, and a
dashboard that fails is disabled with one warning instead of stopping training.
"""
