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
"""

from __future__ import annotations

import torch


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
