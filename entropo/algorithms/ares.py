"""ARES: a difficulty-bucketed reward on high-window-entropy (HWE) tokens, and a per-bucket KL.

Named ``ares`` everywhere (``algorithm.ares.*``, ``ares/*`` metrics, ``configs/ares.yaml``). The
paper calls its RL stage "AEPO" (Adaptive Entropy Policy Optimization) and its reward file is
``aepo.py``: that is *not* our ``aepo`` (:mod:`entropo.algorithms.aepo`, Arbitrary Entropy
Policy Optimization, arXiv 2510.08141).

Per response i (L_i valid tokens, H_{i,t} the π_old token entropy at the rollout temperature,
w = ``window_size``, s = 1 for ``window_start="next"``, 0 for ``"current"``):

    m_{i,t} = (1/w)·Σ_{j=t+s}^{t+s+w−1} H_{i,j}         "full" when all w positions are valid
    τ̂       = median_i P_p(v_{i,·})   (sequence scope)   v_{i,t} = m_{i,t} if full, else the mean
                                                          of i's full windows (H_{i,0} if none)
            = P_p(m over every full window of the batch)  (global scope)
    τ_k     = τ̂_1 at step 1, then ema·τ_{k−1} + (1 − ema)·τ̂_k;  step k counts with τ_{k−1}
    n_i     = #{t : full, m_{i,t} ≥ τ}                    the HWE count

Difficulty from the group's accuracy a_g: easy if a_g ≥ 2/3, medium if a_g ≥ 1/3, hard else;

    ḡ_b  = mean over the bucket's groups of the group mean of n_i,   N*_b = round(ḡ_b) (half to even)
    α_b ← clip(α_b + η_α·δ_b, α_min, α_max),   δ_b = ḡ_b − N*_b (easy, medium), N*_b − ḡ_b (hard)

and the reward term r_i added to R_i, with d = n_i − N*_b, M = max(1, f_b·max(N*_b, 1)),
c = α_b·s_b, h(x) = x²/(2κ_b) if x ≤ κ_b else x − κ_b/2, σ(x) = 1/(1 + exp(−x/T_b)):

    easy,   correct: −min(c, h(max(d − M, 0))/(M + κ)·c)
    medium, correct: −min(c, h(max(|d| − M, 0))/(M + κ)·c)
    hard,   correct:  σ(d + M)·c  if d ≥ −M,  else −min(c, ½·h(−d − M)/(M + κ)·c)
    wrong:            σ(max(d − M, 0))·c·u_b
    (f, κ, T, s, u) = easy (0.15, 2, 2, 1, 0.6), medium (0.25, 3, 2.5, 1, 0.8), hard (0.35, 4, 3, 1.2, 1)

Adaptive KL: the loss's β_ref·KL_{i,t} becomes β_ref·β_{b(i)}·KL_{i,t}; once per step, per bucket,
with k̄_b the bucket's mean of per-sequence mean KL(π_old ‖ π_ref) (``algorithm.kl_estimator``):

    K_b ← k̄_b the first time, then (1 − ρ)·k̄_b + ρ·K_b;   e = K_b/max(target_b, 1e-8) − 1
    unless |e| < deadzone or (update count) % every ≠ 0:
        E_b ← (1 − ρ)·e + ρ·E_b;   β_b ← exp(clip(log clip(β_b, β_min, β_max) + η_β·clip(E_b, ±c),
                                                  log β_min, log β_max))

- Paper: Chen et al., "ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level
  Entropy Shaping", arXiv 2510.08457 (window entropy H̄_{t:w} = (1/w)·Σ_{τ=t}^{t+w−1} H_τ; the
  equation numbers were not available here). The formulas above are the code's.
- Official code, https://github.com/shawn0728/ARES @ 146620e: ``compute_score`` in
  ``examples/reward_function/aepo.py`` (the term, its constants); ``update_difficulty_and_skip_gid_set``
  and ``fit`` in ``verl/trainer/ray_trainer.py`` (buckets, N*_b, α_b, the τ EMA);
  ``compute_reasoning_token_window_entropy`` and ``get_window_average_entropy_percentile_threshold_list``
  in ``verl/workers/rollout/vllm_rollout_spmd.py`` (w = 4, p = 95, entropies from vLLM's top-10
  log-probs); ``_update_beta_per_bucket`` in ``verl/workers/actor/dp_actor.py`` (the β rule).

Conventions and deviations (each a named option or stated here):
- ``entropy``: ``exact`` (ours, the full-vocabulary entropy) or ``topk`` (the code's: from the
  top-k probabilities plus the sampled token's, with the missing mass as one more outcome,
  :func:`topk_entropy`). The code's threshold uses the top-k sum *without* that tail term and
  its count *with* it; ``topk`` uses the tail-corrected value for both.
- ``window_start``: ``next`` is the code's window (the w tokens after t), ``current`` the paper's.
- ``threshold_scope``: ``sequence`` is the code's statistic; ``global`` a plain batch percentile.
- The code counts only positions whose top-1 token, decoded, is one of 174 English words
  (``data/crucial_token_final_version.json``). The trainer counts every position (the paper's
  definition of an HWE token); :func:`hwe_count` takes an optional ``trigger`` mask for it.
- Step 1: the code counts with the threshold of its validation pass (or −1 without one); here
  with τ̂_1. A batch with no full window gives τ̂ = NaN, which leaves τ unchanged and counts 0.
- β: the code updates once per micro-batch on every rank (each rank its own β, never saved),
  from π_θ's KL, and only every 100th call (``kl_update_interval``); here once per step, from
  π_old's KL over the step batch, every ``kl_update_every`` steps, in the controller's state.
- Not implemented: the code's dual-ascent λ_b and "second-chance" KL relaxation, which never
  reach its loss (the actor does not select ``reasoning_soft_cost``). In the released config
  (``online_filtering: true``) the reward the actor trains on is the one scored for filtering,
  before difficulty, N*_b and α_b are set (all "easy", N* = 0); here the term always uses them.
- Statistics over several groups (τ̂, ḡ_b, k̄_b, metrics) go through ``reducer``; groups must
  not straddle shards. The controller calls this on the whole step batch (identity reducer).

One module holds the whole method (its pieces share the buckets and the state), so it runs past
STYLE.md's ~200 lines.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from entropo.algorithms.advantages import broadcast_to_tokens
from entropo.algorithms.configs.ares import THRESHOLD_SCOPES, WINDOW_STARTS, AresConfig
from entropo.algorithms.diagnostics import quantile
from entropo.algorithms.entropy import DEFAULT_CHUNK_SIZE
from entropo.algorithms.reduce import LOCAL, Reducer
from entropo.algorithms.registry import CONTROLLERS, TOKEN_EXTRAS
from entropo.algorithms.regularizers import kl_penalty
from entropo.algorithms.stateful import StepInfo, StepMethod

BUCKETS = ("easy", "medium", "hard")
EASY, MEDIUM, HARD = 0, 1, 2

# compute_score's per-bucket constants (hard-coded there; easy, medium, hard).
MARGIN_FRAC = (0.15, 0.25, 0.35)  # M = max(MIN_MARGIN, f·max(N*, 1))
KAPPA = (2.0, 3.0, 4.0)  # Huber knee κ
TEMP = (2.0, 2.5, 3.0)  # sigmoid temperature T
CAP_SCALE = (1.0, 1.0, 1.2)  # cap c = α·s
WRONG_SCALE = (0.6, 0.8, 1.0)  # u: share of the cap a wrong answer gets
HARD_UNDER_SCALE = 0.5  # a correct hard answer with too few HWE tokens pays half the penalty
MIN_MARGIN = 1.0
TEMP_MIN = 1e-6  # the code's guard on the sigmoid temperature
KL_TARGET_MIN = 1e-8  # the code's guard on the KL target ("avoid zero")
TAIL_LOG_MIN = 1e-12  # the code's guard inside tail·log(tail)


@dataclass(frozen=True)
class AresState:
    """ARES's running state (saved in checkpoints by the controller, entropo.algorithms.stateful);
    tuples are per bucket (easy, medium, hard). Start from :meth:`initial`.

    Attributes:
        alpha: α_b.
        beta: β_b.
        threshold: τ, the EMA of τ̂ (None before the first step).
        kl_ema: K_b, the EMA of the bucket's KL (None until the bucket is first seen).
        err_ema: E_b, the EMA of the relative KL error.
        kl_updates: calls of the β update so far (the code's ``_update_count``).
    """

    alpha: tuple[float, float, float]
    beta: tuple[float, float, float]
    threshold: float | None = None
    kl_ema: tuple[float | None, float | None, float | None] = (None, None, None)
    err_ema: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kl_updates: int = 0

    @staticmethod
    def initial(cfg: AresConfig) -> AresState:
        return AresState(alpha=(cfg.alpha_init,) * 3, beta=(cfg.kl_beta_init,) * 3)


# ---------------------------------------------------------------- HWE tokens


def topk_entropy(logits: torch.Tensor, labels: torch.Tensor, k: int, temperature: float = 1.0,
                 tail: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """The code's entropy from top-k log-probs: ``−Σ_{v∈S} p_v log p_v − q log q`` (no gradient).

    ``S`` is the k most probable tokens of softmax(z/T) plus the sampled token (vLLM returns it
    with the top k), ``q = max(0, 1 − Σ_S p)`` the mass outside S (its term with ``tail``).

    Args:
        logits: ``[..., V]`` raw logits.
        labels: ``[...]`` the sampled token ids.
        k: the number of top tokens (clipped to V).
        temperature: rollout temperature T > 0.
        tail: add the ``−q log q`` term (the code's count); False is its threshold's sum.
        chunk_size: rows per chunk (bounded memory).

    Returns:
        ``[...]`` in ``promote(logits.dtype, float32)``.
    """
    rows, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1, 1)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = torch.empty(rows.shape[0], dtype=dtype, device=logits.device)
    k = min(int(k), rows.shape[-1])
    with torch.no_grad():
        for s in range(0, rows.shape[0], chunk_size):
            z = rows[s:s + chunk_size].to(dtype) / temperature  # [c, V]
            log_z = torch.logsumexp(z, -1, keepdim=True)
            top, idx = torch.topk(z, k, dim=-1)
            logp, logp_lab = top - log_z, z.gather(-1, lab[s:s + chunk_size]) - log_z  # [c, k], [c, 1]
            extra = (idx != lab[s:s + chunk_size]).all(-1, keepdim=True)  # sampled token outside the top k
            p, p_lab = logp.exp(), torch.where(extra, logp_lab.exp(), 0.0)
            h = -(p * logp).sum(-1) - (p_lab * logp_lab).squeeze(-1)
            if tail:
                q = (1.0 - p.sum(-1) - p_lab.squeeze(-1)).clamp(min=0.0)
                h = h - torch.where(q > 0, q * q.clamp(min=TAIL_LOG_MIN).log(), 0.0)
            out[s:s + chunk_size] = h
    return out.view(logits.shape[:-1])


def window_entropy(entropy: torch.Tensor, mask: torch.Tensor, window_size: int,
                   start: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Window means ``m [N, T]`` (float64, 0 where not full) and ``full [N, T]`` (bool).

    Args:
        entropy: ``[N, T]`` token entropies.
        mask: ``[N, T]`` valid-token mask.
        window_size: w.
        start: ``next`` (window t+1..t+w, code) or ``current`` (t..t+w−1, paper).
    """
    if start not in WINDOW_STARTS:
        raise ValueError(f"start must be one of {WINDOW_STARTS}, got '{start}'")
    valid = mask.detach() > 0
    t, shift = valid.shape[1], 1 if start == "next" else 0
    pad = (0, shift + window_size)  # windows that run past T read padding: never full
    h = torch.nn.functional.pad(entropy.detach().double() * valid, pad)[:, shift:]
    v = torch.nn.functional.pad(valid.double(), pad)[:, shift:]
    windows = h.unfold(-1, window_size, 1)[:, :t]  # [N, T, w]: positions t+s .. t+s+w−1
    full = valid & (v.unfold(-1, window_size, 1)[:, :t].sum(-1) == window_size)
    mean = windows.sum(-1) / window_size
    return torch.where(full, mean, 0.0), full


def _row_quantile(x: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile of each row over ``valid`` (numpy's default); NaN if empty."""
    xs = x.masked_fill(~valid, float("inf")).sort(-1).values
    n = valid.sum(-1, keepdim=True)
    pos = (n - 1).clamp(min=0).double() * q
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=(n - 1).clamp(min=0))
    x_lo, x_hi = xs.gather(-1, lo), xs.gather(-1, hi)
    return torch.where(n > 0, x_lo + (pos - lo) * (x_hi - x_lo), float("nan")).squeeze(-1)


def hwe_threshold(window_mean: torch.Tensor, full: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                  percentile: float, scope: str, reducer: Reducer = LOCAL) -> torch.Tensor:
    """τ̂ of this batch (float64 scalar; NaN when the scope holds no value).

    Args:
        window_mean: ``[N, T]`` from :func:`window_entropy`.
        full: ``[N, T]`` from :func:`window_entropy`.
        entropy: ``[N, T]`` the token entropies (the code's fill for a response with no full window).
        mask: ``[N, T]`` valid-token mask; responses without a valid token are left out.
        percentile: p in [0, 100].
        scope: ``sequence`` (median of per-response percentiles, code) or ``global``.
        reducer: spans the shards of the batch.
    """
    if scope not in THRESHOLD_SCOPES:
        raise ValueError(f"scope must be one of {THRESHOLD_SCOPES}, got '{scope}'")
    q, valid = percentile / 100.0, mask.detach() > 0
    if scope == "global":
        values, _ = reducer.gather(window_mean[full])
        return quantile(values, q) if values.numel() else torch.tensor(float("nan"), dtype=torch.float64)
    n_full = full.sum(-1, keepdim=True)
    mu = window_mean.sum(-1, keepdim=True) / n_full.clamp(min=1)  # [N, 1]
    first = entropy.detach().double().gather(-1, valid.double().argmax(-1, keepdim=True))  # first valid H
    v = torch.where(full, window_mean, torch.where(n_full > 0, mu, first))  # [N, T]
    per_seq, _ = reducer.gather(_row_quantile(v, valid, q)[valid.any(-1)])
    return quantile(per_seq, 0.5) if per_seq.numel() else torch.tensor(float("nan"), dtype=torch.float64)


def threshold_update(threshold: float | None, tau_batch: float, ema: float) -> tuple[float, float | None]:
    """``(τ this step counts with, τ after it)``: the previous τ (τ̂ at the first step), then its EMA.

    Args:
        threshold: τ after the previous step (None before the first).
        tau_batch: τ̂ of this batch (NaN leaves τ unchanged).
        ema: ρ_τ.
    """
    used = tau_batch if threshold is None else threshold
    if math.isnan(tau_batch):
        return used, threshold
    return used, tau_batch if threshold is None else ema * threshold + (1.0 - ema) * tau_batch


def hwe_count(window_mean: torch.Tensor, full: torch.Tensor, threshold: float | torch.Tensor,
              trigger: torch.Tensor | None = None) -> torch.Tensor:
    """n_i ``[N]`` (float64): full windows with ``m ≥ τ`` (and ``trigger``, when given).

    Args:
        window_mean: ``[N, T]`` from :func:`window_entropy`.
        full: ``[N, T]`` from :func:`window_entropy`.
        threshold: τ (NaN counts nothing).
        trigger: ``[N, T]`` bool, the positions allowed to count (the code's word list); None: all.
    """
    hit = full & (window_mean >= torch.as_tensor(threshold, dtype=torch.float64))
    if trigger is not None:
        hit = hit & trigger.bool()
    return hit.double().sum(-1)


# ---------------------------------------------------------------- difficulty buckets and the term


def _groups(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inv [N], size [G])``: each response's group index (0..G−1) and the group sizes."""
    _, inv = torch.unique(group_ids.cpu(), return_inverse=True)
    size = torch.zeros(int(inv.max()) + 1 if inv.numel() else 0, dtype=torch.float64)
    return inv, size.index_add_(0, inv, torch.ones_like(inv, dtype=torch.float64))


def _group_mean(x: torch.Tensor, inv: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """``[G]`` mean of ``x [N]`` within each group (sum, then one division, as numpy's mean)."""
    return torch.zeros_like(size).index_add_(0, inv, x.detach().double().cpu()) / size


def difficulty_buckets(correct: torch.Tensor, group_ids: torch.Tensor, easy_min_acc: float,
                       medium_min_acc: float) -> torch.Tensor:
    """Bucket ``[N]`` (``EASY``/``MEDIUM``/``HARD``) of each response from its group's accuracy.

    Args:
        correct: ``[N]`` 1 for a correct answer, 0 otherwise.
        group_ids: ``[N]`` the prompt each response answers.
        easy_min_acc: easy when the group's accuracy is ≥ this.
        medium_min_acc: medium when ≥ this (and not easy).
    """
    inv, size = _groups(group_ids)
    acc = _group_mean(correct, inv, size)[inv]  # [N]
    bucket = torch.where(acc >= easy_min_acc, EASY, torch.where(acc >= medium_min_acc, MEDIUM, HARD))
    return bucket.to(group_ids.device)


def _bucket_sums(x: torch.Tensor, bucket: torch.Tensor, reducer: Reducer) -> torch.Tensor:
    """``[2, 3]``: Σ x and the number of entries per bucket over the scope."""
    onehot = torch.nn.functional.one_hot(bucket.long().cpu(), 3).double()  # [n, 3]
    return reducer.sum(torch.stack([(onehot * x.double().cpu()[:, None]).sum(0), onehot.sum(0)]))


def _bucket_means(x: torch.Tensor, bucket: torch.Tensor, reducer: Reducer) -> torch.Tensor:
    sums = _bucket_sums(x, bucket, reducer)
    return torch.where(sums[1] > 0, sums[0] / sums[1].clamp(min=1), float("nan"))


def bucket_targets(count: torch.Tensor, bucket: torch.Tensor, group_ids: torch.Tensor,
                   reducer: Reducer = LOCAL) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ḡ [3], N* [3])`` float64, NaN for an empty bucket.

    Args:
        count: ``[N]`` HWE counts n_i.
        bucket: ``[N]`` from :func:`difficulty_buckets` (one bucket per group).
        group_ids: ``[N]`` the prompt of each response.
        reducer: spans the shards (groups must not straddle them).
    """
    inv, size = _groups(group_ids)
    group_bucket = torch.zeros(len(size), dtype=torch.long).scatter_(0, inv, bucket.long().cpu())
    mean = _bucket_means(_group_mean(count, inv, size), group_bucket, reducer)
    return mean, torch.round(mean)


def alpha_update(alpha: tuple[float, ...], mean: torch.Tensor, target: torch.Tensor, cfg: AresConfig
                 ) -> tuple[float, float, float]:
    """α_b after this batch: ``clip(α + η_α·δ)``, unchanged for an empty bucket (NaN ḡ).

    Args:
        alpha: α_b before.
        mean: ``[3]`` ḡ_b.
        target: ``[3]`` N*_b.
        cfg: ``alpha_lr``, ``alpha_min``, ``alpha_max``.
    """
    out = []
    for b in range(3):
        g, n = float(mean[b]), float(target[b])
        if math.isnan(g):
            out.append(float(alpha[b]))
            continue
        delta = n - g if b == HARD else g - n
        out.append(min(max(float(alpha[b]) + cfg.alpha_lr * delta, cfg.alpha_min), cfg.alpha_max))
    return tuple(out)


def shaping_term(count: torch.Tensor, bucket: torch.Tensor, correct: torch.Tensor, target: torch.Tensor,
                 alpha: torch.Tensor | tuple[float, ...]) -> torch.Tensor:
    """r_i ``[N]`` (float64), the module docstring's term.

    Args:
        count: ``[N]`` n_i.
        bucket: ``[N]`` from :func:`difficulty_buckets`.
        correct: ``[N]`` 1 for a correct answer.
        target: ``[3]`` N*_b (rows only read their own bucket's).
        alpha: ``[3]`` α_b.
    """
    b = bucket.long().cpu()
    table = lambda v: torch.as_tensor(v, dtype=torch.float64)[b]  # noqa: E731
    n_star, cap = table(target), table(alpha) * table(CAP_SCALE)
    kappa, temp = table(KAPPA), table(TEMP).clamp(min=TEMP_MIN)
    d = count.double().cpu() - n_star
    margin = (table(MARGIN_FRAC) * n_star.clamp(min=1.0)).clamp(min=MIN_MARGIN)

    def huber(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(min=0.0)
        return torch.where(x <= kappa, 0.5 * x * x / kappa, x - 0.5 * kappa)

    def penalty(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return -torch.minimum(cap, scale * huber(x) / (margin + kappa) * cap)

    sig = lambda x: torch.sigmoid(x / temp)  # noqa: E731
    hard = torch.where(d >= -margin, sig(d + margin) * cap, penalty(-d - margin, HARD_UNDER_SCALE))
    right = torch.where(b == EASY, penalty(d - margin), torch.where(b == MEDIUM, penalty(d.abs() - margin), hard))
    wrong = sig((d - margin).clamp(min=0.0)) * cap * table(WRONG_SCALE)
    return torch.where(correct.cpu() > 0.5, right, wrong).to(count.device)


# ---------------------------------------------------------------- adaptive KL


def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-sequence mean KL estimate ``[N]`` (float64) over valid tokens (0 with none).

    Args:
        logp: ``[N, T]`` log π_old of the sampled tokens.
        ref_logp: ``[N, T]`` log π_ref of the same tokens.
        mask: ``[N, T]`` valid-token mask.
        estimator: ``k1``, ``k2`` or ``k3`` (:func:`~entropo.algorithms.regularizers.kl_penalty`).
    """
    m = mask.detach().double()
    kl = kl_penalty(logp.detach(), ref_logp, estimator).double()
    return (kl * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def beta_update(state: AresState, kl_now: torch.Tensor, cfg: AresConfig) -> AresState:
    """One call of the β rule (module docstring) with this batch's ``k̄_b`` ``[3]`` (NaN: no row).

    Args:
        state: the state before (``beta``, ``kl_ema``, ``err_ema``, ``kl_updates``).
        kl_now: ``[3]`` k̄_b of this batch.
        cfg: the targets and the rule's constants.
    """
    calls = state.kl_updates + 1
    beta, kl_ema, err_ema = list(state.beta), list(state.kl_ema), list(state.err_ema)
    rho, lo, hi = cfg.kl_ema_decay, math.log(cfg.kl_beta_min), math.log(cfg.kl_beta_max)
    for b in range(3):
        cur = float(kl_now[b])
        if math.isnan(cur):
            continue
        last = cur if kl_ema[b] is None else kl_ema[b]
        kl_ema[b] = (1.0 - rho) * cur + rho * last
        e = kl_ema[b] / max(KL_TARGET_MIN, cfg.kl_targets[b]) - 1.0
        if abs(e) < cfg.kl_deadzone or calls % cfg.kl_update_every:
            continue
        err_ema[b] = (1.0 - rho) * e + rho * err_ema[b]
        step = cfg.kl_beta_lr * min(max(err_ema[b], -cfg.kl_beta_clip), cfg.kl_beta_clip)
        log_b = math.log(min(max(beta[b], cfg.kl_beta_min), cfg.kl_beta_max))
        beta[b] = math.exp(min(max(log_b + step, lo), hi))
    return dataclasses.replace(state, beta=tuple(beta), kl_ema=tuple(kl_ema), err_ema=tuple(err_ema), kl_updates=calls)


# ---------------------------------------------------------------- one step


class AresStep(NamedTuple):
    """What :func:`ares_step` returns.

    Attributes:
        term: ``[N]`` r_i, to add to the rewards.
        beta: ``[N]`` β_{b(i)} of each response, or None without ``seq_kl``.
        state: the state after this step.
        metrics: ``ares/*`` scalars over the scope.
    """

    term: torch.Tensor
    beta: torch.Tensor | None
    state: AresState
    metrics: dict[str, torch.Tensor]


def ares_step(entropy: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor,
              state: AresState, cfg: AresConfig, seq_kl: torch.Tensor | None = None,
              trigger: torch.Tensor | None = None, reducer: Reducer = LOCAL) -> AresStep:
    """One step of ARES on a batch: threshold, HWE counts, buckets, α_b, the term, β_b.

    Args:
        entropy: ``[N, T]`` π_old token entropies (``exact`` or ``topk``).
        mask: ``[N, T]`` valid-token mask.
        correct: ``[N]`` 1 for a correct answer.
        group_ids: ``[N]`` the prompt of each response.
        state: the state after the previous step (:meth:`AresState.initial` before the first).
        cfg: ARES's hyperparameters.
        seq_kl: ``[N]`` per-sequence mean KL to π_ref (:func:`sequence_kl`); None skips β.
        trigger: ``[N, T]`` positions allowed to count (None: all).
        reducer: spans the shards of the batch.
    """
    m, full = window_entropy(entropy, mask, cfg.window_size, cfg.window_start)
    tau_batch = float(hwe_threshold(m, full, entropy, mask, cfg.percentile, cfg.threshold_scope, reducer))
    tau, threshold = threshold_update(state.threshold, tau_batch, cfg.threshold_ema)
    count = hwe_count(m, full, tau, trigger)  # [N]
    bucket = difficulty_buckets(correct, group_ids, cfg.easy_min_acc, cfg.medium_min_acc)
    mean, target = bucket_targets(count, bucket, group_ids, reducer)
    alpha = alpha_update(state.alpha, mean, target, cfg)
    term = shaping_term(count, bucket, correct, target, alpha)  # [N]
    new = dataclasses.replace(state, threshold=threshold, alpha=alpha)
    beta_rows, metrics = None, {}
    if seq_kl is not None:
        kl_now = _bucket_means(seq_kl, bucket, reducer)  # [3]
        new = beta_update(new, kl_now, cfg)
        beta_rows = torch.as_tensor(new.beta, dtype=torch.float64)[bucket.long().cpu()].to(count.device)
        metrics.update({f"ares/kl_{name}": kl_now[b] for b, name in enumerate(BUCKETS)})
    sums = reducer.sum(torch.stack([count.sum(), term.sum()]).cpu())
    sizes = _bucket_sums(torch.ones_like(count), bucket, reducer)[1]  # [3] responses per bucket
    n = sizes.sum().clamp(min=1)
    metrics.update({"ares/hwe_count_mean": sums[0] / n, "ares/term_mean": sums[1] / n,
                    "ares/threshold": torch.tensor(tau, dtype=torch.float64),
                    "ares/threshold_batch": torch.tensor(tau_batch, dtype=torch.float64)})
    for b, name in enumerate(BUCKETS):
        metrics[f"ares/frac_{name}"] = sizes[b] / n
        metrics[f"ares/target_{name}"] = target[b]
        metrics[f"ares/alpha_{name}"] = torch.tensor(new.alpha[b], dtype=torch.float64)
        metrics[f"ares/beta_{name}"] = torch.tensor(new.beta[b], dtype=torch.float64)
    return AresStep(term, beta_rows, new, metrics)


# ---------------------------------------------------------------- the method, as the trainer runs it


@TOKEN_EXTRAS.register("topk_entropy", section="ares")
def topk_entropy_fn(cfg: AresConfig, temperature: float):
    """The code's top-k entropy per token, ``(logits [n, V], labels [n]) -> [n]``."""
    return lambda logits, labels: topk_entropy(logits, labels, k=cfg.top_k, temperature=temperature)


def _forward_extras(cfg: AresConfig, state: AresState) -> frozenset[str]:
    return frozenset({"topk_entropy"}) if cfg.entropy == "topk" else frozenset()


def _shape(cfg: AresConfig, state: AresState, batch, info: StepInfo) -> tuple[AresState, dict[str, float]]:
    """Add the difficulty-bucketed HWE term to the rewards (component ``ares``) and, with
    ``adaptive_kl``, set each response's β_b on the KL to π_ref (``batch.kl_scale``)."""
    entropy = batch.topk_entropy if cfg.entropy == "topk" else batch.entropy
    seq_kl = sequence_kl(batch.old_logp, batch.ref_logp, batch.mask, info.kl_estimator) if cfg.adaptive_kl else None
    out = ares_step(entropy, batch.mask, batch.correct, batch.group_ids, state, cfg, seq_kl=seq_kl)
    term = out.term.to(batch.rewards.dtype)
    batch.rewards = batch.rewards + term
    batch.reward_components = {**batch.reward_components, "ares": term}
    if out.beta is not None:
        batch.kl_scale = broadcast_to_tokens(out.beta.to(batch.mask.dtype), batch.mask)
    return out.state, {k: float(v) for k, v in out.metrics.items()}


CONTROLLERS.add("ares", StepMethod(init=lambda cfg, info: AresState.initial(cfg), state_cls=AresState,
                                   forward_extras=_forward_extras, shape=_shape),
                config=AresConfig, switch="ares.enable")
