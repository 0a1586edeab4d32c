"""Start-up cost of entropo's commands on this machine, against the floors they cannot go under.

    .venv/bin/python benchmarks/startup.py                # ~2 min on 2 cores
    .venv/bin/python benchmarks/startup.py --reps 5 --steps 4

Each command runs ``--reps`` times as a fresh process (median and range of its wall seconds):

- ``entropo --help`` and ``entropo train algorithm.bogus=1`` (a config error: the loader
  imports torch and every method's config, so it pays for ``import torch``);
- ``entropo train trainer.total_steps=N`` (the default job, N = ``--steps``; the model and
  DeepSpeed's op already built), with the phases the run writes in ``summary.json``
  (``phase_seconds``: model/tokenizer/data checks, Ray start, actors up, the training loop with
  its evaluations and checkpoint);
- the floors, measured in the same run: ``python -c "import torch"`` and a local Ray's start and
  stop (``ray.init`` + ``ray.shutdown``).

The issue's targets: a config error or ``--help`` within 2 s, the 4-step job within 30 s. The
last line is ``ratio config error / import torch: X`` (1.0: the loader costs nothing beyond
torch's import).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTROPO = [sys.executable, "-m", "entropo.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="runs of each command")
    p.add_argument("--steps", type=int, default=4, help="steps of the default job")
    return p.parse_args(argv)


def timed(cmd: list[str], expect: int = 0) -> float:
    """Wall seconds of one run of ``cmd``; a wrong exit code is an error, not a number."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}, expected {expect}:\n{done.stderr[-2000:]}")
    return seconds


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    ray_floor = "import ray; ray.init(include_dashboard=False); ray.shutdown()"
    commands = {
        "python -c 'import torch' (floor)": ([sys.executable, "-c", "import torch"], 0),
        "ray.init + shutdown (floor)": ([sys.executable, "-c", ray_floor], 0),
        "entropo --help": ([*ENTROPO, "--help"], 0),
        "entropo train algorithm.bogus=1 (config error)": ([*ENTROPO, "train", "algorithm.bogus=1"], 2),
    }
    for _ in range(args.reps):
        for name, (cmd, expect) in commands.items():
            results.setdefault(name, []).append(timed(cmd, expect))
        with tempfile.TemporaryDirectory() as out:
            job = [*ENTROPO, "train", f"trainer.total_steps={args.steps}", f"trainer.output_dir={out}",
                   "logger.backends=[jsonl]"]
            results.setdefault(f"entropo train ({args.steps} steps, default job)", []).append(timed(job))
            for phase, seconds in json.loads((Path(out) / "summary.json").read_text())["phase_seconds"].items():
                phases.setdefault(phase, []).append(seconds)
    print("| command | median s | range s |\n|---|---:|---:|")
    for name, values in results.items():
        print(row(name, values))
    print("\n| phase of the default job (summary.json phase_seconds) | median s | range s |\n|---|---:|---:|")
    for name, values in phases.items():
        print(row(name, values))
    ratio = statistics.median(results["entropo train algorithm.bogus=1 (config error)"]) / statistics.median(
        results["python -c 'import torch' (floor)"])
    print(f"\nratio config error / import torch: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
