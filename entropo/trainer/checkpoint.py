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
usable one. Each save keeps the newest ``trainer.keep_checkpoints`` complete checkpoints. On
several nodes the run directory must be on a filesystem all learner nodes share.

After a crash:

- an interrupted save (``step_N.tmp``, or a ``step_N`` without ``COMPLETE``) is never resumed
  from; it stays on disk for inspection, and a later save of the same step replaces it.
- a save that fails while the run is alive (a full disk, an I/O error) stops the run with
  :class:`CheckpointWriteError`; its partial directory is removed once no learner rank can
  still write to it (``entropo.trainer.run``), since on a full disk it holds the space the
  resumed run needs.
- ``metrics.jsonl`` keeps the lines the interrupted run wrote after its last complete
  checkpoint until a run resumes from it: the resumed run from step k drops every line of a
  step > k when it starts (:class:`entropo.telemetry.sinks.JsonlSink`) and writes them again as
  it reruns those steps, with the same numbers (to 1e-4). So the file holds one line per
  completed step, never two.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import torch

from entropo.trainer.errors import first_line

MARKER = "COMPLETE"
_NAME = re.compile(r"^step_(\d{6,})$")


DISK_FULL_BYTES = 1 << 20
"""A failed save that leaves less than this free on its disk failed for want of space. The
errno is not always there to say so: ``torch.save`` reports ENOSPC as a RuntimeError with no
errno ("unexpected pos ..."), and a write that runs out of space has used up all but a few
blocks."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the path."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written; the message is one line naming
    ``trainer.output_dir``, the disk when it is full, and the last complete checkpoint.

    Attributes:
        partial: the directory of the failed save, for the caller to remove once nothing
            writes to it any more (:meth:`remove_partial`).
    """

    def __init__(self, step: int, partial: Path, last: Path | None, error: BaseException) -> None:
        self.partial = partial
        run_dir = partial.parent.parent  # <run_dir>/checkpoints/step_N.tmp
        usage = shutil.disk_usage(run_dir) if run_dir.exists() else None
        full = _no_space(error) or (usage is not None and usage.free < DISK_FULL_BYTES)
        if full and usage is not None:
            why = f"the disk holding {run_dir} is full ({_size(usage.free)} free of {_size(usage.total)})"
            fix = "free space on it or lower trainer.keep_checkpoints"
        else:
            why = first_line(getattr(error, "cause", None) or error)  # a learner rank's error, through Ray
            fix = "fix that"
        kept = f"the last complete checkpoint, {last}, is intact" if last else "no complete checkpoint was written yet"
        self.tail = f"{kept}; {fix}, then resume with trainer.resume=auto"
        self.head = f"trainer.output_dir: the checkpoint of step {step} could not be written: {why}"
        super().__init__(f"{self.head}; {self.tail}")

    def remove_partial(self) -> str:
        """Remove the failed save; the whole message, saying what became of it."""
        shutil.rmtree(self.partial, ignore_errors=True)
        fate = f"left at {self.partial}" if self.partial.exists() else f"removed ({self.partial})"
        return f"{self.head}; its partial save was {fate}; {self.tail}"


def _no_space(error: BaseException | None) -> bool:
    """Whether ENOSPC or EDQUOT is in ``error``'s chain (Ray's ``cause``, ``__cause__``, ``__context__``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return False


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} TiB"


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def partial(self, step: int) -> Path:
        """The temporary directory of ``step``'s checkpoint while it is written."""
        return self.root / f"step_{step:06d}.tmp"

    def begin(self, step: int) -> Path:
        """A fresh temporary directory for the checkpoint of ``step``."""
        tmp = self.partial(step)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int, keep: int) -> Path:
        """Mark ``tmp`` complete, move it into place, and prune all but the newest ``keep``
        complete checkpoints (``trainer.keep_checkpoints``; 0 prunes none)."""
        (tmp / MARKER).write_text(f"{step}\n")
        _fsync_dir(tmp)
        final = self.root / f"step_{step:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        for old in self.complete()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _NAME.match(p.name) and (p / MARKER).is_file()]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))

    def incomplete(self) -> list[Path]:
        """Interrupted saves (``step_N.tmp``, or ``step_N`` without its marker), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            tmp = p.name.endswith(".tmp")
            m = _NAME.match(p.name.removesuffix(".tmp"))
            if m and p.is_dir() and (tmp or not (p / MARKER).is_file()):
                found.append((int(m.group(1)), p.name, p))
        return [p for *_, p in sorted(found)]

    def resolve(self, resume: str) -> Path | None:
        """``trainer.resume``: '' → None; 'auto' → the newest complete checkpoint (None if
        there is none yet); otherwise a checkpoint directory, which must be complete.

        Raises:
            CheckpointError: ``resume`` is not a complete checkpoint; the one-line message says
                what it is instead (an HF export, a run directory, an interrupted save) and
                what to set.
        """
        if not resume:
            return None
        if resume == "auto":
            done = self.complete()
            return done[-1] if done else None
        path = Path(resume).expanduser()
        if not (path / MARKER).is_file():
            raise CheckpointError(_not_resumable(path))
        return path


_AUTO = "or trainer.resume=auto (the newest checkpoint of trainer.output_dir)"


def _not_resumable(path: Path) -> str:
    """Why ``trainer.resume=path`` cannot resume, and what to set instead (one line)."""
    key = f"trainer.resume: '{path}'"
    if not path.exists():
        return f"{key} does not exist; set trainer.resume=<run>/checkpoints/step_NNNNNN {_AUTO}"
    # The checkpoint to suggest: the one ``path`` is inside, else the newest complete one
    # beside it or in it (``path`` = a run's checkpoints/ folder), else a placeholder.
    if (path.parent / MARKER).is_file():
        near = [path.parent]
    else:
        near = Checkpoints(path.parent).complete() or Checkpoints(path).complete()
    resume = f"trainer.resume={near[-1]}" if near else "trainer.resume=<run>/checkpoints/step_NNNNNN"
    if (path / "config.json").is_file():
        # An hf/ folder of a checkpoint (or any save_pretrained folder) holds the weights
        # only: no optimizer, scheduler or sampler state to resume from.
        return (f"{key} is an HF export (config.json, no {MARKER} marker), not a resumable checkpoint; "
                f"to start training from these weights set model.path={path}, "
                f"to resume set {resume} {_AUTO}")
    if (path / "checkpoints").is_dir():
        return (f"{key} is a run directory, not a checkpoint; to resume it set "
                f"trainer.output_dir={path} trainer.resume=auto")
    return (f"{key} is not a complete checkpoint (no {MARKER} marker): a save that was interrupted, "
            f"or not a checkpoint folder; set {resume} {_AUTO}")


def save_controller(path: Path, state: dict) -> None:
    torch.save(state, path / "controller.pt")


def load_controller(path: Path) -> dict:
    try:
        return torch.load(path / "controller.pt", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path / 'controller.pt'}: cannot be read ({e})") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
