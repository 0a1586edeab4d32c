"""Every registered advantage estimator and reshaper has the call signature of its protocol
(``AdvantageFn``, ``AdvantageReshaperFn``): the controller calls them all alike."""

from __future__ import annotations

import inspect

import pytest

from entropo.algorithms.advantages import AdvantageFn
from entropo.algorithms.registry import ADVANTAGE_RESHAPERS, ADVANTAGES, load_all
from entropo.algorithms.reshapers import AdvantageReshaperFn


def _shape(fn) -> list[tuple[str, inspect._ParameterKind, bool]]:
    """Names, kinds and whether each parameter has a default (annotations aside)."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty) for p in params]


def _entries(registry):
    load_all()
    return sorted(registry._entries.items())


@pytest.mark.parametrize(("registry", "protocol"), [(ADVANTAGES, AdvantageFn),
                                                     (ADVANTAGE_RESHAPERS, AdvantageReshaperFn)])
def test_registered_functions_match_their_protocol(registry, protocol):
    entries = _entries(registry)
    assert entries, registry.family
    want = _shape(protocol.__call__)
    for name, entry in entries:
        got = _shape(entry.fn)
        # the config may default to None (the estimator's own defaults); the rest must match
        assert [(n, k) for n, k, _ in got] == [(n, k) for n, k, _ in want], name
        assert [d for n, _, d in got if n != "cfg"] == [d for n, _, d in want if n != "cfg"], name
