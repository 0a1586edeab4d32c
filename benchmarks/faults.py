"""The fault table: entropo's fault tests, run, one row per test.

    .venv/bin/python benchmarks/faults.py              # several minutes on 2 cores
    .venv/bin/python benchmarks/faults.py --list       # the tests it would run, not run
    .venv/bin/python benchmarks/faults.py -k sandbox   # pytest's -k
    .venv/bin/python benchmarks/faults.py tests/rewards/test_ray_pool.py   # these only

A fault test makes something go wrong on purpose (a hostile program in the code sandbox, a
reward that hangs or kills its worker, a learning rate that breaks the numerics, a checkpoint
that is not one, a cluster that does not answer, a bad config or data row, a secret in the
trainer's environment, a port reachable from the network) and passes when entropo survives it
or refuses it as designed. The tests: :data:`TARGETS` (those that exist), then every
``tests/**/`` module whose name matches :data:`PATTERNS`, so new fault modules join without an
edit here. They run in one pytest process with ``--junitxml``. The table (Markdown, on
stdout; pytest's own output goes to stderr) has per test: its module, the fault (the first
line of its docstring, else its id; a parametrized test's parameters in brackets), the
outcome (passed: survived or refused as designed; failed, with the first line of the error;
skipped, with pytest's reason) and its seconds (set-up and teardown included: the first test
of a module carries the module's fixtures, e.g. a Ray start); then the totals. The exit status
is pytest's.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGETS = (
    "tests/rewards/test_sandbox_faults.py",
    "tests/rewards/test_pool_quarantine.py",
    "tests/rewards/test_ray_pool.py",
    "tests/rewards/test_isolate.py",
    "tests/trainer/test_nonfinite.py",
    "tests/trainer/test_checkpoint_resume_errors.py",
    "tests/trainer/test_runtime.py::test_a_reward_failing_on_every_sample_stops_with_one_line",
    "tests/launch/test_unreachable_cluster.py",
    "tests/models/test_model_path_check.py",
    "tests/test_config.py::test_bad_values_name_the_key",
    "tests/test_config.py::test_impossible_combinations_name_both_methods",
    "tests/test_config.py::test_missing_file_and_bad_yaml",
    "tests/test_config.py::test_yaml_errors_are_one_line_with_file_line_and_column",
    "tests/test_config.py::test_embedded_reward_on_a_users_data_is_refused",
    "tests/test_config.py::test_reward_failure_settings_are_checked",
    "tests/data/test_loading.py::test_embedded_bad_specs",
    "tests/data/test_loading.py::test_malformed_jsonl_line_names_file_and_line",
    "tests/data/test_loading.py::test_malformed_rows_raise_with_location",
    "tests/data/test_loading.py::test_parquet_bad_row_names_row_number",
    "tests/data/test_loading.py::test_empty_dataset_raises_naming_source",
    "tests/data/test_loading.py::test_missing_paths_and_unsupported_files",
    "tests/data/test_loading.py::test_hub_failure_is_wrapped",
)
"""Fault tests in modules that hold other tests too, or whose names say otherwise: modules, or
single tests as pytest node ids. An entry that no longer exists is left out with a note."""

PATTERNS = ("test_*faults*.py", "test_*security*.py")
"""Module names under ``tests/`` that are fault tests whole."""

NOT_FAULTS = ("tests/test_faults_script.py", "tests/test_reward_faults_script.py")
"""Modules that match :data:`PATTERNS` and test no fault (the benchmark scripts' own tests)."""


def discover(root: Path = ROOT) -> list[str]:
    """The existing entries of :data:`TARGETS`, then every ``tests/**`` module matching
    :data:`PATTERNS` but :data:`NOT_FAULTS` (paths relative to ``root``), each once."""
    found: list[str] = []
    for target in TARGETS:
        path, _, name = target.partition("::")
        if (root / path).is_file() and (not name or f"def {name}(" in (root / path).read_text()):
            found.append(target)
        else:
            print(f"[faults] {target} not found; left out", file=sys.stderr)
    whole = {t for t in found if "::" not in t}
    for pattern in PATTERNS:
        for path in sorted((root / "tests").rglob(pattern)):
            rel = path.relative_to(root).as_posix()
            if rel not in whole and rel not in NOT_FAULTS:
                whole.add(rel)
                found = [t for t in found if not t.startswith(f"{rel}::")] + [rel]
    return found


def docstrings(path: Path) -> dict[str, str]:
    """First docstring line of every test function of a module, by ``name`` and ``Class.name``."""
    out: dict[str, str] = {}

    def visit(body: list, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                doc = ast.get_docstring(node)
                if doc:
                    out[prefix + node.name] = doc.strip().splitlines()[0]

    visit(ast.parse(path.read_text()).body, "")
    return out


def fault(root: Path, file: str, test: str, cache: dict[str, dict[str, str]]) -> str:
    """``test`` (``[Class.]name[params]``) of ``file`` as its docstring's first line, else its id."""
    if file not in cache:
        cache[file] = docstrings(root / file) if (root / file).is_file() else {}
    name, bracket, params = test.partition("[")
    doc = cache[file].get(name)
    return f"{doc} [{params}" if doc and bracket else doc or test


def pytest_command(targets: list[str], xml: Path | None, k: str | None, collect: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
    if xml is not None:
        cmd.append(f"--junitxml={xml}")
    if k:
        cmd += ["-k", k]
    if collect:
        cmd.append("--collect-only")
    return cmd


def environment(root: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(root), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}


def rows(xml: Path, root: Path) -> list[tuple[str, str, str, float]]:
    """``(module, fault, outcome, seconds)`` per test case of a junit (xunit1) report."""
    out, cache = [], {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        module = Path(file).stem
        cls = case.get("classname", "").rpartition(".")[2]
        test = case.get("name", "")
        if cls and cls[:1].isupper():  # a test class: look up Class.name
            test = f"{cls}.{test}"
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                message = (element.get("message") or element.text or "").strip().splitlines()
                label = "skipped" if kind == "skipped" else "failed"
                outcome = f"{label}: {message[0][:120]}" if message else label
                break
        out.append((module, fault(root, file, test, cache), outcome, float(case.get("time", 0.0))))
    return out


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(results: list[tuple[str, str, str, float]]) -> str:
    lines = ["| module | fault | outcome | s |", "|---|---|---|---:|"]
    lines += [f"| {cell(m)} | {cell(f)} | {cell(o)} | {s:.1f} |" for m, f, o, s in results]
    counts = {k: sum(o.split(":")[0] == k for _, _, o, _ in results) for k in ("passed", "failed", "skipped")}
    total = sum(s for *_, s in results)
    lines.append(f"\n{len(results)} tests: {counts['passed']} passed, {counts['failed']} failed, "
                 f"{counts['skipped']} skipped; {total:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="*", help="test modules or node ids (default: discovered)")
    p.add_argument("--list", action="store_true", help="list the tests and their faults; run nothing")
    p.add_argument("-k", default=None, help="pytest's -k expression")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose tests/ is searched and run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    root = a.root.resolve()
    targets = a.targets or discover(root)
    if a.list:
        done = subprocess.run(pytest_command(targets, None, a.k, collect=True), cwd=root, env=environment(root),
                              capture_output=True, text=True)
        cache: dict[str, dict[str, str]] = {}
        for line in done.stdout.splitlines():
            if "::" in line:
                file, _, test = line.partition("::")
                print(f"{line}  —  {fault(root, file, test.replace('::', '.'), cache)}")
        return done.returncode
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "faults.xml"
        code = subprocess.run(pytest_command(targets, xml, a.k), cwd=root, env=environment(root),
                              stdout=2).returncode  # fd 2: pytest's output stays off the table
        results = rows(xml, root) if xml.exists() else []
    print(table(results))
    return code


if __name__ == "__main__":
    sys.exit(main())
