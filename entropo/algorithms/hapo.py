"""HAPO: the normalised entropy ĥ and the token-level ``hapo`` advantage. The methods that read
ĥ have their own modules: the adaptive clip :mod:`entropo.algorithms.losses.hapo_clip`, the
adaptive sampling temperature :mod:`entropo.algorithms.hapo_temperature`.

Docs: docs/algorithms.md §4.1 (advantage), §6.5 (clip), §11.1 (temperature).

Normalised log-entropy ĥ (the code's ``compute_entropy_h``; no grad; over the valid tokens of a scope):

    e = log max(H, 1e-8);   μ = nearest-rank q-quantile of e (q = entropy_pivot)
    h = (e − μ) / σ,        σ = sqrt(mean_valid (e − μ)²)        RMS around the pivot, not the std
    pos_max = max(max_{h>0} h, 1e-8),   neg_min = min(min_{h<0} h, −1e-8)
    ĥ = h / pos_max  (h > 0);   ĥ = h / |neg_min|  (h ≤ 0)         signed, the paper's intent
                                ĥ = h / neg_min   (h ≤ 0)          code_compat: ĥ ≥ 0 everywhere

The "hapo" advantage (per group g, |o_i| = valid tokens of response i):

    μ_tok = Σ |o_i| R_i / Σ |o_i|,   σ_tok = sqrt(Σ |o_i| (R_i − μ_tok)² / Σ |o_i|)
    A_i = (R_i − μ_tok) / (σ_tok + ε);   if any |A_i| ≥ 5 in g: A_i = GRPO's A_i for all of g

- Paper: Liu et al., "HAPO: Heterogeneous Adaptive Policy Optimization" (2025); the arXiv id
  could not be confirmed (the README link is a placeholder), so no equation numbers.
- Official code: https://github.com/starriver030515/HAPO/tree/7671dde,
  ``verl/trainer/ppo/core_algos.py`` (``compute_entropy_h``, ``compute_hapo_outcome_advantage``).

Deviations and conventions:
- Sign: the released code uses s⁻ = 1/neg_min < 0, so its ĥ is ≥ 0 for every token and the
  adaptive temperature only ever raises T. Signed ĥ is our default; ``code_compat=True`` reproduces the
  code. :class:`HapoStats` stores the code's s⁻ = 1/neg_min either way; the mode decides its sign.
- The quantile index is ``round(q·(N−1))`` with Python's round (half to even), as the code's
  ``torch_quantile(..., interpolation="nearest")``. With no valid token μ = 0 (the code's
  ``nan_to_num``).
- σ: the code floors the *variance* at 1e-8 (σ ≥ 1e-4), not σ itself; we follow the code.
  ĥ = h/pos_max does not depend on σ, so only the adaptive temperature's h_t is affected, and only when
  every valid log-entropy lies within ~1e-4 of the pivot.
- ĥ is set to 0 on masked positions (the code leaves values there; they never reach the loss).
- "hapo" advantage: the fallback test looks at responses with at least one valid token. The code tests every
  position of ``[g, T]``, padding included, where the score is 0, so ``−μ_tok/σ_tok`` can trigger
  the fallback spuriously (e.g. a constant group, or non-binary rewards); with 0/1 rewards the
  outcome is the same. A singleton group gets A = 0 (its token mean is its reward).
  ``norm_adv_by_std=False`` of the code is not implemented.
- Validated: hand-computed cases (tests/algorithms/test_hapo.py). Not validated: training
  behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropo.algorithms.advantages import advantage_metrics, grpo
from entropo.algorithms.configs.advantages import GRPOConfig, HapoAdvantageConfig
from entropo.algorithms.reduce import LOCAL, Reducer, gather_valid
from entropo.algorithms.registry import ADVANTAGES

# The code's eps in compute_entropy_h: floors H before log (H = 0 would give −inf), floors the
# variance (σ ≥ 1e-4) and bounds pos_max / neg_min away from 0 so that 1/pos_max is finite.
H_HAT_EPS = 1e-8
# compute_hapo_outcome_advantage falls back to GRPO for a group whose token-level advantage
# reaches this magnitude (a near-constant group whose σ_tok is tiny).
FALLBACK_ABS_ADV = 5.0


@dataclass(frozen=True)
class HapoStats:
    """The scope statistics of ĥ, as the code's ``(median, std, scale_pos, scale_neg)``.

    Attributes:
        mu: μ, the pivot quantile of the log-entropy.
        sigma: σ, the RMS deviation of the log-entropy around μ.
        s_pos: s⁺ = 1/pos_max > 0.
        s_neg: s⁻ = 1/neg_min < 0 (the code's value; signed mode uses |s⁻|).
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    s_pos: torch.Tensor
    s_neg: torch.Tensor


def _scope_extremes(x: torch.Tensor, flags: torch.Tensor, reducer: Reducer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max, min)`` of ``x`` over ``flags`` across shards (``−inf``/``inf`` when empty)."""
    sel = x.detach()[flags.bool()]
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    local = torch.stack([sel.max() if sel.numel() else -inf, -sel.min() if sel.numel() else -inf])
    both, _ = reducer.gather(local)
    both = both.view(-1, 2).amax(dim=0)
    return both[0], -both[1]


def apply_scales(h: torch.Tensor, s_pos: torch.Tensor, s_neg: torch.Tensor, code_compat: bool) -> torch.Tensor:
    """ĥ from h: ``h·s⁺`` where h > 0, else ``h·s⁻`` (``code_compat``) or ``h·|s⁻|`` (signed)."""
    return torch.where(h > 0, h * s_pos, h * (s_neg if code_compat else s_neg.abs()))


def entropy_h_hat(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    pivot_quantile: float,
    code_compat: bool,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, HapoStats]:
    """ĥ ``[n, T]`` (0 on masked positions) and the scope's :class:`HapoStats`; no gradient.

    Args:
        entropy: ``[n, T]`` token entropies H (detached inside).
        mask: ``[n, T]`` valid-token mask.
        pivot_quantile: q of the pivot μ (``entropy_pivot``), in [0, 1].
        code_compat: reproduce the released code's non-negative ĥ.
        reducer: spans the scope (identity: these tensors alone).
    """
    valid = mask.bool()
    e = torch.log(entropy.detach().to(torch.promote_types(entropy.dtype, torch.float32)).clamp(min=H_HAT_EPS))
    flat, _ = gather_valid(e, valid, reducer)  # [N_scope]
    if flat.numel() > 0:
        k = round(pivot_quantile * (flat.numel() - 1))  # the code's nearest rank (half to even)
        mu = torch.kthvalue(flat, k + 1).values
    else:
        mu = e.new_zeros(())
    h = e - mu
    sums = reducer.sum(torch.stack([(h.square() * valid).sum(), valid.sum().to(h.dtype)]))
    sigma = (sums[0] / sums[1].clamp(min=1.0)).clamp(min=H_HAT_EPS).sqrt()
    h = h / sigma
    pos_max, _ = _scope_extremes(h, valid & (h > 0), reducer)
    _, neg_min = _scope_extremes(h, valid & (h < 0), reducer)
    pos_max = pos_max.clamp(min=H_HAT_EPS)  # −inf (none above the pivot) → 1e-8
    neg_min = neg_min.clamp(max=-H_HAT_EPS)
    stats = HapoStats(mu=mu, sigma=sigma, s_pos=1.0 / pos_max, s_neg=1.0 / neg_min)
    h_hat = apply_scales(h, stats.s_pos, stats.s_neg, code_compat) * valid
    return h_hat, stats


@ADVANTAGES.register("hapo", config=HapoAdvantageConfig)
def hapo_advantage(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: HapoAdvantageConfig | None = None,
    *,
    mask: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HAPO's token-weighted group normalisation with a per-group fallback to GRPO.

    Args:
        rewards: ``R`` ``[N]``.
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cfg: :class:`HapoAdvantageConfig` (``None`` = defaults).
        mask: valid-token mask ``[N, T]``; required (|o_i| = its row sums).
        entropy: unused (the code passes ``entropys`` and ignores them).
        reducer: unused (groups are whole on each shard).
    """
    cfg = cfg or HapoAdvantageConfig()
    if mask is None:
        raise ValueError("the hapo advantage needs the token mask [N, T] (it weights responses by length)")
    if group_ids.is_floating_point() or rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError("rewards and group_ids must both be [N], group_ids an integer tensor")
    r = rewards.detach().to(torch.float32) if not rewards.is_floating_point() else rewards.detach()
    length = mask.detach().to(r.dtype).sum(-1)  # [N] |o_i|
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] in 0..K-1
    zeros = r.new_zeros(int(inv.max()) + 1 if inv.numel() else 0)
    weight = zeros.index_add(0, inv, length)  # [K] Σ |o_i|
    mu = (zeros.index_add(0, inv, length * r) / weight.clamp(min=1.0))[inv]  # [N]
    var = zeros.index_add(0, inv, length * (r - mu) ** 2) / weight.clamp(min=1.0)
    adv = (r - mu) / (var.sqrt()[inv] + cfg.eps)  # [N]
    big = ((adv.abs() >= FALLBACK_ABS_ADV) & (length > 0)).to(r.dtype)
    fallback = (zeros.scatter_reduce(0, inv, big, reduce="amax", include_self=False) > 0)[inv]
    grpo_adv, _ = grpo(r, group_ids, GRPOConfig(eps=cfg.eps))
    adv = torch.where(fallback, grpo_adv, adv)
    metrics = advantage_metrics(adv)
    metrics["adv/hapo_fallback_frac"] = fallback.to(r.dtype).mean() if adv.numel() else r.new_zeros(())
    return adv, metrics
