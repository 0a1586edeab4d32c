"""Mechanical rules of STYLE.md and ARCHITECTURE.md: algorithms/ imports torch only; the imports the
map forbids do not exist and no modules import each other in a cycle; docstrings match signatures."""

import ast
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
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


# ---------------------------------------------------------------- the map (ARCHITECTURE.md)
#
# The import graph of entropo/, from each module's source (ast), one edge per imported module:
# - ``import a.b.c`` is an edge to ``a.b.c`` (or its longest prefix that is a module);
#   ``from a.b import c`` to the submodule ``a.b.c`` when there is one, else to ``a.b``, or to
#   the module a package's lazy ``_EXPORTS`` table names for ``c`` (entropo, entropo.rewards);
# - imports inside functions count, marked ``deferred``: they run when the function is called;
# - imports under ``if TYPE_CHECKING:`` count, marked ``type_only``: they never run;
# - a package's ``__init__`` running before its submodules is not an edge (every package that
#   imports one of its own submodules would otherwise be a cycle), and ``importlib`` calls are
#   not edges (the registries' tables and the lazy exports; tests/algorithms/test_registry.py
#   checks the tables).


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    deferred: bool
    type_only: bool


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _lazy_exports(path: Path) -> dict[str, str]:
    """A package's ``_EXPORTS = {name: (module, attribute)}``, as name -> module."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {name: where[0] for name, where in ast.literal_eval(node.value).items()}
    return {}


def _is_type_checking(test: ast.expr) -> bool:
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def import_graph(root: Path = ROOT, package: str = "entropo") -> list[Edge]:
    """Every import of one of the package's modules by another, module-level, deferred or type-only."""
    modules = _modules(root, package)
    exports = {m: _lazy_exports(p) for m, p in modules.items() if p.name == "__init__.py"}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: list[Edge] = []
    for module, path in modules.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]

        def targets(node: ast.Import | ast.ImportFrom, here: str = here) -> list[str | None]:
            if isinstance(node, ast.Import):
                return [resolve(a.name) for a in node.names]
            base = node.module or ""
            if node.level:
                package_of = here
                for _ in range(node.level - 1):
                    package_of = package_of.rpartition(".")[0]
                base = f"{package_of}.{base}" if node.module else package_of
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules
                    else exports.get(base, {}).get(a.name) or resolve(base) for a in node.names]

        def walk(node: ast.AST, deferred: bool, type_only: bool, module: str = module) -> None:
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.extend(Edge(module, t, node.lineno, deferred, type_only)
                             for t in targets(node) if t and t != module)
                return
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.body:
                    walk(child, deferred, True)
                for child in node.orelse:
                    walk(child, deferred, type_only)
                return
            deferred = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for child in ast.iter_child_nodes(node):
                walk(child, deferred, type_only)

        walk(ast.parse(path.read_text()), False, False)
    return edges


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# ARCHITECTURE.md, "Imports that must never exist": (importers, what they must not import).
NEVER: dict[str, tuple[tuple[str, ...], Callable[[str], bool]]] = {
    "algorithms/ imports nothing of entropo outside itself":
        (("entropo.algorithms",), lambda t: not _within(t, ("entropo.algorithms",))),
    "algorithms/ never imports rewards/ (losses do not score)":
        (("entropo.algorithms",), lambda t: _within(t, ("entropo.rewards",))),
    "rewards/, data/, models/, telemetry/ never import trainer/ or launch/ (they know nothing of the loop)":
        (("entropo.rewards", "entropo.data", "entropo.models", "entropo.telemetry"),
         lambda t: _within(t, ("entropo.trainer", "entropo.launch"))),
}


@pytest.mark.parametrize("rule", list(NEVER))
def test_the_maps_forbidden_imports_do_not_exist(rule):
    """Every import counts here, deferred and type-only ones too: where an import runs changes
    when the dependency is paid for, not what the importing layer knows."""
    importers, forbidden = NEVER[rule]
    found = [f"{e.source}:{e.line} imports {e.target}" for e in import_graph()
             if _within(e.source, importers) and forbidden(e.target)]
    assert found == [], f"{rule}:\n" + "\n".join(found)


def find_cycle(edges: list[Edge]) -> list[Edge]:
    """One cycle of the graph (its edges in order), or [] when there is none."""
    out: dict[str, list[Edge]] = {}
    for e in edges:
        out.setdefault(e.source, []).append(e)
    state: dict[str, int] = {}  # 1: on the current path, 2: done (no cycle through it)
    path: list[Edge] = []

    def dfs(module: str) -> list[Edge]:
        state[module] = 1
        for e in sorted(out.get(module, []), key=lambda e: (e.target, e.line)):
            if state.get(e.target) == 1:  # back on the path: the cycle starts where the path left it
                start = next(i for i, p in enumerate([*path, e]) if p.source == e.target)
                return [*path[start:], e]
            if e.target not in state:
                path.append(e)
                if found := dfs(e.target):
                    return found
                path.pop()
        state[module] = 2
        return []

    for module in sorted(out):
        if module not in state and (found := dfs(module)):
            return found
    return []


def _show(cycle: list[Edge]) -> str:
    return " -> ".join(f"{e.source} (line {e.line}{', in a function' if e.deferred else ''})" for e in cycle) \
        + f" -> {cycle[0].source}"


def test_no_import_cycles_between_modules():
    """Module-level and deferred (function-level) imports count: a function-level import of a
    module that imports this one back is still a cycle, only hidden from the interpreter until
    the function runs, and it is the usual way such a cycle is papered over. Type-only imports
    do not count: they never run, and two modules may name each other's types in annotations
    (the registry's ``Entry.step`` is a ``stateful.StepMethod``, which uses the registry)."""
    cycle = find_cycle([e for e in import_graph() if not e.type_only])
    assert cycle == [], "import cycle: " + _show(cycle)


def test_the_import_graph_sees_what_it_counts(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('_EXPORTS = {"Thing": ("pkg.sub.deep", "Thing")}\n')
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("from .. import a\nclass Thing: ...\n")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from pkg.a import f\nfrom pkg import Thing\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
                              "else:\n    import pkg.b\n")
    edges = {(e.source, e.target, e.deferred, e.type_only) for e in import_graph(tmp_path, "pkg")}
    assert edges == {
        ("pkg.sub.deep", "pkg.a", False, False),  # relative, from a package's submodule
        ("pkg.a", "pkg.b", True, False),  # deferred; `from pkg import b` names the submodule
        ("pkg.b", "pkg.a", False, False),
        ("pkg.b", "pkg.sub.deep", False, False),  # through the lazy _EXPORTS table
        ("pkg.c", "pkg.a", False, True),
        ("pkg.c", "pkg.b", False, False),  # the else branch runs
    }
    cycle = find_cycle([e for e in import_graph(tmp_path, "pkg") if not e.type_only])
    assert _show(cycle) == "pkg.a (line 4, in a function) -> pkg.b (line 1) -> pkg.a"
    assert find_cycle([e for e in import_graph(tmp_path, "pkg") if e.source != "pkg.a"]) == []


def test_the_forbidden_imports_are_recognised():
    own, scoring, loop = (NEVER[rule][1] for rule in NEVER)
    assert own("entropo.config") and own("entropo") and not own("entropo.algorithms.configs.losses")
    assert scoring("entropo.rewards.configs") and not scoring("entropo.algorithms.registry")
    assert loop("entropo.trainer.errors") and loop("entropo.launch") and not loop("entropo.config")
