"""RewardManager on Ray workers: with reward.isolation=fork (the default) a call that hangs or
dies costs its own process and the workers stay; with none, hung workers are killed and
replaced, dead ones restarted, leaking ones recycled; the batch always completes with the right
counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entropo.rewards import RewardManager
from tests.rewards.helpers import reward_cfg, sample

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CUSTOM = os.path.relpath(Path(__file__).parent / "custom", Path.cwd())
FLAKY = f"{CUSTOM}/native_style.py:flaky"


@pytest.fixture(scope="module")
def manager(ray_session):
    cfg = reward_cfg([FLAKY, f"{CUSTOM}/verl_style.py:compute_score"], mode="ray", workers=2,
                     timeout_s=1.0, fallback_score=-1.0, worker_cpus=0.5, worker_memory_growth_mb=150)
    rm = RewardManager(cfg)
    yield rm
    rm.close()


def test_faults_are_contained(manager):
    manager.ready()
    workers = list(manager.backend.actors)
    behaviours = ["ok", "raise", "spin", "nan", "none", "die", "ok", "ok"]
    res = manager.score([sample(b, "ok", group=i // 4) for i, b in enumerate(behaviours)])
    assert res.components["flaky"].tolist() == [1, -1, -1, -1, -1, -1, 1, 1]
    assert res.components["compute_score"].tolist() == [1, 0, 0, 0, 0, 0, 1, 1]
    m = res.metrics
    # the dead worker's sample counts as an exception; the spinning one as a timeout
    assert (m["reward/errors/exception"], m["reward/errors/timeout"], m["reward/errors/nan"],
            m["reward/skipped"], m["reward/errors"]) == (2, 1, 1, 1, 4)
    assert m["reward/workers_replaced"] == 2  # the processes of the spinning and the dying call
    assert manager.backend.actors == workers  # fork isolation: no Ray worker was lost
    again = manager.score([sample("ok", "ok"), sample("x", "ok")])  # the pool still works
    assert again.rewards.tolist() == [2.0, 1.0] and again.metrics["reward/errors"] == 0


def test_a_leaking_reward_gets_its_worker_recycled(ray_session):
    # its own pool, with a time limit that a 200 MiB allocation meets on a loaded machine (the
    # module's 1 s limit is for the hang test)
    samples = [sample("leak", "x", extra_info={"leak_mb": 200}) for _ in range(3)] + [sample("ok", "ok")]
    for isolation, recycled in (("none", 3), ("fork", 0)):
        cfg = reward_cfg([FLAKY], mode="ray", workers=2, timeout_s=30.0, fallback_score=-1.0, worker_cpus=0.5,
                         worker_memory_growth_mb=150, isolation=isolation)
        with RewardManager(cfg) as rm:
            res = rm.score(samples)
        assert res.components["flaky"].tolist() == [1.0] * 4
        assert res.metrics["reward/errors"] == 0
        # none: each leaking call pushed its worker past 150 MiB; fork: the leak died with its process
        assert res.metrics["reward/workers_recycled"] == recycled, isolation


def test_builtins_on_ray(ray_session):
    from entropo.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    resp = "<think>12</think>35"
    ids = tok.encode(resp, add_special_tokens=False)
    samples = [sample(resp, "35", ids=ids, entropy=[0.8, 0.6, 1.0, 5.0, 0.2, 0.4],
                      data_source="embedded/addition", group=g) for g in (0, 0, 1)]
    with RewardManager(reward_cfg(["pear", "empo", "math*0.5"], mode="ray", workers=1, worker_cpus=0.5),
                       tokenizer=tok) as rm:
        res = rm.score(samples)
    assert res.components["pear"].tolist() == pytest.approx([0.5] * 3, abs=1e-6)
    assert res.components["empo"].tolist() == [1.0, 1.0, 0.0]  # group 1 has one response: gated
    assert res.components["math"].tolist() == [0.5] * 3
    assert res.cluster_ids.tolist() == [0, 0, 0]


def test_ray_mode_needs_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="ray.init"):
        RewardManager(reward_cfg(["math"], mode="ray"))


def test_a_reward_that_kills_every_worker_is_quarantined(manager):
    """``os._exit`` on every call: each call costs its forked process only (no worker start),
    the function is quarantined for the rest of the batch once its first job is back, and the
    other function scores as usual."""
    manager.ready()
    workers = list(manager.backend.actors)
    res = manager.score([sample("die", "die", group=i // 4) for i in range(16)])
    assert res.components["flaky"].tolist() == [-1.0] * 16
    assert res.components["compute_score"].tolist() == [1.0] * 16  # its own answer check, unharmed
    m = res.metrics
    assert m["reward/quarantined"] == 1 and m["reward/errors/exception"] == 16
    assert m["reward/workers_replaced"] == 16  # one forked process per call, one job per worker
    assert manager.backend.actors == workers
    (failure,) = [f for f in res.failures if f.label == "flaky"]
    assert failure.failed == 16
    again = manager.score([sample("ok", "ok")])  # the next batch runs it again
    assert again.metrics["reward/quarantined"] == 0 and again.rewards.tolist() == [2.0]


def test_a_killed_worker_is_replaced_by_a_started_spare(ray_session):
    """A worker killed for a hang gives its slot to the standby worker at once (no start-up on
    the scoring's path), and a new standby starts in the background; the pool scores on."""
    cfg = reward_cfg([FLAKY], mode="ray", workers=1, timeout_s=1.0, fallback_score=-1.0, worker_cpus=0.25,
                     standby_workers=1, isolation="none")
    with RewardManager(cfg) as rm:
        rm.ready()
        backend = rm.backend
        (spare,) = backend.spares
        first = backend.actors[0]
        res = rm.score([sample("hang", "ok"), sample("ok", "ok")])
        assert res.components["flaky"].tolist() == [-1.0, 1.0]
        assert res.metrics["reward/errors/timeout"] == 1 and res.metrics["reward/workers_replaced"] >= 1
        assert backend.actors[0] is not first  # the hung worker was killed ...
        assert spare not in backend.spares  # ... and the spare took its slot
        assert backend.actors[0] is spare
        assert rm.score([sample("ok", "ok")]).rewards.tolist() == [1.0]
