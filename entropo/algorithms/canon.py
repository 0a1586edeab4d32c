"""CANON: conditional advantage estimation (docs/algorithms.md §4.2), registered as the estimator ``canon``.

Within each group g (the n_g responses of one prompt), with ``h_i`` the split metric of
response i (its token-mean π_old entropy, or its length):

    sort g by h (stable: ties keep batch order);  L = the first ⌊n_g/2⌋,  U = the rest
    m_L, m_U = mean reward over L and over U
    i ∈ U:  A_i = μ·(R_i − α·m_L + β) + (1−μ)·(R_i − m_U)
    i ∈ L:  A_i = μ·(α·R_i − m_U − β) + (1−μ)·(R_i − m_L)
    A_{i,t} = A_i / D · m_{i,t},   D = max_response_length under seq-mean-token-sum, else 1

μ = 1 is pure inter-group comparison (each half against the other half's mean), μ = 0 pure
intra-group comparison; with α = 1, β = 0 and |L| = |U|, μ = 0.5 gives Dr.GRPO's R_i − mean R.

- Paper: Chen et al., "Conditional Advantage Estimation for RL in Large Reasoning Models",
  arXiv 2509.23962 (ICLR 2026), Eq. 5 (μ) and Eq. 8 (α).
- Official code: ``compute_dr_entropy_per_token_group_outcome_advantage`` (adv_estimator
  ``dr_entropy_token_budget``) and ``compute_dr_length_on_mean_group_outcome_advantage``
  (``dr_length_on_mean``) in ``verl/trainer/ppo/core_algos.py``,
  https://github.com/biuboomc/CANON/tree/7d6f814 (read at f3ee9fc, the version stored with
  the same functions); D is chosen in ``ray_trainer.py`` from ``loss_agg_mode``.

Conventions and deviations:
- D is not applied here: the estimator returns ``A_i``, and :func:`canon_token_scale` gives the
  factor ``1/D`` for the controller to multiply in (it depends on the aggregation mode, which
  is not this estimator's config).
- Singleton groups: the code sets both subgroup means to 0, so ``A = R + μ·β`` (``A = R`` at
  the defaults). ``singleton_zero=True`` gives ``A = 0`` instead (a group of one carries no
  comparison, so no signal).
- ``metric="length"``: the official length variant places α on the other terms
  (``U: μ(α·R_i − m_L + β)``, ``L: μ(R_i − α·m_U − β)``). We use the entropy variant's
  formula above for both metrics; the two agree at the default α = 1.
- h_i is ``Σ_t H·m / max(Σ_t m, 1)``: verl's ``masked_mean`` adds 1e-8 to the denominator
  instead, which can only reorder responses whose h differ by about 1e-8 relative.
- Groups must not straddle shards (as for every estimator in :mod:`advantages`); ``reducer``
  is accepted for the uniform signature and ignored.
- Advantages carry no gradient: rewards and entropies are detached.
"""

from __future__ import annotations

import torch

from entropo.algorithms.advantages import advantage_metrics
from entropo.algorithms.configs.advantages import CanonConfig
from entropo.algorithms.configs.reduction import AGG_MODES
from entropo.algorithms.reduce import LOCAL, Reducer
from entropo.algorithms.registry import ADVANTAGES


def canon_token_scale(loss_agg_mode: str, max_response_length: int) -> float:
    """The factor ``1/D`` that CANON's code multiplies into every advantage.

    The official trainer divides A by ``D = max_response_length`` when the loss is aggregated
    with ``seq-mean-token-sum`` (the CANON recipes' mode, which then equals Dr.GRPO's
    normalisation) and by 1 otherwise. Apply it to the per-response advantages (or the
    token-broadcast ones) before the loss.

    Args:
        loss_agg_mode: the policy loss's aggregation mode, one of ``AGG_MODES``.
        max_response_length: the rollout's maximum response length (> 0).

    Returns:
        ``1/max_response_length`` for ``seq-mean-token-sum``, else 1.0.
    """
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode '{loss_agg_mode}'; choose one of {AGG_MODES}")
    if max_response_length <= 0:
        raise ValueError(f"max_response_length must be > 0, got {max_response_length}")
    return 1.0 / max_response_length if loss_agg_mode == "seq-mean-token-sum" else 1.0


def _split_metric(
    cfg: CanonConfig, mask: torch.Tensor | None, entropy: torch.Tensor | None
) -> torch.Tensor:
    """``h_i`` ``[N]``: token-mean entropy or length of each response."""
    if mask is None:
        raise ValueError("canon needs the token mask [N, T] (mask=...) to compute its split metric")
    m = mask.detach() > 0
    length = m.sum(-1)  # [N]
    if cfg.metric == "length":
        return length.to(torch.float64)
    if entropy is None:
        raise ValueError(
            "canon with metric='entropy' needs the π_old token entropies [N, T] (entropy=...); "
            "set algorithm.canon.metric='length' to split by response length instead"
        )
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} must match")
    h = torch.where(m, entropy.detach(), torch.zeros_like(entropy)).to(torch.float64)
    return h.sum(-1) / length.clamp(min=1)


