"""The one-line errors of a run (entropo/trainer/errors.py) that are built from other errors."""

from __future__ import annotations

from entropo.trainer.errors import LearnerLostError


def test_a_dead_learner_rank_is_named_with_its_process():
    ray_text = ("The actor died unexpectedly before finishing this task.\n\tclass_name: LearnerRank\n\t"
                "actor_id: 8a83\n\tpid: 1332\n\tnamespace: 9b91\n\tip: 192.0.2.2\nThe actor is dead because ...")
    e = LearnerLostError(1, "update", RuntimeError(ray_text))
    assert str(e) == ("learner rank 1 (pid 1332 on 192.0.2.2) died during the update: its process exited "
                      "(killed, out of memory or crashed; the node's dmesg says which)")
    assert (e.rank, e.during) == (1, "update")
    assert str(LearnerLostError(0, "checkpoint save", RuntimeError("gone"))).startswith(
        "learner rank 0 died during the checkpoint save: ")
