"""Outcome advantage estimators: GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline (docs/algorithms.md §4).

``R_i`` is the scalar reward of response ``i`` and ``g(i)`` its group (the responses of one
prompt, of size ``n_g``). Every estimator gives one advantage per response, broadcast to its
valid tokens as ``A_{i,t} = A_i · m_{i,t}`` by :func:`broadcast_to_tokens`:

    grpo                   A_i = (R_i − mean_g R) / (std_g R + ε)      std unbiased (Bessel), ε = 1e-6
    dr_grpo                A_i = R_i − mean_g R
    rloo                   A_i = R_i − (1/(n_g−1)) Σ_{j∈g, j≠i} R_j = n_g/(n_g−1) · (R_i − mean_g R)
    reinforce_pp_baseline  a_i = R_i − mean_g R,  A_i = (a_i − μ_B) / sqrt(σ²_B + 1e-8)
                           μ_B, σ²_B: token-weighted mean and unbiased variance of a over all
                           valid tokens of the batch (response i weighted by |o_i| = Σ_t m_{i,t})

Sources:
- GRPO: Shao et al., DeepSeekMath, arXiv 2402.03300, Sec. 4.1.2 (outcome supervision).
- Dr.GRPO: Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783;
  https://github.com/sail-sg/understand-r1-zero. Pair it with the ``seq-mean-token-sum-norm``
  aggregation in :mod:`entropo.algorithms.aggregate`.
- RLOO: Kool et al., "Buy 4 REINFORCE Samples, Get a Baseline for Free!" (ICLR 2019 DeepRLStructPred
  workshop); Ahmadian et al., "Back to Basics", arXiv 2402.14740 (the RLOO estimator).
- REINFORCE++-baseline: Hu et al., "REINFORCE++", arXiv 2501.03262.
- Equation numbers of these papers were not re-checked for this module; the formulas above
  are the ones the official code computes.
- Code: verl ``compute_grpo_outcome_advantage`` (``norm_adv_by_std_in_grpo=False`` is Dr.GRPO),
  ``compute_rloo_outcome_advantage``, ``compute_reinforce_plus_plus_baseline_outcome_advantage``
  and ``verl_F.masked_whiten``:
  https://github.com/volcengine/verl/blob/b178a3cd5/verl/trainer/ppo/core_algos.py (GRPO and
  Dr.GRPO read at this commit); RLOO and REINFORCE++-baseline read at verl 012be9d9d,
  ``masked_whiten`` / ``masked_var`` in ``verl/utils/torch_functional.py`` at verl 03c8cca18.

Conventions (all follow verl unless marked as a deviation):
- Groups are given by ``group_ids`` (any integer ids, in any order). A group of one response
  has no baseline: verl uses mean 0 (and std 1 for GRPO), so ``A = R`` for ``dr_grpo`` and
  ``rloo``, ``A = R/(1 + ε)`` for ``grpo`` (the formula with std 1, as verl computes it; equal
  to ``A = R`` up to a relative 1e-6), and ``a = R`` before whitening for
  ``reinforce_pp_baseline``.
  RLOO's leave-one-out mean over zero other responses is undefined; the zero baseline is
  verl's choice, kept so that all four estimators treat singletons alike.
- ``std_g`` is the unbiased std, as ``torch.std`` in verl.
- REINFORCE++-baseline whitens with the unbiased (Bessel, n/(n−1) with n = number of valid
  tokens) variance and ``rsqrt(σ² + 1e-8)``, as verl's ``masked_whiten`` (its ``masked_var``
  defaults to ``unbiased=True``). With fewer than 2 valid tokens verl raises; we use the
  biased variance there instead (which is 0, so every advantage is 0).
- Deviation: a group whose rewards are all equal gets ``A = 0`` exactly. verl computes
  ``(R − mean)/(std + ε)``, which for non-binary rewards such as 0.1 can leave rounding residue
  of order 1e-8/1e-6 = 1e-2 instead of 0.
- Groups must not straddle shards: group statistics are computed from the responses this
  process holds. Only REINFORCE++-baseline has a batch statistic (the whitening), and it goes
  through the injected ``reducer`` so that its scope is the whole batch across ranks. The other
  estimators accept ``reducer`` for a uniform signature and ignore it.
- Metrics are over this shard's responses, one count per response (not per token).
- Advantages carry no gradient: rewards are detached (docs/algorithms.md §4).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch

from entropo.algorithms.configs.advantages import GRPOConfig
from entropo.algorithms.reduce import LOCAL, Reducer
from entropo.algorithms.registry import ADVANTAGES

# verl's masked_whiten adds this to the variance before rsqrt, so that a batch whose centred
# rewards are all equal gives 0 instead of 0/0.
WHITEN_VAR_EPS = 1e-8


class AdvantageFn(Protocol):
    """The signature every registered advantage estimator has.

    ``entropy`` is the π_old token entropy ``[N, T]`` for estimators that split on it (CANON);
    the others ignore it, so the controller calls every estimator with ``mask=``, ``entropy=``
    and ``reducer=``. Returns the per-response advantage ``[N]`` and metrics (``adv/...``).
    """

    def __call__(
        self,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        cfg: Any,
        *,
        mask: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        reducer: Reducer = LOCAL,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def broadcast_to_tokens(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``A_{i,t} = A_i · m_{i,t}``: per-response advantage ``[N]`` to tokens ``[N, T]``."""
    return adv.unsqueeze(-1) * mask.to(adv.dtype)  # [N, T]


