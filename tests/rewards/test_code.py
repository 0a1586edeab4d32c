"""The ``code`` reward and its sandbox: grading, and containment of hostile programs.

Limits are small so that each run takes well under a second (a timeout case about 1 s).
"""

from __future__ import annotations

import json
import socket

import pytest

from entropo.rewards import sandbox
from entropo.rewards.code_exec import build_code, extract_code, parse_tests
from entropo.rewards.configs import CodeConfig
from entropo.rewards.registry import RewardContext
from tests.rewards.helpers import sample

FAST = dict(timeout_s=3.0, case_timeout_s=0.5, cpu_s=3, memory_mb=256)
STDIO = json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]})
CALL = json.dumps({"fn_name": "add", "inputs": [[1, 2], [10, -3]], "outputs": [3, 7]})
ASSERTS = json.dumps(["assert add(1, 2) == 3", "assert add(10, -3) == 7"])
ADD_STDIO = "a, b = map(int, input().split())\nprint(a + b)\n"
ADD_FN = "def add(a, b):\n    return a + b\n"
NAMESPACES = sandbox.namespaces_available()
CONFIGS = {
    "auto": CodeConfig(**FAST),
    "plain": CodeConfig(**FAST, isolation="plain"),
    # the kernel layers alone: no seccomp, no audit hook (needs namespaces)
    "namespace_only": CodeConfig(**FAST, isolation="namespace", seccomp=False, audit_hook=False),
    # seccomp and rlimits alone
    "seccomp_only": CodeConfig(**FAST, isolation="plain", audit_hook=False),
}


def _answer(code: str) -> str:
    return f"<think>plan</think>Here:\n```python\n{code}```\n"


def _fn(name: str = "auto"):
    if name == "namespace_only" and not NAMESPACES:
        pytest.skip("user namespaces are not available here")
    return build_code(CONFIGS[name], RewardContext())


@pytest.mark.parametrize(("gt", "code"), [(STDIO, ADD_STDIO), (CALL, ADD_FN), (ASSERTS, ADD_FN)],
                         ids=["stdio", "call", "assert"])
def test_correct_programs_pass(gt, code):
    out = _fn()(sample(_answer(code), gt))
    assert out["score"] == 1.0 and out["acc"] == 1.0 and out["pass_frac"] == 1.0
    assert out["isolated"] == float(NAMESPACES)


def test_wrong_and_partial():
    sub = "a, b = map(int, input().split())\nprint(a - b if a == 10 else a + b)\n"
    assert _fn()(sample(_answer(sub), STDIO))["score"] == 0.0
    partial = build_code(CodeConfig(**FAST, partial=True), RewardContext())
    out = partial(sample(_answer(sub), STDIO))
    assert out == {"score": 0.5, "acc": 0.0, "pass_frac": 0.5, "isolated": float(NAMESPACES)}


def test_call_forms_and_output_matching():
    leet = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert _fn()(sample(_answer(leet), CALL))["acc"] == 1.0
    tuples = json.dumps({"fn_name": "pair", "inputs": [[1]], "outputs": [[1, 2]]})
    assert _fn()(sample(_answer("def pair(x):\n    return (x, x + 1)\n"), tuples))["acc"] == 1.0
    spaced = "a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\n"
    assert _fn()(sample(_answer(spaced), STDIO))["acc"] == 1.0  # trailing whitespace is ignored


def test_no_code_syntax_error_and_crash():
    fn = _fn()
    assert fn(sample("<think>x</think>no code block", STDIO))["score"] == 0.0
    assert fn(sample(_answer("def broken(:\n"), STDIO))["score"] == 0.0
    assert fn(sample(_answer("import sys\nsys.exit(3)\n"), STDIO))["score"] == 0.0
    assert fn(sample(_answer("raise RuntimeError('x')\n"), CALL))["score"] == 0.0


