"""Tests for entropo.algorithms.entropy: hand-computed values, chunked == naive, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.entropy import logprobs_and_entropy, naive_logprobs_and_entropy

NEG_INF = float("-inf")
# fp32 outputs of size ~10 are compared at 1e-6 absolute plus 1e-6 relative (≈ 8 ulp).
TIGHT = {"atol": 1e-6, "rtol": 1e-6}


def _random_case(shape, vocab, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g) * scale).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=g)
    return logits, labels


# (a) hand-computed cases ---------------------------------------------------------------


def test_uniform_over_two_and_four_tokens():
    # Row 0: uniform over 2 of 4 tokens (2 masked with -inf) -> H = ln 2, log p = -ln 2.
    # Row 1: uniform over 4 tokens -> H = ln 4, log p = -ln 4.
    # Token mean H = (0.693147 + 1.386294) / 2 = 1.039721.
    logits = torch.tensor([[0.0, 0.0, NEG_INF, NEG_INF], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1])
    for fn in (logprobs_and_entropy, naive_logprobs_and_entropy):
        logp, entropy = fn(logits, labels)
        torch.testing.assert_close(entropy, torch.tensor([math.log(2), math.log(4)]), **TIGHT)
        torch.testing.assert_close(logp, torch.tensor([-math.log(2), -math.log(4)]), **TIGHT)
        assert entropy.mean().item() == pytest.approx(1.039721, abs=1e-6)


def test_softmax_2_1_0():
    # exp(2), exp(1), exp(0) = 7.389056, 2.718282, 1; sum 11.107338, lse = 2.407606.
    # p = 0.665241, 0.244728, 0.090031; Σ p z = 2·0.665241 + 0.244728 = 1.575210.
    # H = 2.407606 − 1.575210 = 0.832396; log p(label 0) = 2 − 2.407606 = −0.407606.
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    logp, entropy = logprobs_and_entropy(logits, torch.tensor([0]))
    assert entropy.item() == pytest.approx(0.832396, abs=1e-6)
    assert logp.item() == pytest.approx(-0.407606, abs=1e-6)


def test_temperature_divides_logits():
    # [2, 0] at T = 2 is [1, 0] at T = 1: lse = ln(e + 1) = 1.313262, p_0 = 0.731059,
    # H = 1.313262 − 0.731059 = 0.582203, log p_0 = 1 − 1.313262 = −0.313262.
    logp, entropy = logprobs_and_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), temperature=2.0)
    assert entropy.item() == pytest.approx(0.582203, abs=1e-6)
    assert logp.item() == pytest.approx(-0.313262, abs=1e-6)
    ref = logprobs_and_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    torch.testing.assert_close((logp, entropy), ref, **TIGHT)


# (b) chunked == naive ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_naive(dtype):
    logits, labels = _random_case((3, 37), 1000, dtype)  # 111 rows; chunk 16 does not divide
    got = logprobs_and_entropy(logits, labels, temperature=0.7, chunk_size=16)
    want = naive_logprobs_and_entropy(logits, labels, temperature=0.7)
    assert got[0].dtype == got[1].dtype == torch.float32
    torch.testing.assert_close(got, want, **TIGHT)


def test_non_contiguous_logits_slice():
    # logits[:, :-1] cannot be viewed as [rows, V]; it is processed per leading index.
    logits, labels = _random_case((4, 10), 300)
    sliced, y = logits[:, :-1], labels[:, 1:]
    assert not sliced.is_contiguous()
    got = logprobs_and_entropy(sliced, y, chunk_size=4)
    torch.testing.assert_close(got, naive_logprobs_and_entropy(sliced, y), **TIGHT)


# (c) gradients -------------------------------------------------------------------------


def test_gradcheck_float64():
    logits, labels = _random_case((2, 3), 5, torch.float64, scale=1.0)
    logits.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    w_logp, w_ent = torch.randn(2, 3, generator=g).double(), torch.randn(2, 3, generator=g).double()

    def both(x):
        logp, entropy = logprobs_and_entropy(x, labels, temperature=0.7, chunk_size=2)
        return (w_logp * logp + w_ent * entropy).sum()

    def entropy_only(x):
        return logprobs_and_entropy(x, labels, temperature=0.7, chunk_size=4)[1]

    def logp_only(x):
        return logprobs_and_entropy(x, labels, temperature=1.3, chunk_size=4, with_entropy=False)[0]

    for fn in (both, entropy_only, logp_only):
        assert torch.autograd.gradcheck(fn, (logits,))


def test_chunked_grads_equal_naive():
    logits, labels = _random_case((4, 33), 500)  # 132 rows, chunk 10
    g = torch.Generator().manual_seed(2)
    w_logp, w_ent = torch.randn(4, 33, generator=g), torch.randn(4, 33, generator=g)
    grads = []
    for fn, kw in ((logprobs_and_entropy, {"chunk_size": 10}), (naive_logprobs_and_entropy, {})):
        x = logits.clone().requires_grad_(True)
        logp, entropy = fn(x, labels, temperature=0.6, **kw)
        (w_logp * logp + w_ent * entropy).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], **TIGHT)


def test_bf16_grad_dtype_and_value():
    logits, labels = _random_case((2, 9), 200, torch.bfloat16)
    grads = []
    for fn in (logprobs_and_entropy, naive_logprobs_and_entropy):
        x = logits.clone().requires_grad_(True)
        logp, entropy = fn(x, labels)
        (logp + entropy).sum().backward()
        grads.append(x.grad)
    assert grads[0].dtype == torch.bfloat16
    # Both round an fp32 gradient to bf16 (8 significant bits); fp32 values that differ in
    # the last ulp can round one bf16 step (2^-8 relative) apart.
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=2**-7)


def test_backward_saves_logits_by_reference_only():
    logits, labels = _random_case((3, 20), 100)
    logits.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        logprobs_and_entropy(logits, labels, chunk_size=7)
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert len(big) == 1 and big[0].data_ptr() == logits.data_ptr()
    assert sum(t.numel() for t in saved if t is not big[0]) <= 3 * 60  # labels, lse, H


def test_no_graph_without_grad():
    logits, labels = _random_case((2, 5), 50)
    logp, entropy = logprobs_and_entropy(logits, labels)
    assert logp.grad_fn is None and entropy.grad_fn is None
    with torch.no_grad():
        logp, entropy = logprobs_and_entropy(logits.requires_grad_(True), labels)
    assert logp.grad_fn is None and entropy.grad_fn is None
    logp, entropy = logprobs_and_entropy(logits, labels)
    assert logp.grad_fn is not None and entropy.grad_fn is not None


# (d) edge cases ------------------------------------------------------------------------


def test_single_row():
    logits, labels = _random_case((1,), 64)
    for x, y in ((logits, labels), (logits[0], labels[0]), (logits[None], labels[None])):
        got = logprobs_and_entropy(x, y)
        assert got[0].shape == got[1].shape == y.shape
        torch.testing.assert_close(got, naive_logprobs_and_entropy(x, y), **TIGHT)


def test_masked_vocab_entries():
    logits, labels = _random_case((5, 8), 40)
    masked = torch.rand(5, 8, 40, generator=torch.Generator().manual_seed(3)) < 0.5
    masked.scatter_(-1, labels[..., None], False)  # labels stay unmasked
    logits = logits.masked_fill(masked, NEG_INF)
    grads = []
    for fn, kw in ((logprobs_and_entropy, {"chunk_size": 3}), (naive_logprobs_and_entropy, {})):
        x = logits.clone().requires_grad_(True)
        logp, entropy = fn(x, labels, temperature=0.8, **kw)
        assert torch.isfinite(entropy).all() and torch.isfinite(logp).all()
        (logp - 0.5 * entropy).sum().backward()
        grads.append((logp, entropy, x.grad))
    torch.testing.assert_close(grads[0], grads[1], **TIGHT)
    assert torch.isfinite(grads[0][2]).all()
    assert (grads[0][2][masked] == 0).all()


def test_masked_label_gets_minus_inf_logp():
    logits = torch.tensor([[0.0, NEG_INF, 1.0]])
    logp, entropy = logprobs_and_entropy(logits, torch.tensor([1]))
    assert logp.item() == NEG_INF and math.isfinite(entropy.item())


def test_nan_logit_propagates():
    logits = torch.tensor([[0.0, float("nan"), 1.0]])
    logp, entropy = logprobs_and_entropy(logits, torch.tensor([0]))
    assert torch.isnan(logp).all() and torch.isnan(entropy).all()


def test_without_entropy():
    logits, labels = _random_case((2, 7), 30)
    x = logits.clone().requires_grad_(True)
    logp, entropy = logprobs_and_entropy(x, labels, temperature=0.9, chunk_size=4, with_entropy=False)
    assert entropy is None
    logp.sum().backward()
    y = logits.clone().requires_grad_(True)
    ref = naive_logprobs_and_entropy(y, labels, temperature=0.9)[0]
    ref.sum().backward()
    torch.testing.assert_close(logp, ref, **TIGHT)
    torch.testing.assert_close(x.grad, y.grad, **TIGHT)


def test_invalid_arguments():
    logits, labels = _random_case((2,), 10)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs_and_entropy(logits, labels, chunk_size=0)
    with pytest.raises(ValueError, match="labels shape"):
        logprobs_and_entropy(logits, labels[:1])


# (e) meta-test: the comparisons can fail -----------------------------------------------


def test_wrong_temperature_is_detected():
    logits, labels = _random_case((3, 37), 1000)
    got = logprobs_and_entropy(logits, labels, temperature=0.7, chunk_size=16)
    wrong = naive_logprobs_and_entropy(logits, labels, temperature=0.7 * (1 + 1e-4))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got[1], wrong[1], **TIGHT)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got[0], wrong[0], **TIGHT)


def test_wrong_gradient_is_detected():
    logits, labels = _random_case((2, 9), 100)
    grads = []
    for t in (0.7, 0.7 * (1 + 1e-4)):
        x = logits.clone().requires_grad_(True)
        logp, entropy = logprobs_and_entropy(x, labels, temperature=t, chunk_size=4)
        (logp + entropy).sum().backward()
        grads.append(x.grad)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(grads[0], grads[1], **TIGHT)
