"""Log-probs and entropies of response tokens under a causal LM, at the rollout temperature.

Shared by the learner (π_old, π_ref and π_θ passes) and by the rollout engine's scoring, so
that both compute the same numbers the same way (spec 0.2: logits / T, fp32).
"""

from __future__ import annotations

import torch

from entropo.algorithms.entropy import logprobs_and_entropy
from entropo.trainer.batch import model_inputs


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log π(y_t), H_t)``, each ``[n, T]``, for the response tokens of a batch.

    Args:
        model: a causal LM returning ``.logits`` ``[n, P+T, V]``.
        prompt_ids: ``[n, P]`` left-padded prompt tokens; ``prompt_mask`` their attention mask.
        prompt_mask: ``[n, P]``.
        response_ids: ``[n, T]`` right-padded response tokens.
        mask: ``[n, T]`` valid response tokens.
        temperature: T of the rollout.
        with_entropy: also return the full-vocabulary entropy (with gradient if enabled).

    Returns:
        Log-probs and entropies at padded positions are computed but meaningless; mask them.
    """
    input_ids, attention, position_ids = model_inputs(prompt_ids, prompt_mask, response_ids, mask)
    p = prompt_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False)
    logits = out.logits[:, p - 1 : -1, :]  # [n, T, V]: position t predicts y_t
    return logprobs_and_entropy(logits, response_ids, temperature=temperature, with_entropy=with_entropy)
