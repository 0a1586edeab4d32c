"""Start-up cost of entropo's commands on this machine, against the floors they cannot go under.

    .venv/bin/python benchmarks/startup.py                  # ~2 min on 2 cores
    .venv/bin/python benchmarks/startup.py --reps 5 --steps 4
    .venv/bin/python benchmarks/startup.py --config-only    # the config cases alone, ~30 s

Each command runs ``--reps`` times as a fresh process (median and range of its wall seconds):

- the config cases: ``entropo config`` (the reference), ``entropo train`` with each kind of
  config error (unknown key, wrong type, out-of-range value, YAML syntax error, a YAML whose
  top level is not a mapping, a missing file) and ``load_config`` of a valid recipe. Loading a
  config imports no torch (tests/test_config.py checks it), so these cost the interpreter, the
  YAML and the schema; each row gives its ratio to ``python -c pass``, measured in the same run;
- ``entropo --help``;
- ``entropo train trainer.total_steps=N`` (the default job, N = ``--steps``; the model and
  DeepSpeed's op already built), with the phases the run writes in ``summary.json``
  (``phase_seconds``: model/tokenizer/data checks, Ray start, actors up, the training loop with
  its evaluations and checkpoint);
- the floors, measured in the same run: ``python -c pass``, ``python -c "import torch"`` and a
  local Ray's start and stop (``ray.init`` + ``ray.shutdown``).

The issue's targets: a config error, ``entropo config`` or ``--help`` within 2 s, the 4-step job
within 30 s. The last line is ``ratio slowest config case / python -c pass: X``.
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
    p.add_argument("--config-only", action="store_true",
                   help="only the config cases and python -c pass (no torch, Ray or training job)")
    return p.parse_args(argv)


def config_cases(folder: Path) -> dict[str, tuple[list[str], int]]:
    """The config cases: name -> (command, expected exit code); writes their YAML files into ``folder``."""
    (folder / "syntax.yaml").write_text("model: [\n")
    (folder / "list.yaml").write_text("- a\n- b\n")
    train = [*ENTROPO, "train"]
    load = "from entropo.config import load_config; load_config('clip_cov')"
    return {
        "entropo config (reference)": ([*ENTROPO, "config"], 0),
        "train algorithm.bogus=1 (unknown key)": ([*train, "algorithm.bogus=1"], 2),
        "train rollout.n=abc (wrong type)": ([*train, "rollout.n=abc"], 2),
        "train rollout.n=0 (out of range)": ([*train, "rollout.n=0"], 2),
        "train syntax.yaml (YAML syntax error)": ([*train, str(folder / "syntax.yaml")], 2),
        "train list.yaml (top level not a mapping)": ([*train, str(folder / "list.yaml")], 2),
        "train missing.yaml (no such file)": ([*train, str(folder / "missing.yaml")], 2),
        "load_config('clip_cov') (valid recipe)": ([sys.executable, "-c", load], 0),
    }


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
    floor = "python -c pass (floor)"
    results: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    ray_floor = "import ray; ray.init(include_dashboard=False); ray.shutdown()"
    with tempfile.TemporaryDirectory() as folder:
        configs = config_cases(Path(folder))
        commands = {floor: ([sys.executable, "-c", "pass"], 0), **configs}
        if not args.config_only:
            commands.update({
                "python -c 'import torch' (floor)": ([sys.executable, "-c", "import torch"], 0),
                "ray.init + shutdown (floor)": ([sys.executable, "-c", ray_floor], 0),
                "entropo --help": ([*ENTROPO, "--help"], 0),
            })
        for _ in range(args.reps):
            for name, (cmd, expect) in commands.items():
                results.setdefault(name, []).append(timed(cmd, expect))
            if args.config_only:
                continue
            with tempfile.TemporaryDirectory() as out:
                job = [*ENTROPO, "train", f"trainer.total_steps={args.steps}", f"trainer.output_dir={out}",
                       "logger.backends=[jsonl]"]
                results.setdefault(f"entropo train ({args.steps} steps, default job)", []).append(timed(job))
                for phase, seconds in json.loads((Path(out) / "summary.json").read_text())["phase_seconds"].items():
                    phases.setdefault(phase, []).append(seconds)
    base = statistics.median(results[floor])
    print("| config case | median s | range s | / python -c pass |\n|---|---:|---:|---:|")
    for name in [floor, *configs]:
        print(f"{row(name, results[name])} {statistics.median(results[name]) / base:.1f} |")
    if not args.config_only:
        print("\n| command | median s | range s |\n|---|---:|---:|")
        for name, values in results.items():
            if name not in configs and name != floor:
                print(row(name, values))
        print("\n| phase of the default job (summary.json phase_seconds) | median s | range s |\n|---|---:|---:|")
        for name, values in phases.items():
            print(row(name, values))
    slowest = max(statistics.median(results[name]) for name in configs)
    print(f"\nratio slowest config case / python -c pass: {slowest / base:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