def test_parse_tests_and_extract():
    assert parse_tests(ASSERTS).kind == "assert"
    # X == literal is split (the literal stays with the parent); other asserts run whole
    t = parse_tests(["assert add(1, 2) == 3", "assert (4, 5) == pair(4), 'msg'", "assert add(1, 2) > 2",
                     "assert f() == {1}", "assert add(1, 2) == add(2, 1)"])
    assert t.cases == [{"expr": "add(1, 2)"}, {"expr": "pair(4)"}, {"src": "assert add(1, 2) > 2"},
                       {"src": "assert f() == {1}"}, {"src": "assert add(1, 2) == add(2, 1)"}]
    assert t.expected == [3, (4, 5), None, None, None]
    t = parse_tests({"fn_name": "f", "inputs": [1, [2, 3]], "outputs": [1, 5]})
    assert t.kind == "call" and t.cases == [{"args": [1]}, {"args": [2, 3]}]
    with pytest.raises(ValueError, match="inputs but"):
        parse_tests({"inputs": ["1"], "outputs": []})
    with pytest.raises(ValueError, match="ground truth must be"):
        parse_tests({"tests": []})
    assert extract_code("```py\na\n```\n```python\nb\n```") == "b\n"
    assert extract_code("<think>```python\na\n```</think>none") is None


HOSTILE = {
    "network": "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=1)\ns.close()\n",
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory_bomb": "x = []\nwhile True:\n    x.append(bytearray(10**7))\n",
    "busy_loop": "while True:\n    pass\n",
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_programs_are_contained_and_fail(name, config):
    code = HOSTILE[name] + ADD_FN
    out = _fn(config)(sample(_answer(code), ASSERTS))
    assert out["score"] == 0.0 and out["acc"] == 0.0


@pytest.mark.parametrize("config", ["auto", "plain", "seccomp_only"])
def test_no_unix_sockets_or_programs_with_seccomp(config, tmp_path):
    # A listening unix socket outside the sandbox (as Ray's are): connecting must fail.
    # Without seccomp (namespace_only) this would work: see the sandbox module docstring.
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s.sock"))
    server.listen(1)
    try:
        connect = f"import socket\nsocket.socket(socket.AF_UNIX).connect({str(tmp_path / 's.sock')!r})\n"
        assert _fn(config)(sample(_answer(connect + ADD_FN), ASSERTS))["score"] == 0.0
    finally:
        server.close()
    spawn = "import subprocess\nsubprocess.run(['true'])\n"
    assert _fn(config)(sample(_answer(spawn + ADD_FN), ASSERTS))["score"] == 0.0


@pytest.mark.parametrize("config", ["auto", "plain", "namespace_only"])
def test_writes_outside_the_working_directory_fail(config, tmp_path):
    target = tmp_path / "escaped.txt"
    code = f"open({str(target)!r}, 'w').write('x')\n" + ADD_FN
    out = _fn(config)(sample(_answer(code), ASSERTS))
    assert out["score"] == 0.0
    assert not target.exists()
    # writing inside its own working directory is fine
    local = "open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n" + ADD_FN
    assert _fn(config)(sample(_answer(local), ASSERTS))["score"] == 1.0


def test_whole_run_timeout_kills_and_keeps_earlier_cases():
    # three cases; the second never ends and a wall limit shorter than its case limit kills it all
    gt = json.dumps({"inputs": ["1\n", "2\n", "3\n"], "outputs": ["1\n", "2\n", "3\n"]})
    code = "x = int(input())\nwhile x == 2:\n    pass\nprint(x)\n"
    res = sandbox.run(code, "stdio", parse_tests(gt).cases, None,
                      CodeConfig(timeout_s=0.5, case_timeout_s=30, cpu_s=30).limits())
    assert res.status == "timeout"
    assert [r.get("stdout") for r in res.records] == ["1\n"]


def test_isolation_required_but_unavailable(monkeypatch):
    monkeypatch.setattr(sandbox, "_NAMESPACE_OK", False)
    with pytest.raises(RuntimeError, match="namespace"):
        build_code(CodeConfig(isolation="namespace"), RewardContext())
    with pytest.raises(ValueError, match="isolation"):
        CodeConfig(isolation="docker").limits()
