"""Token weights, one module per weight: multiplicative, detached per-token factors on the token
loss, applied before the masks (docs/algorithms.md §7.3-7.4, order in §8). Their signature is
:data:`~entropo.algorithms.weights.base.TokenWeightFn`.

- :mod:`~entropo.algorithms.weights.steer`: ``steer``, STEER's weights from each token's
  predicted entropy change.
- :mod:`~entropo.algorithms.weights.tis`: ``tis``, rollout importance sampling (π_old/π_roll,
  truncated or masked).
"""
