"""DAPO's batch-level methods (arXiv 2503.14476; docs/algorithms.md §10): dynamic sampling
(:mod:`entropo.algorithms.dynamic_sampling`) and overlong shaping (:mod:`entropo.algorithms.overlong`)."""

from __future__ import annotations

from dataclasses import dataclass

DYNAMIC_SAMPLING_METRICS = ("acc", "seq_reward", "seq_final_reward")


@dataclass(frozen=True)
class DynamicSamplingConfig:
    """DAPO dynamic sampling (arXiv 2503.14476, Sec. 3.2)."""

    enable: bool = False
    """Filter out groups whose metric has zero std. DAPO and Entropy-Mechanism scripts: True;
    Lp-Reg and STEER scripts: False."""

    metric: str = "acc"
    """Filter metric ``M``: ``acc`` (correctness; every official script), ``seq_reward`` (sum of
    token scores) or ``seq_final_reward`` (after any in-reward KL). Prefer ``acc``: with overlong
    shaping (``algorithm.overlong``) an all-wrong group can have non-zero reward variance."""

    max_num_gen_batches: int = 10
    """Fail once this many generation batches have not kept ``train_batch_size`` prompts; 0 retries
    forever. DAPO scripts: 10. ≥ 0."""

    def __post_init__(self) -> None:
        if self.metric not in DYNAMIC_SAMPLING_METRICS:
            raise ValueError(
                f"algorithm.dynamic_sampling.metric must be one of {DYNAMIC_SAMPLING_METRICS}, "
                f"got '{self.metric}'"
            )
        if self.max_num_gen_batches < 0:
            raise ValueError(
                "algorithm.dynamic_sampling.max_num_gen_batches must be >= 0 (0 = retry forever), "
                f"got {self.max_num_gen_batches}"
            )


@dataclass(frozen=True)
class OverlongConfig:
    """DAPO soft overlong punishment (arXiv 2503.14476, Sec. 3.4). ``L_max`` is the rollout's maximum response
    length (``rollout.max_new_tokens``), passed to the functions below."""

    enable: bool = False
    """Add ``R_len`` to the reward. DAPO and 80/20 scripts: on; Entropy-Mechanism scripts: off."""

    cache_len: int = 4096
    """``L_cache``: length of the linear punishment buffer before ``L_max`` (DAPO and HAPO: 4096).
    In (0, L_max]."""

    penalty_factor: float = 1.0
    """``λ``: the penalty at ``|y| = L_max`` is ``−λ`` (DAPO: 1.0). ≥ 0."""

    filter_truncated: bool = False
    """Overlong filtering: drop truncated responses from the loss (TRL ``mask_truncated_completions``)."""

    def __post_init__(self) -> None:
        if self.cache_len <= 0:
            raise ValueError(f"algorithm.overlong.cache_len must be > 0, got {self.cache_len}")
        if self.penalty_factor < 0:
            raise ValueError(f"algorithm.overlong.penalty_factor must be >= 0, got {self.penalty_factor}")
