"""Verifiable rewards: the API, the built-ins, custom functions, and the worker pool.

Entry point (the controller calls only this)::

    from entropo.rewards import RewardManager, Sample
    rm = RewardManager(cfg.reward, tokenizer)     # loads reward.fns; bad entries fail here
    res = rm.score(samples)                       # RewardResult
    res.rewards [N], res.components {name: [N]}, res.correct [N], res.cluster_ids [N], res.metrics
    rm.close()

``reward.fns`` entries: ``[label=]target[*weight]`` where target is a built-in name,
``module:function`` or ``path/to/file.py:function`` (details and the calling conventions —
verl ``compute_score``, TRL ``f(prompts, completions, **kw)``, native ``f(sample)``,
``@group_reward f(samples)``, sync or async — in :mod:`entropo.rewards.loader`). E.g.
``reward.fns=[math,format*0.1]`` or ``reward.fns=[my_rewards.py:compute_score]``.

Built-ins (options under ``reward.<name>``):

| name | level | what | module |
|---|---|---|---|
| ``math`` | sample | \\boxed / <answer> / #### / last number, math_verify equivalence | math_answer |
| ``countdown`` | sample | reach a target with given numbers (JSON ground truth) | countdown |
| ``embedded`` | sample | the embedded addition task | embedded |
| ``format`` | sample | ``<think>…</think>`` then a non-empty answer | think_format |
| ``code`` | sample | run the program on JSON test cases in a sandbox | code_exec, sandbox |
| ``pear`` | sample | PEAR phase-entropy reward (arXiv 2510.08026); needs the tokenizer and π_old entropies | pear |
| ``empo`` | group | EMPO semantic-cluster reward (arXiv 2504.05812), unsupervised | empo |

DAPO overlong shaping (docs/algorithms.md §10) is not here: the controller adds it as the ``overlong``
component.

Metrics returned in ``RewardResult.metrics`` (the controller adds ``reward/mean`` and
``reward/<name>/mean`` from the rewards and components):

| key | meaning |
|---|---|
| ``reward/errors`` | (function, sample) scores replaced by the fallback: exception + timeout + nan |
| ``reward/errors/exception`` | … because the function raised or returned something unusable (or its worker died) |
| ``reward/errors/timeout`` | … because one call passed ``reward.timeout_s`` |
| ``reward/errors/nan`` | … because the score was NaN or infinite |
| ``reward/error_frac`` | ``reward/errors`` over the (function, sample) calls of the step |
| ``reward/skipped`` | (function, sample) pairs that returned None (fallback score, not an error) |
| ``reward/workers_replaced`` | processes killed for a timeout, or found dead: a worker, or a call's forked process (``reward.isolation=fork``) |
| ``reward/quarantined`` | functions not run on the rest of the batch: most of their calls (at least 3) ended their process |
| ``reward/workers_recycled`` | Ray workers restarted because their resident memory grew by more than ``worker_memory_growth_mb`` |
| ``reward/pear/h_think_correct``, ``…_wrong``, ``reward/pear/h_answer_correct``, ``…_wrong`` | mean phase entropies by correctness |
| ``reward/pear/p_mean``, ``reward/pear/p_pos_frac_correct``, ``reward/pear/p_gt1_frac`` | mean P; correct responses with P > 0; responses with P > 1 |
| ``reward/empo/se_mean``, ``reward/empo/gated_frac``, ``reward/empo/majority_p_mean`` | mean semantic entropy per prompt; prompts gated off; majority-cluster probability |
| ``reward/code/pass_frac``, ``reward/code/isolated`` | mean fraction of test cases passed; fraction run with namespace isolation |
| ``reward/<name>/<key>`` | mean of any other numeric key a custom function's dict returns |
"""

from __future__ import annotations

from entropo import lazy_exports

__all__ = ["RewardFailureError", "RewardManager", "RewardResult", "RewardSpecError", "Sample", "check_failures",
           "group_reward"]

# Names resolve on first use, so importing a submodule (the config loads entropo.rewards.configs)
# does not import the manager, the worker pool and torch.
_EXPORTS = {
    "RewardResult": ("entropo.rewards.api", "RewardResult"),
    "Sample": ("entropo.rewards.api", "Sample"),
    "group_reward": ("entropo.rewards.api", "group_reward"),
    "RewardSpecError": ("entropo.rewards.loader", "RewardSpecError"),
    "RewardFailureError": ("entropo.rewards.manager", "RewardFailureError"),
    "RewardManager": ("entropo.rewards.manager", "RewardManager"),
    "check_failures": ("entropo.rewards.manager", "check_failures"),
}


__getattr__ = lazy_exports(__name__, _EXPORTS)
