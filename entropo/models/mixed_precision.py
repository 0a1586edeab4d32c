"""bf16 mixed precision for the learner: fp32 weights and optimizer, bf16 matrix multiplies.

``learner.mixed_precision=bf16`` runs every learner forward (π_old, π_ref, π_θ with its
backward) under ``torch.autocast(dtype=bfloat16)``, the scheme of accelerate's
``mixed_precision="bf16"`` and Lightning's ``"bf16-mixed"``: the parameters, their gradients
and AdamW's state stay fp32; autocast rounds the inputs of matrix multiplies to bf16, and
other ops run in their inputs' dtype (CPU autocast has no fp32 list for softmax or norms:
Qwen2-style RMSNorm upcasts to fp32 itself, and attention is ours, below). The logits leave the last matmul in bf16 (8
significant bits: a logit of 12 is at most 0.03 off); log-probs and entropies are computed
from them in fp32 (:func:`entropo.algorithms.entropy.logprobs_and_entropy` upcasts), and the
loss outside autocast. In the fused π_old pass π_old and π_θ are the same numbers, so the
ratio starts at exactly 1; against the fp32 rollout the log-probs differ by that rounding,
which TIS (or the ratio to the rollout's log-probs) sees as a small mismatch. This is not
``model.dtype=bfloat16``, which stores the weights themselves in bf16 (DeepSpeed bf16).

Our deviation: on CPU, attention runs in fp32 (:data:`FP32_ATTENTION`, registered with
transformers' ``AttentionInterface``). PyTorch's CPU flash-attention backward in bf16 was
~5x slower than in fp32 here (torch 2.13, AVX512-BF16), which ate the whole gain of the bf16
matmuls (2.2x faster than fp32). On GPUs the bf16 flash kernels are the fast path and
attention follows autocast.
"""

from __future__ import annotations

import contextlib

import torch

from entropo.config import MIXED_PRECISION_MODES

FP32_ATTENTION = "entropo_sdpa_fp32"
"""Name of the fp32 scaled-dot-product attention in transformers' ``AttentionInterface``."""


def autocast(mode: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a learner forward runs in: autocast to bf16, or nothing for None."""
    if mode is None:
        return contextlib.nullcontext()
    if mode not in MIXED_PRECISION_MODES:
        raise ValueError(f"learner.mixed_precision: '{mode}' is not one of null, {', '.join(MIXED_PRECISION_MODES)}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def slow_bf16_warning(mode: str | None, device: torch.device) -> str | None:
    """A warning when bf16 autocast would run emulated (a CPU without AVX512-BF16 or AMX),
    i.e. slower than fp32; None otherwise."""
    if mode != "bf16" or device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return ("learner.mixed_precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): "
            "the bf16 matmuls are emulated and slower than fp32; set learner.mixed_precision=null")


def _sdpa_fp32(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(device_type=query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def keep_attention_fp32(model: torch.nn.Module) -> bool:
    """On CPU, switch ``model`` (a transformers model using SDPA) to fp32 attention; returns
    whether it did. Models on other devices, or with another attention, are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    AttentionInterface.register(FP32_ATTENTION, _sdpa_fp32)
    # an attention name without a mask function gets no mask at all (padding attended to)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FP32_ATTENTION, sdpa_mask)
    model.set_attn_implementation(FP32_ATTENTION)
    return True
