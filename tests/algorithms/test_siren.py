"""SIREN (arXiv 2509.25133): top-p entropy, per-sequence selection, the anchored regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.configs.regularizers import SirenConfig
from entropo.algorithms.siren import siren_anchor, siren_select, siren_term, top_p_entropy
from tests.fake_ranks import run_split

# Hand case: one sequence with Ĥ = [0.1, 0.2, 0.3, 0.4, 2.0].
H_SPEC = torch.tensor([[0.1, 0.2, 0.3, 0.4, 2.0]], dtype=torch.float64)
MASK_SPEC = torch.ones(1, 5)


def _official_top_p_entropy(logits: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """``efficient_top_p_sampling`` of the official code, restated: full softmax, top-k,
    ``searchsorted`` cut-off, a ``[rows, V]`` mask, renormalisation with a 1e-12 guard."""
    probs = logits.softmax(-1)  # [R, V]
    _, idx = torch.topk(logits, k)
    cum = probs.gather(1, idx).cumsum(-1)
    cutoff = torch.searchsorted(cum, torch.full_like(cum, p)).max(-1).values[:, None]
    keep_k = torch.arange(k)[None, :] < cutoff  # [R, k]
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(1, idx, keep_k)
    kept = probs * keep
    kept = kept / (kept.sum(-1, keepdim=True) + 1e-12)
    return -(kept * (kept + 1e-12).log()).sum(-1)


def _h(p: list[float]) -> float:
    q = [x / sum(p) for x in p]
    return -sum(x * math.log(x) for x in q)


# ---------------------------------------------------------------- top-p entropy


def test_top_p_entropy_hand_case():
    # p = [0.5, 0.3, 0.15, 0.05]; cumulative [0.5, 0.8, 0.95, 1.0]. With p_top = 0.9 it is first
    # reached at the third token: "below" keeps {0.5, 0.3}, "reach" keeps {0.5, 0.3, 0.15}.
    # H(0.625, 0.375) = 0.625·0.470004 + 0.375·0.980829 = 0.661563;
    # H(10/19, 6/19, 3/19) = 0.526316·0.641854 + 0.315789·1.152680 + 0.157895·1.845827 = 0.993268.
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=torch.float64).log() + 3.0  # any shift
    below = top_p_entropy(logits, p_top=0.9, top_k=4, rule="below")
    reach = top_p_entropy(logits, p_top=0.9, top_k=4, rule="reach")
    torch.testing.assert_close(below, torch.tensor(_h([0.5, 0.3]), dtype=torch.float64))
    torch.testing.assert_close(reach, torch.tensor(_h([0.5, 0.3, 0.15]), dtype=torch.float64))
    assert abs(_h([0.5, 0.3]) - 0.661563) < 1e-6 and abs(_h([0.5, 0.3, 0.15]) - 0.993268) < 1e-6
    # Top token alone reaches p_top (0.5 ≥ 0.4): the code keeps nothing, Ĥ = 0; so do we.
    assert top_p_entropy(logits, p_top=0.4, top_k=4, rule="below") == 0
    # Top-k mass below p_top (0.5 + 0.3 < 0.99): all k kept.
    torch.testing.assert_close(top_p_entropy(logits, p_top=0.99, top_k=2, rule="below"), below)


@pytest.mark.parametrize("seed", range(3))
def test_top_p_entropy_equals_official_code(seed):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.5, 2.0, 8.0]).repeat_interleave(20)[:, None]  # flat to sharp rows
    logits = (torch.randn(60, 300, generator=gen, dtype=torch.float64) * scale).requires_grad_()
    ours = top_p_entropy(logits, p_top=0.8, top_k=100, chunk_size=7, rule="below")
    ref = _official_top_p_entropy(logits, 100, 0.8)
    # The code's 1e-12 guards move Ĥ by about V·1e-12.
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)
    g_ours, = torch.autograd.grad(ours.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rule", ["below", "reach"])
def test_top_p_entropy_gradcheck(rule):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 12, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    fn = lambda z: top_p_entropy(z, p_top=0.8, top_k=9, chunk_size=4, temperature=0.7, rule=rule)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


def test_gradient_only_through_kept_logits_and_chunking():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, 50, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    h = top_p_entropy(logits, p_top=0.8, top_k=20, chunk_size=2, rule="below")
    (grad,) = torch.autograd.grad(h.sum(), logits)
    # Every row keeps at most the top 20: the other 30 logits get exactly 0.
    rank = logits.detach().argsort(-1, descending=True).argsort(-1)
    assert torch.all(grad[rank >= 20] == 0)
    torch.testing.assert_close(top_p_entropy(logits, p_top=0.8, top_k=20, chunk_size=1000, rule="below"), h, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_top_p_entropy_cuda_equals_cpu():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 3000, generator=gen, dtype=torch.float64) * 4
    cuda = logits.cuda().requires_grad_()
    h = top_p_entropy(cuda, p_top=0.8, top_k=500, chunk_size=16, rule="below")
    (grad,) = torch.autograd.grad(h.sum(), cuda)
    cpu = logits.clone().requires_grad_()
    h_cpu = top_p_entropy(cpu, p_top=0.8, top_k=500, chunk_size=16, rule="below")
    (grad_cpu,) = torch.autograd.grad(h_cpu.sum(), cpu)
    torch.testing.assert_close(h.cpu(), h_cpu, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad.cpu(), grad_cpu, rtol=0, atol=1e-12)


def test_top_p_entropy_dtype_and_shape():
    logits = torch.randn(2, 3, 40).to(torch.bfloat16)
    out = top_p_entropy(logits, p_top=0.8, top_k=10, rule="below")
    assert out.shape == (2, 3) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="rule"):
        top_p_entropy(logits, p_top=0.8, top_k=10, rule="nucleus")


# ---------------------------------------------------------------- selection


def test_select_spec_quantile():
    # 0.8-quantile of 5 values: h = 4·0.8 = 3.2 → 0.4 + 0.2·(2.0 − 0.4) = 0.72: only 2.0 is above.
    assert siren_select(H_SPEC, MASK_SPEC, 0.8).tolist() == [[False, False, False, False, True]]


def test_select_equals_nanquantile():
    gen = torch.Generator().manual_seed(2)
    h = torch.rand(8, 30, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([30, 1, 2, 5, 17, 0, 29, 3])
    mask = (torch.arange(30)[None, :] < lengths[:, None]).float()
    q = torch.nanquantile(h.masked_fill(mask == 0, float("nan")), 0.8, dim=-1, keepdim=True)
    expected = (mask > 0) & (h > q)
    assert torch.equal(siren_select(h, mask, 0.8), expected)


def test_select_edge_cases():
    # Length 1 and all-equal sequences select nothing; an empty row selects nothing.
    h = torch.tensor([[0.7, 9.0, 9.0], [0.3, 0.3, 0.3], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 0]])
    assert not siren_select(h, mask, 0.8).any()
    # q = 0 keeps everything above the minimum.
    assert siren_select(H_SPEC, MASK_SPEC, 0.0).sum() == 4


# ---------------------------------------------------------------- the regulariser


def test_term_spec_numbers_and_gradient():
    h = H_SPEC.clone().requires_grad_()
    term, m = siren_term(h, MASK_SPEC, anchor=1.5, coef=0.005, quantile=0.8)
    # H_sel = 2.0; λ(H_sel − H_anc)² = 0.005·0.25 = 0.00125.
    torch.testing.assert_close(term, torch.tensor(0.00125, dtype=torch.float64), rtol=0, atol=1e-12)
    term.backward()
    # ∂/∂H_sel = 2λ(H_sel − H_anc) = 2·0.005·0.5 = 0.005; H_sel is Ĥ of the one selected token.
    torch.testing.assert_close(h.grad, torch.tensor([[0, 0, 0, 0, 0.005]], dtype=torch.float64))
    torch.testing.assert_close(m["siren/H_sel"], torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(m["siren/selected_frac"], torch.tensor(0.2, dtype=torch.float64))


def test_term_counts_empty_sequences_as_zero():
    # Row 0 as the hand case (H_sel,0 = 2.0); row 1 has one valid token (nothing selected: 0, counted);
    # row 2 is fully masked (not a sequence). H_sel = (2.0 + 0)/2 = 1.0.
    h = torch.tensor([[0.1, 0.2, 0.3, 0.4, 2.0], [3.0, 0, 0, 0, 0], [7.0] * 5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    term, m = siren_term(h, mask, anchor=0.0, coef=1.0, quantile=0.8)
    torch.testing.assert_close(m["siren/H_sel"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(term, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(siren_anchor(h, mask, 0.8), torch.tensor(1.0, dtype=torch.float64))


def _random_shards(seed):
    gen = torch.Generator().manual_seed(seed)
    h = torch.rand(10, 12, generator=gen, dtype=torch.float64) * 3
    lengths = torch.randint(0, 13, (10,), generator=gen)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).float()
    return h, mask


@pytest.mark.parametrize("seed", range(3))
def test_term_two_ranks_equal_whole_batch(seed):
    h, mask = _random_shards(seed)
    whole_h = h.clone().requires_grad_()
    whole, whole_m = siren_term(whole_h, mask, anchor=0.8, coef=0.3, quantile=0.8)
    whole.backward()
    cut = 4

    def on_rank(shard, reducer):
        hs, ms = shard
        hs = hs.clone().requires_grad_()
        share, metrics = siren_term(hs, ms, anchor=0.8, coef=0.3, quantile=0.8, reducer=reducer)
        share.backward()
        return share.detach(), hs.grad, metrics

    results = run_split(on_rank, [(h[:cut], mask[:cut]), (h[cut:], mask[cut:])])
    torch.testing.assert_close(results[0][0] + results[1][0], whole.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), whole_h.grad, rtol=0, atol=1e-12)
    for key in ("siren/H_sel", "siren/selected_frac", "siren/term"):
        torch.testing.assert_close(results[0][2][key], whole_m[key], rtol=0, atol=1e-12)
    anchors = run_split(lambda s, r: siren_anchor(*s, 0.8, reducer=r), [(h[:cut], mask[:cut]), (h[cut:], mask[cut:])])
    torch.testing.assert_close(anchors[0], siren_anchor(h, mask, 0.8), rtol=0, atol=1e-12)


def test_config():
    cfg = SirenConfig()
    assert (cfg.coef, cfg.p_top, cfg.top_k, cfg.mask_quantile, cfg.top_p_rule) == (0.005, 0.8, 10000, 0.8, "below")
    for bad in ({"coef": -1.0}, {"p_top": 0.0}, {"top_k": 0}, {"mask_quantile": 1.5}, {"top_p_rule": "x"}):
        with pytest.raises(ValueError, match="algorithm.siren"):
            SirenConfig(**bad)


def test_meta_wrong_value_fails():
    term, _ = siren_term(H_SPEC, MASK_SPEC, anchor=1.5, coef=0.005, quantile=0.8)
    # Selecting the top two tokens (H_sel = 1.2) gives 0.005·0.09; a 1e-5 slip: both must fail.
    for wrong in (0.00045, 0.00126):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(term, torch.tensor(wrong, dtype=torch.float64), rtol=0, atol=1e-6)
