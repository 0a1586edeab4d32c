"""The one door to DeepSpeed: engine set-up, backward/step, ZeRO-3 gathers, checkpoints.

DeepSpeed runs with the CPU accelerator and gloo on machines without CUDA
(``DS_ACCELERATOR=cpu``), with nccl and bf16 on GPUs; nothing else in entropo imports it.

Gradient accounting: the composed objective returns each micro-batch's *share* of the
mini-batch loss (global denominators), so the shares of all micro-batches and ranks add up
to the loss. DeepSpeed averages gradients over data-parallel ranks and, by default, divides
each micro-batch loss by the accumulation steps; we call ``backward(loss · world,
scale_wrt_gas=False)`` and mark the accumulation boundary ourselves, so the optimizer sees
exactly the gradient of the mini-batch loss, whatever the micro-batch size or rank count.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import torch

from entropo.config import LearnerConfig


def accelerator_is_gpu() -> bool:
    return torch.cuda.is_available()


def init_distributed(rank: int, world: int, host: str, port: int) -> torch.distributed.TCPStore | None:
    """Rendezvous of the learner ranks through ``host:port`` (chosen by the controller).

    Rank 0 hosts the rendezvous store itself, listening on ``host`` only
    (:func:`entropo.trainer.weight_sync.tcp_store`; the store of torch's ``env://``
    rendezvous, which DeepSpeed uses, would listen on every interface), and every rank joins
    it as a client, as torch's rendezvous does with a store hosted by an elastic agent
    (``TORCHELASTIC_USE_AGENT_STORE``). DeepSpeed's own initialisation is unchanged.

    Returns:
        Rank 0: the store's server, to keep for the life of the process group; else None.
    """
    from entropo.trainer.weight_sync import tcp_store

    os.environ.update(
        MASTER_ADDR=host, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank if not accelerator_is_gpu() else 0), TORCHELASTIC_USE_AGENT_STORE="True",
    )
    if not accelerator_is_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.constants import default_pg_timeout

    # no wait for the members: they connect only when DeepSpeed's rendezvous runs, below
    server = tcp_store(host, port, world, True, default_pg_timeout, wait_for_workers=False) if rank == 0 else None

    # DeepSpeed prints "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully"
    # (deepspeed/comm/torch.py, build_shm_op) on every start of every rank, a plain print no
    # setting turns off; whatever else it prints (a first build's output) is passed on.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        deepspeed.init_distributed(dist_backend="nccl" if accelerator_is_gpu() else "gloo")
    kept = [line for line in out.getvalue().splitlines() if not is_shm_op_notice(line)]
    if kept:
        print("\n".join(kept), flush=True)
    return server


def is_shm_op_notice(line: str) -> bool:
    """DeepSpeed's per-start notice that its CPU shared-memory all-reduce op loaded."""
    return line.startswith("DeepSpeed ") and line.endswith("shm_comm_op built successfully")


def deepspeed_config(cfg: LearnerConfig, world: int, bf16: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload and cfg.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu"}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        # Boundaries are set explicitly per mini-batch (see module docstring); this value
        # only satisfies DeepSpeed's batch-size arithmetic.
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.micro_batch_size * world,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": cfg.weight_decay},
        },
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def warmup_factor(warmup_steps: int):
    """Linear warm-up of the learning rate: step s (0-based) runs at ``min(1, (s+1)/(w+1))``."""

    def factor(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / (warmup_steps + 1))

    return factor


class DeepSpeedStrategy:
    """Wraps one rank's DeepSpeed engine."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, world: int, bf16: bool) -> None:
        import deepspeed

        self.world = world
        self.zero_stage = cfg.zero_stage
        ds_cfg = deepspeed_config(cfg, world, bf16)
        factor = warmup_factor(cfg.warmup_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_cfg,
            # DeepSpeed builds the scheduler on its base optimizer and steps it at boundaries.
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
        )

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def train_model(self) -> torch.nn.Module:
        """What a training forward calls: the engine itself, not its module. ZeRO-3 counts
        micro-steps in ``engine.forward`` and would overwrite, not accumulate, gradients
        across micro-batches if the module were called directly."""
        return self.engine

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> float:
        """Optimizer step at the end of a mini-batch; returns the pre-clip gradient norm."""
        norm = None
        if self.zero_stage == 0:
            # DeepSpeed reports no norm at stage 0 (it only computes one while clipping in
            # mixed precision); the gradients are whole here, so take it directly.
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else 0.0
        self.engine.step()
        if norm is None:
            norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def nonfinite_params(self) -> int:
        """Non-finite elements of this rank's parameters: the whole model under ZeRO 0-2, this
        rank's partition under ZeRO-3 (``ds_tensor``)."""
        counts = []
        for p in self.engine.module.parameters():
            local = getattr(p, "ds_tensor", None) if self.zero_stage == 3 else p
            if local is not None and local.numel():
                counts.append((~torch.isfinite(local.detach())).sum())
        return int(torch.stack(counts).sum()) if counts else 0  # one device sync, not one per tensor

    def micro_step(self) -> None:
        """Inside a mini-batch: DeepSpeed counts the micro-step and does not update."""
        self.engine.step()

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def gather(self, params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
        """Full parameters for reading (a collective under ZeRO-3, a no-op otherwise)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def save(self, path: str, tag: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(path, tag=tag, client_state=client_state)

    def load(self, path: str, tag: str) -> dict[str, Any]:
        _, client_state = self.engine.load_checkpoint(path, tag=tag)
        return client_state or {}
