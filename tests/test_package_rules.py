"""Mechanical rules of STYLE.md: algorithms/ imports torch only; docstrings match signatures."""

import ast
import inspect
import re
from pathlib import Path

import pytest

from entropo.algorithms import registry

ROOT = Path(__file__).resolve().parents[1]
ALGO_FILES = sorted((ROOT / "entropo" / "algorithms").rglob("*.py"))
ALLOWED = {"torch", "entropo", "__future__", "collections", "dataclasses", "typing", "math",
           "importlib", "functools", "itertools", "enum", "abc", "numbers"}


@pytest.mark.parametrize("path", ALGO_FILES, ids=lambda p: p.name)
def test_algorithms_import_torch_only(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots = [node.module.split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in ALLOWED, f"{path.name} imports {root}"
        if isinstance(node, ast.ImportFrom) and node.module.startswith("entropo."):
            assert node.module.startswith("entropo.algorithms"), f"{path.name} imports {node.module}"


def _documented_args(doc: str) -> list[str]:
    m = re.search(r"\n\s*Args:\n(.*?)(\n\s*\n|\n\s*Returns:|\Z)", doc, re.S)
    if not m:
        return []
    indent = None
    names = []
    for line in m.group(1).splitlines():
        stripped = line.lstrip()
        if not stripped:
            continue
        level = len(line) - len(stripped)
        indent = level if indent is None else indent
        if level == indent and ":" in stripped:
            names.append(stripped.split(":")[0].split(" ")[0])
    return names


def _public_functions():
    import entropo.algorithms as pkg

    registry.load_all()
    for path in ALGO_FILES:
        rel = path.relative_to(ROOT).with_suffix("")
        module = __import__(".".join(rel.parts), fromlist=["_"])
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
                yield f"{module.__name__}.{name}", obj
    del pkg


@pytest.mark.parametrize(("qualname", "fn"), list(_public_functions()), ids=lambda x: x if isinstance(x, str) else "")
def test_docstring_args_match_signature(qualname, fn):
    assert fn.__doc__, f"{qualname} has no docstring"
    params = set(inspect.signature(fn).parameters)
    for arg in _documented_args(fn.__doc__):
        assert arg in params, f"{qualname} documents '{arg}', which is not a parameter"


def test_unknown_name_lists_registered_ones():
    with pytest.raises(KeyError, match="registered: .*clip_cov"):
        registry.TOKEN_LOSSES.get("clip_kov")
