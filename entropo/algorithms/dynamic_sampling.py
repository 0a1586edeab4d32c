"""DAPO dynamic sampling: drop groups whose metric does not vary (docs/algorithms.md §10).

With ``M_i`` the filter metric of response ``i`` and ``g`` its group (the ``n_g`` responses of
one prompt):

    keep g  ⇔  n_g = 1  or  std_pop({M_i}_{i∈g}) > 0

Kept groups are accumulated over successive generation batches until at least
``train_batch_size`` prompts are kept, then truncated to exactly ``train_batch_size`` groups
(``train_batch_size × G`` trajectories). Past ``max_num_gen_batches`` generation batches the
step fails (0 = retry forever).

Sources:
- Paper: Yu et al., "DAPO: An Open-Source LLM RL System at Scale", arXiv 2503.14476, Sec. 3.2
  (the constraint ``0 < |{o_i | is_equivalent(a, o_i)}| < G`` of the DAPO objective).
- Code: verl DAPO trainer, ``recipe/dapo/dapo_ray_trainer.py`` (``filter_groups``), in the
  Entropy-Mechanism fork at https://github.com/PRIME-RL/Entropy-Mechanism-of-RL/tree/8850579;
  upstream, the recipe lives in ``verl-project/verl-recipe``.

Deviations and conventions:
- "Zero std" is tested as ``min == max`` over the group: exactly "all values equal". verl's
  ``np.std(...) > 0`` can see rounding residue (std ≈ 1e-17 for three copies of 0.1) and then
  keeps a group that does not vary.
- verl truncates the accumulated batch to its first ``train_batch_size × G`` rows, which
  assumes every group has exactly ``G`` contiguous rows. :func:`select_groups` instead takes
  the first ``train_batch_size`` kept groups in order of first appearance, whole; with
  ``G`` rows per group that is the same selection.
- Group ids must be unique across the generation batches that are accumulated (one id per
  prompt draw), so that two batches' groups never merge.
- The all-correct / all-wrong fractions read the metric as binary correctness: a response is
  correct iff ``M > 0``, which covers both {0, 1} and DAPO's {−1, +1} scores.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.dapo import DynamicSamplingConfig


class DynamicSamplingExhausted(RuntimeError):
    """Too many generation batches without enough kept prompts."""


def _groups(
    metric: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group size, min and max of ``metric`` and each response's group index."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)  # inv: [N] in 0..K-1
    zeros = metric.new_zeros(uniq.numel())
    size = zeros.index_add(0, inv, torch.ones_like(metric))  # [K]
    gmin = zeros.scatter_reduce(0, inv, metric, reduce="amin", include_self=False)  # [K]
    gmax = zeros.scatter_reduce(0, inv, metric, reduce="amax", include_self=False)  # [K]
    return size, gmin, gmax, inv


def group_keep_mask(metric: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Which responses survive the filter: ``[N]`` bool, whole groups at a time.

    Args:
        metric: filter metric ``M`` per response ``[N]`` (e.g. accuracy in {0, 1}).
        group_ids: group of each response ``[N]`` (integer ids, any order).

    Returns:
        ``keep`` ``[N]``: True for every response of a group that has more than one distinct
        value, and for every group of one response.
    """
    metric = metric.detach().to(torch.float64)
    size, gmin, gmax, inv = _groups(metric, group_ids)
    return ((gmin != gmax) | (size == 1))[inv]  # [N]


def dynamic_sampling_metrics(
    metric: torch.Tensor, group_ids: torch.Tensor, keep: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``sampling/...`` metrics of one generation batch, one count per group.

    Args:
        metric: filter metric ``M`` per response ``[N]``.
        group_ids: group of each response ``[N]``.
        keep: result of :func:`group_keep_mask` ``[N]``.

    Returns:
        ``sampling/kept_groups`` (count), ``sampling/kept_group_frac``, and, reading ``M > 0`` as
        correct, ``sampling/all_correct_frac`` and ``sampling/all_wrong_frac``.
    """
    metric = metric.detach().to(torch.float64)
    _, gmin, gmax, inv = _groups(metric, group_ids)
    kept = torch.zeros_like(gmin, dtype=torch.bool).index_fill(0, inv[keep], True)  # [K]
    num_groups = max(gmin.numel(), 1)
    return {
        "sampling/kept_groups": kept.sum().to(torch.float32),
        "sampling/kept_group_frac": kept.sum().to(torch.float32) / num_groups,
        "sampling/all_correct_frac": (gmin > 0).sum().to(torch.float32) / num_groups,
        "sampling/all_wrong_frac": (gmax <= 0).sum().to(torch.float32) / num_groups,
    }


def need_more_batches(
    num_kept_prompts: int, target_prompts: int, num_gen_batches: int, cfg: DynamicSamplingConfig
) -> bool:
    """Whether to generate another batch; raise once ``max_num_gen_batches`` is spent.

    Args:
        num_kept_prompts: kept groups accumulated so far, over all generation batches.
        target_prompts: prompts the training step needs (``train_batch_size``).
        num_gen_batches: generation batches produced so far, including the latest.
        cfg: the dynamic sampling config.

    Raises:
        DynamicSamplingExhausted: still short of ``target_prompts`` after
            ``cfg.max_num_gen_batches`` batches (never when it is 0).
    """
    if num_kept_prompts >= target_prompts:
        return False
    if cfg.max_num_gen_batches > 0 and num_gen_batches >= cfg.max_num_gen_batches:
        raise DynamicSamplingExhausted(
            f"dynamic sampling kept {num_kept_prompts} of the {target_prompts} prompts needed "
            f"after {num_gen_batches} generation batches (max_num_gen_batches="
            f"{cfg.max_num_gen_batches}). Too many groups are all-correct or all-wrong: check the "
            "data difficulty, oversample (a larger generation batch), or set "
            "max_num_gen_batches=0 to retry forever."
        )
    return True


def select_groups(group_ids: torch.Tensor, keep: torch.Tensor, target_prompts: int) -> torch.Tensor:
    """Row indices of the first ``target_prompts`` kept groups, in row order.

    Args:
        group_ids: group of each accumulated response ``[N]`` (unique per prompt draw).
        keep: ``[N]`` bool from :func:`group_keep_mask`, concatenated like ``group_ids``.
        target_prompts: groups to keep (``train_batch_size``).

    Returns:
        ``[M]`` int64 indices into the accumulated batch: every kept row of the first
        ``target_prompts`` kept groups (first appearance order), ``M = target_prompts × G`` when
        each group has ``G`` rows.

    Raises:
        ValueError: fewer than ``target_prompts`` groups are kept.
    """
    rows = keep.nonzero().squeeze(-1)  # [R] kept rows, in order
    uniq, inv = torch.unique(group_ids[rows], return_inverse=True)  # inv: [R]
    if uniq.numel() < target_prompts:
        raise ValueError(
            f"select_groups needs {target_prompts} kept groups but only {uniq.numel()} are kept; "
            "call need_more_batches() before selecting"
        )
    order = torch.arange(rows.numel(), device=rows.device)
    first = torch.full((uniq.numel(),), rows.numel(), dtype=order.dtype, device=rows.device)
    first = first.scatter_reduce(0, inv, order, reduce="amin")  # [K] first row of each group
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(first.numel(), device=rows.device)  # appearance rank
    return rows[rank[inv] < target_prompts]
