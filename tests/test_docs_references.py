"""Docs and docstrings cite what a reader of this repository can follow.

The method specification the code was first written against is not in this repository, so a
reference to one of its sections ("spec L2", "(spec G1)", "spec section 7", "spec 0.6", its
"[SECONDARY]" / "[UNVERIFIED]" tags) leads nowhere. Cite the paper (arXiv id, equation) and the
section of docs/algorithms.md instead, and say in words what is not verified against a paper.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPEC_REFERENCE = re.compile(
    r"\b[Ss]pec [A-Z]\d"  # spec L2, Spec R3, spec S3/G4
    r"|\b[Ss]pec section"  # spec section 7
    r"|\b[Ss]pec \d\.\d"  # spec 0.6, spec 0.3(a)
    r"|(?<![\w.])\(spec(?:\)| [A-Z0-9\[])"  # Edge cases (spec), (spec G1), (spec [UNVERIFIED]); not f(spec)
    r"|\bspec's\b|\bin the spec\b|\bspec text\b"  # the spec's preference, [SECONDARY] in the spec
    r"|ALGORITHMS\.md"  # spec/ALGORITHMS.md
    r"|\[(?:SECONDARY|UNVERIFIED)\b"  # the specification's verification tags
)

def _files() -> list[Path]:
    return [*sorted((ROOT / "entropo").rglob("*.py")), *sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


def test_the_pattern_catches_spec_references():
    for text in (
        "Clip-Cov: detach the gradient of a few high-covariance tokens (spec L2).",
        "β_ref, KL to the reference policy (spec G5).",
        "Spec R3 metrics over the responses PEAR scored.",
        "combinations (spec section 7) fail here",
        "Loss aggregation (spec 0.6): token-mean",
        "masked tokens leave the denominator (spec 0.3(a))",
        "AEPO (spec S3 + G4, `aepo.py`)",
        "Edge cases (spec): no ``</think>``",
        "verified default in the paper (spec [UNVERIFIED])",
        "``A = 0`` instead (the spec's preference)",
        "no official code found ([SECONDARY] in the spec)",
        "σ: the entropy target. [UNVERIFIED], no default",
        "``reach``: the smallest prefix that reaches p (spec text)",
        "Each method names its entry in the spec `spec/ALGORITHMS.md` (S1, A1, L2, …)",
    ):
        assert SPEC_REFERENCE.search(text), text


def test_the_pattern_leaves_other_specs_alone():
    for text in (
        "for spec in specs:",
        "path = Path(spec).expanduser()",
        "elif looks_local(spec):",
        "return adapt(spec, load_function(spec))",
        "yield spec, flat[offset : offset + spec.numel].view(spec.shape)",
        'An iterator of ``(spec, tensor)`` that counts the bytes it has handed out.',
        "The spec, with a file path made absolute.",
        "module = importlib.util.module_from_spec(spec)",
        "Clip-Cov (arXiv 2505.22617; docs/algorithms.md §6.3), not verified against the paper's text",
    ):
        assert not SPEC_REFERENCE.search(text), text


def test_no_file_cites_the_external_spec():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SPEC_REFERENCE.search(line)
    ]
    assert found == [], "cite the paper and docs/algorithms.md instead:\n" + "\n".join(found)


def test_the_scan_sees_the_package_and_the_docs():
    names = {p.relative_to(ROOT).as_posix() for p in _files()}
    assert {"README.md", "docs/algorithms.md", "entropo/algorithms/losses/clip_cov.py"} <= names
