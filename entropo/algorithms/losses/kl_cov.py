"""KL-Cov: a KL penalty on the highest-covariance tokens (docs/algorithms.md §6.4).

    Cov_i = (log π_θ(y_i) − mean_j log π_θ(y_j)) · (A_i − mean_j A_j)      over valid tokens in scope
    S     = top k_n = max(1, ⌊k·N⌋) valid tokens by Cov (positive Cov is not required)
    ℓ_i   = −A·r + β·|log π_θ(y_i) − log π_old(y_i)|      i ∈ S
          = −A·r                                          otherwise      (no clipping on any token)

Aggregate with token-mean.

- Paper: Cui et al., arXiv 2505.22617, Sec. 4 (KL-Cov).
- Official code: ``compute_policy_loss_kl_cov`` in
  https://github.com/PRIME-RL/Entropy-Mechanism-of-RL/tree/8850579 and verl
  (``loss_mode="kl_cov"``, b178a3cd5).

Paper versus code: the code's per-token KL proxy is ``|log r|`` (ours); the paper writes
``β·D_KL(π_old‖π_θ)`` (not verified against the paper's text). The official scripts pass k as a percent (``k_percent = 0.2`` for
Qwen2.5-7B, divided by 100); ``k`` here is the fraction (2e-3). β = 1 is the paper's value;
verl's config default of 0.1 is not.

Scope: as Clip-Cov (see :mod:`entropo.algorithms.losses.clip_cov`). With ties (e.g. a
degenerate scope where every Cov is 0) the official top-k picks arbitrary tokens; ours
picks the earliest, deterministically.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.losses import KLCovConfig
from entropo.algorithms.diagnostics import token_covariance
from entropo.algorithms.losses.base import TokenLossInputs, valid_frac
from entropo.algorithms.registry import TOKEN_LOSSES
from entropo.algorithms.select import top_k_mask


def kl_cov_select(inp: TokenLossInputs, cfg: KLCovConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The tokens KL-Cov penalises, over the reducer's scope."""
    cov = token_covariance(inp.logp.detach(), inp.advantages, inp.mask, inp.reducer)  # [n, T]
    n_valid = int(inp.reducer.sum(inp.mask.bool().sum().to(torch.float64)))
    k_n = max(1, int(cfg.k * n_valid)) if n_valid > 0 else 0
    selected, _ = top_k_mask(cov, inp.mask, k_n, inp.reducer)
    n_sel = selected.sum().clamp(min=1)
    metrics = {
        "kl_cov/selected_frac": valid_frac(selected, inp.mask),
        "kl_cov/selected_cov_mean": (cov * selected).sum() / n_sel,
        "kl_cov/selected_nonpos_frac": (selected & (cov <= 0)).sum() / n_sel,
    }
    return selected, metrics


@TOKEN_LOSSES.register("kl_cov", config=KLCovConfig, selector=kl_cov_select, needs_adv_variation=True)
def kl_cov_loss(inp: TokenLossInputs, cfg: KLCovConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token KL-Cov loss ``[n, T]``; selects in scope unless ``inp.selected`` is given."""
    metrics: dict[str, torch.Tensor] = {}
    selected = inp.selected
    if selected is None:
        selected, metrics = kl_cov_select(inp, cfg)
    log_ratio = inp.logp - inp.old_logp  # [n, T]
    pg = -inp.advantages * torch.exp(log_ratio)
    abs_kl = log_ratio.abs()
    loss = torch.where(selected, pg + cfg.kl_coef * abs_kl, pg)
    n_sel = selected.sum().clamp(min=1)
    metrics["kl_cov/selected_frac"] = valid_frac(selected, inp.mask)
    metrics["kl_cov/abs_log_ratio"] = (abs_kl.detach() * selected).sum() / n_sel
    metrics["actor/pg_clipfrac"] = torch.zeros((), device=loss.device)
    return loss, metrics
