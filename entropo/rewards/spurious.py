"""The ``random`` reward: a spurious-reward control, 1 with probability p whatever the response.

    R_i = 1[u_i < p],   u_i = H(seed, step, is_eval, prompt, group, k) / 2^53  ∈ [0, 1)

``H`` is the first 53 bits of BLAKE2b over those fields, ``k`` the response's position within
its prompt's group (batch order) and ``group`` the prompt's index in the step. The draw never
reads the response, so the reward carries no information about it; it is the same on every
worker, in every scoring order and on a resumed run, because it depends on nothing else. It
is a group reward (it needs ``k``) and reports no ``acc``: give the task's checker with weight
0 (``reward.fns=[random, embedded*0]``) and ``reward/accuracy`` and the evaluation still
measure the task.

- Control: Shao et al., "Spurious Rewards: Rethinking Training Signals in RLVR", arXiv
  2506.10947 (Sec. 2: random reward Bernoulli(γ), γ = 0.5), as used by Chen, Li, Li, Yin,
  Chen, Lin, "Exploration vs Exploitation: Rethinking RLVR through Clipping, Entropy, and
  Spurious Reward", arXiv 2512.16912, whose finding (clipping lowers entropy under random
  rewards) ``configs/spurious_reward.yaml`` reproduces. The body of 2512.16912 could not be
  read here; p = 0.5 is the Spurious Rewards paper's value.

Deviation: the papers draw with a global RNG; a hash of the sample's identity makes the draw
independent of which process scores it. ``seed`` is the reward's own (``reward.random.seed``),
not ``trainer.seed``: set both for a multi-seed study.
"""

from __future__ import annotations

import hashlib
import json

from entropo.rewards.api import Sample
from entropo.rewards.configs import RandomRewardConfig
from entropo.rewards.registry import RewardContext, register

_BITS = 53  # a float64 holds every multiple of 2^-53 in [0, 1) exactly


def uniform_draw(seed: int, step: int, is_eval: bool, prompt: str, group: int, k: int) -> float:
    """The ``u`` of the module docstring: uniform in [0, 1), a pure function of its arguments.

    Args:
        seed: ``reward.random.seed``.
        step: the training step (``TrainerState.global_step``; 0 without a trainer state).
        is_eval: whether the sample comes from an evaluation.
        prompt: the rendered prompt.
        group: the prompt's index in the step (``Sample.group``).
        k: the response's position within its group.
    """
    key = json.dumps([seed, step, is_eval, group, k, prompt], ensure_ascii=False).encode("utf-8")
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _BITS)) / float(1 << _BITS)


def random_rewards(samples: list[Sample], cfg: RandomRewardConfig) -> list[dict[str, float]]:
    """One ``{"score": 0 or 1}`` per sample of one group, in the group's order."""
    out = []
    for k, s in enumerate(samples):
        state = s.trainer_state
        step, is_eval = (state.global_step, state.is_eval) if state is not None else (0, False)
        u = uniform_draw(cfg.seed, step, is_eval, s.prompt, s.group, k)
        out.append({"score": 1.0 if u < cfg.p else 0.0})
    return out


@register("random", level="group", options=RandomRewardConfig, reads_policy=False)
def build_random(cfg: RandomRewardConfig, ctx: RewardContext):
    """The ``random`` group scorer (see the module docstring)."""

    def random_reward(samples: list[Sample]) -> list[dict[str, float]]:
        return random_rewards(samples, cfg)

    return random_reward
