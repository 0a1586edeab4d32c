"""Atomic checkpoints and exact resume.

Layout of ``<run_dir>/checkpoints/``::

    step_000010/             a complete checkpoint
        COMPLETE             written last: its presence is what makes a checkpoint usable
        learner/             DeepSpeed state of every rank (model, optimizer, scheduler)
        hf/                  the policy as ``save_pretrained`` (loadable by other tools)
        controller.pt        controller state, sampler position
    step_000012.tmp/         a save in progress (or one a crash interrupted): ignored

A save writes everything into ``step_N.tmp``, then ``COMPLETE``, then renames the directory
to ``step_N``; a crash at any point leaves the previous complete checkpoint as the newest
usable one. Only the last ``keep`` complete checkpoints are kept. On several nodes the run
directory must be on a filesystem all learner nodes share.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

MARKER = "COMPLETE"
_NAME = re.compile(r"^step_(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the path."""


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def begin(self, step: int) -> Path:
        """A fresh temporary directory for the checkpoint of ``step``."""
        tmp = self.root / f"step_{step:06d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int) -> Path:
        """Mark ``tmp`` complete, move it into place, and prune old checkpoints."""
        (tmp / MARKER).write_text(f"{step}\n")
        _fsync_dir(tmp)
        final = self.root / f"step_{step:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        for old in self.complete()[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _NAME.match(p.name) and (p / MARKER).is_file()]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))

    def resolve(self, resume: str) -> Path | None:
        """``trainer.resume``: '' → None; 'auto' → the newest complete checkpoint (None if
        there is none yet); otherwise a checkpoint directory, which must be complete."""
        if not resume:
            return None
        if resume == "auto":
            done = self.complete()
            return done[-1] if done else None
        path = Path(resume).expanduser()
        if not (path / MARKER).is_file():
            raise CheckpointError(
                f"trainer.resume: '{path}' is not a complete checkpoint (no {MARKER} marker); "
                "it may be a save that was interrupted"
            )
        return path


def save_controller(path: Path, state: dict) -> None:
    torch.save(state, path / "controller.pt")


def load_controller(path: Path) -> dict:
    try:
        return torch.load(path / "controller.pt", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path / 'controller.pt'}: cannot be read ({e})") from None


def step_of(path: Path) -> int:
    m = _NAME.match(path.name)
    if not m:
        raise CheckpointError(f"'{path}' is not a checkpoint directory (step_NNNNNN)")
    return int(m.group(1))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
