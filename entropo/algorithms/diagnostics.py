"""Entropy diagnostics: entropy logging, the covariance identity, the entropy–performance law and
the entropy-discriminator dynamics (docs/algorithms.md §12).

Covariance identity (Cui et al., "The Entropy Mechanism of Reinforcement Learning for
Reasoning Language Models", arXiv 2505.22617, Sec. 3, entropy dynamics of softmax policies
under vanilla and natural PG; equation numbers not re-read against the PDF; the math is
checked numerically by the tests instead). Official code for the batch estimator:
https://github.com/PRIME-RL/Entropy-Mechanism-of-RL/tree/8850579,
``compute_policy_loss_clip_cov`` / ``compute_policy_loss_kl_cov`` in
``verl/trainer/ppo/core_algos.py``:

    ΔH(s) ≈ −Cov_{a∼π(·|s)}( log π(a|s), Δz_a )                  softmax policy, logit step Δz
        natural PG     Δz_a = η·A(s,a)
        vanilla PG     Δz_a = η·π(a|s)·A(s,a)
        one token a    Δz_b = η·A·(1[b=a] − π_b)
    Cov_i = (log π(y_i) − mean_j log π(y_j)) · (A_i − mean_j A_j)  per valid token (= Clip-Cov/KL-Cov)
    Ĉ     = mean_i Cov_i,        ΔĤ_pred = −η_eff · Ĉ

Entropy–performance law (same paper, abstract and Sec. 2; equation number not re-read):
``R = −a·e^H + b``, fitted by linear least squares of R on x = e^H; the ceiling is
R(H=0) = b − a and dR/dH = −a·e^H. The paper fits early steps and extrapolates (``first_k``).

Entropy logging: token-mean entropy, percentiles, fraction above a threshold (0.672, the 80th percentile
reported by Wang et al., arXiv 2506.01939), phase-split means and the |log π_roll − log π_old|
gap.

Scope and exactness: every batch statistic here is computed on the valid values of all shards,
gathered through the reducer in shard order, so a batch split across ranks gives bitwise the
whole-batch result (the cost is one all-gather of 1–3 floats per valid token per call).
Statistics are computed in float64.

Conventions and deviations:
- Percentiles use linear interpolation between exact order statistics (numpy's default,
  ``x[⌊h⌋] + (h − ⌊h⌋)·(x[⌊h⌋+1] − x[⌊h⌋])`` with ``h = (N−1)·q``), not ``torch.quantile``,
  which refuses inputs above 2^24 elements.
- Entropy quintiles are assigned by global rank (stable sort, ties broken by shard order):
  token of rank r goes to quintile ⌊5r/N⌋. They stay balanced even when many tokens share
  the same (near-zero) entropy, where value edges would leave middle quintiles empty.
- The official code centres per micro-batch in float32 (``stat_scope="micro"``); here the
  scope is whatever the reducer spans and the centring is done in float64 (agrees with the
  official formula to float32 rounding). The paper has no η_eff; the trailing-window fit of
  realised ΔH on Ĉ is our addition.
- An empty scope (no valid token) gives 0 for every statistic, like ``reduce.masked_mean``.
- Not enough history (< 2 pairs for the η_eff fit, < 3 points or constant H for the law) is a
  normal state early in training: :func:`fit_entropy_change` returns ``{}`` and
  :func:`fit_entropy_law` returns ``None``. Malformed arguments raise ``ValueError``.
- Validated: hand-computed numbers for the identity (natural PG, vanilla PG, one sampled token)
  and for the law's fit (tests/algorithms/test_diagnostics.py). Not validated: that η_eff or
  the law extrapolate well on our runs.

Entropy-discriminator dynamics (Wang et al., "On the Entropy Dynamics in Reinforcement
Fine-Tuning of Large Language Models", arXiv 2602.03392, Theorems 3.2 and 3.3; the theorem
statements were read from secondary summaries, not the PDF, and are checked numerically by
the tests against the exact softmax entropy):

    S_a  = π_a·(H + log π_a)                                        entropy discriminator
    ΔH   = −ε·S_a                                                   logit z_a moves by ε (Thm 3.2)
    ΔH   = −α·A·(S_a − E_{b∼π}[S_b])                                GRPO step on token a (Thm 3.3)
    ΔĤ_t = −A_t·(S_t − S̄),  predicted_dH = mean_t ΔĤ_t              batch baseline S̄ (Clip_B's)

Official code for the batch statistic: agentscope-ai/Trinity-RFT
``trinity/algorithm/advantage_fn/clipb_advantage.py`` (``ClipBAdvantageFn``, read at the
pan-x-c/Trinity-RFT mirror @ e8be774); the vocabulary baseline is ``compute_N_from_logits``
in ``examples/entropy/clipv_dp_actor.py`` (same mirror @ c934bc5). The per-step logging is ours.

Metric keys: ``cov/...`` (covariance), ``law/...`` (law), ``entropy/...`` and
``logprob_gap/...`` (entropy logging), ``entropy_dynamics/...`` (entropy discriminator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from entropo.algorithms.reduce import LOCAL, Reducer, scatter_valid

Metrics = dict[str, torch.Tensor]
Series = Sequence[float] | torch.Tensor

# A law fit needs e^H to vary by more than float64 rounding (eps ≈ 2.2e-16, amplified by the
# sums): below this relative spread the slope a is rounding noise, so H counts as constant.
LAW_MIN_REL_SPREAD = 1e-12
FIT_WINDOW = 20
"""The trailing window of the ΔH-vs-Ĉ fit (:func:`fit_entropy_change`, docs/algorithms.md §12), in steps."""
NUM_QUINTILES = 5


# ---------------------------------------------------------------- gathering and order stats


def _gather_columns(
    columns: Sequence[torch.Tensor], mask: torch.Tensor, reducer: Reducer
) -> tuple[torch.Tensor, int]:
    """Valid entries of ``[n, T]`` tensors of all shards as one ``[N, C]`` float64 table.

    Also returns the row at which this shard's tokens start. One collective for all columns.
    """
    valid = mask.bool()
    local = torch.stack(
        [c.detach()[valid].to(torch.float64) for c in columns], dim=-1
    )  # [N_loc, C]
    flat, offset = reducer.gather(local.reshape(-1))  # interleaved rows survive concatenation
    return flat.reshape(-1, len(columns)), offset // len(columns)  # [N, C]


def quantile(values: torch.Tensor, q: float | Sequence[float]) -> torch.Tensor:
    """Exact ``q``-quantiles of ``values`` (any shape, non-empty), linear interpolation.

    Matches ``numpy.quantile(values, q)`` (method ``"linear"``) up to rounding, in float64.
    """
    x = values.detach().reshape(-1).to(torch.float64).sort().values  # [N]
    if x.numel() == 0:
        raise ValueError("quantile of an empty tensor")
    qs = torch.as_tensor(q, dtype=torch.float64, device=x.device)
    h = (x.numel() - 1) * qs
    lo = h.floor().long()
    hi = (lo + 1).clamp(max=x.numel() - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


# ---------------------------------------------------------------- covariance: batch estimator


def _centred_product(table: torch.Tensor) -> torch.Tensor:
    """``(l − mean l)(a − mean a)`` for the rows ``(l, a, ...)`` of a gathered ``[N, C]`` table."""
    if table.shape[0] == 0:
        return table.new_zeros(0)
    mean = table[:, :2].mean(dim=0)  # [2]
    return (table[:, 0] - mean[0]) * (table[:, 1] - mean[1])  # [N]


def token_covariance(
    logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, reducer: Reducer = LOCAL
) -> torch.Tensor:
    """Centred cross-product ``Cov_i`` per token (covariance identity, Clip-Cov, KL-Cov), detached.

    Args:
        logp: ``[n, T]`` log-probabilities of the sampled tokens (log π_old for the diagnostic, log π_θ
            for Clip-Cov / KL-Cov selection).
        advantages: ``[n, T]`` advantages.
        mask: ``[n, T]`` valid-token mask; the means run over its valid tokens in the scope.
        reducer: the scope (identity: this shard only, the official ``micro`` scope).

    Returns:
        ``[n, T]`` in the promoted dtype of ``logp`` and ``advantages``, 0 where ``mask == 0``.
    """
    table, offset = _gather_columns([logp, advantages], mask, reducer)  # [N, 2]
    n_local = int(mask.bool().sum())
    cov = _centred_product(table)[offset : offset + n_local]  # [N_loc]
    return scatter_valid(cov.to(torch.promote_types(logp.dtype, advantages.dtype)), mask)


def covariance_metrics(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    reducer: Reducer = LOCAL,
) -> Metrics:
    """Ĉ over the scope, restricted to each advantage sign and to each entropy quintile.

    Args:
        logp: ``[n, T]`` log π_old of the sampled tokens.
        advantages: ``[n, T]`` advantages.
        entropy: ``[n, T]`` token entropy H (defines the quintiles).
        mask: ``[n, T]`` valid-token mask.
        reducer: the scope (the trainer logs it over the step batch).

    Returns:
        float64 scalars. ``cov/mean`` = Ĉ. ``cov/adv_pos`` / ``cov/adv_neg``: mean of ``Cov_i``
        over tokens with A > 0 / A < 0 (centring stays global), with their token fractions
        ``cov/adv_pos_frac`` / ``cov/adv_neg_frac``. ``cov/entropy_q1`` (lowest H) to
        ``cov/entropy_q5``: mean of ``Cov_i`` per global-rank entropy quintile. Empty
        subsets give 0.
    """
    table, _ = _gather_columns([logp, advantages, entropy], mask, reducer)  # [N, 3]
    cov = _centred_product(table)  # [N]
    n = table.shape[0]
    zero = cov.new_zeros(())

    def mean_over(sel: torch.Tensor) -> torch.Tensor:  # 0 for an empty subset
        return (cov * sel).sum() / sel.sum().clamp(min=1)

    metrics: Metrics = {"cov/mean": cov.mean() if n else zero}
    for name, sel in (("adv_pos", table[:, 1] > 0), ("adv_neg", table[:, 1] < 0)):
        metrics[f"cov/{name}"] = mean_over(sel)
        metrics[f"cov/{name}_frac"] = sel.to(torch.float64).mean() if n else zero
    rank = torch.empty(n, dtype=torch.long, device=cov.device)
    rank[torch.argsort(table[:, 2], stable=True)] = torch.arange(n, device=cov.device)
    quintile = (NUM_QUINTILES * rank) // max(n, 1)  # [N], 0 = lowest entropy
    for j in range(NUM_QUINTILES):
        metrics[f"cov/entropy_q{j + 1}"] = mean_over(quintile == j)
    return metrics


# ---------------------------------------------------------------- covariance: state-level identity


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H = logsumexp(z) − Σ softmax(z)·z`` over the last dim (docs/algorithms.md §3)."""
    return torch.logsumexp(logits, dim=-1) - (logits.softmax(dim=-1) * logits).sum(dim=-1)


