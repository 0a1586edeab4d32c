"""Where the evaluation prompts come from when ``data.eval=auto`` (the default).

The evaluation set follows the training data, never a task the user did not ask for:

- ``data.train`` is an embedded task: the same task's eval split (disjoint by construction);
- a directory with eval split files (``test.parquet``, ``validation-*.jsonl``, ...): those;
- a hub dataset: its ``test`` split, when it has one;
- otherwise (a single file, a directory or hub dataset without one): a held-out slice of
  the training prompts, removed from training: ``min(evaluation.max_prompts, N // 10)``
  prompts drawn with a fixed seed (:data:`HOLDOUT_SEED`), none when ``N < 10``.

:func:`split_eval` returns the choice with a sentence saying which it made, for the
start-up log. An explicit ``data.eval`` (a spec, or null for no evaluation) is used as is.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

from entropo.data.loading import (
    EMBEDDED_PREFIX,
    DataError,
    PromptRow,
    file_split,
    load_rows,
    looks_local,
)

AUTO = "auto"
HOLDOUT_SEED = 0
"""Seed of the held-out slice: the same file always holds out the same prompts."""
HOLDOUT_DIVISOR = 10
"""At most one prompt in this many is held out, so training keeps at least 90% of them."""


@dataclass(frozen=True)
class EvalChoice:
    """The training and evaluation prompts of a run, and how the latter were chosen.

    Attributes:
        train: the training prompts (without a held-out slice).
        eval: the evaluation prompts (at most ``evaluation.max_prompts``); empty: no evaluation.
        source: one sentence naming where ``eval`` came from.
    """

    train: list[PromptRow]
    eval: list[PromptRow]
    source: str


def _has_eval_files(directory: Path) -> bool:
    return any(file_split(p) == "eval" for p in directory.iterdir() if p.is_file())


def _reindex(rows: list[PromptRow]) -> list[PromptRow]:
    return [dataclasses.replace(r, index=i) for i, r in enumerate(rows)]


def split_eval(train_spec: str, eval_spec: str | None, train_rows: list[PromptRow], max_prompts: int) -> EvalChoice:
    """Resolve ``data.eval`` against ``data.train`` (rules in the module docstring).

    Args:
        train_spec: ``data.train``.
        eval_spec: ``data.eval``: ``auto``, a dataset spec, or None (no evaluation).
        train_rows: the loaded training prompts.
        max_prompts: ``evaluation.max_prompts``.

    Returns:
        The training and evaluation prompts.

    Raises:
        DataError: an explicit ``data.eval`` that cannot be loaded (the message names it).
    """
    if eval_spec is None:
        return EvalChoice(list(train_rows), [], "data.eval=null: no evaluation")
    if eval_spec != AUTO:
        rows = list(load_rows(eval_spec, split="eval"))[:max_prompts]
        return EvalChoice(list(train_rows), rows, f"evaluating on data.eval={eval_spec} ({len(rows)} prompts)")
    path = Path(train_spec).expanduser()
    test_split = (train_spec.startswith(EMBEDDED_PREFIX)
                  or (path.is_dir() and _has_eval_files(path))
                  or (not path.exists() and not looks_local(train_spec)))
    if test_split:
        try:
            rows = list(load_rows(train_spec, split="eval"))[:max_prompts]
        except DataError:
            rows = []  # a hub dataset without a test split: hold out instead
        if rows:
            return EvalChoice(list(train_rows), rows,
                              f"data.eval=auto: the eval split of {train_spec} ({len(rows)} prompts)")
    k = min(max_prompts, len(train_rows) // HOLDOUT_DIVISOR)
    if k == 0:
        return EvalChoice(list(train_rows), [],
                          f"data.eval=auto: no evaluation ({train_spec} has no eval split and {len(train_rows)} "
                          f"prompts are too few to hold out {1}/{HOLDOUT_DIVISOR}); set data.eval")
    held = set(random.Random(HOLDOUT_SEED).sample(range(len(train_rows)), k))
    train = _reindex([r for i, r in enumerate(train_rows) if i not in held])
    evals = _reindex([r for i, r in enumerate(train_rows) if i in held])
    return EvalChoice(train, evals, f"data.eval=auto: {train_spec} has no eval split; holding out {k} of its "
                                    f"{len(train_rows)} prompts for evaluation (not trained on)")
