"""QAE: Quantile Advantage Estimation, registered as the estimator ``qae``.

Within each group g (the n_g responses of one prompt), GRPO's mean baseline is replaced by the
group's K-quantile of the rewards:

    b_g = Q_K(R_j : j ∈ g)                    torch.quantile(·, K), linear interpolation
    A_i = (R_i − b_g) / (std_g R + ε)          std_norm=True (default: the official code)
    A_i =  R_i − b_g                           std_norm=False
    std_g: unbiased (Bessel) std around the group *mean*, as verl's torch.std; ε = 1e-6

With binary rewards and success rate p = c/n_g this is a response-level gate: on a hard prompt
(p ≤ 1 − K) b_g = 0, so only the correct responses get an advantage (positive); on an easy one
(p > 1 − K) b_g = 1, so only the incorrect ones do (negative). The gate is exact at every group
size with ``interpolation="inverted_cdf"``; under the code's linear interpolation a group whose
quantile position K·(n_g − 1) falls between its last 0 and its first 1 gets a fractional b_g,
and both kinds of response then get an advantage (at n_g = 16 and K = 0.4 no group does).

- Paper: Wu, Huang, Wu, Zhang, Wang, He, "Quantile Advantage Estimation for Entropy-Safe
  Reasoning" (v2: "... Stabilizing RLVR for LLM Reasoning"), arXiv 2509.22611. The method
  section and its equation numbers were not available here; the formula above is the code's.
- Official code: https://github.com/junkangwu/QAE (verl fork), README "One-Line Core Change":
  in ``compute_grpo_outcome_advantage`` (``verl/trainer/ppo/core_algos.py``) the group mean
  becomes ``torch.quantile(scores_tensor, quantile_k)`` when ``0 < quantile_k < 1``; the run
  scripts pass ``++algorithm.quantile_k=0.4`` to the DAPO recipe. The repository is not stored
  here, so no commit can be given: the README was read through a mirror of its page. The
  surrounding function is verl's, read at volcengine/verl @ 012be9d9d (same file and
  function): singleton groups get mean 0 and std 1, and ``norm_adv_by_std_in_grpo`` (default
  True, not set by verl's DAPO scripts, read at verl @ 03150d4 ``recipe/dapo/run_dapo_qwen2.5_32b.sh``)
  divides by ``torch.std + 1e-6``.

Conventions and deviations (each a named option or stated here):
- ``interpolation``: ``linear`` is the code's (torch.quantile's default); ``lower``,
  ``higher``, ``midpoint``, ``nearest`` are torch.quantile's others; ``inverted_cdf`` is the
  smallest reward whose empirical CDF reaches K (``b = R_(⌈K·n⌉)``), which makes the paper's
  gate ``p ≤ 1 − K`` exact for every n_g.
- ``std_norm=False`` is verl's ``norm_adv_by_std_in_grpo=False`` (no scaling).
- K is restricted to (0, 1): the code falls back to the mean outside it, which is ``grpo``.
- A group of one response keeps verl's zero baseline: ``A = R/(1 + ε)`` (``R`` unscaled).
- A group whose rewards are all equal gets ``A = 0`` exactly (b_g equals the common reward).
- Groups must not straddle shards (as for every estimator in :mod:`advantages`); there is no
  batch statistic, and ``reducer`` is accepted for the uniform signature and ignored.
- Advantages carry no gradient: rewards are detached. Metrics count this shard's responses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from entropo.algorithms.advantages import _check, _group_stats, advantage_metrics
from entropo.algorithms.configs.advantages import QaeConfig
from entropo.algorithms.reduce import LOCAL, Reducer
from entropo.algorithms.registry import ADVANTAGES

# K·n in float64 can land one ulp above an integer (0.7·10 = 7.000000000000001), which would
# move inverted_cdf's ⌈K·n⌉ one rank up; ranks closer than this to an integer count as it.
RANK_TOL = 1e-9


class _Table(NamedTuple):
    """The groups as rows of a NaN-padded matrix, and the way back to the responses."""

    values: torch.Tensor  # [B, max n_g] rewards of each group, NaN after its n_g entries
    size: torch.Tensor  # [B] n_g
    inv: torch.Tensor  # [N] row of each response's group


def _table(rewards: torch.Tensor, group_ids: torch.Tensor) -> _Table:
    uniq, inv = torch.unique(group_ids, return_inverse=True)  # inv: [N] in 0..B-1
    order = torch.argsort(inv, stable=True)  # [N], grouped rows
    size = torch.bincount(inv, minlength=uniq.numel())  # [B]
    start = torch.cumsum(size, 0) - size  # [B]
    col = torch.arange(rewards.numel(), device=rewards.device) - start[inv[order]]  # [N]
    values = rewards.new_full((uniq.numel(), int(size.max()) if rewards.numel() else 0), math.nan)
    values[inv[order], col] = rewards[order]
    return _Table(values, size, inv)


def _quantile(t: _Table, k: float, interpolation: str) -> torch.Tensor:
    """Q_K of each group ``[B]``: row by row, what ``torch.quantile`` gives on the group alone."""
    if t.values.numel() == 0:  # an empty shard (torch.quantile refuses empty input)
        return t.values.new_zeros(t.size.shape)
    if interpolation != "inverted_cdf":
        return torch.nanquantile(t.values, k, dim=1, interpolation=interpolation)  # [B]
    ranks = torch.ceil(k * t.size.to(torch.float64) - RANK_TOL).long().clamp(min=1) - 1  # [B]
    ordered = t.values.nan_to_num(nan=math.inf).sort(dim=1).values  # padding sorts last
    return ordered.gather(1, ranks.unsqueeze(1)).squeeze(1)  # [B]


def group_quantile(
    rewards: torch.Tensor, group_ids: torch.Tensor, k: float, interpolation: str
) -> torch.Tensor:
    """Q_K of each response's group ``[N]`` (``interpolation``: one of :data:`QAE_INTERPOLATIONS`)."""
    t = _table(rewards, group_ids)
    return _quantile(t, k, interpolation)[t.inv]


