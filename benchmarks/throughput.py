"""Throughput of entropo vs TRL's ``GRPOTrainer`` on this machine: same model, prompts and sizes.

    pip install -e ".[bench]"        # TRL, for this benchmark only (adds trl + accelerate; keeps torch)
    .venv/bin/python benchmarks/throughput.py [--prompts 24] [--n 8] [--max-new-tokens 64]
        [--steps 60] [--reps 2] [--lr 5e-5] [--temperature 0.7] [--micro-batch 8] [--skip-steps 1]
        [--mode async|sync] [--eval-prompts 1000] [--trl-threads 0] [--set KEY=VALUE ...]

The defaults are the default training job's sizes (``bash scripts/train.sh``), so that the
final policies of both sides can be compared: about 4 minutes per repetition here.

What runs. Both sides train the embedded tiny Qwen2 (``embedded:tiny-qwen2-addition``, warm
started, float32 weights) with plain GRPO (β = 0, one optimiser step per step, PPO clip 0.2,
token-mean loss, group-normalised advantages) on the embedded addition prompts
(``embedded:addition``, train split), with ``--prompts`` prompts × ``--n`` samples per step,
``--max-new-tokens``, ``--temperature``, top-p 1, no top-k, learning rate ``--lr``,
micro-batches of ``--micro-batch`` responses, ``--steps`` steps. After training, each side's
final policy is scored greedily on the first ``--eval-prompts`` held-out prompts
(``embedded:addition?n=...`` eval split, whose first 200 are the default job's evaluation
prompts; 1000 by default: a binomial standard error of ~1.5 points at 37%, against 3.4
points for 200) by the same function
(:func:`entropo.models.warm_start.accuracy`), so the table shows whether the faster side
learned as much from the same number of samples:

- entropo: ``entropo.trainer.run.train`` with learner.ranks=1, rollout.workers=1 (a Ray
  learner actor running DeepSpeed and a Ray rollout actor sampling the ``transformers`` model
  with entropo's decode loop, :mod:`entropo.trainer.decode`),
  reward.mode=local, evaluation off (data.eval=null), logger jsonl; per-step numbers come from
  its ``metrics.jsonl`` (``timing/*``, ``perf/tokens_per_s``, ``response_length/mean``).
  ``--mode async`` (default) adds ``configs/async.yaml``: the next step's generation overlaps
  this step's update (one step off-policy, corrected by truncated importance sampling), the
  actors' threads are elastic (the learner takes the generation's core once it is idle),
  micro-batches are cut by a token budget of ``--micro-batch × (longest prompt +
  --max-new-tokens)`` — the memory bound of ``--micro-batch`` padded rows — and the learner
  computes in bf16 mixed precision (``learner.mixed_precision=bf16``: autocast matmuls, fp32
  weights, AdamW and attention; generation stays fp32). Both modes fuse the
  π_old pass into the update (exact here: one update per step), and both leave the rows
  whose advantage is 0 at every token (groups whose 8 responses scored alike) out of the
  backward (``learner.skip_zero_advantage``, on by default where exact, as here: their
  gradient is exactly 0; they still run a no-grad forward, for π_old and the metrics).
  ``--mode sync``: the defaults.
  ``--set KEY=VALUE`` (repeatable) adds entropo config overrides after the mode's.
- TRL: ``GRPOTrainer`` (``use_cpu=True``, bf16/fp16 off — ``--trl-bf16`` turns on its bf16
  autocast, which made its steps slower here: PyTorch's bf16 attention backward on CPU —,
  ``report_to=[]``, beta 0, constant
  lr, gradient checkpointing off like entropo's default (TRL turns it on by default),
  ``num_generations=n``, ``per_device_train_batch_size=--micro-batch`` with gradient
  accumulation so one optimiser step = prompts × n completions, generated in one batch) with a
  reward function wrapping :func:`entropo.data.embedded.score`; the same model directory and
  tokenizer. A ``TrainerCallback`` times each optimiser step (``on_step_begin`` →
  ``on_step_end``); a thin subclass times ``_generate`` and ``_calculate_rewards`` and counts
  the tokens of the completions (``completion_mask``).

Without TRL installed the script stops at once with the install command above.

Each side runs in its own subprocess (its own torch thread pool, its own peak memory), in
``--reps`` repetitions, alternating ABBA-style (entropo first in odd repetitions, TRL first in
even ones) so a slow drift of the machine's load hits both sides alike. Threads: entropo's
actors take their default share (cores // (learner ranks + rollout workers) torch threads
each: 1 on 2 cores). TRL by default keeps torch's default, all cores (``--trl-threads 0``):
on a quiet 2-core machine that made its steps 1.3-1.4× faster than one thread, so it is TRL's
best setting here and the fair baseline. ``--trl-threads -1`` gives TRL as many threads as one
entropo actor (every phase of either side then computes with one thread); on a loaded
machine two OpenMP threads were 15-30× slower than one, as each parallel region waits for
its slowest, descheduled thread.

Metrics, over the measured steps (step > ``--skip-steps``: step 1 holds the start-up, first
``generate``, first optimiser step; wall time of start-up is never counted):

- generated tokens/s = Σ generated tokens / Σ rollout (generation) time (entropo async: the
  background generation's own time, ``timing/rollout_ahead``);
- trained tokens/s = Σ tokens in the update (response tokens under the loss mask) / Σ step time;
  with no filtering, trained = generated on both sides. Tokens of rows with advantage 0 count
  on both sides: their gradient is 0 either way, TRL computes it and entropo skips it (the
  report prints the share of rows that ran a backward). Counting only the tokens with a
  non-zero advantage would scale both sides alike (the same task, the same group size);
- s/step = mean step time (entropo ``timing/step``; TRL ``on_step_begin`` → ``on_step_end``);
- peak memory, two honest views, sampled every ``--poll-s`` by this process over the child's
  whole process tree (psutil): ``peak RSS Σ driver+actors`` = the sum, over the driver and
  the Ray actor processes (``ray::<Actor>``), of each process's own peak RSS (the kernel's
  ``VmHWM``, so no spike is missed; shared library pages count once per process, which
  overstates a multi-process side); ``peak PSS Σ tree`` = the largest sampled total PSS
  (shared pages split between processes) of every process in the tree, Ray's own daemons and
  idle workers included. TRL is one process, so both are that process.

Each metric is printed as mean ± std (sample std) over repetitions, with the ratio
entropo/TRL = ratio of the means and, in brackets, the min-max of the per-repetition
(paired) ratios. The last line is ``ratio entropo/trl trained tokens/s: X.XX``.

Learner FLOP/s: an fp32 matrix-multiply peak is measured in this run (``--matmul-size``²
matmuls, best of several, with all cores and with 1 thread, before and after the
repetitions; the best is kept). The learner's work per step is estimated as
6·N·T (forward + backward of the update) + 2·N·T (a separate π_old forward, when entropo runs
one: not when it is fused), N = the weights of the model's matrix multiplies (``nn.Linear``;
the tied LM head counted, the embedding lookup not), T = trained tokens; the backward's
4·N·T counts only the share b of rows that ran one (``perf/backward_rows_frac``: entropo's
``learner.skip_zero_advantage`` leaves rows whose advantage is 0 at every token to a no-grad
forward; the report prints b); divided by entropo's
``timing/forward + timing/update``. This counts
useful tokens only: prompt tokens, padding and attention scores add real work, so the true
utilisation is somewhat higher. For TRL (which, with one iteration per generation, skips the
π_old forward) the same 6·N·T over its update time is shown for comparison.

Step-time split: entropo's ``timing/{rollout, forward, reward, advantage, update, sync}``
(controller-side wall times, Ray calls and transfers included; "other" is the rest of
``timing/step``; in async mode "rollout" is only the wait for the background generation); TRL's ``_generate`` (rollout), ``_calculate_rewards`` (reward), the rest of
``_generate_and_score_completions`` (prep: padding, advantages; no π_old forward) and the
rest of the step (update: forward + backward + optimiser of all micro-batches).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "embedded:tiny-qwen2-addition"
DATA = "embedded:addition"
SIDES = ("entropo", "trl")
MODES = ("async", "sync")
INSTALL_HINT = 'pip install -e ".[bench]"   (from the repository root; or: pip install "trl>=0.20")'
MIB = 2**20

ENTROPO_PHASES = ("rollout", "forward", "reward", "advantage", "update", "sync")
TRL_PHASES = ("rollout", "reward", "prep", "update")


# ---------------------------------------------------------------------------------------
# arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments, validated (``parser.error`` on a bad combination)."""
    p = argparse.ArgumentParser(
        description="entropo vs TRL GRPOTrainer throughput on this machine (see the module docstring)."
    )
    p.add_argument("--prompts", type=int, default=24, help="prompts per step (B)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="maximum response length")
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--reps", type=int, default=2, help="repetitions (each runs both sides)")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate (AdamW)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--mode", choices=MODES, default="async",
                   help="entropo: async (configs/async.yaml: rollout overlapped with the update, TIS, "
                        "token-budget micro-batches) or sync (the defaults)")
    p.add_argument("--eval-prompts", type=int, default=1000,
                   help="held-out prompts on which each side's final policy is scored greedily (0: none)")
    p.add_argument("--micro-batch", type=int, default=8,
                   help="responses per forward/backward (entropo learner.micro_batch_size, "
                        "TRL per_device_train_batch_size)")
    p.add_argument("--skip-steps", type=int, default=1, help="first steps left out of the measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the matmuls timed for the peak")
    p.add_argument("--trl-threads", type=int, default=0,
                   help="torch threads of the TRL process: 0 (default) torch's default (all cores), "
                        "-1 as many as each entropo actor gets, else that many")
    p.add_argument("--trl-bf16", action="store_true",
                   help="TRL with bf16=True (accelerate's bf16 autocast), to compare with entropo's "
                        "learner.mixed_precision=bf16 (--set)")
    p.add_argument("--poll-s", type=float, default=0.5, help="memory sampling interval, seconds")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="limit of one side's run, seconds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an entropo config override applied after --mode's (repeatable), e.g. "
                        "--set trainer.elastic_threads=false")
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only (no ratio)")
    p.add_argument("--json", default=None, help="also write the raw per-step results to this file")
    p.add_argument("--child", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("prompts", "n", "max_new_tokens", "steps", "reps", "micro_batch", "matmul_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.skip_steps < 0 or args.skip_steps >= args.steps:
        p.error(f"--skip-steps must be in [0, --steps): {args.skip_steps} with --steps {args.steps} "
                "leaves no measured step")
    if (args.prompts * args.n) % args.micro_batch:
        p.error(f"--micro-batch {args.micro_batch} must divide --prompts × --n = {args.prompts * args.n}")
    if args.lr <= 0 or args.poll_s <= 0 or args.timeout_s <= 0 or args.trl_threads < -1:
        p.error("--lr, --poll-s and --timeout-s must be > 0 and --trl-threads >= -1")
    if args.temperature <= 0 or args.eval_prompts < 0:
        p.error("--temperature must be > 0 and --eval-prompts >= 0")
    for o in args.overrides:
        if "=" not in o:
            p.error(f"--set takes KEY=VALUE, got {o!r}")
    if args.child and not args.result:
        p.error("--child needs --result")
    return args


def forwarded_args(args: argparse.Namespace) -> list[str]:
    """The arguments a child process needs, as a command line."""
    return [
        "--prompts", str(args.prompts), "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
        "--steps", str(args.steps), "--lr", repr(args.lr), "--micro-batch", str(args.micro_batch),
        "--skip-steps", str(args.skip_steps), "--seed", str(args.seed), "--trl-threads", str(args.trl_threads),
        *(["--trl-bf16"] if args.trl_bf16 else []),
        "--temperature", repr(args.temperature), "--mode", args.mode, "--eval-prompts", str(args.eval_prompts),
        *(x for o in args.overrides for x in ("--set", o)),
    ]


def trl_threads(requested: int, cores: int) -> int:
    """Torch threads of the TRL process (0: leave torch's default). ``-1`` matches entropo: on one
    node each of its actors (here 1 learner rank + 1 rollout worker) gets ``cores // 2`` threads
    (:func:`entropo.trainer.cluster.actor_threads`)."""
    return max(1, cores // 2) if requested == -1 else requested


def require_trl() -> None:
    """Exit with an install hint when TRL is not importable."""
    if importlib.util.find_spec("trl") is None:
        raise SystemExit(f"benchmarks/throughput.py needs TRL (the [bench] extra), which is not installed.\n"
                         f"Install it with:  {INSTALL_HINT}")


# ---------------------------------------------------------------------------------------
# statistics and formatting (pure)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def ratio_summary(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """``(mean(a)/mean(b), min, max of the paired ratios a_i/b_i)``."""
    if len(a) != len(b) or not a:
        raise ValueError("ratio_summary needs two non-empty lists of the same length (paired repetitions)")
    paired = [x / y if y else float("nan") for x, y in zip(a, b)]
    mb = statistics.fmean(b)
    return (statistics.fmean(a) / mb if mb else float("nan")), min(paired), max(paired)


def fmt_num(x: float) -> str:
    """A number with about 3-4 significant digits."""
    if not math.isfinite(x):
        return "nan"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_mean_std(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{fmt_num(m)} ± {fmt_num(s)}"


def fmt_ratio(ratio: float, lo: float, hi: float) -> str:
    return f"{ratio:.2f} [{lo:.2f}-{hi:.2f}]"


def last_line(ratio: float) -> str:
    return f"ratio entropo/trl trained tokens/s: {ratio:.2f}"


def learner_flops(params: int, trained_tokens: float, forward_tokens: float = 0.0, backward_frac: float = 1.0) -> float:
    """Estimated learner FLOPs of one step: 2·N·T (update forward) + 4·N·T·b (backward of the
    share b of the rows that ran one) + 2·N·T_fwd (a separate π_old forward)."""
    return 2.0 * params * trained_tokens * (1.0 + 2.0 * backward_frac) + 2.0 * params * forward_tokens


def matmul_flops(size: int) -> float:
    """FLOPs of one ``size × size`` by ``size × size`` matrix multiply."""
    return 2.0 * size**3


def summarize_steps(steps: list[dict], skip: int, phases: tuple[str, ...]) -> dict[str, float]:
    """One repetition's numbers over the steps with ``step > skip``.

    Each step record holds ``step``, ``step_s``, ``generated``, ``trained``, ``<phase>_s`` and
    ``gen_s`` (generation time, which entropo's async mode overlaps with the step: then not a phase).
    """
    measured = [s for s in steps if s["step"] > skip]
    if not measured:
        raise ValueError(f"no step after --skip-steps {skip} (got {len(steps)} steps)")
    total_step = sum(s["step_s"] for s in measured)
    total_rollout = sum(s.get("gen_s", s["rollout_s"]) for s in measured)
    out = {
        "steps": float(len(measured)),
        "generated_tok_s": sum(s["generated"] for s in measured) / total_rollout,
        "trained_tok_s": sum(s["trained"] for s in measured) / total_step,
        "step_s": total_step / len(measured),
        "trained_per_step": sum(s["trained"] for s in measured) / len(measured),
        "gen_s": total_rollout / len(measured),
        # rows whose update ran a backward (entropo's learner.skip_zero_advantage; TRL: all)
        "backward_frac": sum(s.get("backward_frac", 1.0) for s in measured) / len(measured),
    }
    for ph in phases:
        out[f"{ph}_s"] = sum(s[f"{ph}_s"] for s in measured) / len(measured)
    out["other_s"] = out["step_s"] - sum(out[f"{ph}_s"] for ph in phases)
    return out


def format_table(rows: list[tuple[str, list[float], list[float]]], sides: tuple[str, ...]) -> list[str]:
    """Lines of ``metric | side means ± std | ratio`` (ratio only with both sides)."""
    both = len(sides) == 2
    header = f"{'metric':<34}" + "".join(f"{s:>22}" for s in sides) + (f"{'entropo/trl [min-max]':>26}" if both else "")
    lines = [header, "-" * len(header)]
    for name, e, t in rows:
        cells = [v for v, s in ((e, "entropo"), (t, "trl")) if s in sides]
        line = f"{name:<34}" + "".join(f"{fmt_mean_std(c):>22}" for c in cells)
        if both:
            line += f"{fmt_ratio(*ratio_summary(e, t)):>26}"
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------
# measurements in this process


def matmul_peak(size: int, threads: int, repeats: int = 5) -> float:
    """Best fp32 matmul GFLOP/s with ``threads`` torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen)
        b = torch.randn(size, size, generator=gen)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)  # warm-up
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
        return matmul_flops(size) / best / 1e9
    finally:
        torch.set_num_threads(before)


def matmul_params() -> tuple[int, int]:
    """``(weights of the model's nn.Linear layers, all parameters)`` of the benchmark model."""
    import torch

    from entropo.models.loading import load_model

    model = load_model(MODEL, "float32")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return linear, sum(p.numel() for p in model.parameters())


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


RAY_INTERNAL = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::JobSupervisor")


def is_actor_title(title: str) -> bool:
    """A Ray actor of the run (``ray::LearnerRank``, ``ray::RolloutWorker.generate``, ...), not
    one of Ray's own processes (idle workers, agents)."""
    return title.startswith("ray::") and not title.startswith(RAY_INTERNAL)


def memory_by_process(processes: dict[str, list]) -> dict[str, float]:
    """Peak RSS (MiB) summed by kind: driver, each actor class, and Ray's own processes."""
    out: dict[str, float] = {}
    for role, title, mib in processes.values():
        if role == "driver":
            key = "driver"
        elif role == "actor":
            key = title.split()[0].removeprefix("ray::").split(".")[0]
        else:
            key = "Ray daemons/idle workers"
        out[key] = out.get(key, 0.0) + mib
    return out


class TreeMemory(threading.Thread):
    """Samples the memory of a process and all its descendants until :meth:`stop`."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.hwm: dict[int, int] = {}  # pid -> peak RSS bytes (VmHWM, else sampled RSS)
        self.roles: dict[int, str] = {}  # pid -> "driver" | "actor" | "other", sticky once "actor"
        self.titles: dict[int, str] = {}
        self.peak_pss = 0
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.interval):
                self.sample()
                return

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total_pss = 0
        for p in procs:
            try:
                title = " ".join(p.cmdline())[:80]
                hwm_kib = _status_kib(p.pid, "VmHWM")
                rss = p.memory_info().rss
                try:
                    total_pss += p.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    total_pss += rss
            except psutil.Error:
                continue
            peak = max(rss, hwm_kib * 1024 if hwm_kib is not None else 0)
            self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), peak)
            role = "driver" if p.pid == self.pid else ("actor" if is_actor_title(title) else "other")
            if self.roles.get(p.pid) != "actor":
                self.roles[p.pid] = role
            if role != "other" or p.pid not in self.titles:
                self.titles[p.pid] = title
        self.peak_pss = max(self.peak_pss, total_pss)

    def peak_rss_relevant(self) -> int:
        return sum(v for pid, v in self.hwm.items() if self.roles.get(pid) in ("driver", "actor"))


def run_side(side: str, args: argparse.Namespace, workdir: Path, rep: int) -> dict:
    """Run one side in a subprocess, sampling its memory; returns its result dict."""
    result = workdir / f"{side}-{rep}.json"
    log = workdir / f"{side}-{rep}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--result", str(result),
           *forwarded_args(args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               RAY_DEDUP_LOGS="0", WANDB_MODE="disabled")
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        mem = TreeMemory(proc.pid, args.poll_s)
        mem.start()
        try:
            rc = proc.wait(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        finally:
            mem.stop()
    wall = time.perf_counter() - t0
    if rc != 0 or not result.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        why = f"timed out after {args.timeout_s:.0f} s" if rc is None else f"exit status {rc}"
        raise SystemExit(f"{side} run {rep} failed ({why}); last lines of {log}:\n{tail}")
    out = json.loads(result.read_text())
    out["wall_s"] = wall
    out["peak_rss_relevant_mib"] = mem.peak_rss_relevant() / MIB
    out["peak_pss_tree_mib"] = mem.peak_pss / MIB
    out["processes"] = {str(pid): [mem.roles[pid], mem.titles.get(pid, ""), mem.hwm.get(pid, 0) / MIB]
                        for pid in mem.roles}
    return out


# ---------------------------------------------------------------------------------------
# children


def child_entropo(args: argparse.Namespace, result: Path) -> None:
    import ray

    from entropo.config import load_config
    from entropo.trainer.cluster import actor_threads
    from entropo.trainer.run import train

    run_dir = Path(tempfile.mkdtemp(prefix="bench-entropo-"))
    overrides = [
        f"model.path={MODEL}", f"data.train={DATA}", "data.eval=null",
        "learner.ranks=1", "rollout.workers=1", "reward.mode=local", "logger.backends=[jsonl]",
        f"trainer.prompts_per_step={args.prompts}", f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"trainer.total_steps={args.steps}",
        f"learner.lr={args.lr!r}", f"rollout.temperature={args.temperature!r}", "rollout.top_p=1.0",
        f"learner.micro_batch_size={args.micro_batch}", f"trainer.seed={args.seed}",
        f"trainer.output_dir={run_dir}",
    ]
    if args.mode == "async":
        # the memory bound of micro-batches of --micro-batch padded rows, as a token budget
        budget = args.micro_batch * (longest_prompt() + args.max_new_tokens)
        overrides += [f"learner.micro_batch_tokens={budget}"]
    overrides += args.overrides
    cfg = load_config(ROOT / "configs/async.yaml" if args.mode == "async" else None, overrides)
    try:
        train(cfg)
    finally:
        ray.shutdown()
    accuracy = final_accuracy(run_dir / "checkpoints" / f"step_{args.steps:06d}" / "hf", args)
    per_step = args.prompts * args.n
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("step", 0) < 1 or "timing/step" not in m:
            continue
        rec = {"step": m["step"], "step_s": m["timing/step"],
               "generated": m["response_length/mean"] * per_step,
               "trained": m["perf/tokens_per_s"] * m["timing/step"],
               # generation time: in async mode the background generation, not the wait for it
               "gen_s": m.get("timing/rollout_ahead", m["timing/rollout"]),
               "backward_frac": m.get("perf/backward_rows_frac", 1.0)}
        for ph in ENTROPO_PHASES:
            rec[f"{ph}_s"] = m.get(f"timing/{ph}", 0.0)
        steps.append(rec)
    shutil.rmtree(run_dir, ignore_errors=True)  # config, metrics, the final checkpoint: not needed
    threads = actor_threads(cfg, 1.0, single_node=True)
    result.write_text(json.dumps({"side": "entropo", "steps": steps, "accuracy": accuracy,
                                  "threads": f"{threads} per actor (learner, rollout), {args.mode}"
                                             + "".join(f", {o}" for o in args.overrides)}))


def longest_prompt() -> int:
    """The most prompt tokens of any training prompt (the token budget's P)."""
    from entropo.data.loading import load_rows
    from entropo.data.prompts import encode_prompt
    from entropo.models.loading import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path(MODEL))
    return max(len(encode_prompt(r, tok)) for r in load_rows(DATA, split="train"))


def final_accuracy(model, args: argparse.Namespace) -> float | None:
    """Greedy accuracy of a final policy (a model or a saved directory) on the first
    ``--eval-prompts`` held-out prompts, scored the same way for both sides."""
    if not args.eval_prompts:
        return None
    from entropo.data.loading import load_rows
    from entropo.models.loading import load_model, load_tokenizer, resolve_model_path
    from entropo.models.warm_start import accuracy

    if isinstance(model, Path):
        tok = load_tokenizer(str(model))
        model = load_model(str(model), "float32")
    else:
        tok = load_tokenizer(resolve_model_path(MODEL))
    problems = [{"prompt": r.prompt, "ground_truth": r.ground_truth}
                for r in load_rows(f"{DATA}?n={args.eval_prompts}", split="eval")]
    return accuracy(model, tok, problems, max_new_tokens=args.max_new_tokens)


def child_trl(args: argparse.Namespace, result: Path) -> None:
    require_trl()
    import torch

    threads = trl_threads(args.trl_threads, os.cpu_count() or 1)
    if threads:
        torch.set_num_threads(threads)
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from entropo.data.embedded import score
    from entropo.data.loading import load_rows
    from entropo.models.loading import load_model, load_tokenizer

    rows = list(load_rows(DATA, split="train"))
    dataset = Dataset.from_dict({"prompt": [r.prompt for r in rows], "ground_truth": [r.ground_truth for r in rows]})

    def addition_reward(completions, ground_truth, **_kwargs):
        return [score(c, g) for c, g in zip(completions, ground_truth)]

    class TimedGRPOTrainer(GRPOTrainer):
        bench: dict[str, float]

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            self.bench["rollout_s"] += time.perf_counter() - t0
            self.bench["generated"] += sum(len(ids) for ids in out[1])  # completion_ids_list
            return out

        def _calculate_rewards(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*a, **k)
            self.bench["reward_s"] += time.perf_counter() - t0
            return out

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.bench["score_total_s"] += time.perf_counter() - t0
            self.bench["trained"] += float(out["completion_mask"].sum())
            return out

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = None
            self.steps: list[dict] = []
            self.t0 = 0.0

        def on_step_begin(self, _args, _state, _control, **_kw):
            self.trainer.bench = dict.fromkeys(("rollout_s", "reward_s", "score_total_s", "generated", "trained"), 0.0)
            self.t0 = time.perf_counter()

        def on_step_end(self, _args, state, _control, **_kw):
            step_s = time.perf_counter() - self.t0
            b = self.trainer.bench
            self.steps.append({
                "step": state.global_step, "step_s": step_s, "generated": b["generated"], "trained": b["trained"],
                "rollout_s": b["rollout_s"], "gen_s": b["rollout_s"], "reward_s": b["reward_s"],
                "prep_s": b["score_total_s"] - b["rollout_s"] - b["reward_s"],
                "update_s": step_s - b["score_total_s"],
            })

    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    config = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=args.trl_bf16, fp16=False, report_to=[], seed=args.seed,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, beta=0.0, num_iterations=1,
        num_generations=args.n, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.prompts * args.n // args.micro_batch,
        max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
        logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=False,  # TRL defaults it on; entropo (model.gradient_checkpointing) off
    )
    timer = StepTimer()
    trainer = TimedGRPOTrainer(
        model=load_model(MODEL, "float32"), reward_funcs=addition_reward, args=config,
        train_dataset=dataset, processing_class=load_tokenizer(MODEL), callbacks=[timer],
    )
    timer.trainer = trainer
    trainer.train()
    shutil.rmtree(out_dir, ignore_errors=True)
    accuracy = final_accuracy(trainer.model, args)
    logged = [h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h]
    result.write_text(json.dumps({"side": "trl", "steps": timer.steps, "trl_version": trl.__version__,
                                  "accuracy": accuracy,
                                  "logged_mean_length": logged,
                                  "threads": f"{torch.get_num_threads()} (one process)"
                                             + (", bf16 autocast" if args.trl_bf16 else "")}))


# ---------------------------------------------------------------------------------------
# the report


def report(args: argparse.Namespace, runs: dict[str, list[dict]], peaks: dict[str, float],
           params: tuple[int, int]) -> list[str]:
    sides = tuple(s for s in SIDES if runs[s])
    phases = {"entropo": ENTROPO_PHASES, "trl": TRL_PHASES}
    summ = {s: [summarize_steps(r["steps"], args.skip_steps, phases[s]) for r in runs[s]] for s in sides}

    def col(side: str, key: str) -> list[float]:
        if side not in sides:
            return []
        if key.startswith("peak_") or key == "accuracy":
            return [r[key] for r in runs[side]]
        return [x[key] for x in summ[side]]

    measured = f"steps {args.skip_steps + 1}-{args.steps}"
    lines = [
        f"entropo vs TRL GRPOTrainer: {args.prompts} prompts × {args.n} samples per step, max_new_tokens "
        f"{args.max_new_tokens}, {args.steps} steps (measured: {measured}), {args.reps} reps, lr {args.lr:g}, "
        f"T {args.temperature:g}, micro-batch {args.micro_batch}, model {MODEL} ({params[1]:,} params), "
        f"cores {os.cpu_count()}",
        "threads: " + "; ".join(f"{s} {runs[s][0].get('threads', '?')}" for s in sides)
        + (f"; TRL {runs['trl'][0].get('trl_version')}" if "trl" in sides else ""),
        "",
    ]
    rows = [
        ("generated tokens/s (per rollout s)", "generated_tok_s"),
        ("trained tokens/s (per step s)", "trained_tok_s"),
        ("seconds per step", "step_s"),
        ("trained tokens per step", "trained_per_step"),
        ("peak RSS Σ driver+actors (MiB)", "peak_rss_relevant_mib"),
        ("peak PSS Σ process tree (MiB)", "peak_pss_tree_mib"),
    ]
    if args.eval_prompts and all(r.get("accuracy") is not None for s in sides for r in runs[s]):
        rows.append((f"final greedy accuracy ({args.eval_prompts} held-out)", "accuracy"))
    lines += format_table([(name, col("entropo", k), col("trl", k)) for name, k in rows], sides)
    if "entropo" in sides:
        by_kind: dict[str, list[float]] = {}
        for r in runs["entropo"]:
            for k, v in memory_by_process(r["processes"]).items():
                by_kind.setdefault(k, []).append(v)
        lines.append("  entropo peak RSS by process (MiB): "
                     + ", ".join(f"{k} {statistics.fmean(v):.0f}" for k, v in by_kind.items()))

    lines += ["", "step time split, mean seconds per measured step (share of the step):"]
    names = ("rollout", "forward", "prep", "reward", "advantage", "update", "sync", "other")
    lines.append(f"  {'phase':<12}" + "".join(f"{s:>22}" for s in sides))
    for ph in names:
        cells = []
        for s in sides:
            if ph in (*phases[s], "other"):
                v = statistics.fmean(x[f"{ph}_s"] for x in summ[s])
                total = statistics.fmean(x["step_s"] for x in summ[s])
                cells.append(f"{fmt_num(v)} ({100 * v / total:4.1f}%)")
            else:
                cells.append("-")
        lines.append(f"  {ph:<12}" + "".join(f"{c:>22}" for c in cells))
    if "entropo" in sides and args.mode == "async":
        gen = statistics.fmean(x["gen_s"] for x in summ["entropo"])
        lines.append(f"  (entropo async: rollout = the wait for the batch generated in the background during the "
                     f"previous step; that generation took {fmt_num(gen)} s per step, overlapped)")
    if "entropo" in sides and all(x["forward_s"] == 0 for x in summ["entropo"]):
        lines.append("  (entropo: no separate π_old forward: fused into the update, learner.fuse_old_forward)")
    if "entropo" in sides:
        b = statistics.fmean(x["backward_frac"] for x in summ["entropo"])
        lines.append(f"  (entropo: {100 * b:.1f}% of the rows ran a backward; the others had advantage 0 at every "
                     f"token and ran a no-grad forward only, learner.skip_zero_advantage; TRL: 100%)")
    if "trl" in sides:
        lines.append("  (TRL: rollout = _generate, reward = _calculate_rewards, prep = rest of "
                     "_generate_and_score_completions, update = rest of the step)")

    n_mm = params[0]
    best = max(peaks["all"], peaks["one"])
    lines += ["", f"learner FLOP/s vs an fp32 matmul peak measured in this run ({args.matmul_size}² matmuls, best of "
                  f"before/after): {peaks['all']:.1f} GFLOP/s on {os.cpu_count()} threads, {peaks['one']:.1f} GFLOP/s "
                  f"on 1 thread; N = {n_mm:,} matmul weights, T = trained tokens per step, b = share of rows "
                  f"with a backward"]

    def flops_line(label: str, formula: str, gflops: list[float]) -> str:
        m = statistics.fmean(gflops)
        return (f"  {label:<8} {formula} = {m:.2f} GFLOP/s = {100 * m / best:.2f}% of the best peak "
                f"({100 * m / peaks['one']:.2f}% of the 1-thread peak)")

    if "entropo" in sides and any(x["forward_s"] > 0 for x in summ["entropo"]):
        lines.append(flops_line("entropo", "((2 + 4·b)·N·T + 2·N·T) / (forward + update)", [
            learner_flops(n_mm, x["trained_per_step"], x["trained_per_step"], x["backward_frac"])
            / (x["forward_s"] + x["update_s"]) / 1e9 for x in summ["entropo"]]))
    if "entropo" in sides:
        lines.append(flops_line("entropo" if all(x["forward_s"] == 0 for x in summ["entropo"]) else "",
                                "(2 + 4·b)·N·T / update", [
            learner_flops(n_mm, x["trained_per_step"], 0.0, x["backward_frac"]) / x["update_s"] / 1e9
            for x in summ["entropo"]]))
    if "trl" in sides:
        lines.append(flops_line("trl", "6·N·T / update", [
            learner_flops(n_mm, x["trained_per_step"]) / x["update_s"] / 1e9 for x in summ["trl"]]))
    if len(sides) == 2:
        ratio, _, _ = ratio_summary(col("entropo", "trained_tok_s"), col("trl", "trained_tok_s"))
        lines += ["", last_line(ratio)]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        (child_entropo if args.child == "entropo" else child_trl)(args, Path(args.result))
        return
    sides = (args.only,) if args.only else SIDES
    if "trl" in sides:
        require_trl()
    cores = os.cpu_count() or 1
    peaks = {"all": matmul_peak(args.matmul_size, cores), "one": matmul_peak(args.matmul_size, 1)}
    params = matmul_params()
    workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    print(f"[bench] logs and results under {workdir}", flush=True)
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for rep in range(1, args.reps + 1):
        order = sides if rep % 2 == 1 else tuple(reversed(sides))
        for side in order:
            out = run_side(side, args, workdir, rep)
            runs[side].append(out)
            s = summarize_steps(out["steps"], args.skip_steps, ENTROPO_PHASES if side == "entropo" else TRL_PHASES)
            print(f"[bench] rep {rep} {side}: {s['trained_tok_s']:.0f} trained tok/s, {s['step_s']:.2f} s/step, "
                  f"wall {out['wall_s']:.0f} s, peak RSS Σ {out['peak_rss_relevant_mib']:.0f} MiB", flush=True)
    peaks["all"] = max(peaks["all"], matmul_peak(args.matmul_size, cores))
    peaks["one"] = max(peaks["one"], matmul_peak(args.matmul_size, 1))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "peaks_gflops": peaks, "runs": runs}, indent=1))
    print()
    print("\n".join(report(args, runs, peaks, params)), flush=True)


if __name__ == "__main__":
    main()
