"""Token masks, one module per mask: multiplicative selections applied after the token loss
and the token weights (docs/algorithms.md §7, order in §8).

A mask returns a :class:`~entropo.algorithms.masks.base.TokenMask`: which tokens keep their
loss, and whether the dropped tokens also leave the aggregation denominator or stay in it with
zero loss (docs/algorithms.md §1, Masks (a) and (b)). Its signature is
:data:`~entropo.algorithms.masks.base.TokenMaskFn`.

- :mod:`~entropo.algorithms.masks.high_entropy`: ``high_entropy``, the top-ρ entropy tokens
  (the 80/20 rule; per response with ``stat_scope=sequence``, EARL).
- :mod:`~entropo.algorithms.masks.dmmpt`: ``dmmpt``, UloRL's well-mastered positive tokens.
- :mod:`~entropo.algorithms.masks.clip_b`: ``clip_b``, negative-advantage tokens that would
  lower entropy the most.
"""
