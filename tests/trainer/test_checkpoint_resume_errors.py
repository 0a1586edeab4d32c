"""``trainer.resume`` pointing at something that is not a checkpoint: one line that says what
it is (an HF export, a run directory, an interrupted save) and what to set instead."""

from __future__ import annotations

import pytest

from entropo.cli import main
from entropo.trainer.checkpoint import MARKER, CheckpointError, Checkpoints


@pytest.fixture
def run_dir(tmp_path):
    """<run>/checkpoints/step_000004 complete, with its hf/ export; step_000006 interrupted."""
    step = tmp_path / "run" / "checkpoints" / "step_000004"
    (step / "hf").mkdir(parents=True)
    (step / "hf" / "config.json").write_text("{}")
    (step / "hf" / "model.safetensors").write_text("")
    (step / MARKER).write_text("4\n")
    (step.parent / "step_000006").mkdir()
    return tmp_path / "run"


def _message(ckpts: Checkpoints, resume) -> str:
    with pytest.raises(CheckpointError) as e:
        ckpts.resolve(str(resume))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_hf_export_inside_a_checkpoint(run_dir):
    step = run_dir / "checkpoints" / "step_000004"
    msg = _message(Checkpoints(run_dir / "checkpoints"), step / "hf")
    assert msg.startswith(f"trainer.resume: '{step / 'hf'}' is an HF export (config.json, no COMPLETE marker), "
                          "not a resumable checkpoint")
    assert f"to start training from these weights set model.path={step / 'hf'}" in msg
    assert f"to resume set trainer.resume={step} or trainer.resume=auto" in msg
    assert "interrupted" not in msg


def test_hf_folder_outside_any_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    msg = _message(Checkpoints(tmp_path / "elsewhere"), tmp_path)
    assert "is an HF export" in msg and f"model.path={tmp_path}" in msg
    assert "trainer.resume=<run>/checkpoints/step_NNNNNN" in msg


def test_interrupted_save_points_at_the_newest_complete_one(run_dir):
    ckpts = Checkpoints(run_dir / "checkpoints")
    msg = _message(ckpts, run_dir / "checkpoints" / "step_000006")
    assert "no COMPLETE marker" in msg and "interrupted" in msg
    assert f"set trainer.resume={run_dir / 'checkpoints' / 'step_000004'} or trainer.resume=auto" in msg


def test_run_directory_and_missing_path(run_dir, tmp_path):
    ckpts = Checkpoints(run_dir / "checkpoints")
    msg = _message(ckpts, run_dir)
    assert "is a run directory" in msg and f"trainer.output_dir={run_dir} trainer.resume=auto" in msg
    assert "does not exist" in _message(ckpts, tmp_path / "nope")


def test_cli_says_it_in_one_line_before_any_actor(run_dir, tiny_model_dir, monkeypatch, capsys):
    import entropo.trainer.cluster as cluster

    monkeypatch.setattr(cluster, "connect", lambda cfg: pytest.fail("Ray was reached before trainer.resume"))
    hf = run_dir / "checkpoints" / "step_000004" / "hf"
    code = main(["train", f"model.path={tiny_model_dir}", f"trainer.output_dir={run_dir}", f"trainer.resume={hf}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"entropo: error: trainer.resume: '{hf}' is an HF export")
