"""``entropo launch --slurm --nodes N CONFIG.yaml [key=value ...]``: an sbatch script that starts
a Ray cluster on the allocation and trains on it.

The script follows Ray's Slurm recipe
(https://docs.ray.io/en/releases-2.49.0/cluster/vms/user-guides/community/slurm.html): one task
per node; ``ray start --head`` on the first node and ``ray start --address`` on the others,
each under ``srun --overlap`` and ``--block`` in the background; the batch step (on the head
node) waits until N nodes are alive, then runs ``entropo train`` as the driver with
``RAY_ADDRESS`` set. The job ends, and Slurm stops the Ray processes, when training ends.

``python -m entropo.launch.slurm wait N TIMEOUT_S`` is the wait step.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from entropo.launch import train_command


@dataclass(frozen=True)
class SlurmRequest:
    """One Slurm job: the allocation, the environment set-up, and the training command.

    Args:
        config: the YAML recipe (relative to ``workdir`` or absolute), or None.
        overrides: dotted ``key=value`` overrides.
        nodes: nodes to allocate; all join one Ray cluster.
        gpus_per_node: ``--gpus-per-node`` and Ray's ``--num-gpus`` (0: none asked; Ray detects).
        cpus_per_node: ``--cpus-per-task`` and Ray's ``--num-cpus`` (None: Slurm's default).
        partition: ``--partition`` (None: the cluster's default).
        account: ``--account``.
        time: ``--time`` limit, e.g. ``24:00:00``.
        job_name: ``--job-name``.
        setup: shell lines run first (``module load ...``, ``source .venv/bin/activate``); the
            ``srun`` steps inherit the environment they make.
        workdir: the directory the job runs in (the checkout).
        ray_port: the head's GCS port.
        wait_s: how long to wait for all nodes to join before failing.
    """

    config: str | None
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    job_name: str = "entropo"
    setup: tuple[str, ...] = ()
    workdir: str = "."
    ray_port: int = 6379
    wait_s: int = 600

    def train_overrides(self) -> list[str]:
        """The overrides, plus ``trainer.nodes=N`` unless they set it."""
        extra = []
        if not any(o.startswith("trainer.nodes=") for o in self.overrides):
            extra.append(f"trainer.nodes={self.nodes}")
        return [*self.overrides, *extra]


def slurm_script(req: SlurmRequest) -> str:
    """The sbatch script for ``req``."""
    if req.nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {req.nodes}")
    q = shlex.quote
    directives = [f"--job-name={req.job_name}", f"--nodes={req.nodes}", "--ntasks-per-node=1",
                  f"--output={req.job_name}-%j.out"]
    if req.cpus_per_node:
        directives.append(f"--cpus-per-task={req.cpus_per_node}")
    if req.gpus_per_node:
        directives.append(f"--gpus-per-node={req.gpus_per_node}")
    for flag, value in (("partition", req.partition), ("account", req.account), ("time", req.time)):
        if value:
            directives.append(f"--{flag}={value}")
    resources = ""
    if req.cpus_per_node:
        resources += f" --num-cpus={req.cpus_per_node}"
    if req.gpus_per_node:
        resources += f" --num-gpus={req.gpus_per_node}"
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "",
             "# written by: entropo launch --slurm (entropo/launch/slurm.py); see docs/multinode.md",
             "set -euo pipefail", f"cd {q(str(Path(req.workdir).resolve()))}", *req.setup, "",
             "nodes=($(scontrol show hostnames \"$SLURM_JOB_NODELIST\"))",
             "head=${nodes[0]}",
             "# the first address the head reports (some report IPv6 first: pick IPv4 when present)",
             "head_ip=$(srun --nodes=1 --ntasks=1 --overlap -w \"$head\" hostname -I | tr ' ' '\\n' "
             "| grep -E '^[0-9.]+$' | head -n1)",
             f"export RAY_ADDRESS=\"$head_ip:{req.ray_port}\"",
             "echo \"[entropo] Ray head on $head ($RAY_ADDRESS), ${#nodes[@]} node(s)\"",
             "",
             "srun --nodes=1 --ntasks=1 --overlap -w \"$head\" \\",
             f"    ray start --head --node-ip-address=\"$head_ip\" --port={req.ray_port}{resources} --block &",
             "sleep 10",
             "for ((i = 1; i < ${#nodes[@]}; i++)); do",
             "    srun --nodes=1 --ntasks=1 --overlap -w \"${nodes[$i]}\" \\",
             f"        ray start --address=\"$RAY_ADDRESS\"{resources} --block &",
             "done",
             f"python -m entropo.launch.slurm wait {req.nodes} {req.wait_s}",
             "",
             train_command(req.config, req.train_overrides()),
             ""]
    return "\n".join(lines)


def write_script(req: SlurmRequest, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(slurm_script(req))
    path.chmod(0o755)
    return path


def wait_for_nodes(nodes: int, timeout_s: float, poll_s: float = 5.0) -> int:
    """Block until the Ray cluster at ``RAY_ADDRESS`` has ``nodes`` alive nodes; returns 0, or 1
    with a message after ``timeout_s``."""
    import ray

    deadline = time.monotonic() + timeout_s
    alive, error = 0, ""
    while time.monotonic() < deadline:
        try:
            if not ray.is_initialized():
                ray.init(logging_level="ERROR", log_to_driver=False)
            alive = sum(bool(n.get("Alive")) for n in ray.nodes())
            if alive >= nodes:
                print(f"[entropo] {alive} Ray node(s) alive", flush=True)
                ray.shutdown()
                return 0
        except (ConnectionError, RuntimeError) as e:  # the head is not up yet
            error = f" (last error: {e})"
        time.sleep(poll_s)
    print(f"[entropo] only {alive} of {nodes} Ray node(s) alive after {timeout_s:g} s{error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "wait":
        sys.exit("usage: python -m entropo.launch.slurm wait NODES TIMEOUT_S")
    sys.exit(wait_for_nodes(int(sys.argv[2]), float(sys.argv[3])))
