"""HAPO's adaptive sampling temperature: a sampling method whose per-token temperature reads
the previous step's ĥ statistics (docs/algorithms.md §11.1).

At each decode step, with H_t the entropy of the raw logits and (μ, σ, s⁺, s⁻) the
:class:`~entropo.algorithms.hapo.HapoStats` of the previous step's π_old batch
(:func:`~entropo.algorithms.hapo.entropy_h_hat`):

    h_t = (log max(H_t, 1e-6) − μ) / (σ + 1e-6);   ĥ_t = h_t·s⁺ (h_t > 0), h_t·s⁻ (h_t ≤ 0)
    T_t = T · (1 + τ · clip(ĥ_t, −1, 1))                                (T_t = T at step 1)

- Paper: Liu et al., "HAPO: Heterogeneous Adaptive Policy Optimization" (2025); see
  :mod:`entropo.algorithms.hapo` for why no arXiv id or equation is cited.
- Official code: ``compute_entropy_based_temperature`` in ``vllm/v1/sample/sampler.py``,
  https://github.com/starriver030515/HAPO/tree/7671dde.

Conventions: the signed ĥ is the default (``code_compat=True``: the code's s⁻ < 0, so T only
ever rises; :mod:`entropo.algorithms.hapo`). The statistics are measured on the step batch
before the update and drive the next step's rollout; with ``trainer.async_rollout`` the next
rollout starts before they exist, so it reads the ones of the step before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropo.algorithms.configs.sampling import HapoTemperatureConfig
from entropo.algorithms.hapo import HapoStats, apply_scales, entropy_h_hat
from entropo.algorithms.registry import SAMPLERS
from entropo.algorithms.stateful import StepInfo, StepMethod

DECODE_EPS = 1e-6
"""The decode-time sampler's eps: floors H before log and is added to σ (sampler.py)."""


def adaptive_temperature(
    decode_entropy: torch.Tensor,
    stats: HapoStats | None,
    base_T: float,
    tau: float,
    code_compat: bool,
) -> torch.Tensor:
    """Per-token sampling temperature ``T_t`` (shape of ``decode_entropy``).

    Args:
        decode_entropy: ``[...]`` entropy of the decode-step logits *before* temperature.
        stats: the previous step's :class:`HapoStats` (π_old, its rollout batch); None at step 1.
        base_T: the base sampling temperature T.
        tau: τ (``temperature_tau``); the code's default is 0.05.
        code_compat: the released code's sign of s⁻ (T only ever rises).
    """
    dtype = torch.promote_types(decode_entropy.dtype, torch.float32)
    if stats is None:
        return torch.full_like(decode_entropy, float(base_T), dtype=dtype)
    e = torch.log(decode_entropy.detach().to(dtype).clamp(min=DECODE_EPS))
    h = (e - stats.mu) / (stats.sigma + DECODE_EPS)
    h_hat = apply_scales(h, stats.s_pos, stats.s_neg, code_compat).clamp(-1.0, 1.0)
    return base_T * (1.0 + tau * h_hat)


@dataclass(frozen=True)
class HapoTemperatureState:
    """The statistics of the last step's π_old batch (:class:`HapoStats` as floats); all None
    before the first step.

    Attributes:
        mu: μ, the pivot quantile of the log-entropy.
        sigma: σ, the RMS deviation of the log-entropy around μ.
        s_pos: s⁺ = 1/pos_max.
        s_neg: s⁻ = 1/neg_min (the code's sign).
    """

    mu: float | None = None
    sigma: float | None = None
    s_pos: float | None = None
    s_neg: float | None = None


@dataclass(frozen=True)
class AdaptiveTemperature:
    """The sampler's logit scale ``(scores [n, V], T) -> scores / T_t`` (picklable: it travels
    to the rollout workers with the sampling parameters)."""

    tau: float
    code_compat: bool
    mu: float
    sigma: float
    s_pos: float
    s_neg: float

    def __call__(self, scores: torch.Tensor, temperature: float) -> torch.Tensor:
        stats = HapoStats(*(torch.tensor(x, dtype=torch.float64) for x in (self.mu, self.sigma, self.s_pos, self.s_neg)))
        logp = torch.log_softmax(scores.float(), dim=-1)
        entropy = -(logp.exp() * logp.clamp(min=-1e4)).sum(-1)  # [n]
        t = adaptive_temperature(entropy, stats, temperature, self.tau, self.code_compat)
        return scores / t.to(scores.dtype).unsqueeze(-1)


def _context(cfg: HapoTemperatureConfig, state: HapoTemperatureState, batch, info: StepInfo):
    """This step's π_old statistics, for the next rollout."""
    _, st = entropy_h_hat(batch.entropy, batch.mask, cfg.entropy_pivot, cfg.code_compat)
    return HapoTemperatureState(float(st.mu), float(st.sigma), float(st.s_pos), float(st.s_neg)), {}


def _sampling(cfg: HapoTemperatureConfig, state: HapoTemperatureState, info: StepInfo) -> AdaptiveTemperature | None:
    if state.mu is None:
        return None
    return AdaptiveTemperature(cfg.tau, cfg.code_compat, state.mu, state.sigma, state.s_pos, state.s_neg)


SAMPLERS.add("hapo_temperature", StepMethod(init=lambda cfg, info: HapoTemperatureState(),
                                            state_cls=HapoTemperatureState, sampling=_sampling, context=_context),
             config=HapoTemperatureConfig)
