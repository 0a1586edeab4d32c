"""How one rank's rows of a mini-batch are cut into micro-batches (forward/backward units).

Two rules, chosen by ``learner.micro_batch_tokens``:

- fixed size (default): consecutive runs of ``learner.micro_batch_size`` rows;
- token budget: rows sorted by length, longest first, and cut greedily so that each
  micro-batch's padded size ``rows × (longest prompt + longest response)`` stays within the
  budget (the padding a micro-batch computes is trimmed to its own rows, see
  ``LearnerShard.trimmed``). Short responses then share a micro-batch with other short ones
  instead of being padded to the step's longest, and a budget equal to ``micro_batch_size ×
  (P + L_max)`` bounds activation memory exactly as fixed micro-batches of padded rows do,
  with fewer micro-batches. A row longer than the budget forms a micro-batch alone.
  Dynamic batch size in verl (``use_dynamic_bsz``, ``ppo_max_token_len_per_gpu``) works the
  same way; here rows are never concatenated (no packing), so attention stays per row.

The loss does not depend on the cut: every denominator and global selection is taken over
the whole mini-batch before the micro-batches run (``entropo.algorithms.objective``), so any
partition gives the same gradient up to float summation order. Micro-scope methods decide
per micro-batch by definition and do see the cut, as they see ``micro_batch_size``.

Data-parallel ranks must run the same number of micro-batches (ZeRO-3 gathers parameters
in every forward, a collective): :func:`split_to` splits the largest micro-batches of a rank
that has fewer than the most any rank has.

Rows whose advantage is 0 at every token (``learner.skip_zero_advantage``, when the
objective is inert there: :attr:`entropo.algorithms.objective.Objective.inert_at_zero_advantage`)
add nothing to the gradient. :func:`with_inert_rows` cuts them into micro-batches of their own
that run a no-grad forward only (π_old and metrics stay those of every row) and the other rows
into micro-batches with a backward. The two kinds are cut separately, so a step with many
solved-by-all or failed-by-all groups spends its backward passes only on rows that move the
policy. Ranks must agree on how many backward micro-batches they run (ZeRO-2/3 reduce
gradients in backward hooks, every stage at the accumulation boundary) and, under ZeRO-3, on
how many forwards: a rank short of rows of a kind
promotes inert rows into backward micro-batches (their gradient is exactly 0) or runs
*filler* micro-batches (one row whose outputs are dropped) to match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from entropo.algorithms.reduce import Reducer


def fixed_size(n: int, size: int) -> list[torch.Tensor]:
    """Row indices of consecutive micro-batches of ``size`` rows (one empty one when n = 0)."""
    if n == 0:
        return [torch.zeros(0, dtype=torch.long)]
    return [torch.arange(i, min(i + size, n)) for i in range(0, n, size)]


def token_budget(prompt_lengths: torch.Tensor, response_lengths: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Row indices of length-sorted micro-batches of at most ``budget`` padded tokens each.

    Args:
        prompt_lengths: ``[n]`` valid prompt tokens per row.
        response_lengths: ``[n]`` valid response tokens per row.
        budget: the most ``rows × (max prompt + max response)`` a micro-batch may hold.
    """
    n = len(prompt_lengths)
    if n == 0:
        return [torch.zeros(0, dtype=torch.long)]
    p = [max(int(x), 1) for x in prompt_lengths.tolist()]
    t = [max(int(x), 1) for x in response_lengths.tolist()]
    order = sorted(range(n), key=lambda i: (-(p[i] + t[i]), i))
    groups: list[list[int]] = []
    current: list[int] = []
    width_p = width_t = 0
    for i in order:
        wp, wt = max(width_p, p[i]), max(width_t, t[i])
        if current and (len(current) + 1) * (wp + wt) > budget:
            groups.append(current)
            current, wp, wt = [], p[i], t[i]
        current.append(i)
        width_p, width_t = wp, wt
    groups.append(current)
    return [torch.tensor(g, dtype=torch.long) for g in groups]


