"""The documented metric keys of docs/metrics.md, as regular expressions."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def documented_patterns() -> list[re.Pattern]:
    patterns = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for key in re.findall(r"`([^`]+)`", first):
            if "…" in key:
                continue
            regex = re.escape(key)
            regex = regex.replace(re.escape("<name>"), r"[^/]+").replace(re.escape("<source>"), r".+")
            regex = regex.replace(re.escape("<k>"), r"\d+").replace(re.escape("<key>"), r"[^/]+")
            patterns.append(re.compile(f"^{regex}$"))
    # `cov/entropy_q1` … `cov/entropy_q5`
    patterns.append(re.compile(r"^cov/entropy_q[1-5]$"))
    return patterns


def undocumented(keys) -> list[str]:
    patterns = documented_patterns()
    return sorted(k for k in keys if k != "step" and not any(p.match(k) for p in patterns))