def predicted_entropy_change(logits: torch.Tensor, delta_logits: torch.Tensor) -> torch.Tensor:
    """First-order ``ΔH = −Cov_{a∼π}(log π_a, Δz_a)`` with the full distribution π = softmax(z).

    Args:
        logits: ``[..., V]`` logits z at one or more states.
        delta_logits: ``[..., V]`` logit update Δz (see the ``*_delta`` helpers).

    Returns:
        ``[...]`` predicted entropy change.
    """
    logp = logits.log_softmax(dim=-1)  # [..., V]
    p = logp.exp()
    e_logp = (p * logp).sum(dim=-1, keepdim=True)  # = −H
    e_dz = (p * delta_logits).sum(dim=-1, keepdim=True)
    return -(p * (logp - e_logp) * (delta_logits - e_dz)).sum(dim=-1)


def exact_entropy_change(logits: torch.Tensor, delta_logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(z + Δz)) − H(softmax(z))`` recomputed exactly, ``[...]``."""
    return _entropy(logits + delta_logits) - _entropy(logits)


def natural_pg_delta(advantages: torch.Tensor, eta: float) -> torch.Tensor:
    """Natural policy gradient on a softmax policy: ``Δz_a = η·A(s,a)``, ``[..., V]``."""
    return eta * advantages


def vanilla_pg_delta(logits: torch.Tensor, advantages: torch.Tensor, eta: float) -> torch.Tensor:
    """Vanilla PG on a tabular softmax policy: ``Δz_a = η·π(a|s)·A(s,a)``, ``[..., V]``."""
    return eta * logits.softmax(dim=-1) * advantages


def sampled_token_delta(
    logits: torch.Tensor, action: torch.Tensor | int, advantage: torch.Tensor | float, eta: float
) -> torch.Tensor:
    """One sampled token ``a`` with advantage A: ``Δz_b = η·A·(1[b=a] − π_b)``, ``[..., V]``.

    Args:
        logits: ``[..., V]`` logits z.
        action: the sampled token ``a``, an int or a ``[...]`` integer tensor.
        advantage: A, a float or a ``[...]`` tensor.
        eta: step size η.
    """
    p = logits.softmax(dim=-1)  # [..., V]
    action = torch.as_tensor(action, device=logits.device).expand(p.shape[:-1])
    onehot = torch.nn.functional.one_hot(action, p.shape[-1]).to(p.dtype)
    adv = torch.as_tensor(advantage, dtype=p.dtype, device=p.device)
    return eta * adv.unsqueeze(-1) * (onehot - p)


# ---------------------------------------------------------------- covariance: trailing-window fit


def fit_entropy_change(cov_history: Series, entropy_history: Series, window: int = FIT_WINDOW) -> Metrics:
    """Estimate η_eff in ``ΔH[k] = −η_eff·Ĉ[k]`` over the trailing ``window`` steps.

    ``cov_history[k]`` (Ĉ) and ``entropy_history[k]`` (``entropy/mean``) are logged at the same
    step k, so the series have equal length K. The pairs are ``(−Ĉ[k], H[k+1] − H[k])`` for the
    last ``window`` k ≤ K−2; pairs with a non-finite value are dropped.

    The regression goes through the origin: the identity has no constant term, and Ĉ often
    keeps one sign for long stretches, so an intercept would absorb the mean drift of H and
    leave η_eff poorly determined. R² is therefore the uncentred one, ``1 − Σres²/ΣΔH²``
    (what R's ``lm`` reports without intercept; higher than a centred R² on the same data).

    Args:
        cov_history: Ĉ (``cov/mean``) per step, oldest first.
        entropy_history: ``entropy/mean`` per step, aligned with ``cov_history``.
        window: how many of the most recent (Ĉ, ΔH) pairs to fit (default 20 steps).

    Returns:
        ``{}`` when fewer than 2 usable pairs remain or all their Ĉ are 0 (not available).
        Otherwise float64 scalars: ``cov/eta_eff``; ``cov/dH_pred`` = −η_eff·Ĉ[K−1], the
        predicted next change (absent if Ĉ[K−1] is not finite); ``cov/dH_realised`` and
        ``cov/dH_fitted``, the latest pair's realised ΔH and the fit's value for it;
        ``cov/fit_r2``; ``cov/fit_points``.
    """
    c = torch.as_tensor(cov_history, dtype=torch.float64).reshape(-1)
    h = torch.as_tensor(entropy_history, dtype=torch.float64).reshape(-1)
    if c.shape != h.shape:
        raise ValueError(
            f"cov_history and entropy_history must have equal length, got {c.numel()} and {h.numel()}"
        )
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window}")
    x, y = -c[:-1][-window:], (h[1:] - h[:-1])[-window:]  # [≤ window]
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    sxx = (x * x).sum()
    if x.numel() < 2 or sxx == 0:
        return {}
    eta = (x * y).sum() / sxx
    ss_res, ss_y = ((y - eta * x) ** 2).sum(), (y * y).sum()
    metrics: Metrics = {
        "cov/eta_eff": eta,
        "cov/dH_realised": y[-1],
        "cov/dH_fitted": eta * x[-1],
        # ΔH ≡ 0 with Ĉ ≠ 0 gives η_eff = 0 exactly: the fit is exact, so R² = 1 by convention.
        "cov/fit_r2": 1.0 - ss_res / ss_y if ss_y > 0 else torch.ones((), dtype=torch.float64),
        "cov/fit_points": torch.tensor(float(x.numel()), dtype=torch.float64),
    }
    if torch.isfinite(c[-1]):
        metrics["cov/dH_pred"] = -eta * c[-1]
    return metrics


# ---------------------------------------------------------------- entropy–performance law


@dataclass(frozen=True)
class LawFit:
    """A fit of ``R = b − a·e^H``. Plain floats: the inputs are logged scalars, not GPU tensors.

    Attributes:
        a: the coefficient a (positive when performance rises as entropy falls).
        b: the offset b.
        r2: centred R² of the fit (1.0 when every R is equal and so fitted exactly).
        residual_rms: root mean square of ``R − (b − a·e^H)`` over the fitted points.
        ceiling: predicted performance at zero entropy, ``b − a``.
        n_points: how many points were fitted.
    """

    a: float
    b: float
    r2: float
    residual_rms: float
    ceiling: float
    n_points: int


def fit_entropy_law(
    H: Series, R: Series, mode: str = "all_points", k: int | None = None
) -> LawFit | None:
    """Least-squares fit (float64) of ``R = b − a·e^H`` (arXiv 2505.22617; docs/algorithms.md §12).

    Args:
        H: token-mean training entropy per evaluated step.
        R: accuracy at the same steps.
        mode: ``all_points`` fits every point; ``first_k`` fits the first ``k`` (the paper's
            early-window extrapolation; score it with :func:`extrapolation_error`).
        k: the number of early points, required for ``first_k`` only.

    Returns:
        The fit, or ``None`` when fewer than 3 points are fitted or H is constant on them
        (relative spread of e^H at most ``LAW_MIN_REL_SPREAD``).
    """
    h = torch.as_tensor(H, dtype=torch.float64).reshape(-1)
    r = torch.as_tensor(R, dtype=torch.float64).reshape(-1)
    if h.shape != r.shape:
        raise ValueError(f"H and R must have equal length, got {h.numel()} and {r.numel()}")
    if not (torch.isfinite(h).all() and torch.isfinite(r).all()):
        raise ValueError("H and R must be finite")
    if mode == "first_k":
        if k is None or k < 1:
            raise ValueError(f"mode 'first_k' needs a positive k, got {k}")
        h, r = h[:k], r[:k]
    elif mode != "all_points":
        raise ValueError(f"unknown law fit mode '{mode}'; choose 'all_points' or 'first_k'")
    elif k is not None:
        raise ValueError("k is only used with mode 'first_k'")
    x = h.exp()  # [k]
    if x.numel() < 3 or x.max() - x.min() <= LAW_MIN_REL_SPREAD * x.abs().max():
        return None
    xc, rc = x - x.mean(), r - r.mean()
    slope = (xc * rc).sum() / (xc * xc).sum()
    a, b = -slope, r.mean() - slope * x.mean()
    res = r - (b - a * x)
    r2 = 1.0 - (res * res).sum() / (rc * rc).sum() if r.max() > r.min() else torch.tensor(1.0)
    return LawFit(
        a=float(a),
        b=float(b),
        r2=float(r2),
        residual_rms=float((res * res).mean().sqrt()),
        ceiling=float(b - a),
        n_points=int(x.numel()),
    )


def law_predict(fit: LawFit, H: Series | float) -> torch.Tensor:
    """Predicted performance ``b − a·e^H`` (float64, shape of ``H``)."""
    return fit.b - fit.a * torch.as_tensor(H, dtype=torch.float64).exp()


def law_slope(fit: LawFit, H: Series | float) -> torch.Tensor:
    """``dR/dH = −a·e^H``: performance gained per nat of entropy (float64, shape of ``H``)."""
    return -fit.a * torch.as_tensor(H, dtype=torch.float64).exp()


def extrapolation_error(fit: LawFit, H_later: Series, R_later: Series) -> torch.Tensor:
    """RMS of ``R_later − law_predict(fit, H_later)`` on points not used by the fit."""
    h = torch.as_tensor(H_later, dtype=torch.float64).reshape(-1)
    r = torch.as_tensor(R_later, dtype=torch.float64).reshape(-1)
    if h.shape != r.shape or h.numel() == 0:
        raise ValueError(
            f"need equal, non-zero numbers of later points, got {h.numel()} and {r.numel()}"
        )
    return ((r - law_predict(fit, h)) ** 2).mean().sqrt()


def law_metrics(fit: LawFit, H: float) -> Metrics:
    """The law's metrics for a fit at the current entropy ``H``: ``law/...`` float64 scalars."""
    values = {
        "law/a": fit.a,
        "law/b": fit.b,
        "law/r2": fit.r2,
        "law/residual_rms": fit.residual_rms,
        "law/ceiling": fit.ceiling,
        "law/pred_R": float(law_predict(fit, H)),
        "law/dR_dH": float(law_slope(fit, H)),
    }
    return {key: torch.tensor(v, dtype=torch.float64) for key, v in values.items()}


# ---------------------------------------------------------------- entropy logging


def entropy_summary(
    entropy: torch.Tensor, mask: torch.Tensor, reducer: Reducer = LOCAL, threshold: float = 0.672
) -> Metrics:
    """Token entropy over the scope: ``entropy/{mean,p50,p80,p95,max,frac_above}`` (float64).

    Args:
        entropy: ``[n, T]`` token entropy H (π_old at the rollout temperature).
        mask: ``[n, T]`` valid-token mask.
        reducer: the scope (the trainer logs the step batch).
        threshold: ``frac_above`` counts tokens with H strictly above it (0.672, the 80th percentile
            reported by Wang et al., arXiv 2506.01939).
    """
    h = _gather_columns([entropy], mask, reducer)[0][:, 0]  # [N]
    if h.numel() == 0:
        keys = ("mean", "p50", "p80", "p95", "max", "frac_above")
        return {f"entropy/{key}": h.new_zeros(()) for key in keys}
    p50, p80, p95 = quantile(h, [0.5, 0.8, 0.95])
    return {
        "entropy/mean": h.mean(),
        "entropy/p50": p50,
        "entropy/p80": p80,
        "entropy/p95": p95,
        "entropy/max": h.max(),
        "entropy/frac_above": (h > threshold).to(torch.float64).mean(),
    }


def phase_split_means(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    phase_mask: torch.Tensor,
    names: tuple[str, str] = ("think", "answer"),
    reducer: Reducer = LOCAL,
) -> Metrics:
    """Token-mean entropy where ``phase_mask == 1`` and where it is 0 (valid tokens only).

    Args:
        entropy: ``[n, T]`` token entropy.
        mask: ``[n, T]`` valid-token mask.
        phase_mask: ``[n, T]``, 1 for the first group (e.g. the thinking span, or tokens of
            correct responses), 0 for the second.
        names: key suffixes of the two groups, in that order.
        reducer: the scope.

    Returns:
        ``entropy/<names[0]>`` and ``entropy/<names[1]>`` (float64; 0 for an empty group).
    """
    table, _ = _gather_columns([entropy, phase_mask], mask, reducer)  # [N, 2]
    out: Metrics = {}
    for name, sel in zip(names, (table[:, 1] != 0, table[:, 1] == 0)):
        out[f"entropy/{name}"] = (table[:, 0] * sel).sum() / sel.sum().clamp(min=1)
    return out


def logprob_gap(
    rollout_logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, reducer: Reducer = LOCAL
) -> Metrics:
    """``|log π_roll − log π_old|`` over valid tokens: ``logprob_gap/mean`` and ``/p99`` (float64)."""
    table, _ = _gather_columns([rollout_logp, old_logp], mask, reducer)  # [N, 2]
    gap = (table[:, 0] - table[:, 1]).abs()  # [N]
    if gap.numel() == 0:
        return {"logprob_gap/mean": gap.new_zeros(()), "logprob_gap/p99": gap.new_zeros(())}
    return {"logprob_gap/mean": gap.mean(), "logprob_gap/p99": quantile(gap, 0.99)}


# ---------------------------------------------------------------- entropy-discriminator dynamics


def entropy_discriminator(logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """``S = p·(H + log p)`` with ``p = exp(logp)``, elementwise (Wang et al., arXiv 2602.03392).

    Args:
        logp: log-probability of the sampled token (any shape).
        entropy: entropy H of the distribution it was sampled from (same shape).

    Returns:
        S, same shape and dtype; ``−ε·S`` is the first-order entropy change when the sampled
        token's logit alone moves by ε (the paper's Theorem 3.2).
    """
    return logp.exp() * (entropy + logp)


def discriminator_stats(s_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S̄, σ_S)`` of the gathered valid values ``[N]`` in float64: mean and population std
    (÷N, the official Clip_B code's); ``(0, 0)`` when N = 0."""
    s = s_valid.to(torch.float64)
    if s.numel() == 0:
        return s.new_zeros(()), s.new_zeros(())
    mean = s.mean()
    return mean, (s - mean).square().mean().sqrt()


def expected_discriminator(logits: torch.Tensor) -> torch.Tensor:
    """``E_{b∼π}[S_b] = H·Σ_b π_b² + Σ_b π_b²·log π_b`` over the last dim, ``[...]``.

    The vocabulary baseline of the GRPO-step form (Theorem 3.3): a step on sampled token a
    with advantage A changes the state's entropy by ``−α·A·(S_a − E_π[S])``. It is the
    per-token statistic Clip_V needs (``compute_N_from_logits`` in the official
    ``examples/entropy/clipv_dp_actor.py``, pan-x-c/Trinity-RFT @ c934bc5); Clip_B replaces it
    with the batch mean of S.

    Args:
        logits: ``[..., V]`` logits z (at the rollout temperature).
    """
    logp = logits.log_softmax(dim=-1)  # [..., V]
    p2 = logp.exp().square()
    h = -(logp.exp() * logp).sum(dim=-1)
    return h * p2.sum(dim=-1) + (p2 * logp).sum(dim=-1)


def entropy_dynamics_metrics(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    reducer: Reducer = LOCAL,
) -> Metrics:
    """Predicted entropy change of a policy-gradient step from S, with the batch baseline.

    ::

        S_t   = π_old(y_t)·(H_t + log π_old(y_t))
        ΔĤ_t  = −A_t·(S_t − S̄)                      S̄ = mean of S over the scope's valid tokens
        predicted_dH = mean_t ΔĤ_t = −Cov_t(A, S)

    ``ΔĤ_t`` is the paper's Theorem 3.3 (``ΔH = −α·A·(S_* − E_π[S])``) at α = 1 with the
    vocabulary expectation ``E_π[S]`` replaced by the batch mean S̄, the approximation Clip_B
    is built on: it is the change of the entropy at token t's state when its own logits take
    a unit policy-gradient step ``Δz_b = A_t·(1[b = y_t] − π_b)``, ignoring how the step
    moves other states. Since Σ_t (S_t − S̄) = 0 the token mean equals −Cov(A, S) whether or
    not A is centred. Like Ĉ it is per unit step: the learning rate's scale is not known here.

    Args:
        logp: ``[n, T]`` log π_old of the sampled tokens.
        entropy: ``[n, T]`` π_old token entropy H (rollout temperature).
        advantages: ``[n, T]`` advantages.
        mask: ``[n, T]`` valid-token mask.
        reducer: the scope (the trainer logs the step batch).

    Returns:
        float64 scalars: ``entropy_dynamics/predicted_dH``; its parts from A > 0 and A < 0
        tokens, ``entropy_dynamics/predicted_dH_adv_pos`` / ``_adv_neg`` (each a sum over its
        tokens divided by all N, so the two add up to the total); ``entropy_dynamics/s_mean``
        and ``entropy_dynamics/s_std`` (S̄ and the population std of S). 0 for an empty scope.
    """
    table, _ = _gather_columns([logp, entropy, advantages], mask, reducer)  # [N, 3]
    keys = ("predicted_dH", "predicted_dH_adv_pos", "predicted_dH_adv_neg", "s_mean", "s_std")
    n = table.shape[0]
    if n == 0:
        return {f"entropy_dynamics/{key}": table.new_zeros(()) for key in keys}
    s = entropy_discriminator(table[:, 0], table[:, 1])  # [N]
    a = table[:, 2]
    s_mean, s_std = discriminator_stats(s)
    dh = -a * (s - s_mean)  # [N]
    values = (dh.mean(), (dh * (a > 0)).sum() / n, (dh * (a < 0)).sum() / n, s_mean, s_std)
    return {f"entropy_dynamics/{key}": v for key, v in zip(keys, values)}
