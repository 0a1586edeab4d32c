"""Start a Ray worker with an allow-listed environment: the reward workers' ``py_executable``.

``python -m entropo.worker_env NAMES ARGS...`` replaces itself (``execve``) with
``python ARGS...`` (Ray's worker command line), whose environment holds only Ray's own
variables (``RAY_*``, which a worker needs to join the cluster: job id, raylet pid,
authentication mode, and ``RAY_AUTH_TOKEN`` where the user set one) and those that NAMES
allows: comma-separated names or ``fnmatch`` patterns (``LC_*``, ``AWS_*``). Because the
worker is a fresh ``execve``, neither its ``os.environ`` nor its ``/proc/self/environ`` ever
held the other variables; clearing ``os.environ`` inside a running process would leave them in
``/proc/self/environ``, which keeps the environment the process started with.

Standard library only, and no import of ``entropo.rewards`` (whose import pulls in torch):
every reward worker start pays for one more interpreter start-up (0.05-0.3 s measured on a
2-core machine under heavy load).
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Mapping

RAY_PREFIX = "RAY_"

BASE_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
    "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)
"""What every reward worker gets (``reward.pass_env`` adds to it): what Python and common
libraries need to start and find their files, and nothing that holds a credential. Executables
and the user's home and name (caches under ``~``, ``getpass``); locale and time zone (text
decoding); the temporary directory (the code sandbox works there); module search paths and
the active environment (entropo and the user's reward modules where they are not installed;
native libraries); CA certificates (for a reward that calls an HTTPS service); the hub
libraries' cache folders and offline switches (a reward that loads a tokenizer), never
``HF_TOKEN``; thread counts. Left out on purpose: ``*_PROXY`` (a proxy URL can carry a
password), ``LD_PRELOAD``."""


def allowed_env(env: Mapping[str, str], patterns: list[str]) -> dict[str, str]:
    """The variables of ``env`` that are Ray's own or match one of ``patterns``."""
    return {k: v for k, v in env.items()
            if k.startswith(RAY_PREFIX) or any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def command(patterns: list[str]) -> list[str]:
    """The ``py_executable`` words that start a worker with ``patterns`` (names, not values: a
    command line is readable by every user of the machine)."""
    return [sys.executable, "-m", "entropo.worker_env", ",".join(patterns)]


def main(argv: list[str]) -> None:
    patterns = [p for p in argv[0].split(",") if p]
    os.execve(sys.executable, [sys.executable, *argv[1:]], allowed_env(os.environ, patterns))


if __name__ == "__main__":
    main(sys.argv[1:])
