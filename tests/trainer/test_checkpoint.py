"""Atomic checkpoints, crash during save, exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from entropo.trainer.checkpoint import MARKER, CheckpointError, Checkpoints


def _fake_save(ckpts, step, keep):
    tmp = ckpts.begin(step)
    (tmp / "payload").write_text(str(step))
    return ckpts.commit(tmp, step, keep)


def test_commit_is_atomic_and_keeps_the_last_k(tmp_path):
    ckpts = Checkpoints(tmp_path)
    for step in (1, 2, 3):
        _fake_save(ckpts, step, keep=2)
    assert [p.name for p in ckpts.complete()] == ["step_000002", "step_000003"]
    assert ckpts.resolve("auto").name == "step_000003"
    assert ckpts.resolve("") is None


def test_interrupted_saves_are_ignored(tmp_path):
    ckpts = Checkpoints(tmp_path)
    _fake_save(ckpts, 2, keep=3)
    # a crash mid-save: the temporary directory of step 4 is half written
    tmp = ckpts.begin(4)
    (tmp / "payload").write_text("half")
    # a directory with the final name but no marker (e.g. copied by hand, partially)
    (tmp_path / "step_000006").mkdir()
    assert ckpts.resolve("auto").name == "step_000002"
    with pytest.raises(CheckpointError, match="step_000006.*COMPLETE"):
        ckpts.resolve(str(tmp_path / "step_000006"))
    # the next save of step 4 replaces the debris
    _fake_save(ckpts, 4, keep=3)
    assert ckpts.resolve("auto").name == "step_000004"
    assert not (tmp_path / "step_000004.tmp").exists()


def test_interrupted_saves_are_listed_for_the_resume_message(tmp_path):
    ckpts = Checkpoints(tmp_path)
    _fake_save(ckpts, 2, keep=3)
    ckpts.begin(4)
    (tmp_path / "step_000003").mkdir()  # the final name, no marker
    (tmp_path / "notes.tmp").mkdir()  # not a checkpoint's name
    assert [p.name for p in ckpts.incomplete()] == ["step_000003", "step_000004.tmp"]
    assert Checkpoints(tmp_path / "none").incomplete() == []


def test_a_failed_write_on_a_full_disk_says_so_in_one_line(tmp_path):
    import errno

    from entropo.trainer.checkpoint import CheckpointWriteError

    ckpts = Checkpoints(tmp_path / "checkpoints")
    last = _fake_save(ckpts, 1, keep=2)
    partial = ckpts.begin(2)
    (partial / "half").write_text("x")
    # through Ray a learner rank's OSError is the cause of the error the driver sees
    through_ray = RuntimeError("a learner rank failed")
    through_ray.cause = OSError(errno.ENOSPC, "No space left on device")
    e = CheckpointWriteError(2, partial, last, through_ray)
    assert str(e).startswith(f"trainer.output_dir: the checkpoint of step 2 could not be written: the disk holding "
                             f"{tmp_path} is full (")
    assert str(e).endswith(f"the last complete checkpoint, {last}, is intact; free space on it or lower "
                           "trainer.keep_checkpoints, then resume with trainer.resume=auto")
    message = e.remove_partial()
    assert "\n" not in message and not partial.exists()
    assert f"its partial save was removed ({partial}); the last complete checkpoint" in message
    assert ckpts.resolve("auto") == last


def test_a_failed_write_with_room_on_the_disk_names_the_error(tmp_path):
    from entropo.trainer.checkpoint import CheckpointWriteError

    ckpts = Checkpoints(tmp_path / "checkpoints")
    e = CheckpointWriteError(1, ckpts.begin(1), None, PermissionError(13, "Permission denied"))
    assert str(e) == ("trainer.output_dir: the checkpoint of step 1 could not be written: PermissionError: "
                      "[Errno 13] Permission denied; no complete checkpoint was written yet; fix that, then "
                      "resume with trainer.resume=auto")


def test_no_checkpoint_yet_starts_fresh(tmp_path):
    assert Checkpoints(tmp_path / "none").resolve("auto") is None


@pytest.mark.slow
@pytest.mark.distributed
def test_resume_reproduces_the_uninterrupted_run(ray_session, tiny_model_dir, tmp_path):
    """Killed after step 2 and resumed: steps 3-4 equal the uninterrupted run's within 1e-4."""
    from entropo.config import load_config
    from entropo.trainer.run import train

    reward = f"digits={Path(__file__).parent / 'rewards_for_tests.py'}:digit_fraction"
    common = [
        f"model.path={tiny_model_dir}",
        "trainer.prompts_per_step=4",
        "rollout.n=4",
        "rollout.max_new_tokens=12",
        "learner.lr=1e-3",
        "learner.ranks=2",
        "learner.zero_stage=2",
        "rollout.workers=1",
        f"reward.fns=[{reward}]",
        "logger.backends=[jsonl]",
        "evaluation.max_prompts=8",
        "algorithm.loss=clip_cov",
        "algorithm.clip_cov.clip_ratio=0.05",
        "algorithm.clip_cov.cov_low=0.01",
    ]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    train(
        load_config(overrides=[*common, f"trainer.output_dir={full_dir}", "trainer.total_steps=4"])
    )
    train(
        load_config(
            overrides=[
                *common,
                f"trainer.output_dir={cut_dir}",
                "trainer.total_steps=2",
                "trainer.save_every=2",
            ]
        )
    )
    saved = cut_dir / "checkpoints" / "step_000002"
    assert (saved / MARKER).is_file() and (saved / "hf" / "config.json").is_file()
    # a later save that crashed half-way must not be picked up
    shutil.copytree(saved, cut_dir / "checkpoints" / "step_000003.tmp")
    train(
        load_config(
            overrides=[
                *common,
                f"trainer.output_dir={cut_dir}",
                "trainer.total_steps=4",
                "trainer.resume=auto",
            ]
        )
    )

    def rows(d):
        return {
            r["step"]: r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
        }

    full, cut = rows(full_dir), rows(cut_dir)
    assert sorted(cut) == [0, 1, 2, 3, 4]  # step 0: the first evaluation; no step duplicated after resume
    compared = 0
    for step in (3, 4):
        for key, value in full[step].items():
            if key.startswith(("timing/", "perf/")) or value is None:
                continue
            assert cut[step][key] == pytest.approx(value, abs=1e-4), (step, key)
            compared += 1
    assert compared > 40
    assert full[4]["actor/grad_norm"] > 0

