"""What a reward function sees and returns, and what the reward stage hands back.

A *per-sample* reward scores one response: ``fn(sample: Sample) -> float | dict | None``.
A *group* reward scores all responses of one prompt at once (EMPO clusters a group's
answers): ``fn(samples: list[Sample]) -> list[float | dict | None]``, one entry per sample,
in order; mark a custom one with :func:`group_reward`.

A returned dict carries ``"score"`` (the reward) and optionally ``"acc"`` (1 for a
verified-correct answer, the metric dynamic sampling filters on), ``"cluster"`` (the answer
cluster id within the group, see :class:`RewardResult`) and other numeric entries, which are
summarised into metrics. ``None`` means "no score for this sample": it gets the fallback
score and is counted in ``reward/skipped``, not as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a reward function's module need not import torch
    import torch


@dataclass(frozen=True)
class Sample:
    """One response to score.

    Attributes:
        prompt: the prompt as given to the policy (rendered text, chat template applied).
        response: the response text (special tokens kept, e.g. ``</think>``).
        response_ids: the response token ids (valid tokens only).
        ground_truth: the dataset's reference answer, or None.
        data_source: the dataset name (verl convention).
        extra_info: any other per-row data.
        group: index of the prompt this response answers within the step.
        entropy: π_old token entropies at the rollout temperature (valid tokens), for rewards
            that ask for them (PEAR).
        old_logp: π_old log-probs of the response tokens.
        messages: the prompt's chat messages when the dataset gives it as a conversation
            (TRL's conversational format), else None.
        columns: the dataset row's other top-level columns (TRL passes them as keywords).
        trainer_state: the run's progress when the sample was scored.
    """

    prompt: str
    response: str
    response_ids: list[int]
    ground_truth: str | None
    data_source: str
    extra_info: dict[str, Any] = field(default_factory=dict)
    group: int = 0
    entropy: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    messages: list[dict[str, Any]] | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    trainer_state: TrainerState | None = None


@dataclass(frozen=True)
class TrainerState:
    """The run's progress, for rewards that shape by it (TRL's ``trainer_state`` keyword).

    Attributes:
        global_step: the training step being scored (1-based; 0 for the evaluation before
            the first step).
        max_steps: ``trainer.total_steps``.
        is_eval: whether the samples come from an evaluation, not a training step.
    """

    global_step: int = 0
    max_steps: int = 0
    is_eval: bool = False


RewardFn = Callable[[Sample], "float | dict[str, float] | None"]
"""A per-sample reward: one :class:`Sample` in, a score or a dict with ``"score"`` out."""

GroupRewardFn = Callable[[list[Sample]], "list[float | dict[str, float] | None]"]
"""A group reward: the samples of one prompt in, one score or dict per sample out."""

GROUP_LEVEL_ATTR = "__entropo_group_reward__"


def group_reward(fn: GroupRewardFn) -> GroupRewardFn:
    """Mark a custom ``fn(samples: list[Sample]) -> list`` as a group reward.

    The reward stage then calls it once per prompt group, with that group's samples in
    batch order, and expects one result per sample.

    Args:
        fn: the function to mark (sync or ``async``).

    Returns:
        ``fn`` itself, marked.
    """
    setattr(fn, GROUP_LEVEL_ATTR, True)
    return fn


@dataclass
class RewardResult:
    """The reward stage's output for ``N`` samples.

    Attributes:
        rewards: ``[N]`` float32, the total reward ``R_i = Σ_f w_f · score_f(i)`` (a failed
            call contributes ``w_f · fallback_score``).
        components: name -> ``[N]``, each function's weighted contribution; they sum to
            ``rewards``.
        correct: ``[N]`` float, the ``acc`` of the first function (in ``reward.fns`` order)
            that reports one for the sample, else ``1.0 if rewards >= reward.correct_threshold``.
        cluster_ids: ``[N]`` int64, the answer-cluster id of each response within its group
            (0, 1, ... in order of first appearance; equivalent answers share an id; the
            empty answer is a cluster too). Filled by the first group reward that reports
            ``"cluster"`` (EMPO) or, with ``reward.cluster_answers``, by a clustering pass;
            ``-1`` where nothing computed one. SEED-GRPO (docs/algorithms.md §4.3) and EMPO read it.
        metrics: flat ``reward/...`` metrics (floats), see the package docstring.
        failures: one entry per function that fell back on any sample, in ``reward.fns``
            order.
    """

    rewards: torch.Tensor
    components: dict[str, torch.Tensor]
    correct: torch.Tensor
    cluster_ids: torch.Tensor
    metrics: dict[str, float]
    failures: list[EntryFailures] = field(default_factory=list)


@dataclass(frozen=True)
class EntryFailures:
    """How often one reward function fell back in one ``score`` call.

    Attributes:
        label: the function's label.
        failed: samples whose score is the fallback because of an error (not a None).
        total: samples scored.
        first: the first failure's reason and last traceback line.
    """

    label: str
    failed: int
    total: int
    first: str
