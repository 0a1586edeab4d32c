"""The choices shared by many methods' configs: where a statistic is taken (``stat_scope``) and
how the token loss is aggregated (``algorithm.loss_agg_mode``; :mod:`entropo.algorithms.aggregate`)."""

from __future__ import annotations

STAT_SCOPES = ("global", "micro")
"""``global``: the whole mini-batch on all ranks (the papers' batch B). ``micro``: the
micro-batch one rank processes (what the verl-based official codes do)."""

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
"""``algorithm.loss_agg_mode``: the aggregation of the per-token loss (docs/algorithms.md §5)."""
