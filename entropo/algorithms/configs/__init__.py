"""Every method's hyperparameters: one frozen dataclass per method, each field documented where it
is defined (``entropo config`` and docs/config.md are generated from those docstrings).

These modules import no torch and no method, so :mod:`entropo.config` loads and validates a
configuration without either (a test checks it). The method modules import their config from
here. One module per family: ``advantages``, ``losses``, ``masks``, ``weights``,
``regularizers``, ``sampling``, ``dapo``, ``ares``; ``reduction`` holds the choices they share.
"""
