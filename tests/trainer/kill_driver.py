"""``entropo train`` that SIGKILLs itself at a chosen moment (tests/trainer/test_process_faults.py).

    python -m tests.trainer.kill_driver MOMENT STEP PROCS_JSON [key=value ...]

``MOMENT``:

- ``update``: the driver dies mid-step, when step ``STEP``'s rollout, rewards and advantages
  are done and its update is about to go to the learner ranks.
- ``commit``: the driver dies between the temporary write of step ``STEP``'s checkpoint and
  its commit: every file is in ``step_N.tmp``, the ``COMPLETE`` marker and the rename are not.

Just before dying it writes the pid, creation time and name of each of its descendants (the
local Ray instance it started and the actors) to ``PROCS_JSON``, for the test to check that
none outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import psutil


def die(procs_json: str) -> None:
    procs = [{"pid": p.pid, "created": p.create_time(), "name": p.name()}
             for p in psutil.Process().children(recursive=True)]
    with open(procs_json, "w") as f:
        json.dump(procs, f)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    from entropo.cli import main as cli
    from entropo.trainer.checkpoint import Checkpoints
    from entropo.trainer.cluster import Cluster

    moment, step, procs_json, overrides = argv[0], int(argv[1]), argv[2], argv[3:]
    if moment == "update":
        update = Cluster.update

        def dying_update(self, minibatches, ctx, fill=None):
            if ctx.step == step:
                die(procs_json)
            return update(self, minibatches, ctx, fill)

        Cluster.update = dying_update
    elif moment == "commit":
        commit = Checkpoints.commit

        def dying_commit(self, tmp, at, keep):
            if at == step:
                die(procs_json)
            return commit(self, tmp, at, keep)

        Checkpoints.commit = dying_commit
    else:
        raise SystemExit(f"unknown moment {moment!r} (update, commit)")
    return cli(["train", *overrides])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