class _Groups(NamedTuple):
    """Per-response view of its group's statistics, all ``[N]``."""

    size: torch.Tensor  # n_g of the response's group (float)
    mean: torch.Tensor  # mean_g R
    sq_dev: torch.Tensor  # Σ_{j∈g} (R_j − mean_g R)²
    constant: torch.Tensor  # bool: every reward of the group is equal


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> _Groups:
    """Two-pass group mean and squared deviation, gathered back to each response."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)  # inv: [N] in 0..K-1
    zeros = rewards.new_zeros(uniq.numel())
    size = zeros.index_add(0, inv, torch.ones_like(rewards))  # [K]
    mean = zeros.index_add(0, inv, rewards) / size  # [K]
    sq_dev = zeros.index_add(0, inv, (rewards - mean[inv]) ** 2)  # [K]
    gmin = zeros.scatter_reduce(0, inv, rewards, reduce="amin", include_self=False)  # [K]
    gmax = zeros.scatter_reduce(0, inv, rewards, reduce="amax", include_self=False)  # [K]
    return _Groups(size[inv], mean[inv], sq_dev[inv], (gmin == gmax)[inv])


def _check(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if group_ids.is_floating_point():
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    rewards = rewards.detach()
    return rewards if rewards.is_floating_point() else rewards.to(torch.float32)


def _centred(rewards: torch.Tensor, g: _Groups) -> torch.Tensor:
    """``R − mean_g R`` with verl's zero baseline for singletons and exact 0 for constant groups."""
    a = torch.where(g.constant, torch.zeros_like(rewards), rewards - g.mean)
    return torch.where(g.size == 1, rewards, a)  # [N]


def advantage_metrics(adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """``adv/...`` metrics over this shard's responses (one count per response)."""
    if adv.numel() == 0:
        zero = adv.new_zeros(())
        return {f"adv/{k}": zero for k in ("zero_frac", "abs_mean", "mean", "max", "min")}
    return {
        "adv/zero_frac": (adv == 0).to(adv.dtype).mean(),
        "adv/abs_mean": adv.abs().mean(),
        "adv/mean": adv.mean(),
        "adv/max": adv.max(),
        "adv/min": adv.min(),
    }


@ADVANTAGES.register("grpo", config=GRPOConfig)
def grpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: GRPOConfig | None = None,
    *,
    mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO: ``(R − mean_g R)/(std_g R + ε)``; a singleton group gives ``A = R/(1 + ε)``.

    Args:
        rewards: ``R`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cfg: :class:`GRPOConfig` (``None`` = defaults).
        mask: unused (the advantage is per response).
        entropy: unused (accepted so that every estimator is called alike).
        reducer: unused (groups are whole on each shard).
    """
    cfg = cfg or GRPOConfig()
    rewards = _check(rewards, group_ids)
    g = _group_stats(rewards, group_ids)
    std = (g.sq_dev / (g.size - 1).clamp(min=1)).sqrt()  # [N] unbiased
    std = torch.where(g.size == 1, torch.ones_like(std), std)  # verl: singleton std = 1
    adv = _centred(rewards, g) / (std + cfg.eps)
    return adv, advantage_metrics(adv)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: None = None,
    *,
    mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dr.GRPO: ``R − mean_g R``; a singleton group gives ``A = R``.

    Args:
        rewards: ``R`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cfg: unused (no hyperparameters).
        mask: unused (the advantage is per response).
        entropy: unused (accepted so that every estimator is called alike).
        reducer: unused (groups are whole on each shard).
    """
    rewards = _check(rewards, group_ids)
    adv = _centred(rewards, _group_stats(rewards, group_ids))
    return adv, advantage_metrics(adv)


@ADVANTAGES.register("rloo")
def rloo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: None = None,
    *,
    mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLOO: ``R_i − mean_{j≠i} R_j``; a singleton group gives ``A = R`` (zero baseline).

    Args:
        rewards: ``R`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cfg: unused (no hyperparameters).
        mask: unused (the advantage is per response).
        entropy: unused (accepted so that every estimator is called alike).
        reducer: unused (groups are whole on each shard).
    """
    rewards = _check(rewards, group_ids)
    g = _group_stats(rewards, group_ids)
    scale = torch.where(g.size == 1, torch.ones_like(g.size), g.size / (g.size - 1).clamp(min=1))
    adv = _centred(rewards, g) * scale  # [N]
    return adv, advantage_metrics(adv)


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: None = None,
    *,
    mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the batch's valid tokens.

    Args:
        rewards: ``R`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cfg: unused (no hyperparameters).
        mask: valid-token mask ``[N, T]``; required (it weights each response by its length).
        entropy: unused (accepted so that every estimator is called alike).
        reducer: scope of the whitening statistics; :data:`LOCAL` = this process's responses,
            a distributed reducer = the whole batch across ranks.
    """
    if mask is None:
        raise ValueError(
            "reinforce_pp_baseline needs the token mask [N, T] (it whitens over tokens)"
        )
    rewards = _check(rewards, group_ids)
    a = _centred(rewards, _group_stats(rewards, group_ids))  # [N]
    length = mask.detach().to(a.dtype).sum(-1)  # [N] valid tokens per response
    first = reducer.sum(torch.stack([(length * a).sum(), length.sum()]))
    num_tokens = first[1]
    mu = first[0] / num_tokens.clamp(min=1)
    sq = reducer.sum((length * (a - mu) ** 2).sum())
    bessel = torch.where(num_tokens > 1, num_tokens / (num_tokens - 1).clamp(min=1), 1.0)
    var = sq / num_tokens.clamp(min=1) * bessel
    adv = (a - mu) * torch.rsqrt(var + WHITEN_VAR_EPS)  # [N]
    metrics = advantage_metrics(adv)
    metrics["adv/whiten_mean"] = mu
    metrics["adv/whiten_std"] = var.sqrt()
    return adv, metrics
