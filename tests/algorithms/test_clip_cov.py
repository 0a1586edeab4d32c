import pytest
import torch

from entropo.algorithms.configs.losses import ClipCovConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.losses.clip_cov import clip_cov_loss, clip_cov_select
from entropo.algorithms.reduce import LOCAL
from tests.fake_ranks import run_split


def test_spec_l2_selection_and_gradient(cov_batch):
    logp, adv, mask = cov_batch
    logp = logp.clone().requires_grad_(True)
    # r = 1 everywhere: old_logp == logp
    inp = TokenLossInputs(logp, logp.detach().clone(), adv, mask, generator=torch.Generator().manual_seed(0))
    cfg = ClipCovConfig(clip_ratio=0.5, cov_low=1.0, cov_high=5.0)
    loss, metrics = clip_cov_loss(inp, cfg)
    # Cov = [[1.033, -0.867, 0.633], [-0.933, 1.867, -0.133]]; candidates in (1, 5): (0,0), (1,1)
    # n_clip = max(floor(0.5 * 6), 1) = 3 > 2 candidates, so both are selected.
    assert metrics["clip_cov/selected_frac"].item() == pytest.approx(2 / 6)
    (loss * mask).sum().div(mask.sum()).backward()
    # token-mean over 6 tokens; d(-A r)/dlogp = -A at r = 1 -> -A/6 = -1/6 (row 0), +1/6 (row 1)
    expected = torch.tensor([[0.0, -1 / 6, -1 / 6], [1 / 6, 0.0, 1 / 6]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-7, rtol=0)


def test_selected_tokens_have_zero_loss_and_no_gradient(cov_batch):
    logp, adv, mask = cov_batch
    selected = torch.tensor([[True, False, False], [False, False, False]])
    lp = logp.clone().requires_grad_(True)
    inp = TokenLossInputs(lp, logp - 0.1, adv, mask, selected=selected)
    loss, _ = clip_cov_loss(inp, ClipCovConfig())
    assert loss[0, 0].item() == 0.0
    loss.sum().backward()
    assert lp.grad[0, 0].item() == 0.0 and lp.grad[0, 1].item() != 0.0


def test_draws_at_most_n_clip_among_many_candidates():
    torch.manual_seed(0)
    n, t = 8, 50
    logp = -torch.rand(n, t) * 4
    adv = torch.randn(n, 1).expand(n, t) * 3
    mask = torch.ones(n, t)
    inp = TokenLossInputs(logp, logp, adv, mask, generator=torch.Generator().manual_seed(1))
    cfg = ClipCovConfig(clip_ratio=0.01, cov_low=-100.0, cov_high=100.0)
    selected, _ = clip_cov_select(inp, cfg)
    assert int(selected.sum()) == int(0.01 * n * t)  # 4


def test_degenerate_scope_selects_nothing():
    # One sequence: A is constant, Cov == 0, no candidate in (1, 5): a silent no-op (docs/algorithms.md §1)
    logp = torch.tensor([[-0.1, -2.0, -0.5]])
    inp = TokenLossInputs(logp, logp, torch.ones(1, 3), torch.ones(1, 3), generator=torch.Generator())
    selected, _ = clip_cov_select(inp, ClipCovConfig())
    assert not selected.any()


def test_plain_surrogate_is_unclipped():
    logp = torch.tensor([[1.0]])
    inp = TokenLossInputs(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                          selected=torch.zeros(1, 1, dtype=torch.bool))
    clipped, _ = clip_cov_loss(inp, ClipCovConfig(eps_low=0.2, eps_high=0.2))
    plain, _ = clip_cov_loss(inp, ClipCovConfig(eps_low=0.2, eps_high=0.2, surrogate="plain"))
    assert clipped.item() == pytest.approx(-1.2)
    assert plain.item() == pytest.approx(-torch.e, abs=1e-6)


def test_rank_split_equals_whole_batch():
    torch.manual_seed(3)
    n, t = 6, 40
    logp = -torch.rand(n, t) * 5
    old = logp + 0.05 * torch.randn(n, t)
    adv = torch.randn(n, 1).expand(n, t).contiguous()
    mask = (torch.rand(n, t) > 0.2).float()
    cfg = ClipCovConfig(clip_ratio=0.05, cov_low=0.2, cov_high=5.0)

    def select(rows, reducer):
        inp = TokenLossInputs(logp[rows], old[rows], adv[rows], mask[rows], reducer=reducer,
                              generator=torch.Generator().manual_seed(7))
        return clip_cov_select(inp, cfg)[0]

    whole = select(slice(0, n), LOCAL)
    parts = run_split(select, [slice(0, 2), slice(2, n)])
    assert whole.sum() == int(0.05 * mask.sum())
    assert torch.equal(torch.cat(parts), whole)
