"""What can be checked on a CUDA machine that has torch but no Ray, DeepSpeed or vLLM.

    bash scripts/gpu_check.sh            # on the GPU machine (installs the carried wheels first)
    .venv/bin/python scripts/gpu_check.py --device cpu   # the same checks here, as a dry run

One process, no Ray: a DeepSpeed learner rank (world 1, nccl; ZeRO-2, bf16 with fp32 master
weights: ``model.dtype=bfloat16``) and the ``hf`` rollout engine (bf16 on the GPU) hold a tiny
Qwen2 (heads of 32 dimensions). Each check prints one line ``PASS``/``FAIL`` with its numbers;
the exit status is 1 when any failed.

1. chunked log-prob/entropy against the full-logits computation on the device (fp32, V = 151,936):
   max difference and peak memory of each;
2. the engine's rollout log-probs against the learner's π_old of the same responses (bf16 on
   both sides, other kernels: tolerance 0.1 nats, see ``BF16_TOL``);
3. one learner update (GRPO loss on fixed advantages): finite loss, positive gradient norm, the
   parameters moved;
4. the weight sync learner → engine through :mod:`entropo.trainer.weight_sync` (a gloo group of
   two members in two threads: the learner's bf16 buckets cast into the engine's parameters),
   after which engine and learner score the same responses alike, and not before.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

BF16_TOL = 0.1
"""bf16 keeps 8 mantissa bits: two bf16 forwards with other kernels (the decode loop's cached
attention, the learner's full pass) differ by up to ~0.05 nats on this model; fp32 agrees to 1e-5."""

failures: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def check_entropy(device: torch.device) -> None:
    from entropo.algorithms.entropy import logprobs_and_entropy, naive_logprobs_and_entropy

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2048, 151_936, generator=gen) * 3).to(device)
    labels = torch.randint(0, 151_936, (2048,), generator=gen).to(device)
    peaks = {}
    values = {}
    for name, fn in (("naive", naive_logprobs_and_entropy), ("chunked", logprobs_and_entropy)):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with torch.no_grad():
            values[name] = fn(logits, labels, 0.7)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    diff = max(float((a - b).abs().max()) for a, b in zip(values["naive"], values["chunked"]))
    mem = f", extra peak {peaks['chunked']:.0f} vs {peaks['naive']:.0f} MiB" if peaks else ""
    report("chunked entropy", diff < 1e-4, f"max |Δ| {diff:.2e} against the full logits{mem}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("FAIL cuda: torch.cuda.is_available() is False", flush=True)
        return 1
    device = torch.device(args.device)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}",
          flush=True)
    check_entropy(device)

    from entropo.algorithms.objective import StepContext
    from entropo.config import load_config
    from entropo.models.tiny import save_tiny
    from entropo.trainer import weight_sync
    from entropo.trainer.batch import LearnerShard
    from entropo.trainer.engine import SamplingParams
    from entropo.trainer.learner import LearnerRank
    from entropo.trainer.rollout import HFEngine

    model_dir = save_tiny(Path(tempfile.mkdtemp(prefix="entropo-gpu-check-")) / "tiny", num_heads=2)
    dtype = "bfloat16"
    cfg = load_config(overrides=[f"model.path={model_dir}", f"model.dtype={dtype}", "learner.zero_stage=2",
                                 "learner.lr=1e-2", "learner.micro_batch_size=8", "rollout.temperature=1.0"])
    learner = LearnerRank(cfg, 0, 1)
    learner.setup("127.0.0.1", free_port())
    engine = HFEngine(str(model_dir), dtype, args.device)
    tok = engine.tokenizer
    prompts = [tok.encode(t) for t in ("12+34=?", "5+6=?", "100+1=?", "7+80=?")]
    out = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=0))
    shard = LearnerShard(out.prompt_ids, out.prompt_mask, out.response_ids, out.mask)
    old = learner.forward(shard)
    gap = float(((old.old_logp - out.rollout_logp) * out.mask).abs().max())
    report("rollout vs learner log-probs (bf16)", gap < BF16_TOL, f"max |Δ log p| {gap:.3f} (tolerance {BF16_TOL})")

    before = {k: v.detach().float().clone() for k, v in learner.strategy.module.named_parameters()}
    shard.old_logp, shard.entropy = old.old_logp, old.entropy
    shard.advantages = (torch.arange(len(shard), dtype=torch.float32) % 2 * 2 - 1).unsqueeze(-1) * out.mask
    metrics, _ = learner.update([shard], StepContext(step=1))
    moved = max(float((v.detach().float() - before[k]).abs().max())
                for k, v in learner.strategy.module.named_parameters())
    report("learner update", torch.isfinite(torch.tensor(metrics["actor/pg_loss"])).item()
           and metrics["actor/grad_norm"] > 0 and moved > 0,
           f"pg_loss {metrics['actor/pg_loss']:.4f}, grad_norm {metrics['actor/grad_norm']:.4f}, max |Δθ| {moved:.2e}")

    args_ = (out.prompt_ids, out.prompt_mask, out.response_ids, out.mask, 1.0)
    stale = float(((learner.score(shard) - engine.score(*args_)) * out.mask).abs().max())
    port = free_port()
    sender = learner.sync_specs()
    result: dict = {}

    def learner_side() -> None:
        learner.join_sync_group("127.0.0.1", port, 2, "gloo", weight_sync.DEFAULT_BUCKET_BYTES)
        params = dict(learner.strategy.module.named_parameters())
        result["sent"] = weight_sync.send_weights(learner.sync_group, params, learner.plan, device=torch.device("cpu"))

    thread = threading.Thread(target=learner_side)
    thread.start()
    weight_sync.check_receiver(sender, engine.sync_specs())
    engine.join_sync_group("127.0.0.1", port, 1, 2, "gloo", weight_sync.DEFAULT_BUCKET_BYTES, sender)
    received = engine.receive_weights()
    thread.join()
    fresh = float(((learner.score(shard) - engine.score(*args_)) * out.mask).abs().max())
    report("weight sync learner -> engine", received == result["sent"] and fresh < BF16_TOL < stale,
           f"{received} bytes; max |Δ log p| {stale:.3f} before, {fresh:.3f} after (tolerance {BF16_TOL})")
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'all checks passed'} "
          f"in {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
