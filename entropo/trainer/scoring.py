"""Rewards of a step batch: the reward functions' inputs built from the batch, their scores
put on it (with DAPO's overlong shaping, docs/algorithms.md §10), and the answer clusters
that SEED-GRPO reads; a reward function failing on most samples stops the run here
(:func:`entropo.rewards.manager.check_failures`)."""

from __future__ import annotations

import torch

from entropo.algorithms.overlong import overlong_metrics, overlong_penalty
from entropo.config import TrainConfig
from entropo.data.prompts import render_prompt
from entropo.rewards.manager import check_failures
from entropo.trainer.batch import StepBatch
from entropo.trainer.evaluation import answer_key


class Scorer:
    """Scores step batches with a :class:`~entropo.rewards.manager.RewardManager`."""

    def __init__(self, cfg: TrainConfig, rewards, tokenizer) -> None:
        self.cfg = cfg
        self.rewards = rewards
        self.tokenizer = tokenizer

    def samples(self, batch: StepBatch, step: int, is_eval: bool = False) -> list:
        """One reward-function input per response (π_old statistics when the batch has them)."""
        from entropo.rewards.api import Sample, TrainerState

        state = TrainerState(global_step=step, max_steps=self.cfg.trainer.total_steps, is_eval=is_eval)
        rendered: dict[int, str] = {}  # a group's n responses share one row: template it once
        out = []
        for i, (text, ids, m, row, g) in enumerate(zip(
            batch.response_text, batch.response_ids, batch.mask, batch.rows, batch.group_ids
        )):
            valid = m.bool()
            if id(row) not in rendered:
                rendered[id(row)] = render_prompt(row, self.tokenizer)
            out.append(Sample(
                prompt=rendered[id(row)],
                response=text, response_ids=ids[valid].tolist(), ground_truth=row.ground_truth,
                data_source=row.data_source, extra_info=row.extra_info, group=int(g),
                entropy=None if batch.entropy is None else batch.entropy[i][valid],
                old_logp=None if batch.old_logp is None else batch.old_logp[i][valid],
                messages=None if isinstance(row.prompt, str) else row.prompt, columns=row.columns,
                trainer_state=state,
            ))
        return out

    def correctness(self, batch: StepBatch, step: int) -> tuple[torch.Tensor, float]:
        """Plain correctness ``[N]`` for evaluation (``reward.correct_threshold``) and the share of
        reward calls that fell back; stops the run like a training step when a reward function
        fails on most samples."""
        res = self.rewards.score(self.samples(batch, step, is_eval=True))
        check_failures(res, self.cfg.reward.max_error_frac, "the evaluation")
        return res.correct, res.metrics["reward/error_frac"]

    def score(self, batch: StepBatch, step: int) -> dict[str, float]:
        """Set ``rewards``, ``reward_components``, ``correct`` and ``cluster_ids`` on the batch;
        returns the reward metrics."""
        res = self.rewards.score(self.samples(batch, step))
        check_failures(res, self.cfg.reward.max_error_frac, f"step {step}")
        rewards, comps, correct, metrics = res.rewards, dict(res.components), res.correct, dict(res.metrics)
        ov, max_len = self.cfg.algorithm.overlong, self.cfg.rollout.max_new_tokens
        if ov.enable:
            lengths = batch.response_lengths
            comps["overlong"] = overlong_penalty(lengths, max_len, ov)
            rewards = rewards + comps["overlong"]
            metrics.update({k: float(v) for k, v in overlong_metrics(lengths, max_len, ov, batch.truncated).items()})
        batch.rewards, batch.reward_components, batch.correct = rewards, comps, correct
        clusters = res.cluster_ids
        if clusters is None or bool((clusters < 0).any()):
            clusters = answer_clusters(batch.group_ids, [answer_key(t) for t in batch.response_text])
        batch.cluster_ids = clusters
        return metrics


def answer_clusters(group_ids: torch.Tensor, answers: list[str]) -> torch.Tensor:
    """``[N]`` cluster id of each response's final answer within its group (exact match;
    ids numbered by first appearance), for SEED-GRPO's semantic entropy."""
    seen: dict[tuple[int, str], int] = {}
    per_group: dict[int, int] = {}
    out = []
    for g, a in zip(group_ids.tolist(), answers):
        if (g, a) not in seen:
            seen[(g, a)] = per_group.get(g, 0)
            per_group[g] = seen[(g, a)] + 1
        out.append(seen[(g, a)])
    return torch.tensor(out, dtype=torch.long)
