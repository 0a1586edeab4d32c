"""The registries' tables: each name's module registers exactly that name, and reading the
names imports no method."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from entropo.algorithms import registry

ROOT = Path(__file__).resolve().parents[2]

# Records, for every registration, the module whose code made it: the first frame outside
# registry.py (the decorated function's module body, or the module calling ``add``).
_WHO_REGISTERS = """
import json, sys
from entropo.algorithms import registry

found = {}
add = registry.Registry.add

def recording_add(self, name, fn, **kw):
    frame = sys._getframe(1)
    while frame.f_globals.get("__name__") == registry.__name__:
        frame = frame.f_back
    found.setdefault(self.family, {})[name] = frame.f_globals["__name__"]
    add(self, name, fn, **kw)

registry.Registry.add = recording_add
registry.load_all()
print(json.dumps(found))
"""


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_table_module_exists():
    missing = [m for family in registry.FAMILIES for m in family.modules.values()
               if importlib.util.find_spec(m) is None]
    assert missing == []


def test_each_table_row_is_registered_by_its_module_and_nothing_else_is():
    found = json.loads(_run(_WHO_REGISTERS).splitlines()[-1])
    tables = {family.family: family.modules for family in registry.FAMILIES}
    assert found == tables


def test_names_import_no_method():
    code = ("import sys\nfrom entropo.algorithms import registry\n"
            "names = [n for family in registry.FAMILIES for n in family.names()]\n"
            "assert 'clip_cov' in names and 'clip_cov' in registry.TOKEN_LOSSES\n"
            "print(sorted(m for m in sys.modules if m.startswith('entropo.') or m == 'torch'))")
    assert _run(code).split() == ["['entropo.algorithms',", "'entropo.algorithms.registry']"]


def test_a_name_outside_the_table_cannot_be_registered():
    family = registry.Registry("test method", {"known": "entropo.algorithms.advantages"})
    with pytest.raises(ValueError, match="not in its registry's table"):
        family.add("unknown", lambda: None)


def test_a_table_row_whose_module_does_not_register_it_fails_on_get():
    family = registry.Registry("test method", {"ghost": "entropo.algorithms.reduce"})
    with pytest.raises(LookupError, match="does not register the test method 'ghost'"):
        family.get("ghost")
    with pytest.raises(KeyError, match="registered: ghost"):
        family.get("nothing")