def canon_split(metric: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Which responses form the high half U of their group.

    Args:
        metric: ``h`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).

    Returns:
        ``[N]`` bool: True for U (the ``n_g − ⌊n_g/2⌋`` largest h of the group; ties in h are
        ordered by batch position, earlier = lower), False for L.
    """
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N]
    order = torch.sort(metric, stable=True).indices  # by h, ties by position
    order = order[torch.sort(inv[order], stable=True).indices]  # group-major, h within group
    size = torch.bincount(inv)  # [K]
    start = torch.cumsum(size, 0) - size  # [K]
    g_sorted = inv[order]
    rank = torch.arange(metric.numel(), device=metric.device) - start[g_sorted]  # [N]
    high = torch.empty_like(inv, dtype=torch.bool)
    high[order] = rank >= size[g_sorted] // 2
    return high


@ADVANTAGES.register("canon", config=CanonConfig, needs_adv_variation=True, needs=("entropy",),
                     token_scale=canon_token_scale)
def canon(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: CanonConfig | None = None,
    *,
    mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CANON advantages ``A_i`` ``[N]`` (without the ``1/D`` factor) and metrics.

    Args:
        rewards: ``R`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cfg: :class:`CanonConfig` (``None`` = defaults).
        mask: valid-token mask ``[N, T]``; required (token-mean and length).
        entropy: π_old token entropies ``[N, T]``; required when ``cfg.metric == "entropy"``.
        reducer: unused (groups are whole on each shard).

    Returns:
        ``A`` ``[N]`` in the rewards' float dtype, and metrics: ``adv/...`` and, over groups of
        at least 2 responses on this shard, ``canon/h_low_mean`` and ``canon/h_high_mean``
        (mean h over L and U), ``canon/gap_mean`` (mean ``m_U − m_L``) and
        ``canon/high_better_frac`` (fraction of groups with ``m_U > m_L``).
    """
    cfg = cfg or CanonConfig()
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if group_ids.is_floating_point():
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    rewards = rewards.detach()
    rewards = rewards if rewards.is_floating_point() else rewards.to(torch.float32)
    h = _split_metric(cfg, mask, entropy)  # [N] float64
    high = canon_split(h, group_ids)  # [N]

    _, inv = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inv.max()) + 1 if inv.numel() else 0
    key = 2 * inv + high.long()  # [N]: subgroup (g, L) = 2g, (g, U) = 2g + 1
    r64 = rewards.to(torch.float64)
    zeros = r64.new_zeros(2 * num_groups)
    count = zeros.index_add(0, key, torch.ones_like(r64))  # [2K]
    mean = zeros.index_add(0, key, r64) / count.clamp(min=1)  # [2K], 0 for an empty half
    size = (count[0::2] + count[1::2])[inv]  # [N] n_g
    singleton = size == 1
    # The code's singleton: both subgroup means are 0.
    m_low = torch.where(singleton, 0.0, mean[0::2][inv])  # [N]
    m_high = torch.where(singleton, 0.0, mean[1::2][inv])  # [N]
    a_high = cfg.mu * (r64 - cfg.alpha * m_low + cfg.beta) + (1 - cfg.mu) * (r64 - m_high)
    a_low = cfg.mu * (cfg.alpha * r64 - m_high - cfg.beta) + (1 - cfg.mu) * (r64 - m_low)
    adv = torch.where(high, a_high, a_low)
    if cfg.singleton_zero:
        adv = torch.where(singleton, torch.zeros_like(adv), adv)
    adv = adv.to(rewards.dtype)

    metrics = advantage_metrics(adv)
    multi = (count[0::2] + count[1::2]) >= 2  # [K] groups with both halves non-empty
    resp_multi = multi[inv]  # [N]
    gap = (mean[1::2] - mean[0::2])[multi]  # [K_multi]

    def avg(x: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:  # 0 when empty
        return (x * sel).sum() / sel.sum().clamp(min=1)

    metrics["canon/h_low_mean"] = avg(h, resp_multi & ~high)
    metrics["canon/h_high_mean"] = avg(h, resp_multi & high)
    metrics["canon/gap_mean"] = gap.mean() if gap.numel() else h.new_zeros(())
    metrics["canon/high_better_frac"] = (
        (gap > 0).to(torch.float64).mean() if gap.numel() else h.new_zeros(())
    )
    return adv, metrics
