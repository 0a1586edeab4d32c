"""Two gloo processes, a batch split across them, global scope: the same as one process.

Covers the statistics whose scope matters (issue 2, item 9): Clip-Cov, KL-Cov, the entropy
mask, and token-mean aggregation, through the full composed objective (loss and gradient).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from entropo.algorithms.configs.losses import ClipCovConfig, KLCovConfig, PPOClipConfig
from entropo.algorithms.configs.masks import EntropyMaskConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.objective import micro_objective, prepare_minibatch
from entropo.algorithms.reduce import LOCAL
from tests.objectives import objective

pytestmark = pytest.mark.distributed

OBJECTIVES = {
    "clip_cov": objective("clip_cov", ClipCovConfig(clip_ratio=0.05, cov_low=0.05, cov_high=5.0)),
    "kl_cov": objective("kl_cov", KLCovConfig(k=0.05)),
    "entropy_mask": objective("ppo_clip", PPOClipConfig(), masks=(("high_entropy", EntropyMaskConfig()),)),
    "token_mean": objective("ppo_clip", PPOClipConfig(eps_high=0.28)),
}
SPLIT = 3  # rank 0 holds rows [0, 3), rank 1 rows [3, 8): uneven on purpose


def _batch():
    g = torch.Generator().manual_seed(1234)
    n, t = 8, 24
    logp = -torch.rand(n, t, generator=g) * 4
    old = logp + 0.1 * torch.randn(n, t, generator=g)
    adv = torch.randn(n, 1, generator=g).expand(n, t).contiguous()
    mask = (torch.rand(n, t, generator=g) > 0.25).float()
    entropy = torch.rand(n, t, generator=g).round(decimals=2) * 3  # ties on purpose
    return logp, old, adv, mask, entropy


def _run(obj, rows, reducer, micro_size):
    """Prepare over this rank's shard, then accumulate micro-batch shares; return (loss, grad, selections)."""
    logp, old, adv, mask, entropy = (x[rows] for x in _batch())
    full = TokenLossInputs(logp, old, adv, mask, entropy=entropy, reducer=reducer,
                           generator=torch.Generator().manual_seed(99))
    prepared = prepare_minibatch(full, obj)
    lp = logp.clone().requires_grad_(True)
    total = torch.zeros(())
    for start in range(0, lp.shape[0], micro_size):
        r = slice(start, start + micro_size)
        inp = TokenLossInputs(lp[r], old[r], adv[r], mask[r], entropy=entropy[r])
        loss, _ = micro_objective(inp, obj, prepared.rows(r))
        loss.backward()
        total = total + loss.detach()
    sel = prepared.loss_selected
    keep = prepared.mask_keeps[0].keep if prepared.mask_keeps else None
    return total, lp.grad, sel, keep


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from entropo.trainer.dist_reduce import DistReducer

    reducer = DistReducer()
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, 8)
    results = {}
    for name, obj in OBJECTIVES.items():
        loss, grad, sel, keep = _run(obj, rows, reducer, micro_size=2)
        # every rank's share adds up to the mini-batch loss
        dist.all_reduce(loss)
        results[name] = (loss, grad, sel, keep)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=2, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_two_gloo_ranks_equal_one_process(two_rank_results, name):
    whole_loss, whole_grad, whole_sel, whole_keep = _run(OBJECTIVES[name], slice(0, 8), LOCAL, micro_size=8)
    r0, r1 = two_rank_results[0][name], two_rank_results[1][name]
    # selections are index sets: exactly equal
    if whole_sel is not None:
        assert whole_sel.any()
        assert torch.equal(torch.cat([r0[2], r1[2]]), whole_sel)
    if whole_keep is not None:
        assert torch.equal(torch.cat([r0[3], r1[3]]), whole_keep)
    # loss and gradient: equal up to float summation order
    assert r0[0].item() == pytest.approx(whole_loss.item(), abs=1e-6)
    assert r1[0].item() == pytest.approx(whole_loss.item(), abs=1e-6)
    torch.testing.assert_close(torch.cat([r0[1], r1[1]]), whole_grad, atol=1e-7, rtol=0)


def test_micro_scope_differs_across_ranks(two_rank_results):
    """Meta-check: the comparison above can fail. The per-rank (micro) selection of KL-Cov
    on rank 0's shard alone is not what the whole batch selects."""
    obj = objective("kl_cov", KLCovConfig(k=0.05, stat_scope="global"))
    _, _, local_sel, _ = _run(obj, slice(0, SPLIT), LOCAL, micro_size=2)
    _, _, whole_sel, _ = _run(obj, slice(0, 8), LOCAL, micro_size=8)
    assert not torch.equal(local_sel, whole_sel[:SPLIT])
