"""Elastic threads: hand-made tick counts in, thread counts out; the /proc/stat parser; the
ceilings the cluster gives each kind of actor."""

from __future__ import annotations

import pytest

from entropo.config import load_config
from entropo.trainer.cluster import actor_max_threads
from entropo.trainer.elastic_threads import ElasticThreads, proc_stat_reader
from entropo.trainer.placement import Slot


class Ticks:
    """A fake /proc/stat: each read returns the next (idle, total) pair."""

    def __init__(self, *samples: tuple[int, int]) -> None:
        self.samples = list(samples)

    def __call__(self) -> tuple[int, int]:
        return self.samples.pop(0)


def make(base: int, ceiling: int, cpus: int, *samples: tuple[int, int]) -> tuple[ElasticThreads, list[int]]:
    applied: list[int] = []
    return ElasticThreads(base, ceiling, cpus, Ticks(*samples), applied.append), applied


def test_grows_onto_an_idle_core_and_resets_to_the_share():
    # 2 CPUs over 10 ticks each (total 20): 9 idle ticks = 0.9 idle cores -> +1 thread
    t, applied = make(1, 2, 2, (0, 0), (9, 20), (9, 20))
    t.reset()
    assert t.grow() == 2 and applied == [2] and t.grown == 1
    assert t.grow() == 2  # at the ceiling: no read, no change
    t.reset()
    assert t.threads == 1 and applied == [2, 1]


def test_busy_cores_keep_the_share():
    # 2 idle ticks of 20 = 0.2 idle cores < 0.6
    t, applied = make(1, 2, 2, (100, 1000), (102, 1020))
    t.reset()
    assert t.grow() == 1 and applied == [] and t.grown == 0


def test_a_short_window_accumulates_instead_of_deciding():
    # 4 ticks over 2 CPUs (< 3 per CPU): wait; then 13 idle of 24 ticks = 1.08 idle cores
    t, applied = make(1, 2, 2, (0, 0), (4, 4), (13, 24))
    t.reset()
    assert t.grow() == 1 and applied == []
    assert t.grow() == 2 and applied == [2]


def test_several_idle_cores_are_taken_at_once_up_to_the_ceiling():
    # 8 CPUs over 10 ticks (80): 50 idle = 5 idle cores; base 2 + 5 = 7, capped at 6
    t, applied = make(2, 6, 8, (0, 0), (50, 80))
    t.reset()
    assert t.grow() == 6 and applied == [6]


def test_fixed_without_a_reader_or_headroom():
    applied: list[int] = []
    for t in (ElasticThreads(1, 2, 2, None, applied.append), ElasticThreads(2, 1, 2, Ticks(), applied.append)):
        t.reset()
        assert t.grow() == t.base and not t.elastic
    assert applied == []


def test_proc_stat_reader_sums_idle_and_iowait_of_the_watched_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  30 0 30 300 6 0 0 0 0 0\n"
        "cpu0 10 1 10 100 2 3 4 5 7 0\n"
        "cpu1 20 0 20 200 4 0 0 0 0 0\n"
        "cpu2 99 0 99 999 9 0 0 0 0 0\n"
        "intr 1 2 3\n"
    )
    read = proc_stat_reader([0, 1], str(stat))
    # idle = idle + iowait; total = the first 8 fields (guest time is already inside user)
    assert read() == (100 + 2 + 200 + 4, (10 + 1 + 10 + 100 + 2 + 3 + 4 + 5) + (20 + 20 + 200 + 4))
    assert proc_stat_reader([0], str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("overrides", "kind", "gpus", "single", "expected"),
    [
        (["trainer.elastic_threads=true", "learner.ranks=2", "rollout.workers=1"], "learner", 0.0, True, 4),
        (["trainer.elastic_threads=true", "learner.ranks=2", "rollout.workers=1"], "rollout", 0.0, True, 8),
        (["trainer.elastic_threads=false"], "learner", 0.0, True, None),
        (["trainer.elastic_threads=true"], "learner", 0.0, False, None),  # several nodes: reserved CPUs
        (["trainer.elastic_threads=true"], "rollout", 1.0, True, None),  # a GPU actor
    ],
)
def test_ceilings_split_the_node_among_actors_of_one_kind(monkeypatch, overrides, kind, gpus, single, expected):
    monkeypatch.setattr("entropo.trainer.cluster.os.cpu_count", lambda: 8)
    cfg = load_config(None, overrides)
    assert actor_max_threads(cfg, kind, Slot(0, 0, 1.0, gpus), single) == expected
