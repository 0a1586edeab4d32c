"""Log-probs and entropies of response tokens under a causal LM, at the rollout temperature.

Shared by the learner (π_old, π_ref and π_θ passes) and by the rollout engine's scoring, so
that both compute the same numbers the same way (logits / T, fp32: docs/algorithms.md §3). Methods that
need another per-token quantity of the logits (Lp-Reg's min-p proxy, SIREN's top-p entropy)
pass it as an ``extras`` function, evaluated on the same logits without a second forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from entropo.algorithms.entropy import logprobs_and_entropy

ExtraFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(logits [n, T, V] raw, labels [n, T]) -> [n, T]``."""


@dataclass
class ResponseOutputs:
    logp: torch.Tensor  # [n, T]
    entropy: torch.Tensor | None  # [n, T]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


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


def response_outputs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = True,
    extras: dict[str, ExtraFn] | None = None,
) -> ResponseOutputs:
    """``log π(y_t)``, ``H_t`` and any ``extras``, each ``[n, T]``, for the response tokens.

    Args:
        model: a causal LM returning ``.logits`` ``[n, P+T, V]`` (a DeepSpeed engine works).
        prompt_ids: ``[n, P]`` left-padded prompt tokens.
        prompt_mask: ``[n, P]`` their attention mask.
        response_ids: ``[n, T]`` right-padded response tokens.
        mask: ``[n, T]`` valid response tokens.
        temperature: T of the rollout.
        with_entropy: also return the full-vocabulary entropy (with gradient if enabled).
        extras: name -> function of the raw response logits and the labels.

    Returns:
        Values at padded positions are computed but meaningless; mask them.
    """
    input_ids, attention, position_ids = model_inputs(prompt_ids, prompt_mask, response_ids, mask)
    p = prompt_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False)
    logits = out.logits[:, p - 1 : -1, :]  # [n, T, V]: position t predicts y_t
    logp, entropy = logprobs_and_entropy(logits, response_ids, temperature=temperature, with_entropy=with_entropy)
    return ResponseOutputs(logp, entropy, {k: fn(logits, response_ids) for k, fn in (extras or {}).items()})


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log π(y_t), H_t)``, each ``[n, T]``; see :func:`response_outputs`.

    Args:
        model: a causal LM.
        prompt_ids: ``[n, P]``.
        prompt_mask: ``[n, P]``.
        response_ids: ``[n, T]``.
        mask: ``[n, T]``.
        temperature: T of the rollout.
        with_entropy: also return the entropy.
    """
    out = response_outputs(model, prompt_ids, prompt_mask, response_ids, mask, temperature, with_entropy)
    return out.logp, out.entropy
