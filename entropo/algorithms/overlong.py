"""DAPO overlong reward shaping and overlong filtering (docs/algorithms.md §10).

``|y|`` is the number of generated tokens of a response (valid length, EOS included),
``L_max`` the maximum response length, ``L_cache`` the soft-punishment buffer, ``λ`` the
penalty factor:

    R_len(y) = min( −(|y| − (L_max − L_cache)) / L_cache · λ , 0 )
    R(y)     = R_correct(y) + R_len(y)

``R_len`` is 0 up to ``L_max − L_cache`` and falls linearly to ``−λ`` at ``L_max``.
Overlong filtering instead drops truncated responses from the loss by zeroing their mask.

Sources:
- Paper: Yu et al., "DAPO: An Open-Source LLM RL System at Scale", arXiv 2503.14476, Sec. 3.4
  (overlong filtering, then the soft overlong punishment formula; equation number not
  re-checked).
- Code: verl ``workers/reward_manager/dapo.py`` (``overlong_buffer``), at
  https://github.com/volcengine/verl/blob/b178a3cd5/verl/workers/reward_manager/dapo.py;
  filtering as TRL ``mask_truncated_completions`` (``trl/trainer/grpo_trainer.py`` at f2cd57710).

Conventions:
- The shaping reward is added last, after every other reward term: it is a length penalty on
  the total, whatever the other terms are.
- "Truncated" is passed in by the caller (the rollout's finish reason, or no EOS among the
  generated tokens, as TRL does) rather than guessed from ``|y| = L_max``: a response whose
  EOS lands exactly on the last allowed position is complete.
- A row whose mask is zeroed by filtering drops out of the ``|B|`` of every aggregation mode
  (see :mod:`entropo.algorithms.aggregate`), so the filter must run before ``loss_norm``.
- Metrics are over this shard's responses.
"""

from __future__ import annotations

import torch

from entropo.algorithms.configs.dapo import OverlongConfig


def overlong_penalty(lengths: torch.Tensor, max_len: int, cfg: OverlongConfig) -> torch.Tensor:
    """``R_len`` per response ``[N]`` from the valid lengths ``|y|`` ``[N]`` (0 or negative).

    Args:
        lengths: valid response lengths ``|y|`` ``[N]``.
        max_len: ``L_max``, the maximum response length; ``cfg.cache_len`` must not exceed it.
        cfg: the shaping config.
    """
    if not 0 < cfg.cache_len <= max_len:
        raise ValueError(f"overlong cache_len={cfg.cache_len} must be in (0, L_max={max_len}]")
    dtype = lengths.dtype if lengths.is_floating_point() else torch.float32
    exceed = lengths.detach().to(dtype) - (max_len - cfg.cache_len)  # [N]
    return (-exceed / cfg.cache_len * cfg.penalty_factor).clamp(max=0.0)


def filter_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Overlong filtering: the mask ``[N, T]`` with every truncated response's row zeroed.

    Args:
        mask: valid-token mask ``[N, T]``.
        truncated: ``[N]`` bool, True where generation stopped at ``L_max`` without EOS.
    """
    return mask * (~truncated.bool()).unsqueeze(-1).to(mask.dtype)  # [N, T]


def overlong_metrics(
    lengths: torch.Tensor, max_len: int, cfg: OverlongConfig, truncated: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``reward/...`` metrics of the overlong shaping over this shard's responses.

    Args:
        lengths: valid response lengths ``|y|`` ``[N]``.
        max_len: ``L_max``.
        cfg: the shaping config.
        truncated: ``[N]`` bool (optional); adds ``reward/truncated_frac``.

    Returns:
        ``reward/overlong_frac`` (responses longer than ``L_max − L_cache``, i.e. ``R_len < 0``
        when ``λ > 0``), ``reward/overlong_penalty_mean`` (mean ``R_len``) and, if given,
        ``reward/truncated_frac``.
    """
    penalty = overlong_penalty(lengths, max_len, cfg)
    n = max(lengths.numel(), 1)
    over = lengths.detach() > max_len - cfg.cache_len  # [N]
    metrics = {
        "reward/overlong_frac": over.sum().to(penalty.dtype) / n,
        "reward/overlong_penalty_mean": penalty.sum() / n,
    }
    if truncated is not None:
        metrics["reward/truncated_frac"] = truncated.bool().sum().to(penalty.dtype) / n
    return metrics
