"""Which learner passes a step needs: whether π_old can come from the update's own forward."""

from __future__ import annotations

from entropo.algorithms import stateful
from entropo.algorithms.registry import ADVANTAGES
from entropo.config import TrainConfig


def old_pass_fused(cfg: TrainConfig, rewards_read_policy: bool) -> bool:
    """Whether the π_old pass can be the update's own forward (``learner.fuse_old_forward``):
    π_old must equal π_θ at that forward (one epoch of one mini-batch) and nothing before the
    update may read π_old or π_ref: no KL, no estimator or reshaper that reads them, no
    stateful method (each reads the step batch's π_old before the update, or adds rows that
    need a π_old pass of their own), no objective input beyond the entropy and the rollout's
    log-probs, and no reward that reads them (``rewards_read_policy``)."""
    a, learner = cfg.algorithm, cfg.learner
    obj = cfg.objective()
    one_update = learner.ppo_epochs == 1 and learner.mini_batch_prompts in (None, cfg.trainer.prompts_per_step)
    return (learner.fuse_old_forward and one_update and a.kl_coef == 0
            and not ADVANTAGES.get(a.advantage).needs and a.advantage_reshaper is None
            and not stateful.active(a)
            and not obj.needs_policy_prepass and not (obj.needs - {"entropy", "rollout_logp"})
            and not rewards_read_policy)
