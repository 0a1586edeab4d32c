"""UloRL DMMPT: mask well-mastered positive tokens while entropy is below a target (docs/algorithms.md §7.2).

    MPT_i = [A_i > 0] ∧ [π_θ(y_i) ≥ τ]                 (π_θ detached; A > 0 stands for R = 1)
    m'_i  = m_i · (1 − MPT_i · [H̄ < σ])

H̄ is the step batch's token-mean π_old entropy, decided once per step (``inputs.step_entropy``).
Masked tokens leave the aggregation denominator (docs/algorithms.md §1, Masks (a)).

- Paper: Du et al., "UloRL: An Ultra-Long Output RL Approach for Advancing LLMs' Reasoning
  Abilities", arXiv 2507.19766 (the DMMPT section; equation numbers not confirmed).
- Official code: not released (https://github.com/liushulinle/ULORL at 5b07062 holds a README
  only). The rule is not verified against the paper's text: it is taken from write-ups
  quoting the paper.

Deviations and open choices (none verified against the paper's PDF):
- σ has no default (no source we read gives one); one suggestion is the initial model's H̄. The config can be
  built without it, because the config schema instantiates every method's config, but
  :meth:`DmmptConfig.validate` (called by the mask itself, and by the config loader when
  ``dmmpt`` is selected) raises if it is unset.
- "Positive response" is read as ``A > 0``; "π(y_i)" as π_θ of the training forward; H̄ as the
  π_old step mean; masking as exclusion from the denominator. Each is our choice.
- The decision is per token (no batch statistic); ``stat_scope`` only says where the objective
  computes the mask: ``global`` (default) in the mini-batch preparation pass, so that the
  aggregation denominator is counted after the mask over the whole mini-batch (docs/algorithms.md §8).
- Validated: hand-computed cases (tests/algorithms/test_dmmpt.py). Not validated: training.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.masks import DmmptConfig
from entropo.algorithms.losses.base import TokenLossInputs, valid_frac
from entropo.algorithms.masks.base import TokenMask
from entropo.algorithms.registry import TOKEN_MASKS


@TOKEN_MASKS.register("dmmpt", config=DmmptConfig, needs=("step_entropy",), row_local=True)
def dmmpt_mask(inp: TokenLossInputs, cfg: DmmptConfig) -> tuple[TokenMask, dict[str, torch.Tensor]]:
    """Keep every valid token except well-mastered positive ones while ``H̄ < σ``.

    Args:
        inp: uses ``logp`` (π_θ), ``advantages``, ``mask`` and ``step_entropy`` (H̄).
        cfg: :class:`DmmptConfig` with σ set.
    """
    cfg.validate()
    if inp.step_entropy is None:
        raise ValueError("the dmmpt token mask needs the step's mean π_old entropy (inputs.step_entropy)")
    valid = inp.mask.bool()
    step_entropy = float(inp.step_entropy)
    gate = step_entropy < cfg.sigma
    mastered = valid & (inp.advantages > 0) & (torch.exp(inp.logp.detach()) >= cfg.tau)  # [n, T]
    drop = mastered & gate
    metrics = {
        "dmmpt/gate_active": torch.tensor(float(gate)),
        "dmmpt/masked_frac": valid_frac(drop, inp.mask),
        "dmmpt/mastered_frac": valid_frac(mastered, inp.mask),
        "dmmpt/step_entropy": torch.tensor(step_entropy),
        "dmmpt/sigma": torch.tensor(float(cfg.sigma)),
    }
    return TokenMask(keep=valid & ~drop, exclude_from_denominator=True), metrics
