"""The Ray side of a run: actors for learner ranks and rollout workers, and the calls that
fan work out to them and gather results. The controller talks to this class only.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import ray
import torch

from entropo.config import TrainConfig
from entropo.trainer.batch import StepBatch
from entropo.trainer.learner import LearnerRank, LearnerShard
from entropo.trainer.rollout import RolloutOutput, RolloutWorker, SamplingParams
from entropo.trainer.weight_sync import DEFAULT_BUCKET_BYTES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def actor_threads(cfg: TrainConfig) -> int:
    """Torch threads per actor: the machine's cores shared among the actors on it."""
    actors = cfg.learner.ranks + cfg.rollout.workers
    return max(1, (os.cpu_count() or 1) // actors)


class Cluster:
    """Learner ranks and rollout workers as Ray actors."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        threads = actor_threads(cfg)
        env = {"env_vars": {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu") if not torch.cuda.is_available() else "cuda",
                            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
                            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}}
        gpu = 1 if torch.cuda.is_available() else 0
        Learner = ray.remote(num_cpus=0.01, num_gpus=gpu, runtime_env=env)(LearnerRank)
        Worker = ray.remote(num_cpus=0.01, num_gpus=gpu, runtime_env=env)(RolloutWorker)
        world = cfg.learner.ranks
        self.learners = [Learner.remote(cfg, r, world, threads) for r in range(world)]
        host, port = ray.get(self.learners[0].address.remote())
        ray.get([a.setup.remote(host, port) for a in self.learners])
        self.workers = [
            Worker.remote(cfg.model.path, cfg.rollout.engine, "float32", "cuda" if gpu else "cpu", threads)
            for _ in range(cfg.rollout.workers)
        ]
        ray.get([w.ready.remote() for w in self.workers])
        self._join_sync_group(host)

    def _join_sync_group(self, host: str) -> None:
        port = _free_port()
        world = 1 + len(self.workers)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        calls = [a.join_sync_group.remote(host, port, world, backend, DEFAULT_BUCKET_BYTES) for a in self.learners]
        calls += [w.join_sync_group.remote(host, port, i + 1, world, backend, DEFAULT_BUCKET_BYTES)
                  for i, w in enumerate(self.workers)]
        ray.get(calls)

    # ---- rollout ------------------------------------------------------------------------
    def rollout(self, rows: list, params: SamplingParams, tokenizer) -> StepBatch:
        from entropo.data.prompts import encode_prompt

        prompts = [encode_prompt(r, tokenizer) for r in rows]
        w = len(self.workers)
        chunks = [list(range(i, len(prompts), w)) for i in range(w)]
        futures = [
            worker.generate.remote([prompts[i] for i in idx], _with_seed(params, k))
            for k, (worker, idx) in enumerate(zip(self.workers, chunks)) if idx
        ]
        outs: list[RolloutOutput] = ray.get(futures)
        parts = []
        for out, idx in zip(outs, [c for c in chunks if c]):
            group_ids = torch.tensor(idx).repeat_interleave(params.n)
            parts.append(StepBatch(
                prompt_ids=out.prompt_ids, prompt_mask=out.prompt_mask, response_ids=out.response_ids,
                mask=out.mask, rollout_logp=out.rollout_logp, truncated=out.truncated, group_ids=group_ids,
                response_text=out.response_text, rows=[rows[i] for i in idx for _ in range(params.n)],
                weight_version=out.weight_version,
            ))
        batch = StepBatch.concat(parts)
        # back to prompt order: group g's samples are contiguous, groups in draw order
        return batch.select(torch.argsort(batch.group_ids, stable=True))

    # ---- learner ------------------------------------------------------------------------
    def _split(self, batch: StepBatch) -> list[LearnerShard]:
        r = len(self.learners)
        k = -(-len(batch) // r)
        return [LearnerShard(batch.prompt_ids[i * k:(i + 1) * k], batch.prompt_mask[i * k:(i + 1) * k],
                             batch.response_ids[i * k:(i + 1) * k], batch.mask[i * k:(i + 1) * k])
                for i in range(r)]

    def forward(self, batch: StepBatch) -> None:
        """Adds ``old_logp``, ``entropy`` (and ``ref_logp``) to the batch."""
        shards = self._split(batch)
        outs = ray.get([a.forward.remote(s) for a, s in zip(self.learners, shards)])
        batch.old_logp = torch.cat([o.old_logp for o in outs])
        batch.entropy = torch.cat([o.entropy for o in outs])
        if outs[0].ref_logp is not None:
            batch.ref_logp = torch.cat([o.ref_logp for o in outs])

    def update(self, minibatches: list[list[LearnerShard]], entropy_coef: float, step: int) -> dict[str, float]:
        per_rank = [[mb[r] for mb in minibatches] for r in range(len(self.learners))]
        results = ray.get([a.update.remote(s, entropy_coef, step) for a, s in zip(self.learners, per_rank)])
        return results[0]

    def sync_weights(self, version: int) -> None:
        calls = [a.send_weights.remote() for a in self.learners]
        calls += [w.receive_weights.remote(version) for w in self.workers]
        ray.get(calls)

    def save(self, path: Path) -> None:
        """Every rank's DeepSpeed state into ``path/learner``; the policy into ``path/hf``."""
        ray.get([a.save.remote(str(path / "learner"), "state", {}) for a in self.learners])
        ray.get([a.export_pretrained.remote(str(path / "hf")) for a in self.learners])

    def load(self, path: Path) -> None:
        ray.get([a.load.remote(str(path / "learner"), "state") for a in self.learners])

    def node_ids(self) -> dict[str, list[str]]:
        return {"learner": ray.get([a.node_id.remote() for a in self.learners]),
                "rollout": ray.get([w.node_id.remote() for w in self.workers])}

    def shutdown(self) -> None:
        for a in self.learners + self.workers:
            ray.kill(a)


def _with_seed(params: SamplingParams, worker: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=params.seed * 131 + worker)
