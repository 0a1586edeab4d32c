"""Lp-Reg: pull the least likely negative tokens towards a min-p proxy of π_old (docs/algorithms.md §6.6).

Proxy, once per step from π_old's raw logits z (no grad; T the rollout temperature):

    keep_v = [ p_v ≥ κ · max_u p_u ],  p = softmax(z)              (min-p on the raw logits)
    z̃_v = z_v if keep_v else −1e4;     log π_proxy(y) = log_softmax(z̃ / T)_y

Selection and loss (N_neg = valid tokens with A < 0 in the scope):

    n = ⌊ρ_neg · N_neg⌋;   S = the n tokens of N_neg with the lowest log π_θ (detached), if n > 1
    R = { i ∈ S : log π_θ(y_i) < log π_proxy(y_i) }                           (detached test)
    ℓ_i = −A·r + β · k3(log π_θ, log π_proxy)                               i ∈ R  (unclipped)
    ℓ_i = max( −A·r, −A·clip(r, 1 − ε_low, 1 + ε_high) )                    otherwise (no dual clip)
    k3 = e^Δ − Δ − 1,  Δ = log π_proxy − log π_θ,  k3 capped at 10

Aggregate with token-mean.

- Paper: Huang et al., "Low-probability Tokens Sustain Exploration in RL with Verifiable
  Reward", arXiv 2510.03222 (equation numbers not re-checked).
- Official code (the authors' dev repository; the clean ``CarlanLark/Lp-Reg`` was not
  available): https://github.com/CarlanLark/Lp-Reg-dev/tree/33b27e2,
  ``compute_policy_loss_lp_reg`` and ``kl_penalty`` in ``verl/trainer/ppo/core_algos.py``,
  ``apply_min_p`` in ``verl/workers/actor/dp_actor.py``, ``compute_minp_log_prob`` in
  ``verl/workers/fsdp_workers.py``.

Deviations and conventions:
- The n ≤ 1 quirk is kept: the code computes ``n = max(1, int(ρ·N_neg))`` and selects only if
  n > 1, so a small scope (N_neg < 2/ρ) is never regularised; ``lp_reg/skipped_small_n`` logs it.
- k3: the code's ``low_var_kl`` caps the per-token value at 10 (zero gradient beyond, i.e. for
  Δ > 2.61, π_proxy/π_θ > 13.6). We use :func:`entropo.algorithms.regularizers.kl_penalty`
  (``k3``), which has that cap and also clamps Δ to [−20, 20] before ``exp``; the Δ clamp
  changes no value or gradient, since the cap is already active there. verl's ``low_var_kl``
  clamps k3 to [−10, 10]; k3 ≥ 0, so only this cap acts (as for the reference KL,
  docs/algorithms.md §9).
- Ties in log π_θ at the n-th place are broken by position (earlier first); the code's
  ``topk`` picks arbitrarily.
- Scope: ``micro`` (official code: each micro-batch on its own rank) or ``global``, where the
  learner runs :func:`lp_reg_select` once over the whole mini-batch.
- Validated: hand-computed cases (tests/algorithms/test_lp_reg.py). Not validated: training.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.losses import LpRegConfig
from entropo.algorithms.entropy import DEFAULT_CHUNK_SIZE, _chunks
from entropo.algorithms.losses.base import TokenLossInputs, clipped_surrogate, valid_frac
from entropo.algorithms.registry import TOKEN_EXTRAS, TOKEN_LOSSES
from entropo.algorithms.regularizers import kl_penalty
from entropo.algorithms.select import top_k_mask

# apply_min_p writes this finite logit to filtered entries (not −inf), so a filtered sampled
# token gets log π_proxy ≈ −1e4 and every later difference stays finite.
MINP_FILTERED_LOGIT = -1.0e4
# A kept token has log π_proxy ≥ log(κ)/T − log V (> −60 for κ ≥ 1e-4, T ≥ 0.25, V ≤ 1e7); a
# filtered one ≈ −1e4/T. Anything below this is outside the proxy's support (a metric only).
PROXY_SUPPORT_FLOOR = -100.0


def minp_proxy_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kappa: float,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """log π_proxy of each label under the min-p-filtered distribution (no gradient).

    Args:
        logits: ``[..., V]`` raw logits of π_old (before temperature), any float dtype.
        labels: ``[...]`` int64 sampled token ids in ``[0, V)``.
        kappa: κ (``minp_p_threshold``): keep tokens with ``p_v ≥ κ·max p``; in (0, 1].
        temperature: the rollout temperature T, applied after the filter as the code does.
        chunk_size: rows per chunk; memory beyond the output is a few ``[chunk_size, V]`` buffers.

    Returns:
        ``[...]`` log-probs in ``promote(logits.dtype, float32)``; ≈ −1e4/T for filtered labels.
    """
    if not 0.0 < kappa <= 1.0:
        raise ValueError(f"kappa must be in (0, 1], got {kappa}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != logits.shape[:-1] {tuple(logits.shape[:-1])}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    y = labels.reshape(-1)
    out = torch.empty(y.numel(), dtype=dtype, device=logits.device)
    with torch.no_grad():
        for s, chunk in _chunks(logits.detach(), chunk_size):
            z = chunk.to(dtype)  # [c, V]
            z_max = z.amax(dim=-1, keepdim=True)
            keep = torch.exp(z - z_max) >= kappa  # p_v / max p = exp(z_v − z_max)
            z = torch.where(keep, z, MINP_FILTERED_LOGIT) / temperature
            yc = y[s : s + z.shape[0], None]
            out[s : s + z.shape[0]] = (z.gather(-1, yc) - torch.logsumexp(z, dim=-1, keepdim=True)).squeeze(-1)
    return out.view(labels.shape)


def lp_reg_select(inp: TokenLossInputs, cfg: LpRegConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """S: the ⌊ρ_neg·N_neg⌋ lowest-log π_θ negative tokens over the reducer's scope (none if ≤ 1)."""
    negative = inp.mask.bool() & (inp.advantages < 0)
    n_neg = int(inp.reducer.sum(negative.sum().to(torch.float64)))
    n = max(1, int(n_neg * cfg.rho_neg))  # the code's rounding, kept exactly
    skipped = n_neg > 0 and n <= 1
    selected = torch.zeros_like(negative)
    if n > 1:
        selected, _ = top_k_mask(inp.logp.detach(), negative, n, inp.reducer, largest=False)
    metrics = {
        "lp_reg/selected_frac": valid_frac(selected, inp.mask),
        "lp_reg/skipped_small_n": torch.tensor(float(skipped)),
    }
    return selected, metrics


