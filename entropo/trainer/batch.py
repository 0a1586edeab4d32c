"""The one batch type that flows through a training step.

Shapes: ``N`` responses (B prompts × G samples), ``P`` prompt tokens (left-padded), ``T``
response tokens (right-padded), ``V`` vocabulary. Stages fill their fields in the order of
the step; none rebuilds the batch (dynamic sampling keeps a subset of rows with
:meth:`StepBatch.select`).

| field | shape | set by |
|---|---|---|
| ``prompt_ids`` | [N, P] int64, left-padded | rollout |
| ``prompt_mask`` | [N, P] | rollout |
| ``response_ids`` | [N, T] int64, right-padded | rollout |
| ``mask`` | [N, T] float, 1 on response tokens up to and including EOS | rollout |
| ``rollout_logp`` | [N, T] log π_roll of the sampled tokens at T | rollout |
| ``truncated`` | [N] bool, stopped at max_new_tokens without EOS/stop | rollout |
| ``group_ids`` | [N] int64, the prompt each response answers | rollout |
| ``response_text`` | N strings | rollout |
| ``rows`` | N prompt rows (ground truth, data source, extra info) | rollout |
| ``weight_version`` | int, the policy version that generated the batch | rollout |
| ``old_logp`` / ``entropy`` | [N, T] π_old log-probs and entropies at T | learner forward |
| ``ref_logp`` | [N, T] π_ref log-probs, when ``kl_coef > 0`` | learner forward |
| ``proxy_logp`` | [N, T] proxy-distribution log-probs of π_old (``TOKEN_EXTRAS``), when a loss reads them | learner forward |
| ``topp_entropy`` | [N, T] top-p entropy of π_old (``TOKEN_EXTRAS``; a regulariser's anchor) | learner forward |
| ``topk_entropy`` | [N, T] top-k entropy of π_old (``TOKEN_EXTRAS``) | learner forward |
| ``rewards`` | [N] scalar reward R_i | rewards |
| ``reward_components`` | name -> [N] | rewards |
| ``correct`` | [N] float, 1 for a verified-correct answer (the ``acc`` metric) | rewards |
| ``cluster_ids`` | [N] int64, answer-equivalence cluster within each group (SEED, EMPO) | rewards |
| ``kl_scale`` | [N, T] factor on β_ref of the KL to π_ref (a per-response β), when a method sets it | reward shaping (stateful methods) |
| ``advantages`` | [N, T] advantages broadcast over valid tokens | advantages |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

# The field table of what crosses to the learner ranks; LearnerShard has exactly these fields
# (a test holds it to the table) and StepBatch has them too.
SEQUENCE_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "mask")
"""What a forward pass reads."""
OLD_PASS_FIELDS = ("old_logp", "entropy", "ref_logp", "proxy_logp", "topp_entropy", "topk_entropy")
"""What the learner's π_old pass fills in (the last three: per-token extras, when asked for)."""
UPDATE_FIELDS = ("advantages", "rollout_logp", "kl_scale")
"""What the update reads beyond those."""
LEARNER_FIELDS = SEQUENCE_FIELDS + OLD_PASS_FIELDS + UPDATE_FIELDS


