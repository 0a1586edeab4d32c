"""The one interface every generation engine implements (``hf``: :class:`entropo.trainer.rollout.HFEngine`;
``vllm``: :class:`entropo.trainer.vllm_engine.VllmEngine`), and the result form they share: what
a rollout worker asks for (:class:`SamplingParams`) and gets back (:class:`RolloutOutput`, built
by :func:`rollout_output` the same way for every engine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from entropo.trainer import weight_sync
    from entropo.trainer.elastic_threads import ElasticThreads


@dataclass(frozen=True)
class SamplingParams:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    seed: int = 0
    logit_scale: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    """``(scores [n, V], T) -> scores``: replaces ``z / T`` at each decode step (a sampling
    method's per-token temperature, entropo.algorithms.stateful.LogitScale); None samples at T."""


@dataclass
class RolloutOutput:
    """Responses in prompt-major order: prompt i's samples are rows ``i*n .. i*n+n-1``."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    response_ids: torch.Tensor  # [N, T] right-padded
    mask: torch.Tensor  # [N, T]
    rollout_logp: torch.Tensor  # [N, T]
    truncated: torch.Tensor  # [N] bool
    response_text: list[str]
    weight_version: int


class GenerationEngine(Protocol):
    """What a rollout worker needs of an engine."""

    weight_version: int
    sync_ranks: int
    """Members of the weight-sync group the engine takes (vLLM: one per tensor-parallel shard)."""

    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 threads: ElasticThreads | None = None) -> RolloutOutput: ...

    def sync_specs(self) -> list[weight_sync.ParamSpec]: ...

    def join_sync_group(self, host: str, port: int, rank: int, world: int, backend: str, bucket_bytes: int,
                        sender: list[weight_sync.ParamSpec]) -> None: ...

    def receive_weights(self) -> int: ...

    def score(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
              mask: torch.Tensor, temperature: float) -> torch.Tensor: ...


def rollout_output(tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                   rollout_logp: torch.Tensor, params: SamplingParams, weight_version: int) -> RolloutOutput:
    """Every engine's result in one form: ``prompt_ids``/``prompt_mask`` ``[B, P]`` (one row per
    prompt), ``response_ids``/``rollout_logp`` ``[N, T]`` (N = B·n, prompt-major, pad after the end).
    Masks, truncation and texts are derived here, the same way for every engine."""
    tok = tokenizer
    mask, truncated = response_mask(response_ids, tok.eos_token_id, tok.pad_token_id, params.max_new_tokens)
    # skip_special_tokens drops pad/eos but keeps added tokens such as </think>
    texts = [tok.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(response_ids, mask)]
    if params.stop:
        stopped = torch.tensor([any(t.endswith(s) for s in params.stop) for t in texts], device=truncated.device)
        truncated = truncated & ~stopped
    return RolloutOutput(
        prompt_ids=prompt_ids.repeat_interleave(params.n, dim=0).cpu(),
        prompt_mask=prompt_mask.repeat_interleave(params.n, dim=0).cpu(),
        response_ids=(response_ids * mask.long()).cpu(),
        mask=mask.float().cpu(),
        rollout_logp=(rollout_logp * mask).cpu(),
        truncated=truncated.cpu(),
        response_text=texts,
        weight_version=weight_version,
    )


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [n, P], attention [n, P])`` with every prompt right-aligned (left padding)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p):] = 1
    return ids, attention


def response_mask(response_ids: torch.Tensor, eos_id: int | None, pad_id: int | None,
                  max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask [N, T], truncated [N])``: valid up to and including the first EOS.

    Without EOS a response is valid up to its last non-pad token (a stop string ends it with
    padding after); it is truncated when it used all ``max_new_tokens``.
    """
    n, t = response_ids.shape
    pos = torch.arange(t, device=response_ids.device).expand(n, t)
    is_eos = response_ids == eos_id if eos_id is not None else torch.zeros_like(response_ids, dtype=torch.bool)
    has_eos = is_eos.any(-1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(-1), torch.full((n,), t, device=response_ids.device))
    not_pad = response_ids != pad_id if pad_id is not None else torch.ones_like(is_eos)
    last_tok = torch.where(not_pad.any(-1), (not_pad * pos).max(-1).values, torch.full((n,), -1, device=response_ids.device))
    end = torch.where(has_eos, first_eos, last_tok)  # inclusive
    mask = pos <= end.unsqueeze(-1)
    truncated = ~has_eos & (end + 1 >= max_new_tokens)
    return mask, truncated
