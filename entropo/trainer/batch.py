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
| ``proxy_logp`` | [N, T] Lp-Reg's min-p proxy log-probs of π_old, when ``loss=lp_reg`` | learner forward |
| ``topp_entropy`` | [N, T] SIREN's top-p entropy of π_old (step 1, for its anchor) | learner forward |
| ``topk_entropy`` | [N, T] ARES's top-k entropy of π_old (``algorithm.ares.entropy=topk``) | learner forward |
| ``rewards`` | [N] scalar reward R_i | rewards |
| ``reward_components`` | name -> [N] | rewards |
| ``correct`` | [N] float, 1 for a verified-correct answer (the ``acc`` metric) | rewards |
| ``cluster_ids`` | [N] int64, answer-equivalence cluster within each group (SEED, EMPO) | rewards |
| ``kl_scale`` | [N, T] factor on β_ref of the KL to π_ref (ARES's per-bucket β_b), when on | ARES (controller) |
| ``advantages`` | [N, T] advantages broadcast over valid tokens | advantages |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


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


def model_inputs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` ``[n, P+T]`` for a forward over prompt+response.

    Position ids count only attended tokens, as ``generate`` does with left padding, so the
    learner's forward sees exactly the positions the rollout saw.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention = torch.cat([prompt_mask, mask.to(prompt_mask.dtype)], dim=1)
    position_ids = (attention.long().cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention, position_ids
