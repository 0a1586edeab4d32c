"""The configuration reference, generated from the config dataclasses' field docstrings.

Each field is documented once, by the string literal under it (CleanRL's style); this module
reads those strings with ``ast`` and renders ``docs/config.md`` and ``entropo config``'s
output, so the docs can never drift from the code (a test regenerates and compares).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import typing
from pathlib import Path
from typing import Any

from entropo.config import TrainConfig


@functools.cache
def _classes(path: str) -> dict[str, ast.ClassDef]:
    """The top-level classes of a source file by name, parsed once per file (``inspect.getsource``
    of a class parses its whole module each time, which made ``entropo config`` take seconds)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: docstring}`` of a dataclass, from its source."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return {}
    node = _classes(path).get(cls.__name__) if path else None
    if node is None:
        return {}
    body = node.body
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def rows(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, doc)`` for every leaf field, depth first."""
    out: list[tuple[str, str, str]] = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    instance = cls() if _constructible(cls) else None
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        kind = hints.get(f.name)
        if dataclasses.is_dataclass(kind):
            out.extend(rows(kind, key + "."))
            continue
        default = getattr(instance, f.name) if instance is not None else f.default
        out.append((key, _show(default), docs.get(f.name, "")))
    return out


def _constructible(cls: type) -> bool:
    try:
        cls()
        return True
    except TypeError:
        return False


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses by `entropo config` (do not edit by hand). Set a key",
        "in a YAML recipe or on the command line as `key=value`; lists as `key=[a,b]`.",
        "",
    ]
    section = None
    for key, default, doc in rows():
        top = key.split(".")[0] if not key.startswith("algorithm.") or key.count(".") == 1 else ".".join(key.split(".")[:2])
        if top != section:
            section = top
            lines += ["", f"## `{section}`", "", "| key | default | meaning |", "|---|---|---|"]
        escaped = doc.replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {escaped} |")
    return "\n".join(lines) + "\n"
