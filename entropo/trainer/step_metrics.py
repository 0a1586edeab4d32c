"""What the controller measures of a step batch, apart from running the step: the batch's
reward/length/entropy metrics, the think/answer split, the forking-token analysis and the
sample table (docs/metrics.md says what each key means).

Functions of the batch (and, for the forking analysis, of a forward pass the caller gives):
nothing here changes the batch or talks to the actors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from entropo.algorithms import diagnostics
from entropo.algorithms.select import top_count, top_k_mask
from entropo.data.prompts import render_prompt
from entropo.trainer.batch import StepBatch

FORK_RHO = 0.2  # the top 20% of tokens by entropy are the "forking" tokens (arXiv 2506.01939)
FORK_TOP_TOKENS = 50  # the forking-token table's length


def think_close_id(tokenizer) -> int | None:
    """The token id of ``</think>`` when the tokenizer has it as one token."""
    if tokenizer is None:
        return None
    ids = tokenizer.encode("</think>", add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def think_phase(response_ids: torch.Tensor, mask: torch.Tensor, close_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(think [N, T], valid [N, T])``: tokens before the first ``</think>`` (all of them when a
    response has none, as PEAR's split, docs/algorithms.md §12), and the valid tokens without
    ``</think>``."""
    is_close = (response_ids == close_id) & mask.bool()
    t = response_ids.shape[1]
    first = torch.where(is_close.any(-1), is_close.float().argmax(-1), torch.full((len(mask),), t))
    pos = torch.arange(t).expand_as(response_ids)
    think = (pos < first.unsqueeze(-1)) & mask.bool()
    return think.float(), (mask.bool() & ~is_close).float()


def batch_metrics(batch: StepBatch, close_id: int | None) -> dict[str, float]:
    """Rewards, lengths, entropy (overall, correct/wrong, think/answer), the log-prob gap between
    the rollout engine and π_old, covariance and predicted-entropy-change diagnostics."""
    m = batch.mask
    lengths = batch.response_lengths
    correct = batch.correct.bool()
    out: dict[str, float] = {
        "reward/mean": float(batch.rewards.mean()),
        "reward/accuracy": float(batch.correct.mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/correct_mean": float(lengths[correct].mean()) if correct.any() else float("nan"),
        "response_length/wrong_mean": float(lengths[~correct].mean()) if (~correct).any() else float("nan"),
        "response_length/truncated_frac": float(batch.truncated.float().mean()),
        "rollout/weight_version": float(batch.weight_version),
    }
    for name, values in batch.reward_components.items():
        out[f"reward/{name}/mean"] = float(values.mean())
    out.update(_floats(diagnostics.entropy_summary(batch.entropy, m)))
    rows_mask = m * correct.unsqueeze(-1)
    out.update(_floats(diagnostics.phase_split_means(batch.entropy, m, rows_mask, names=("correct", "wrong"))))
    if close_id is not None:
        think, answer_mask = think_phase(batch.response_ids, m, close_id)
        out.update(_floats(diagnostics.phase_split_means(batch.entropy, answer_mask, think, names=("think", "answer"))))
    out.update(_floats(diagnostics.logprob_gap(batch.rollout_logp, batch.old_logp, m)))
    out.update(_floats(diagnostics.covariance_metrics(batch.old_logp, batch.advantages, batch.entropy, m)))
    out.update(_floats(diagnostics.entropy_dynamics_metrics(batch.old_logp, batch.entropy, batch.advantages, m)))
    return out


def probe_of(batch: StepBatch, k: int) -> dict[str, torch.Tensor]:
    """The forking analysis's fixed probe: the first ``k`` responses and their entropies now."""
    k = min(k, len(batch))
    return {"prompt_ids": batch.prompt_ids[:k].clone(), "prompt_mask": batch.prompt_mask[:k].clone(),
            "response_ids": batch.response_ids[:k].clone(), "mask": batch.mask[:k].clone(),
            "entropy": batch.entropy[:k].clone()}


def forking_tokens(batch: StepBatch, probe: dict[str, torch.Tensor] | None, forward: Callable[[StepBatch], None],
                   decode: Callable[[list[int]], str]) -> tuple[dict[str, float], list[list]]:
    """The forking-token analysis (Wang et al., arXiv 2506.01939): the top-20% entropy tokens of
    the step batch counted (a table of ``[token, count, share]``), and how many of the probe's
    top-20% positions under the initial policy are still top-20% under the current one
    (``forward`` fills a batch's ``entropy`` with the current policy's)."""
    keep, threshold = top_k_mask(batch.entropy, batch.mask, top_count(FORK_RHO, int(batch.mask.sum())))
    ids = batch.response_ids[keep].tolist()
    counts: dict[int, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:FORK_TOP_TOKENS]
    table = [[decode([t]), c, c / max(len(ids), 1)] for t, c in top]
    out = {"forking/threshold": float(threshold), "forking/distinct_tokens": float(len(counts))}
    if probe is not None:
        n_rows = len(probe["mask"])
        now = StepBatch(prompt_ids=probe["prompt_ids"], prompt_mask=probe["prompt_mask"],
                        response_ids=probe["response_ids"], mask=probe["mask"],
                        rollout_logp=torch.zeros_like(probe["mask"]), truncated=torch.zeros(n_rows, dtype=torch.bool),
                        group_ids=torch.zeros(n_rows, dtype=torch.long), response_text=[], rows=[])
        forward(now)
        n = top_count(FORK_RHO, int(probe["mask"].sum()))
        initial, _ = top_k_mask(probe["entropy"], probe["mask"], n)
        current, _ = top_k_mask(now.entropy, probe["mask"], n)
        out["forking/overlap_initial"] = float((initial & current).sum()) / max(int(initial.sum()), 1)
    return out, table


def sample_rows(batch: StepBatch, tokenizer, k: int) -> list[list]:
    """The sample table's first ``k`` rows: ``[prompt, response, reward, mean entropy]``."""
    m = batch.mask.bool()
    rows = []
    for i in range(min(k, len(batch))):
        prompt = render_prompt(batch.rows[i], tokenizer)
        h = float(batch.entropy[i][m[i]].mean()) if m[i].any() else float("nan")
        rows.append([prompt, batch.response_text[i], float(batch.rewards[i]), h])
    return rows


def _floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


class Timer:
    """Seconds per named phase of a step (``timing/*``), summed over its uses."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