@ADVANTAGES.register("qae", config=QaeConfig)
def qae(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: QaeConfig | None = None,
    *,
    mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """QAE: ``(R − Q_K(R_g))/(std_g R + ε)`` (or unscaled); a singleton group gives ``R/(1 + ε)``.

    Args:
        rewards: ``R`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cfg: :class:`QaeConfig` (``None`` = defaults).
        mask: unused (the advantage is per response).
        entropy: unused (accepted so that every estimator is called alike).
        reducer: unused (groups are whole on each shard).

    Returns:
        The advantage ``[N]`` and metrics: :func:`advantage_metrics`; ``qae/baseline_mean``
        (mean b over responses), ``qae/pos_frac``, ``qae/neg_frac`` (responses with A > 0, A < 0);
        ``qae/hard_frac``, ``qae/easy_frac``: of the groups of ≥ 2 responses, those with unequal
        rewards whose baseline is their minimum (only better responses get A, all > 0) or their
        maximum (only worse ones get A, all < 0).
    """
    cfg = cfg or QaeConfig()
    rewards = _check(rewards, group_ids)
    g = _group_stats(rewards, group_ids)
    t = _table(rewards, group_ids)
    q = _quantile(t, cfg.k, cfg.interpolation)  # [B]
    single = g.size == 1
    base = torch.where(single, torch.zeros_like(rewards), q[t.inv])  # [N] verl: singleton baseline 0
    adv = torch.where(g.constant & ~single, torch.zeros_like(rewards), rewards - base)  # [N]
    if cfg.std_norm:
        std = (g.sq_dev / (g.size - 1).clamp(min=1)).sqrt()  # [N] unbiased, around the mean
        adv = adv / (torch.where(single, torch.ones_like(std), std) + cfg.eps)  # verl: singleton std = 1
    metrics = advantage_metrics(adv)
    metrics.update(_gate_metrics(t, q, base, adv))
    return adv, metrics


def _gate_metrics(t: _Table, q: torch.Tensor, base: torch.Tensor, adv: torch.Tensor) -> dict[str, torch.Tensor]:
    if adv.numel() == 0:
        zero = adv.new_zeros(())
        return {f"qae/{k}": zero for k in ("baseline_mean", "pos_frac", "neg_frac", "hard_frac", "easy_frac")}
    gmin = t.values.nan_to_num(nan=math.inf).amin(dim=1)  # [B]
    gmax = t.values.nan_to_num(nan=-math.inf).amax(dim=1)  # [B]
    sized = t.size > 1  # [B]
    mixed = sized & (gmin < gmax)  # [B]
    groups = sized.sum().clamp(min=1).to(adv.dtype)
    return {
        "qae/baseline_mean": base.mean(),
        "qae/pos_frac": (adv > 0).to(adv.dtype).mean(),
        "qae/neg_frac": (adv < 0).to(adv.dtype).mean(),
        "qae/hard_frac": (mixed & (q == gmin)).sum().to(adv.dtype) / groups,
        "qae/easy_frac": (mixed & (q == gmax)).sum().to(adv.dtype) / groups,
    }
