"""The rollout decode loop: greedy tokens equal ``generate``'s (with rows finishing at different
steps, so the batch is compacted), sampled log-probs equal a teacher-forced pass, the nucleus
rule by hand and against ``transformers``, and first-token frequencies match the distribution."""

from __future__ import annotations

import pytest
import torch

from entropo.models.forward import response_logprobs
from entropo.models.loading import load_model, load_tokenizer
from entropo.trainer.decode import sample, top_p_filter
from entropo.trainer.engine import left_pad, response_mask

PROMPTS = ["12+345=?", "7+8=?", "100+1=?", "9=?"]


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model_dir):
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir).eval()
    with torch.no_grad():  # the random init repeats one token; larger weights give varied text
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    model.generation_config.max_length = None
    ids, mask = left_pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id)
    return model, tok, ids, mask


def frequent_token(model, ids, mask, pad_id) -> int:
    """A token that first appears at the most different steps of the rows' greedy
    continuations: used as EOS, it ends rows at different steps (the loop then compacts)."""
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                         pad_token_id=pad_id, eos_token_id=None)[:, ids.shape[1]:]

    def first_steps(token: int) -> set[int]:
        return {row.tolist().index(token) if token in row.tolist() else 12 for row in out}

    return max(set(out.flatten().tolist()), key=lambda token: len(first_steps(token)))


def test_greedy_equals_generate_while_rows_finish_at_different_steps(model_and_prompts, monkeypatch):
    model, tok, ids, mask = model_and_prompts
    eos = frequent_token(model, ids, mask, tok.pad_token_id)
    compactions = []
    original = torch.Tensor.nonzero
    monkeypatch.setattr("entropo.trainer.decode.COMPACT_FRACTION", 0.01)  # compact at every finished row
    # generate refuses greedy with num_return_sequences > 1: give it each prompt twice
    ref = model.generate(input_ids=ids.repeat_interleave(2, 0), attention_mask=mask.repeat_interleave(2, 0),
                         do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    ref = ref[:, ids.shape[1]:]

    def counting_nonzero(self, *a, **k):
        compactions.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "nonzero", counting_nonzero)
    got = sample(model, ids, mask, n=2, temperature=0.0, top_p=1.0, max_new_tokens=12, eos_id=eos,
                 pad_id=tok.pad_token_id)
    monkeypatch.setattr(torch.Tensor, "nonzero", original)
    valid, _ = response_mask(got.response_ids, eos, tok.pad_token_id, 12)
    lengths = valid.sum(-1)
    assert lengths.min() < lengths.max(), "the chosen EOS should end rows at different steps"
    assert compactions, "the batch should have been compacted"
    assert got.response_ids.shape == ref.shape
    assert torch.equal(got.response_ids, ref)
    assert torch.all(got.logp[~valid] == 0)


def test_sampled_log_probs_equal_a_teacher_forced_pass(model_and_prompts):
    model, tok, ids, mask = model_and_prompts
    eos = frequent_token(model, ids, mask, tok.pad_token_id)
    torch.manual_seed(3)
    got = sample(model, ids, mask, n=3, temperature=0.7, top_p=0.9, max_new_tokens=10, eos_id=eos,
                 pad_id=tok.pad_token_id)
    valid, _ = response_mask(got.response_ids, eos, tok.pad_token_id, 10)
    rows_ids, rows_mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    forced, _ = response_logprobs(model, rows_ids, rows_mask, got.response_ids * valid, valid.float(), 0.7,
                                  with_entropy=False)
    # the same float32 model, cached vs full attention: rounding only, relative to the logits,
    # which the perturbed weights make large (|z| up to ~15), hence 1e-4 rather than 1e-5
    torch.testing.assert_close(got.logp[valid], forced[valid], atol=1e-4, rtol=0)
    assert torch.all(got.response_ids[~valid] == tok.pad_token_id)
    torch.manual_seed(3)
    again = sample(model, ids, mask, n=3, temperature=0.7, top_p=0.9, max_new_tokens=10, eos_id=eos,
                   pad_id=tok.pad_token_id)
    assert torch.equal(again.response_ids, got.response_ids)  # a seed gives the same samples