@TOKEN_LOSSES.register("lp_reg", config=LpRegConfig, selector=lp_reg_select, needs=("proxy_logp",))
def lp_reg_loss(inp: TokenLossInputs, cfg: LpRegConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token Lp-Reg loss ``[n, T]``; selects in scope unless ``inp.selected`` is given."""
    if inp.proxy_logp is None:
        raise ValueError("the lp_reg loss needs min-p proxy log-probs (inputs.proxy_logp)")
    metrics: dict[str, torch.Tensor] = {}
    selected = inp.selected
    if selected is None:
        selected, metrics = lp_reg_select(inp, cfg)
    proxy = inp.proxy_logp.detach()
    reg = selected.bool() & inp.mask.bool() & (inp.logp.detach() < proxy)  # [n, T]
    log_ratio = inp.logp - inp.old_logp
    s = clipped_surrogate(log_ratio, inp.advantages, cfg.eps_low, cfg.eps_high)
    k3 = kl_penalty(inp.logp, proxy, "k3")  # [n, T]
    pg = -inp.advantages * torch.exp(log_ratio)
    loss = torch.where(reg, pg + cfg.kl_coef * k3, s.loss)

    n_sel, n_reg = selected.sum().clamp(min=1), reg.sum().clamp(min=1)
    metrics.update({
        "lp_reg/selected_frac": valid_frac(selected, inp.mask),
        "lp_reg/reg_count": reg.sum().to(torch.float32),
        "lp_reg/k3_mean": (k3.detach() * reg).sum() / n_reg,
        "lp_reg/prob_mean": (inp.logp.detach().exp() * reg).sum() / n_reg,
        "lp_reg/proxy_prob_mean": (proxy.exp() * reg).sum() / n_reg,
        "lp_reg/outside_support_frac": (selected & (proxy < PROXY_SUPPORT_FLOOR)).sum() / n_sel,
        "actor/pg_clipfrac": valid_frac(s.clipped & ~reg, inp.mask),
    })
    return loss, metrics


@TOKEN_EXTRAS.register("proxy_logp", section="lp_reg")
def proxy_logp_fn(cfg: LpRegConfig, temperature: float):
    """:func:`minp_proxy_logprobs` per token, ``(logits [n, V], labels [n]) -> [n]``."""
    return lambda logits, labels: minp_proxy_logprobs(logits, labels, kappa=cfg.kappa, temperature=temperature)
