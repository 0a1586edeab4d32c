"""Multiplicative advantage reshapers, applied after the estimator (at most one; docs/algorithms.md
§4.3).

``A_i`` is the estimator's per-response advantage, ``g`` a group (the responses of one prompt).

SEED-GRPO, ``seed``, with the group's answers clustered by meaning into C_1..C_K and
``p(C_k) = |C_k| / n_g`` (the count share):

    SE_mc(q)     = −(1/K) Σ_k log p(C_k)            (the paper's Monte-Carlo form, default)
    SE_plugin(q) = −Σ_k p(C_k) log p(C_k)
    Â_i = A_i · f(α · SE(q) / SE_max),   SE_max = log n_g,   f(x) = 1 − x   (linear)

ETTRL Adv-Res, ``ettrl``, with ``H_i`` the token-mean π_old entropy of response i and
``H̄_g`` its group's mean over responses:

    Y_i  = 1 + (H̄_g − H_i) / H̄_g       (Y_i = 1 when H̄_g = 0)
    Â_i  = Y_i · A_i                    (Adv-Clip mode instead: Â_i = clip(A_i, −β, β))

Sources, neither verified against the paper's text (the formulas come from secondary sources
quoting the papers; no official code found for either paper):
- SEED-GRPO: Chen, Chen, Wang, Yang, "SEED-GRPO: Semantic Entropy Enhanced GRPO for
  Uncertainty-Aware Policy Optimization", arXiv 2505.12346. The paper pairs it with
  ``A_i = R_i − mean R`` (our ``dr_grpo``).
- ETTRL: Liu et al., "ETTRL: Balancing Exploration and Exploitation in LLM Test-Time RL via
  Entropy Mechanism", arXiv 2508.11356 (Entropy-based Advantage Reshaping, EAR).

Conventions and deviations:
- SEED's exponential and focal ``f`` are not implemented: no source we read gives their exact
  forms, so configuring them raises. α has no default for the same reason (the paper's
  value is unconfirmed); it must be set, and every ``f`` must be ≥ 0 (α ≤ 1 guarantees it,
  since ``SE ≤ SE_max`` in both forms).
- SEED: a group of one response has ``SE_max = 0``; its scale is 1 (``SE = 0``, unscaled).
- ETTRL: the sources leave open whether ``H_i`` is π_old or π_roll; we take π_old (``entropy``).
  A response with no valid token has ``H_i = 0``. ``Y`` can be negative when ``H_i > 2·H̄_g``;
  faithful mode keeps it, ``clip_Y_min`` floors it.
- ETMR (ETTRL's tree rollouts, docs/algorithms.md §15) needs prefix continuations in the rollout engine and is
  out of scope here; :func:`etmr_leaf_count` is its leaf count only.
- Groups and their clusters must not straddle shards; nothing here needs a reducer.
- Reshapers see detached advantages and return detached advantages.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from entropo.algorithms.configs.advantages import SEED_SE_FORMS, EttrlConfig, SeedConfig
from entropo.algorithms.registry import ADVANTAGE_RESHAPERS

Metrics = dict[str, torch.Tensor]


class AdvantageReshaperFn(Protocol):
    """The signature every registered advantage reshaper has: ``(A' [N], metrics)``."""

    def __call__(
        self,
        adv: torch.Tensor,
        group_ids: torch.Tensor,
        cfg: Any,
        *,
        mask: torch.Tensor,
        entropy: torch.Tensor | None = None,
        cluster_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Metrics]: ...


def _group_index(adv: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; return ``(inverse [N] in 0..K−1, group size [K] float64)``."""
    if adv.dim() != 1 or adv.shape != group_ids.shape:
        raise ValueError(
            f"adv and group_ids must both be [N]; got {tuple(adv.shape)} and {tuple(group_ids.shape)}"
        )
    _, inv = torch.unique(group_ids, return_inverse=True)
    return inv, torch.bincount(inv).to(torch.float64)


# ---------------------------------------------------------------- SEED-GRPO


def _group_semantic_entropy(
    group_ids: torch.Tensor, cluster_ids: torch.Tensor, se_form: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group: ``(inverse [N], SE [K], group size [K], clusters [K])``, float64."""
    if se_form not in SEED_SE_FORMS:
        raise ValueError(f"se_form must be one of {SEED_SE_FORMS}, got '{se_form}'")
    if group_ids.dim() != 1 or group_ids.is_floating_point():
        raise ValueError(f"group_ids must be an integer tensor [N], got {group_ids.dtype} {tuple(group_ids.shape)}")
    if cluster_ids.shape != group_ids.shape or cluster_ids.is_floating_point():
        raise ValueError("cluster_ids must be an integer tensor of the same shape as group_ids [N]")
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N]
    size = torch.bincount(inv).to(torch.float64)  # [K] n_g
    pairs, counts = torch.unique(
        torch.stack([inv, cluster_ids.to(inv.dtype)]), dim=1, return_counts=True
    )  # one column per (group, cluster): [2, P], [P]
    pair_group = pairs[0]
    p = counts.to(torch.float64) / size[pair_group]  # [P] p(C_k)
    zeros = size.new_zeros(size.numel())
    num_clusters = zeros.index_add(0, pair_group, torch.ones_like(p))  # [K]
    if se_form == "mc":
        se = zeros.index_add(0, pair_group, -p.log()) / num_clusters
    else:
        se = zeros.index_add(0, pair_group, -p * p.log())
    return inv, se, size, num_clusters


def semantic_entropy(
    group_ids: torch.Tensor, cluster_ids: torch.Tensor, se_form: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic entropy of each response's group, from count shares of its answer clusters.

    Args:
        group_ids: group of each response ``[N]`` (integer ids, any order).
        cluster_ids: answer cluster of each response ``[N]`` (integer ids; only equality within
            a group matters, so per-group or global numbering both work).
        se_form: ``mc`` or ``plugin`` (see the module docstring).

    Returns:
        ``(SE, SE_max)``, both ``[N]`` float64: the group's SE and ``log n_g``.
    """
    inv, se, size, _ = _group_semantic_entropy(group_ids, cluster_ids, se_form)
    return se[inv], size.log()[inv]


@ADVANTAGE_RESHAPERS.register("seed", config=SeedConfig)
def seed(
    adv: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: SeedConfig,
    *,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    cluster_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """SEED-GRPO: ``A_i · (1 − α·SE(q)/SE_max)``.

    Args:
        adv: per-response advantage ``A`` ``[N]`` (the paper: ``R − mean_g R``).
        group_ids: group of each response ``[N]``.
        cfg: :class:`SeedConfig`; ``alpha`` must be set.
        mask: unused (SE is per prompt).
        entropy: unused (semantic entropy comes from the clusters, not from tokens).
        cluster_ids: answer cluster of each response within its group ``[N]``, from the
            reward stage; required.

    Returns:
        ``Â`` ``[N]`` and metrics, one count per group of this shard: ``seed/se_mean``,
        ``seed/scale_mean`` (mean f), ``seed/scale_min``, ``seed/num_clusters_mean``.
    """
    if cfg.alpha is None:
        raise ValueError(
            "algorithm.seed.alpha must be set explicitly: the paper's default is unverified, "
            "so there is no default"
        )
    if cluster_ids is None:
        raise ValueError("seed needs the answer clusters of each group (cluster_ids=[N]) from the reward stage")
    _group_index(adv, group_ids)
    inv, se, size, num_clusters = _group_semantic_entropy(group_ids, cluster_ids, cfg.se_form)
    se_max = size.log()  # [K]; 0 for a singleton group, whose SE is 0 too
    scale = 1.0 - cfg.alpha * torch.where(se_max > 0, se / torch.where(se_max > 0, se_max, 1.0), 0.0)
    if bool((scale < 0).any()):
        raise ValueError(
            f"SEED scale f = 1 − α·SE/SE_max is negative (min {float(scale.min()):.4f}); "
            f"algorithm.seed.alpha = {cfg.alpha} must be <= 1 for the linear f"
        )
    adv = adv.detach()
    if se.numel() == 0:
        zero = se.new_zeros(())
        keys = ("se_mean", "scale_mean", "scale_min", "num_clusters_mean")
        return adv, {f"seed/{k}": zero for k in keys}
    return adv * scale[inv].to(adv.dtype), {
        "seed/se_mean": se.mean(),
        "seed/scale_mean": scale.mean(),
        "seed/scale_min": scale.min(),
        "seed/num_clusters_mean": num_clusters.mean(),
    }


# ---------------------------------------------------------------- ETTRL EAR


@ADVANTAGE_RESHAPERS.register("ettrl", config=EttrlConfig)
def ettrl(
    adv: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: EttrlConfig | None = None,
    *,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    cluster_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """ETTRL Adv-Res ``Y_i·A_i`` (or Adv-Clip ``clip(A, −β, β)``).

    Args:
        adv: per-response advantage ``A`` ``[N]``.
        group_ids: group of each response ``[N]``.
        cfg: :class:`EttrlConfig` (``None`` = defaults).
        mask: valid-token mask ``[N, T]`` (for the token-mean ``H_i``).
        entropy: π_old token entropies ``[N, T]``; required in ``res`` mode.
        cluster_ids: unused.

    Returns:
        ``Â`` ``[N]`` and metrics over this shard: ``ettrl/Y_mean``, ``ettrl/Y_min``,
        ``ettrl/Y_max``, ``ettrl/Y_neg_frac`` (``res``) or ``ettrl/clip_frac`` (``clip``).
    """
    cfg = cfg or EttrlConfig()
    adv = adv.detach()
    inv, size = _group_index(adv, group_ids)
    if cfg.mode == "clip":
        out = adv.clamp(-cfg.clip_beta, cfg.clip_beta)
        return out, {"ettrl/clip_frac": (out != adv).to(torch.float64).mean() if adv.numel() else size.new_zeros(())}
    if entropy is None or entropy.shape != mask.shape:
        raise ValueError("ettrl mode 'res' needs the π_old token entropies [N, T] (entropy=...) shaped like mask")
    m = mask.detach() > 0
    h = torch.where(m, entropy.detach(), torch.zeros_like(entropy)).to(torch.float64)
    h_i = h.sum(-1) / m.sum(-1).clamp(min=1)  # [N] token-mean H_i
    h_g = (size.new_zeros(size.numel()).index_add(0, inv, h_i) / size)[inv]  # [N] H̄_g
    y = torch.where(h_g != 0, 1.0 + (h_g - h_i) / torch.where(h_g != 0, h_g, 1.0), 1.0)
    if cfg.clip_Y_min is not None:
        y = y.clamp(min=cfg.clip_Y_min)
    zero = size.new_zeros(())
    metrics = {
        "ettrl/Y_mean": y.mean() if y.numel() else zero,
        "ettrl/Y_min": y.min() if y.numel() else zero,
        "ettrl/Y_max": y.max() if y.numel() else zero,
        "ettrl/Y_neg_frac": (y < 0).to(torch.float64).mean() if y.numel() else zero,
    }
    return adv * y.to(adv.dtype), metrics


def etmr_leaf_count(M: int, N: int, B: int) -> int:
    """Leaves of ETTRL's entropy-fork tree rollout (arXiv 2508.11356): ``M·(1 + B·N)``.

    ETMR itself (branching B continuations at each of the top-N entropy positions of M
    responses) needs prefix continuations in the rollout engine and is not implemented.

    Args:
        M: full responses ("trees").
        N: high-entropy fork positions per tree.
        B: continuations branched at each fork.
    """
    if min(M, N, B) < 0:
        raise ValueError(f"M, N, B must be >= 0, got {M}, {N}, {B}")
    return M * (1 + B * N)
