"""The sbatch script of ``entropo launch --slurm``: Ray head/worker start lines, the wait, the
training command with its overrides; written, not submitted, unless ``--submit``."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from entropo.cli import main
from entropo.launch.slurm import SlurmRequest, slurm_script

ROOT = Path(__file__).resolve().parents[2]


def _script(**kw) -> str:
    req = SlurmRequest(config="configs/grpo.yaml", overrides=["trainer.total_steps=3", "reward.fns=[a.py:f]"],
                       nodes=3, gpus_per_node=4, cpus_per_node=32, partition="gpu", time="02:00:00",
                       setup=("source .venv/bin/activate",), workdir=str(ROOT), **kw)
    return slurm_script(req)


def test_script_starts_head_then_workers_then_trains():
    text = _script()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=3", "--ntasks-per-node=1", "--gpus-per-node=4", "--cpus-per-task=32",
                      "--partition=gpu", "--time=02:00:00"):
        assert f"#SBATCH {directive}" in lines
    head = next(i for i, ln in enumerate(lines) if "ray start --head" in ln)
    worker = next(i for i, ln in enumerate(lines) if 'ray start --address="$RAY_ADDRESS"' in ln)
    wait = lines.index("python -m entropo.launch.slurm wait 3 600")
    train = next(i for i, ln in enumerate(lines) if ln.startswith("python -m entropo.cli train"))
    setup = lines.index("source .venv/bin/activate")
    assert setup < head < worker < wait < train
    assert "--port=6379 --num-cpus=32 --num-gpus=4 --block &" in lines[head]
    assert 'srun --nodes=1 --ntasks=1 --overlap -w "$head"' in lines[head - 1]
    assert 'srun --nodes=1 --ntasks=1 --overlap -w "${nodes[$i]}"' in lines[worker - 1]
    assert 'export RAY_ADDRESS="$head_ip:6379"' in lines
    argv = shlex.split(lines[train])
    assert argv[:5] == ["python", "-m", "entropo.cli", "train", "configs/grpo.yaml"]
    assert argv[5:7] == ["trainer.total_steps=3", "reward.fns=[a.py:f]"]
    assert "trainer.nodes=3" in argv  # the node count reaches the trainer (docs/multinode.md)
    assert f"cd {ROOT}" in lines


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_is_valid_bash(tmp_path):
    path = tmp_path / "job.sbatch"
    path.write_text(_script())
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_one_node_has_no_worker_starts_and_no_gpu_directive():
    text = slurm_script(SlurmRequest(config=None, nodes=1))
    assert "--gpus-per-node" not in text and "--num-gpus" not in text
    assert "python -m entropo.launch.slurm wait 1 600" in text
    assert text.rstrip().endswith("python -m entropo.cli train trainer.nodes=1")


def test_cli_writes_the_script_and_does_not_submit(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    called = tmp_path / "sbatch-called"
    _fake_sbatch(tmp_path, called, monkeypatch)
    out = tmp_path / "x.sbatch"
    code = main(["launch", "--slurm", "--nodes", "2", "configs/grpo.yaml", "trainer.total_steps=3",
                 "--script", str(out), "--setup", "module load cuda"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --job-name=entropo-grpo" in text
    assert "module load cuda" in text and "trainer.total_steps=3" in text
    assert not called.exists()


def test_cli_submit_runs_sbatch(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    called = tmp_path / "sbatch-called"
    _fake_sbatch(tmp_path, called, monkeypatch)
    out = tmp_path / "y.sbatch"
    assert main(["launch", "--slurm", "--submit", "configs/grpo.yaml", "--script", str(out)]) == 0
    assert called.read_text().strip() == str(out)
    assert "Submitted batch job 42" in capsys.readouterr().out


def test_cli_rejects_a_bad_override_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "z.sbatch"
    assert main(["launch", "--slurm", "configs/grpo.yaml", "rollout.nn=3", "--script", str(out)]) == 2
    assert "rollout.nn" in capsys.readouterr().err
    assert not out.exists()


def _fake_sbatch(tmp_path, record, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$1" > {record}\necho "Submitted batch job 42"\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
