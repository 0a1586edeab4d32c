"""AEPO: temperature-shifted REINFORCE samples mixed into the batch (docs/algorithms.md §11.2), pure pieces.

Each step, with Ĥ the previous update's entropy estimate and H_tgt the target:

    T'   = T_high if Ĥ ≤ H_tgt else T_low
    re-generate n responses at T' for the first ⌊B·f⌋ prompts (f = 1/4), score them, GRPO
    positives = those responses with advantage > 0.05 (the correct answers of mixed groups)
    n_s  = min(reinforce_sample_num, |positives|)         if Ĥ ≤ H_tgt
         = ⌊min(reinforce_sample_num, |positives|) / 2⌋   otherwise
    rows 0..n_s−1 of the main batch ← the first n_s positives, with A ≡ 1 on every token
    Ĥ    = −mean over valid tokens of log π_θ(sampled token)   (a Monte-Carlo entropy estimate)

The update is then the normal GRPO update on the mixed batch; its effective coefficient α of
the paper's ``∇J_GRPO + α·E_{o∼π^{T'}}[∇log π_θ(o|q)·R]`` is set by n_s relative to the batch.

- Paper: Wang et al., "Arbitrary Entropy Policy Optimization", arXiv 2510.08141.
- Official code: ``RayPPOTrainer.fit`` (branch ``algorithm == "AEPO"``) and
  ``_select_by_advantage`` in ``verl/trainer/ray_trainer.py``,
  https://github.com/597358816/AEPO/tree/b353a05 (read at 1a3e368, the version stored, which
  has the first-quarter prompt slice).

Conventions:
- The code starts with Ĥ = 0 (:data:`AEPO_INITIAL_ENTROPY`), so the first step uses T_high.
- π_old is recomputed at the base temperature for every row, the injected ones included: the
  ratio of an injected row is against the base-T policy, as in the official code. Aggregation: token-mean.
- The code takes the positives in batch order and crashes when there are none; here n_s = 0
  and nothing is replaced.
- The code's Ĥ is the mean over micro-batches of each micro-batch's token mean;
  :func:`aepo_entropy_estimate` is the token mean over the reducer's scope (equal when the
  micro-batches hold equal token counts).
- Positives are chosen by the GRPO advantage with GRPO's default ε (the code's estimator).
- The trainer runs it through :data:`AEPO`'s hooks (:mod:`entropo.algorithms.stateful`): the
  extra generation at T' (with its π_old pass and rewards) is the controller's ``generate``;
  the mixing, the state Ĥ and its update are here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from entropo.algorithms.advantages import broadcast_to_tokens, grpo
from entropo.algorithms.configs.advantages import GRPOConfig
from entropo.algorithms.configs.sampling import AepoConfig
from entropo.algorithms.reduce import LOCAL, Reducer, masked_sum_count
from entropo.algorithms.registry import SAMPLERS
from entropo.algorithms.stateful import Generate, StepInfo, StepMethod

AEPO_INITIAL_ENTROPY = 0.0
"""Ĥ before the first update (the code initialises ``entropy = 0``): the first step uses T_high."""


def _check_entropy(H_hat: float) -> None:
    if not math.isfinite(H_hat):
        raise ValueError(f"AEPO's entropy estimate Ĥ must be finite, got {H_hat}")


def aepo_temperature(H_hat: float, H_target: float, T_high: float, T_low: float) -> float:
    """T' for this step's extra rollouts: ``T_high`` if ``Ĥ ≤ H_target`` else ``T_low``.

    Args:
        H_hat: Ĥ from the previous update (:data:`AEPO_INITIAL_ENTROPY` before the first).
        H_target: H_tgt.
        T_high: temperature that raises entropy.
        T_low: temperature that lowers it.
    """
    _check_entropy(H_hat)
    return T_high if H_hat <= H_target else T_low


def aepo_num_prompts(num_prompts: int, prompt_fraction: float) -> int:
    """How many of the step's first prompts are re-generated: ``⌊num_prompts·f⌋`` (code: ``//4``).

    Args:
        num_prompts: prompts in the step batch.
        prompt_fraction: f.
    """
    return math.floor(num_prompts * prompt_fraction)


def aepo_num_injected(H_hat: float, H_target: float, reinforce_sample_num: int, n_positive: int) -> int:
    """n_s: ``min(reinforce_sample_num, n_positive)``, halved (floor) when ``Ĥ > H_target``.

    Args:
        H_hat: Ĥ from the previous update.
        H_target: H_tgt.
        reinforce_sample_num: the cap.
        n_positive: re-generated responses with advantage above the threshold.
    """
    _check_entropy(H_hat)
    n = min(int(reinforce_sample_num), int(n_positive))
    return n if H_hat <= H_target else n // 2


class AepoMix(NamedTuple):
    """Which rows of the main batch the injected samples replace.

    Attributes:
        target_rows: ``[n_s]`` rows of the main batch (always ``0..n_s−1``, the code's order).
        source_rows: ``[n_s]`` rows of the re-generated batch that go there (its first n_s
            positives, in batch order).
        advantages: ``[n_s]`` their advantage, ≡ 1 (broadcast to every valid token).
    """

    target_rows: torch.Tensor
    source_rows: torch.Tensor
    advantages: torch.Tensor


def aepo_mix(
    batch_size: int, injected_adv: torch.Tensor, n_s: int, positive_threshold: float
) -> tuple[AepoMix, dict[str, torch.Tensor]]:
    """The replacement plan: the first ``n_s`` positives overwrite rows ``0..n_s−1`` with A ≡ 1.

    Args:
        batch_size: rows of the main batch.
        injected_adv: ``[M]`` GRPO advantage of each re-generated response (within its new group).
        n_s: how many to inject (:func:`aepo_num_injected`); at most the positives and the batch.
        positive_threshold: strict lower bound on the advantage of an injected response.

    Returns:
        The plan and metrics ``aepo/n_positive``, ``aepo/n_injected``, ``aepo/injected_frac``.
    """
    positives = torch.nonzero(injected_adv.detach() > positive_threshold).squeeze(-1)  # [n_pos]
    if not 0 <= n_s <= min(positives.numel(), batch_size):
        raise ValueError(
            f"n_s = {n_s} must be in [0, min(#positives = {positives.numel()}, batch_size = {batch_size})]"
        )
    device = injected_adv.device
    plan = AepoMix(
        target_rows=torch.arange(n_s, device=device),
        source_rows=positives[:n_s],
        advantages=torch.ones(n_s, dtype=injected_adv.dtype, device=device),
    )
    metrics = {
        "aepo/n_positive": torch.tensor(float(positives.numel())),
        "aepo/n_injected": torch.tensor(float(n_s)),
        "aepo/injected_frac": torch.tensor(n_s / max(batch_size, 1)),
    }
    return plan, metrics


def aepo_entropy_estimate(logp: torch.Tensor, mask: torch.Tensor, reducer: Reducer = LOCAL) -> torch.Tensor:
    """Ĥ = −mean of log π_θ(sampled token) over valid tokens of the scope (detached).

    Args:
        logp: ``[n, T]`` log π_θ of the sampled tokens (from the update's forward passes).
        mask: ``[n, T]`` valid-token mask.
        reducer: spans the ranks (and is the identity on one process).
    """
    total, count = masked_sum_count(-logp.detach(), mask, reducer)
    return total / count.clamp(min=1)


# ---------------------------------------------------------------- the method, as the trainer runs it


@dataclass(frozen=True)
class AepoState:
    """AEPO's running state.

    Attributes:
        entropy: Ĥ, the sampled-token NLL of the last update (``actor/neg_logp``).
    """

    entropy: float = AEPO_INITIAL_ENTROPY


def _inject(cfg: AepoConfig, state: AepoState, batch, info: StepInfo, generate: Generate):
    """Re-generate the first prompts at T' and let the first n_s positive responses replace
    rows 0..n_s−1 of the batch with advantage ≡ 1 (each in a group of its own)."""
    h_hat = state.entropy
    t_prime = aepo_temperature(h_hat, cfg.entropy_target, cfg.T_high, cfg.T_low)
    n_prompts = aepo_num_prompts(info.prompts_per_step, cfg.prompt_fraction)
    metrics = {"aepo/temperature": t_prime, "aepo/entropy_estimate": h_hat}
    if n_prompts == 0:
        return batch, metrics
    first_rows = [batch.rows[i] for i in range(0, n_prompts * info.n, info.n)]
    extra = generate(first_rows, t_prime, info.step * 7919 + 17)  # π_old at the base T for every row
    adv, _ = grpo(extra.rewards, extra.group_ids, GRPOConfig(), mask=extra.mask)
    n_pos = int((adv > cfg.positive_threshold).sum())
    n_s = min(aepo_num_injected(h_hat, cfg.entropy_target, cfg.reinforce_sample_num, n_pos), len(batch))
    plan, m = aepo_mix(len(batch), adv, n_s, cfg.positive_threshold)
    metrics.update({k: float(v) for k, v in m.items()})
    if n_s == 0:
        return batch, metrics
    metrics["aepo/injected_reward_mean"] = float(extra.rewards[plan.source_rows].mean())
    extra.advantages = broadcast_to_tokens(torch.ones(len(extra)), extra.mask)
    merged = type(batch).concat([batch, extra])
    order = torch.arange(len(batch))
    order[plan.target_rows] = len(batch) + plan.source_rows
    mixed = merged.select(order)
    # an injected row keeps its own (new) group: it must not join the group it replaced
    mixed.group_ids = mixed.group_ids.clone()
    mixed.group_ids[plan.target_rows] = -1 - plan.source_rows
    return mixed, metrics


def _observe(cfg: AepoConfig, state: AepoState, metrics: dict[str, float], info: StepInfo):
    """Ĥ of the update just taken (its sampled-token NLL), when it was measured."""
    h = metrics.get("actor/neg_logp", float("nan"))
    return (AepoState(h) if math.isfinite(h) else state), {}


AEPO = StepMethod(init=lambda cfg, info: AepoState(), state_cls=AepoState, inject=_inject, observe=_observe)
SAMPLERS.add("aepo", AEPO, config=AepoConfig)
