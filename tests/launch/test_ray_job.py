"""``entropo launch`` as a Ray job, against a fake ``JobSubmissionClient``.

A real job server needs a Ray head with its dashboard and job agent: on the 2-core test
machine that took minutes to accept a job, or dropped connections, so the client is faked
here; docs/multinode.md gives the commands checked by hand against a real cluster.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from entropo.cli import main
from entropo.launch import ray_job
from entropo.launch.ray_job import JobRequest, LaunchError

ROOT = Path(__file__).resolve().parents[2]


class FakeClient:
    """Records calls; ``tail_job_logs`` yields ``logs``; the job ends in ``final``."""

    def __init__(self, final="SUCCEEDED", logs=("step 1\n", "step 2\n"), message=""):
        self.final, self.logs, self.message = final, logs, message
        self.submitted: dict = {}
        self.stopped: list[str] = []

    def submit_job(self, *, entrypoint, runtime_env=None, submission_id=None):
        self.submitted = {"entrypoint": entrypoint, "runtime_env": runtime_env, "submission_id": submission_id}
        return submission_id or "raysubmit_abc"

    async def tail_job_logs(self, job_id):
        for chunk in self.logs:
            yield chunk

    def get_job_status(self, job_id):
        return self.final

    def get_job_info(self, job_id):
        return type("Info", (), {"message": self.message})()

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


@pytest.fixture
def fake(monkeypatch):
    client = FakeClient()
    seen = {}

    def make_client(address):
        seen["address"] = address
        return client

    monkeypatch.setattr(ray_job, "make_client", make_client)
    monkeypatch.chdir(ROOT)
    client.seen = seen
    return client


def test_submit_follows_logs_and_exits_with_the_job_status(fake, capsys):
    code = main(["launch", "configs/grpo.yaml", "--address", "http://head:8265", "trainer.total_steps=3",
                 "--env", "HF_HOME=/data/hf", "--env", "A=b=c", "--exclude", "data/big", "--job-id", "run-1"])
    assert code == 0
    assert fake.seen["address"] == "http://head:8265"
    sub = fake.submitted
    assert shlex.split(sub["entrypoint"]) == ["python", "-m", "entropo.cli", "train", "configs/grpo.yaml",
                                              "trainer.total_steps=3"]
    env = sub["runtime_env"]
    assert env["working_dir"] == str(ROOT)
    assert env["env_vars"] == {"HF_HOME": "/data/hf", "A": "b=c"}
    assert ".venv" in env["excludes"] and "data/big" in env["excludes"]
    assert sub["submission_id"] == "run-1"
    out = capsys.readouterr().out
    assert "submitted job run-1" in out
    assert "step 1\nstep 2\n" in out
    assert out.rstrip().endswith("job run-1 SUCCEEDED")


@pytest.mark.parametrize("final", ["FAILED", "STOPPED"])
def test_a_job_that_does_not_succeed_exits_nonzero(fake, capsys, final):
    fake.final, fake.message = final, "Job entrypoint command failed with exit code 2"
    assert main(["launch", "configs/grpo.yaml", "--address", "http://head:8265"]) == 1
    assert f"raysubmit_abc {final}: Job entrypoint command failed" in capsys.readouterr().out


def test_no_follow_returns_after_submitting(fake, capsys):
    fake.logs = ()
    fake.final = "RUNNING"  # never consulted
    assert main(["launch", "--no-follow", "configs/grpo.yaml", "--address", "http://head:8265"]) == 0
    assert "entropo launch --stop raysubmit_abc" in capsys.readouterr().out


def test_stop(fake, capsys):
    assert main(["launch", "--stop", "raysubmit_abc", "--address", "http://head:8265"]) == 0
    assert fake.stopped == ["raysubmit_abc"]
    assert fake.submitted == {}
    assert "stop requested" in capsys.readouterr().out


def test_bad_requests_fail_before_submitting(fake, tmp_path, capsys):
    outside = tmp_path / "mine.yaml"
    outside.write_text("trainer:\n  total_steps: 2\n")
    assert main(["launch", str(outside), "--address", "http://head:8265"]) == 2
    assert "outside --working-dir" in capsys.readouterr().err
    assert main(["launch", "configs/grpo.yaml", "rollout.nn=3", "--address", "x"]) == 2
    assert "rollout.nn" in capsys.readouterr().err
    assert main(["launch", "configs/grpo.yaml", "--env", "NOVALUE", "--address", "x"]) == 2
    assert "--env 'NOVALUE'" in capsys.readouterr().err
    assert main(["launch", "configs/nope.yaml", "--address", "x"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert fake.submitted == {}


def test_request_without_config_trains_the_defaults(tmp_path):
    req = JobRequest(None, ["trainer.total_steps=1"], working_dir=str(tmp_path), pip=("my-rewards==1.0",))
    assert req.entrypoint() == "python -m entropo.cli train trainer.total_steps=1"
    assert req.runtime_env()["pip"] == ["my-rewards==1.0"]
    assert "env_vars" not in req.runtime_env()
    with pytest.raises(LaunchError, match="not found"):
        JobRequest(str(tmp_path / "missing.yaml"), working_dir=str(tmp_path)).entrypoint()


def test_a_recipe_by_bare_name_is_passed_on_by_name(tmp_path):
    """No such file in the working directory: the job's own entropo resolves the shipped recipe."""
    assert JobRequest("clip_cov", working_dir=str(tmp_path)).entrypoint() == "python -m entropo.cli train clip_cov"
    with pytest.raises(LaunchError, match="not found: clip_kov"):
        JobRequest("clip_kov", working_dir=str(tmp_path)).entrypoint()


def test_token_auth_is_switched_on_when_a_token_is_at_hand(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_job.use_token_auth() is False
    (tmp_path / "token").write_text("abc")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert ray_job.use_token_auth() is True
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_job.use_token_auth() is False


def test_options_and_positionals_mix_in_any_order(fake):
    for argv in (["launch", "--address", "a", "configs/grpo.yaml", "trainer.seed=3"],
                 ["launch", "configs/grpo.yaml", "trainer.seed=3", "--address", "a"],
                 ["launch", "configs/grpo.yaml", "--address", "a", "trainer.seed=3"]):
        assert main(argv) == 0
        assert fake.submitted["entrypoint"].endswith("configs/grpo.yaml trainer.seed=3")
