"""benchmarks/faults.py on a fake checkout in tmp_path: discovery, the table, --list and -k
(the fault tests themselves are the script's to run)."""

from __future__ import annotations

import textwrap

import pytest

from tests.script_module import load

FAKE = '''
import pytest


def test_survives():
    """A worker that dies is replaced.

    Details that stay out of the table."""


def test_breaks():
    """A fault that is not handled."""
    assert False, "boom | here"


@pytest.mark.skip(reason="needs a GPU")
def test_gpu():
    """Runs on a GPU."""


def test_no_docstring():
    pass


@pytest.mark.parametrize("mode", ["plain", "namespace"])
def test_per_mode(mode):
    """A hostile program, per isolation mode."""


class TestGroup:
    def test_in_a_class(self):
        """A method's docstring."""
'''


@pytest.fixture(scope="module")
def faults():
    return load("benchmarks/faults.py")


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "tests" / "rewards").mkdir(parents=True)
    (tmp_path / "tests" / "rewards" / "test_fake_faults.py").write_text(textwrap.dedent(FAKE))
    (tmp_path / "tests" / "test_other_security.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "tests" / "test_unrelated.py").write_text("def test_y():\n    pass\n")
    return tmp_path


def test_modules_are_found_by_name_and_missing_entries_left_out(faults, checkout, capsys):
    assert faults.discover(checkout) == ["tests/rewards/test_fake_faults.py", "tests/test_other_security.py"]
    assert "tests/rewards/test_ray_pool.py not found; left out" in capsys.readouterr().err
    real = faults.discover()
    assert "tests/rewards/test_sandbox_faults.py" in real and "tests/test_faults_script.py" not in real


def test_the_table_has_one_row_per_test_with_fault_outcome_and_seconds(faults, checkout, capsys):
    assert faults.main(["--root", str(checkout), "tests/rewards/test_fake_faults.py"]) == 1  # pytest's: a failure
    out = capsys.readouterr().out
    rows = {line.split(" | ")[1]: line.split(" | ")[2] for line in out.splitlines() if line.startswith("| test_fake")}
    assert rows == {
        "A worker that dies is replaced.": "passed",
        "A fault that is not handled.": "failed: AssertionError: boom \\| here",
        "Runs on a GPU.": "skipped: needs a GPU",
        "test_no_docstring": "passed",
        "A hostile program, per isolation mode. [plain]": "passed",
        "A hostile program, per isolation mode. [namespace]": "passed",
        "A method's docstring.": "passed",
    }
    assert "7 tests: 5 passed, 1 failed, 1 skipped" in out


def test_k_selects_and_list_runs_nothing(faults, checkout, capsys):
    assert faults.main(["--root", str(checkout), "-k", "survives or per_mode", "tests/rewards/test_fake_faults.py"]) == 0
    assert "3 tests: 3 passed, 0 failed, 0 skipped" in capsys.readouterr().out
    assert faults.main(["--root", str(checkout), "--list", "-k", "breaks or Group"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == ["tests/rewards/test_fake_faults.py::test_breaks  —  A fault that is not handled.",
                      "tests/rewards/test_fake_faults.py::TestGroup::test_in_a_class  —  A method's docstring."]
