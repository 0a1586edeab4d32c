"""Start training on a Ray cluster that is not this process's: ``entropo launch``.

- :mod:`entropo.launch.ray_job`: submit ``entropo train`` to an existing cluster as a Ray job
  (``JobSubmissionClient``), follow its logs, exit with its final status; stop a job.
- :mod:`entropo.launch.slurm`: write (and optionally ``sbatch``) a script that starts Ray
  on the allocated nodes and runs ``entropo train`` on it.
- ``configs/kuberay/rayjob.yaml``: a KubeRay ``RayJob`` manifest.

Placement of the actors once training runs is :mod:`entropo.trainer.placement`'s (planned)
and :mod:`entropo.trainer.cluster`'s (created); the commands are in docs/multinode.md.
"""

from __future__ import annotations

import shlex

# Runs entropo's CLI from the code shipped with the job (the working directory is first on
# PYTHONPATH) whether or not the ``entropo`` console script is installed there; it is
# ``entropo train`` otherwise.
TRAIN_COMMAND = ("python", "-m", "entropo.cli", "train")


def train_command(config: str | None, overrides: list[str]) -> str:
    """The shell command that trains with ``config`` (optional) and ``overrides``."""
    parts = [*TRAIN_COMMAND, *([config] if config else []), *overrides]
    return shlex.join(parts)
