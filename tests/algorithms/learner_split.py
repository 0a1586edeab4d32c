"""One update of a batch as the learner runs it: shards on fake ranks, micro-batches, metrics
reduced the learner's way (token-weighted sums, then one sum over ranks).

``LearnerRank.update`` accumulates ``value · tokens`` and ``tokens`` per metric over its
micro-batches and all-reduces both; this re-states that rule (``SHARE_METRICS`` aside) so that
a metric's global value can be compared with the whole batch's, in one process.
"""

from __future__ import annotations

import torch

from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.objective import Objective, micro_objective, prepare_minibatch
from tests.fake_ranks import run_split

SHARE_METRICS = ("actor/pg_loss",)  # summed shares, not token means (Objective.share_metrics)


def split_update(obj: Objective, logp, old, adv, mask, shards, micro: int):
    """``(loss, grad [n, T], metrics)`` of one update with the rows split into ``shards``
    (a list of slices, one per fake rank), each run in micro-batches of ``micro`` rows."""

    def rank(rows, reducer):
        full = TokenLossInputs(logp[rows], old[rows], adv[rows], mask[rows], reducer=reducer)
        prepared = prepare_minibatch(full, obj)
        lp = logp[rows].clone().requires_grad_(True)
        total = torch.zeros((), dtype=logp.dtype)
        keys: dict[str, list[float]] = {}
        for start in range(0, lp.shape[0], micro):
            r = slice(start, start + micro)
            inp = TokenLossInputs(lp[r], old[rows][r], adv[rows][r], mask[rows][r])
            loss, m = micro_objective(inp, obj, prepared.rows(r))
            loss.backward()
            total = total + loss.detach()
            tokens = float(mask[rows][r].sum())
            for k, v in m.items():
                if k not in SHARE_METRICS:
                    s = keys.setdefault(k, [0.0, 0.0])
                    s[0] += float(v) * tokens
                    s[1] += tokens
        names = sorted(keys)
        packed = reducer.sum(torch.tensor([keys[k] for k in names], dtype=torch.float64))
        metrics = {k: (t / w if w > 0 else float("nan")) for k, (t, w) in zip(names, packed.tolist())}
        return reducer.sum(total), lp.grad, metrics

    parts = run_split(rank, shards)
    return parts[0][0], torch.cat([g for _, g, _ in parts]), parts[0][2]


def random_tokens(seed: int, n: int, t: int, spread: float):
    """``(old, logp, adv, mask)`` float64 ``[n, T]``: log π_old in (−3, 0], log π_θ = log π_old +
    ``spread``·noise, one advantage per row, about 70% of the tokens valid."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    logp = old + spread * torch.randn(n, t, generator=g, dtype=torch.float64)
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64).expand(n, t).contiguous()
    mask = (torch.rand(n, t, generator=g) > 0.3).to(torch.float64)
    return old, logp, adv, mask
