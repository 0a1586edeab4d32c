import pytest
import torch

from entropo.algorithms.configs.losses import KLCovConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.losses.kl_cov import kl_cov_loss, kl_cov_select
from entropo.algorithms.reduce import LOCAL
from tests.fake_ranks import run_split


def test_spec_l3_selection(cov_batch):
    logp, adv, mask = cov_batch
    inp = TokenLossInputs(logp, logp, adv, mask)
    selected, metrics = kl_cov_select(inp, KLCovConfig(k=1 / 3))
    # k_n = floor(6/3) = 2: the two largest Cov are flat 4 (1.866667) and flat 0 (1.033333)
    assert selected.flatten().nonzero().flatten().tolist() == [0, 4]
    assert metrics["kl_cov/selected_cov_mean"].item() == pytest.approx((1.866667 + 1.033333) / 2, abs=1e-5)


def test_spec_l3_loss_value(cov_batch):
    logp, adv, mask = cov_batch
    old = logp.clone()
    new = logp.clone()
    new[0, 0] += 0.1  # log π_θ − log π_old = 0.1 at (0,0), A = 1
    inp = TokenLossInputs(new, old, adv, mask, selected=torch.zeros(2, 3, dtype=torch.bool))
    inp.selected[0, 0] = True
    loss, _ = kl_cov_loss(inp, KLCovConfig(kl_coef=1.0))
    # ℓ = −e^{0.1} + 0.1 = −1.005171
    assert loss[0, 0].item() == pytest.approx(-1.005171, abs=1e-6)
    # unselected tokens: −A·r, no clipping
    assert loss[1, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_no_clipping_on_any_token():
    inp = TokenLossInputs(torch.tensor([[2.0]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                          selected=torch.zeros(1, 1, dtype=torch.bool))
    loss, _ = kl_cov_loss(inp, KLCovConfig())
    assert loss.item() == pytest.approx(-torch.exp(torch.tensor(2.0)).item(), rel=1e-6)


def test_empty_scope_selects_nothing():
    inp = TokenLossInputs(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3))
    selected, _ = kl_cov_select(inp, KLCovConfig())
    assert not selected.any()


def test_degenerate_ties_break_deterministically_by_position():
    # Cov ≡ 0: the official top-k picks arbitrary tokens; ours takes the earliest.
    inp = TokenLossInputs(-torch.rand(1, 10), torch.zeros(1, 10), torch.ones(1, 10), torch.ones(1, 10))
    selected, _ = kl_cov_select(inp, KLCovConfig(k=0.3))
    assert selected.flatten().nonzero().flatten().tolist() == [0, 1, 2]


def test_rank_split_equals_whole_batch():
    torch.manual_seed(5)
    n, t = 5, 30
    logp = -torch.rand(n, t) * 5
    adv = torch.randn(n, 1).expand(n, t).contiguous()
    mask = (torch.rand(n, t) > 0.3).float()
    cfg = KLCovConfig(k=0.1)

    def select(rows, reducer):
        return kl_cov_select(TokenLossInputs(logp[rows], logp[rows], adv[rows], mask[rows], reducer=reducer), cfg)[0]

    whole = select(slice(0, n), LOCAL)
    parts = run_split(select, [slice(0, 3), slice(3, n)])
    assert torch.equal(torch.cat(parts), whole)
    assert int(whole.sum()) == int(0.1 * mask.sum())