def test_steps_stop_at_the_longest_response_and_at_the_limit(model_and_prompts):
    model, tok, ids, mask = model_and_prompts
    out = sample(model, ids, mask, n=1, temperature=0.0, top_p=1.0, max_new_tokens=5, eos_id=None,
                 pad_id=tok.pad_token_id)
    assert out.steps == 5 and out.response_ids.shape == (4, 5)
    calls = []
    sample(model, ids, mask, n=1, temperature=1.0, top_p=1.0, max_new_tokens=4, eos_id=-1,
           pad_id=tok.pad_token_id, on_step=lambda: calls.append(1))
    assert len(calls) == 4


def test_top_p_keeps_the_prefix_that_reaches_the_mass():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    # sorted: 0.5, 0.3, 0.15, 0.05; mass before each: 0, 0.5, 0.8, 0.95
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.5) == [False, True, False, False]  # 0.5 already reaches 0.5
    assert kept(0.81) == [True, True, False, True]
    assert kept(0.01) == [False, True, False, False]  # at least one token
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_agrees_with_transformers_warper():
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(64, 90) * 3
    for p in (0.3, 0.8, 0.95):
        ours = torch.isfinite(top_p_filter(scores, p))
        theirs = torch.isfinite(TopPLogitsWarper(p)(None, scores.clone()))
        assert torch.equal(ours, theirs), p


def test_first_token_frequencies_follow_the_nucleus_distribution(model_and_prompts):
    model, tok, ids, mask = model_and_prompts
    n, temperature, top_p = 4000, 1.5, 0.8
    torch.manual_seed(1)
    out = sample(model, ids[:1], mask[:1], n=n, temperature=temperature, top_p=top_p, max_new_tokens=1,
                 eos_id=-1, pad_id=tok.pad_token_id)
    with torch.no_grad():
        z = model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0, -1]
    expected = top_p_filter(z / temperature, top_p).softmax(-1)
    freq = torch.bincount(out.response_ids[:, 0], minlength=z.shape[0]).float() / n
    # 4000 draws: a frequency's standard error is at most 0.008; 0.035 is over 4 of them
    assert (freq - expected).abs().max() < 0.035
    assert torch.all(freq[expected == 0] == 0)  # nothing outside the nucleus


def test_a_per_token_scale_replaces_the_temperature_but_not_the_reported_log_probs(model_and_prompts):
    model, tok, ids, mask = model_and_prompts
    kw = dict(n=2, top_p=1.0, max_new_tokens=6, eos_id=-1, pad_id=tok.pad_token_id)
    torch.manual_seed(5)
    at_half = sample(model, ids, mask, temperature=0.5, **kw)
    torch.manual_seed(5)
    scaled = sample(model, ids, mask, temperature=1.0, scale=lambda z: z / 0.5, **kw)
    assert torch.equal(scaled.response_ids, at_half.response_ids)  # sampled at z / 0.5 ...
    rows_ids, rows_mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    at_base, _ = response_logprobs(model, rows_ids, rows_mask, scaled.response_ids,
                                   torch.ones_like(scaled.logp), 1.0, with_entropy=False)
    # ... reported at the base T (1e-4: the rounding of the teacher-forced test above)
    torch.testing.assert_close(scaled.logp, at_base, atol=1e-4, rtol=0)


def test_decode_raises_no_warnings(model_and_prompts):
    """The loop passes transformers the cache object it expects (a ``DynamicCache`` built from the
    model's config), so no deprecation of legacy ``past_key_values`` or any other warning
    reaches an actor's console: not a Python warning, not a transformers log record."""
    import logging
    import warnings

    model, tok, ids, mask = model_and_prompts
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)  # transformers' loggers do not propagate
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for temperature in (0.0, 1.0):
                sample(model, ids, mask, n=3, temperature=temperature, top_p=0.9, max_new_tokens=8,
                       eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert [r.getMessage() for r in records] == []


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_finite_logits_raise_instead_of_decoding_garbage(model_and_prompts, temperature):
    """NaN logits: sampling cannot draw, and a greedy argmax would quietly pick token 0."""
    import copy

    from entropo.trainer.decode import NonFiniteLogitsError

    model, tok, ids, mask = model_and_prompts
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLogitsError, match="next-token probabilities are NaN/inf"):
        sample(broken, ids, mask, n=1, temperature=temperature, top_p=1.0, max_new_tokens=3, eos_id=None,
               pad_id=tok.pad_token_id)
