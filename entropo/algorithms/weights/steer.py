"""STEER: per-token weights from a first-order estimate of each token's entropy change
(docs/algorithms.md §7.3).

    p   = clamp(π_θ(y_i), 1e-8, 1 − 1e-8)        current prob of the sampled token (no grad)
    q   = clamp(π_old(y_i), 1e-8, 1)
    H_i = π_old entropy at the position
    Ω_i = | (A_i / q) · p(1 − p) · (log p + H_i) |             (non-finite Ω set to 0)

    linear:       w = clamp( w_max − (Ω − Ω_min)·(w_max − w_min)/(Ω_max − Ω_min), w_min, w_max )
                  (w = (w_min + w_max)/2 when Ω_max = Ω_min)
    exponential:  κ = −ln(w_min) / max(Ω_max, 0.02),   w = clamp( exp(−κ·Ω), w_min, 1 )

Ω_min and Ω_max are taken over the valid tokens of the scope. The objective multiplies the
token loss by w (``ℓ_i ← w_i·ℓ_i``, before the masks: docs/algorithms.md §8); weights are not renormalised and carry
no gradient. Tokens predicted to move entropy the most get the smallest weight.

- Paper: Hao et al., "Rethinking Entropy Interventions in RLVR: An Entropy Change
  Perspective", arXiv 2510.10150 (the Ω proxy and the two mappings; equation numbers not
  re-checked).
- Official code: ``compute_token_weights`` and ``loss_mode="entropy_control"`` in
  https://github.com/zz-haooo/STEER/blob/b31df71/verl/trainer/ppo/core_algos.py;
  ``run/run_exp.sh`` (exponential, w_min = 0.8) and ``run/run_linear.sh`` (linear, [0.8, 1.2]).

Deviations and conventions:
- Scope: the official code takes Ω_min/Ω_max over one micro-batch on one rank (``micro``).
  ``global`` (our default) takes them over the reducer's scope (the whole mini-batch across ranks),
  so the weights do not change with micro-batch size or GPU count.
- Weights are 0 on masked positions, as in the code (they never reach the loss).
- The base loss is the caller's (the code uses the clipped surrogate with dual clip); this module
  computes the weights only, so they compose with any token loss (docs/algorithms.md §8).
- Validated: hand-computed cases (tests/algorithms/test_steer.py). Not validated: training.
"""

from __future__ import annotations

import math

import torch

from entropo.algorithms.configs.weights import SteerConfig
from entropo.algorithms.losses.base import TokenLossInputs, valid_mean
from entropo.algorithms.reduce import Reducer
from entropo.algorithms.registry import TOKEN_WEIGHTS

# The code clamps p away from 0 and 1 (log p finite; p(1−p) > 0) and q away from 0 (A/q finite).
PROB_CLAMP = 1e-8
# The code floors Ω_max at 0.02 in the exponential scheme, so a scope whose Ω are all tiny
# keeps weights near 1 instead of giving its largest Ω the minimum weight.
OMEGA_MAX_FLOOR = 0.02


def _scope_extremes(x: torch.Tensor, mask: torch.Tensor, reducer: Reducer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max, min)`` of ``x`` over valid tokens across shards (``−inf``/``inf`` when empty)."""
    sel = x[mask.bool()]
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    local = torch.stack([sel.max() if sel.numel() else -inf, -sel.min() if sel.numel() else -inf])
    both, _ = reducer.gather(local)
    both = both.view(-1, 2).amax(dim=0)
    return both[0], -both[1]


def entropy_change_proxy(inp: TokenLossInputs) -> torch.Tensor:
    """Ω ``[n, T]`` (detached; non-finite values set to 0).

    Args:
        inp: uses ``logp`` (π_θ), ``old_logp`` (π_old), ``advantages`` and ``old_entropy``.
    """
    if inp.old_entropy is None:
        raise ValueError("steer token weights need π_old entropies (inputs.old_entropy)")
    with torch.no_grad():
        p = torch.exp(inp.logp.detach()).clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)
        q = torch.exp(inp.old_logp.detach()).clamp(min=PROB_CLAMP, max=1.0)
        omega = inp.advantages / q * p * (1.0 - p) * (torch.log(p) + inp.old_entropy)
        omega = torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))
        return omega.abs()


def _corr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of x and y over valid tokens (0 when undefined)."""
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1.0)
    xc = (x - (x * m).sum() / n) * m
    yc = (y - (y * m).sum() / n) * m
    denom = (xc.square().sum() * yc.square().sum()).sqrt()
    return torch.where(denom > 0, (xc * yc).sum() / torch.where(denom > 0, denom, 1.0), 0.0)


@TOKEN_WEIGHTS.register("steer", config=SteerConfig, needs=("old_entropy",))
def steer_weights(inp: TokenLossInputs, cfg: SteerConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """STEER weights ``[n, T]`` (no gradient; 0 on masked positions) over the reducer's scope.

    Args:
        inp: uses ``logp``, ``old_logp``, ``advantages``, ``mask``, ``old_entropy``, ``reducer``.
        cfg: :class:`SteerConfig`.
    """
    omega = entropy_change_proxy(inp)  # [n, T]
    valid = inp.mask.bool()
    with torch.no_grad():
        o_max, o_min = _scope_extremes(omega, valid, inp.reducer)
        if cfg.scheme == "linear":
            spread = o_max - o_min
            w = cfg.w_max - (omega - o_min) * (cfg.w_max - cfg.w_min) / torch.where(spread > 0, spread, 1.0)
            w = torch.where(spread > 0, w, torch.full_like(w, (cfg.w_min + cfg.w_max) / 2))
            w = w.clamp(cfg.w_min, cfg.w_max)
        else:
            kappa = -math.log(cfg.w_min) / o_max.clamp(min=OMEGA_MAX_FLOOR)
            w = torch.exp(-kappa * omega).clamp(cfg.w_min, 1.0)
        w = torch.where(valid, w, torch.zeros_like(w))
    any_valid = torch.isfinite(o_max)
    metrics = {
        "steer/weight_mean": valid_mean(w, valid),
        "steer/weight_min": w.masked_fill(~valid, float("inf")).amin() if valid.any() else w.new_zeros(()),
        "steer/weight_max": w.masked_fill(~valid, float("-inf")).amax() if valid.any() else w.new_zeros(()),
        "steer/omega_mean": valid_mean(omega, valid),
        "steer/omega_max": torch.where(any_valid, o_max, 0.0),
        "steer/weight_entropy_corr": _corr(w, inp.old_entropy.detach().to(w.dtype), valid),
    }
    return w, metrics