def split_to(groups: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """``groups`` with their largest members halved until there are ``count`` of them.

    Raises:
        ValueError: ``count`` exceeds the number of rows (a micro-batch needs one).
    """
    rows = sum(len(g) for g in groups)
    if count > max(rows, 1):
        raise ValueError(f"cannot cut {rows} rows into {count} micro-batches")
    out = list(groups)
    while len(out) < count:
        k = max(range(len(out)), key=lambda j: len(out[j]))
        half = (len(out[k]) + 1) // 2
        out[k:k + 1] = [out[k][:half], out[k][half:]]
    return out


@dataclass(frozen=True)
class MicroBatch:
    """One forward of :func:`with_inert_rows`'s plan.

    Attributes:
        rows: row indices into the rank's shard.
        backward: forward with gradient and backward (else a no-grad forward).
        filler: run only so that this rank makes as many collectives as the others; its
            outputs and metrics are dropped and its loss is 0.
    """

    rows: torch.Tensor
    backward: bool = True
    filler: bool = False


def with_inert_rows(cut: Callable[[torch.Tensor], list[torch.Tensor]], inert: torch.Tensor,
                    agree: Callable[[list[int]], list[int]], match_forwards: bool) -> list[MicroBatch] | None:
    """No-grad micro-batches of the ``inert`` rows, then backward micro-batches of the rest.

    Args:
        cut: shard row indices of some rows -> their micro-batches, as positions into them.
        inert: ``[n]`` bool, the rows that need no backward.
        agree: the element-wise maximum of a list of ints over the data-parallel ranks.
        match_forwards: every rank runs as many forwards as the rank with the most (ZeRO-3).

    Returns:
        The plan, or None when some rank has no rows (nothing to fill with): then every rank
        keeps the plain cut.
    """
    n = len(inert)
    train, idle = (~inert).nonzero().flatten(), inert.nonzero().flatten()
    train_groups, idle_groups = _cut(cut, train), _cut(cut, idle)
    most_train, most_idle, neg_fewest = agree([len(train_groups), len(idle_groups), -n])
    if neg_fewest == 0:
        return None
    most_train = max(most_train, 1)  # the optimizer step follows a backward, even of zero gradient
    if len(train) < most_train and len(idle):
        k = min(most_train - len(train), len(idle))
        train, idle = torch.cat([train, idle[:k]]), idle[k:]
        train_groups, idle_groups = _cut(cut, train), _cut(cut, idle)
    plan = [MicroBatch(rows, backward=False) for rows in idle_groups]
    if match_forwards:
        plan = _to_count(plan, len(idle), most_idle, backward=False)
    plan += _to_count([MicroBatch(rows) for rows in train_groups], len(train), most_train, backward=True)
    return plan


def max_over_ranks(reducer: Reducer, device: torch.device | str = "cpu") -> Callable[[list[int]], list[int]]:
    """The ``agree`` of :func:`with_inert_rows` through the data-parallel reducer."""

    def agree(values: list[int]) -> list[int]:
        gathered, _ = reducer.gather(torch.tensor(values, dtype=torch.float64, device=device))
        return [int(v) for v in gathered.reshape(-1, len(values)).max(0).values.tolist()]

    return agree


def _cut(cut: Callable[[torch.Tensor], list[torch.Tensor]], rows: torch.Tensor) -> list[torch.Tensor]:
    return [rows[g] for g in cut(rows)] if len(rows) else []


def _to_count(plan: list[MicroBatch], n_rows: int, count: int, backward: bool) -> list[MicroBatch]:
    """``plan`` split (while it has rows to split) and then padded with fillers to ``count``."""
    if len(plan) < count and n_rows > len(plan):
        rows = split_to([m.rows for m in plan], min(count, n_rows))
        plan = [MicroBatch(r, backward=backward) for r in rows]
    filler = MicroBatch(torch.zeros(1, dtype=torch.long), backward=backward, filler=True)
    return plan + [filler] * (count - len(plan))
