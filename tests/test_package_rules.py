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


def _code_tokens(path: Path) -> set[str]:
    """The names and string literals of a module's code (comments and docstrings left out)."""
    import io
    import tokenize

    tree = ast.parse(path.read_text())
    doc_lines = {n.body[0].lineno for n in ast.walk(tree)
                 if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                 and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = set()
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.NAME:
            out.add(tok.string)
        elif tok.type == tokenize.STRING and tok.start[0] not in doc_lines:
            out.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", tok.string))
    return out


def test_no_method_is_named_in_the_trainer():
    """trainer/ runs every method through the registries (its step hooks, its registry entry's
    attributes): no registered method's name is a name or a string in the trainer's code."""
    families = (registry.ADVANTAGES, registry.ADVANTAGE_RESHAPERS, registry.TOKEN_LOSSES, registry.TOKEN_MASKS,
                registry.TOKEN_WEIGHTS, registry.REGULARIZERS, registry.SAMPLERS, registry.CONTROLLERS)
    # SEED-GRPO's registered name is also the word for a random seed, which the trainer uses
    names = {n for family in families for n in family.names()} - {"seed"}
    assert {"siren", "aepo", "hapo_temperature", "ares", "canon", "dmmpt"} <= names
    for path in sorted((ROOT / "entropo" / "trainer").glob("*.py")):
        found = names & _code_tokens(path)
        assert not found, f"{path.name} names the method(s) {sorted(found)}: go through the registry"


def test_the_method_name_scan_sees_code_not_docstrings(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""The SIREN anchor: siren."""\n\ndef f(a):\n    """epo."""\n    return "aepo" in a.sampling\n')
    assert "aepo" in _code_tokens(path) and "siren" not in _code_tokens(path) and "epo" not in _code_tokens(path)
