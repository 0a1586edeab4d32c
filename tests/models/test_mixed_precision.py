"""learner.mixed_precision=bf16: autocast forward/backward with fp32 weights, fp32 attention on CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from entropo.models import mixed_precision
from entropo.models.forward import response_logprobs
from entropo.models.tiny import build_char_tokenizer, build_tiny_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _model(tok, attn: str = "sdpa"):
    model = build_tiny_model(tok, hidden_size=64, intermediate_size=128, seed=3)
    model.set_attn_implementation(attn)
    with torch.no_grad():  # the tied embedding scaled: logits of several nats, like a trained model's
        model.get_input_embeddings().weight.mul_(8.0)
    return model


def _batch(tok, n: int = 4, p: int = 5, t: int = 9):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, len(tok), (n, p), generator=g)
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    response = torch.randint(5, len(tok), (n, t), generator=g)
    mask = torch.ones(n, t)
    mask[1, 6:] = 0  # right padding
    return prompt, prompt_mask, response, mask


def _logp_and_grad(model, batch, mode):
    model.zero_grad()
    with mixed_precision.autocast(mode, CPU):
        logp, _ = response_logprobs(model, *batch, temperature=1.0, with_entropy=False)
    (logp * batch[3]).sum().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    return logp.detach(), grad


def test_off_is_plain_fp32_and_bf16_autocasts_the_matmuls(tok):
    model, ids = _model(tok), torch.randint(5, len(tok), (2, 6))
    with mixed_precision.autocast(None, CPU):
        assert model(input_ids=ids).logits.dtype == torch.float32
    with mixed_precision.autocast("bf16", CPU):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # weights stay fp32
    with pytest.raises(ValueError, match="learner.mixed_precision: 'fp16'"):
        mixed_precision.autocast("fp16", CPU)


def test_attention_runs_in_fp32_on_cpu(tok, monkeypatch):
    """Autocast casts SDPA's inputs to bf16 inside the dispatcher (RoPE has already promoted
    q and k to fp32 at the Python level), so the spy records whether autocast is on at the call."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model, ids = _model(tok), torch.randint(5, len(tok), (2, 6))
    with mixed_precision.autocast("bf16", CPU):
        model(input_ids=ids)
    assert len(seen) == 2 and all(on for on, *_ in seen)  # 2 layers, each under autocast: bf16
    seen.clear()
    assert mixed_precision.keep_attention_fp32(model)
    assert model.config._attn_implementation == mixed_precision.FP32_ATTENTION
    with mixed_precision.autocast("bf16", CPU):
        model(input_ids=ids)
    assert seen == [(False, torch.float32, torch.float32, torch.float32)] * 2


def test_eager_attention_is_left_alone(tok):
    model = _model(tok, attn="eager")
    assert not mixed_precision.keep_attention_fp32(model)
    assert model.config._attn_implementation == "eager"


def test_logprobs_and_gradient_follow_fp32(tok):
    """Autocast hands bf16 logits to the fp32 log-softmax: logits in [8, 16) are rounded to
    multiples of 2^-4, at most 2^-5 ≈ 0.031 off, and a log-prob takes the label's logit and the
    log-sum-exp, so the bound is 0.06 nats (measured: 0.033). Row 0 is left-padded: attending
    to its padding (an attention without its mask function) moved it by 0.2. The gradient keeps
    its direction (cosine > 0.99)."""
    batch = _batch(tok)
    model = _model(tok)
    ref_logp, ref_grad = _logp_and_grad(model, batch, None)
    assert mixed_precision.keep_attention_fp32(model)
    logp, grad = _logp_and_grad(model, batch, "bf16")
    valid = batch[3].bool()
    assert ref_logp[valid].abs().mean() > 5.0  # large logits: the bf16 rounding is visible
    gap = (logp - ref_logp)[valid].abs()
    assert 0 < gap.max() < 0.06
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.99
    assert grad.dtype == torch.float32


def test_a_saved_model_does_not_carry_the_fp32_attention(tok, tmp_path):
    model = _model(tok)
    assert mixed_precision.keep_attention_fp32(model)
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"


def test_emulated_bf16_is_warned_about(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "learner.mixed_precision=null" in mixed_precision.slow_bf16_warning("bf16", CPU)
    assert mixed_precision.slow_bf16_warning(None, CPU) is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert mixed_precision.slow_bf16_warning("bf16", CPU) is None
