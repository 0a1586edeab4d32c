"""Generation throughput of the two rollout engines on this machine: vLLM vs the hf decode loop.

    .venv/bin/python benchmarks/rollout_engines.py                  # ~6 min on 2 cores
    .venv/bin/python benchmarks/rollout_engines.py --sizes tiny,25M --reps 5 --threads 1
    .venv/bin/python benchmarks/rollout_engines.py --job-steps 0    # engines only, no training job
    .venv/bin/python benchmarks/rollout_engines.py --set rollout.vllm.enforce_eager=false

The same prompts for both engines (the first ``--prompts`` of the embedded addition task, as
token ids), ``n`` samples each at T = 0.7, up to ``--max-new-tokens`` new tokens, fp32, at three
model sizes:

- ``tiny``: the default job's warm-started model (``embedded:tiny-qwen2-addition``, 0.5M
  parameters; it stops at EOS after ~30 tokens);
- ``25M`` and ``100M``: random Qwen2s with the character tokenizer (hidden 512 × 8 layers, and
  1024 × 8), which almost never emit EOS, so nearly every response runs to the limit.

Each (engine, size) runs in a fresh process, as a rollout worker does (vLLM fixes its threads and
seeds globally in its process): it builds the engine (start-up seconds), generates once to warm
up, then ``--reps`` times; the table gives generated tokens per second (tokens of the responses,
EOS included, over wall seconds; median and range over the repetitions). Both engines get the same
torch threads (``--threads``, default: all cores). vLLM runs with the settings a run would give it
(``rollout.vllm`` defaults, changed with ``--set``): in-process, eager on CPU, 1 GiB of KV cache.

``--job-steps N`` (default 5) also trains the default job for N steps on each engine (one learner
rank, one rollout worker, as ``entropo train``) and reports the median ``timing/step`` and
``timing/rollout`` of steps 2..N, from the runs' metrics.jsonl.

The last line is ``ratio vllm/hf generated tokens/s (25M): X``.
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
SIZES = {
    "tiny": None,  # the embedded warm-started model
    "25M": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1408},
    "100M": {"hidden_size": 1024, "num_layers": 8, "num_heads": 16, "intermediate_size": 2816},
}
ENGINES = ("hf", "vllm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,25M,100M", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each engine")
    p.add_argument("--job-steps", type=int, default=5, help="default-job steps per engine (0: skip)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the vLLM engine (rollout.vllm.*), repeatable")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def model_path(size: str, cache: Path) -> str:
    """A directory with the model of ``size`` (built once under ``cache``)."""
    if SIZES[size] is None:
        return "embedded:tiny-qwen2-addition"
    from entropo.models.tiny import save_tiny

    target = cache / f"qwen2-{size}"
    if not (target / "config.json").exists():
        save_tiny(target, max_position_embeddings=512, **SIZES[size])
    return str(target)


def child(engine: str, path: str, args: argparse.Namespace) -> dict:
    """One engine on one model in this process: start-up seconds and tokens/s of each repetition."""
    import torch

    from entropo.config import load_config
    from entropo.data.loading import load_rows
    from entropo.data.prompts import encode_prompt
    from entropo.models.loading import load_tokenizer
    from entropo.trainer.engine import SamplingParams
    from entropo.trainer.rollout import HFEngine

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(path)
    rows = list(load_rows("embedded:addition", split="train"))[: args.prompts]
    prompts = [encode_prompt(r, tok) for r in rows]
    start = time.perf_counter()
    if engine == "hf":
        eng = HFEngine(path, "float32")
    else:
        from entropo.trainer.vllm_engine import VllmEngine

        cfg = load_config(overrides=[f"model.path={path}", "rollout.engine=vllm", "data.max_prompt_tokens=64",
                                     f"rollout.max_new_tokens={args.max_new_tokens}", *args.set])
        eng = VllmEngine(path, cfg.vllm_engine(), "float32")
    startup = time.perf_counter() - start
    out = []
    for rep in range(args.reps + 1):  # the first is the warm-up
        params = SamplingParams(n=args.n, temperature=args.temperature, top_p=1.0,
                                max_new_tokens=args.max_new_tokens, seed=rep)
        t0 = time.perf_counter()
        result = eng.generate(prompts, params)
        seconds = time.perf_counter() - t0
        if rep:
            out.append(float(result.mask.sum()) / seconds)
    return {"startup_s": startup, "tokens_per_s": out}


def run_child(engine: str, path: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([engine, path]), "--prompts", str(args.prompts),
           "--n", str(args.n), "--temperature", str(args.temperature), "--max-new-tokens", str(args.max_new_tokens),
           "--reps", str(args.reps), "--threads", str(args.threads), *[f"--set={s}" for s in args.set]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{engine} on {path} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


def job(engine: str, steps: int, out: Path) -> dict[str, float]:
    """The default job for ``steps`` steps on ``engine``: median timing/step and timing/rollout."""
    cmd = [str(ROOT / ".venv" / "bin" / "entropo"), "train", f"rollout.engine={engine}", f"trainer.total_steps={steps}",
           f"trainer.output_dir={out}", "data.eval=null", "logger.backends=[jsonl]"]
    # DeepSpeed's op built once per virtualenv, as scripts/train.sh keeps it (not timed here)
    env = {"TORCH_EXTENSIONS_DIR": str(ROOT / ".venv" / "torch_extensions"), **os.environ, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"the default job on {engine} failed:\n" + "\n".join(done.stderr.splitlines()[-15:]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return {"step_s": statistics.median(r["timing/step"] for r in rows),
            "rollout_s": statistics.median(r["timing/rollout"] for r in rows), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        engine, path = json.loads(args.child)
        print("RESULT " + json.dumps(child(engine, path, args)), flush=True)
        return 0
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        print(f"rollout_engines.py: --sizes: unknown {unknown}; choose from {', '.join(SIZES)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="entropo-engines-") as tmp:
        cache = Path(tmp)
        results: dict[tuple[str, str], dict] = {}
        for size in sizes:
            path = model_path(size, cache)
            for engine in ENGINES:
                results[size, engine] = run_child(engine, path, args)
                r = results[size, engine]
                print(f"[bench] {size:>5} {engine:>4}: start-up {r['startup_s']:.1f} s, "
                      f"{statistics.median(r['tokens_per_s']):,.0f} tokens/s", flush=True)
        jobs = {e: job(e, args.job_steps, cache / f"job-{e}") for e in ENGINES} if args.job_steps > 1 else {}

    print(f"\n{args.prompts} prompts × {args.n} samples, T = {args.temperature}, {args.max_new_tokens} new tokens, "
          f"fp32, {args.threads} thread(s), {args.reps} repetitions (median [min-max])")
    print("| model | engine | start-up, s | generated tokens/s | vllm/hf |")
    print("|---|---|---:|---:|---:|")
    for size in sizes:
        hf = statistics.median(results[size, "hf"]["tokens_per_s"])
        for engine in ENGINES:
            r = results[size, engine]
            tps = r["tokens_per_s"]
            ratio = f"{statistics.median(tps) / hf:.2f}" if engine == "vllm" else ""
            print(f"| {size} | {engine} | {r['startup_s']:.1f} | {statistics.median(tps):,.0f} "
                  f"[{min(tps):,.0f}-{max(tps):,.0f}] | {ratio} |")
    if jobs:
        print(f"\nDefault job, {args.job_steps} steps, steps 2-{args.job_steps} (median)")
        print("| engine | s per step | rollout s per step | whole run, s |")
        print("|---|---:|---:|---:|")
        for engine, j in jobs.items():
            print(f"| {engine} | {j['step_s']:.3f} | {j['rollout_s']:.3f} | {j['wall_s']:.0f} |")
    if "25M" in sizes:
        ratio = statistics.median(results["25M", "vllm"]["tokens_per_s"]) / statistics.median(
            results["25M", "hf"]["tokens_per_s"])
        print(f"\nratio vllm/hf generated tokens/s (25M): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
