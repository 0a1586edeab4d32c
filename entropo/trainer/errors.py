"""Errors shared by the run (:mod:`entropo.trainer.run`) and the modules it drives, kept apart
so that each imports them without importing the other, and the checks that raise them."""

from __future__ import annotations

import math
import re


class RunError(RuntimeError):
    """A run that cannot start (bad model path, empty dataset, ...); the message says why."""


class LearnerLostError(RuntimeError):
    """A learner rank's process died; the message names the rank, its process and the call.

    Attributes:
        rank: the learner rank.
        during: the call it died in (``update``, ``π_old forward``, ``checkpoint save``, ...).
    """

    def __init__(self, rank: int, during: str, error: BaseException) -> None:
        self.rank, self.during = rank, during
        text = str(error)  # Ray's ActorDiedError names the process as "pid: N" and "ip: A"
        pid, ip = re.search(r"\bpid: (\d+)", text), re.search(r"\bip: (\S+)", text)
        where = f" (pid {pid.group(1)} on {ip.group(1)})" if pid and ip else ""
        super().__init__(f"learner rank {rank}{where} died during the {during}: its process exited "
                         f"(killed, out of memory or crashed; the node's dmesg says which)")


# The update's metrics that must be finite, in the order they are reported; a NaN loss makes
# NaN gradients, and NaN gradients make NaN weights.
FINITE_UPDATE_METRICS = ("actor/pg_loss", "actor/grad_norm")


class NonFiniteUpdateError(RuntimeError):
    """An update made the loss, the gradient or the weights NaN/inf (before any sync or save)."""


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), or the type alone: an
    error in a one-line stop."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def check_update_finite(step: int, metrics: dict[str, float], lr: float) -> None:
    """Raise :class:`NonFiniteUpdateError` naming the step and the first non-finite value.

    Args:
        step: the step whose update produced ``metrics``.
        metrics: ``Cluster.update``'s metrics.
        lr: ``learner.lr``, for the message.
    """
    bad = [(k, metrics[k]) for k in FINITE_UPDATE_METRICS if k in metrics and not math.isfinite(metrics[k])]
    ranks = metrics.get("actor/nonfinite_param_ranks", 0.0)
    if not bad and not ranks:
        return
    what = f"{bad[0][0]}={bad[0][1]}" if bad else f"NaN/inf weights on {ranks:g} learner rank(s)"
    raise NonFiniteUpdateError(
        f"step {step}: the update gave {what}; these weights were neither synced to the rollout "
        f"workers nor checkpointed, and the last complete checkpoint is intact. Lower learner.lr "
        f"(now {lr:g}) or check the rewards and data, then resume with trainer.resume=auto")