@dataclass
class StepBatch:
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    rollout_logp: torch.Tensor
    truncated: torch.Tensor
    group_ids: torch.Tensor
    response_text: list[str]
    rows: list[Any]
    weight_version: int = 0
    old_logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    proxy_logp: torch.Tensor | None = None
    topp_entropy: torch.Tensor | None = None
    topk_entropy: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | None = None
    cluster_ids: torch.Tensor | None = None
    kl_scale: torch.Tensor | None = None
    advantages: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        """``[N]`` valid response lengths ``|y|`` (EOS included)."""
        return self.mask.sum(-1)

    def select(self, index: torch.Tensor | list[int] | slice) -> StepBatch:
        """The rows ``index`` of every field (a view where torch allows)."""
        if isinstance(index, slice):
            positions = list(range(len(self)))[index]
        else:
            positions = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        idx = torch.tensor(positions, dtype=torch.long)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value[idx]
            elif isinstance(value, list):
                out[f.name] = [value[i] for i in positions]
            elif isinstance(value, dict):
                out[f.name] = {k: v[idx] for k, v in value.items()}
            else:
                out[f.name] = value
        return StepBatch(**out)

    @staticmethod
    def concat(batches: list[StepBatch]) -> StepBatch:
        """Rows of several batches, in order; pads prompts (left) and responses (right)."""
        if len(batches) == 1:
            return batches[0]
        p = max(b.prompt_ids.shape[1] for b in batches)
        t = max(b.response_ids.shape[1] for b in batches)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(StepBatch):
            values = [getattr(b, f.name) for b in batches]
            first = values[0]
            if first is None:
                if any(v is not None for v in values):
                    raise ValueError(f"cannot concatenate batches where only some have '{f.name}'")
                out[f.name] = None
            elif isinstance(first, torch.Tensor):
                if f.name in ("prompt_ids", "prompt_mask"):
                    out[f.name] = torch.cat([_pad_left(v, p) for v in values])
                elif first.dim() == 2:
                    out[f.name] = torch.cat([_pad_right(v, t) for v in values])
                else:
                    out[f.name] = torch.cat(values)
            elif isinstance(first, list):
                out[f.name] = [x for v in values for x in v]
            elif isinstance(first, dict):
                out[f.name] = {k: torch.cat([v[k] for v in values]) for k in first}
            else:
                out[f.name] = first
        return StepBatch(**out)


def _pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.zeros(x.shape[0], width - x.shape[1], dtype=x.dtype)
    return torch.cat([pad, x], dim=1)


def _pad_right(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.zeros(x.shape[0], width - x.shape[1], dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


@dataclass
class LearnerShard:
    """One learner rank's rows of the step batch (all ``[n, ...]``): the fields of
    :data:`SEQUENCE_FIELDS`, :data:`OLD_PASS_FIELDS` and :data:`UPDATE_FIELDS`, as in
    :class:`StepBatch`."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    old_logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    proxy_logp: torch.Tensor | None = None
    topp_entropy: torch.Tensor | None = None
    topk_entropy: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None
    kl_scale: torch.Tensor | None = None

    @staticmethod
    def of(batch: StepBatch, index: slice | None = None) -> LearnerShard:
        """The learner's fields of ``batch`` (rows ``index``, all when None)."""
        rows = slice(None) if index is None else index
        return LearnerShard(**{k: None if (v := getattr(batch, k)) is None else v[rows] for k in LEARNER_FIELDS})

    def rows(self, index: slice | torch.Tensor) -> LearnerShard:
        return LearnerShard(**{k: (None if v is None else v[index]) for k, v in vars(self).items()})

    def trimmed(self) -> tuple[LearnerShard, int]:
        """The same rows without the padding columns no row of them needs: prompts keep their
        last ``p`` columns (left padding), responses their first ``t`` (right padding).

        The step batch is padded to its longest prompt and response; a micro-batch of shorter
        ones would otherwise run the model over columns that are masked out anyway. The
        result is exact: masked positions contribute nothing and positions are counted from
        the attention mask. Returns the trimmed rows and ``t``.
        """
        p = max(int(self.prompt_mask.sum(-1).max()), 1) if len(self) else 1
        valid = self.mask.bool()
        last = (valid * torch.arange(1, valid.shape[1] + 1)).max() if valid.numel() else torch.tensor(0)
        t = max(int(last), 1)
        out = {}
        for key, value in vars(self).items():
            if value is None:
                out[key] = None
            elif key in ("prompt_ids", "prompt_mask"):
                out[key] = value[:, value.shape[1] - p:]
            else:
                out[key] = value[:, :t]
        return LearnerShard(**out), t

    def __len__(self) -> int:
        return self.response_ids.shape[0]
