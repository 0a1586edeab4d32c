"""The learner: one Ray actor per DeepSpeed data-parallel rank.

``forward`` computes π_old log-probs and entropies at the rollout temperature (and π_ref
log-probs when a KL to the reference is on) for this rank's rows. ``update`` runs
mini-batches × epochs × micro-batches of the composed token objective
(:mod:`entropo.algorithms.objective`):

1. per mini-batch, the global statistics (selections of ``global``-scope methods, loss
   denominators) are prepared over the whole mini-batch on all ranks through the
   data-parallel reducer. Selections need π_θ at the mini-batch's parameters: on the first
   mini-batch of the first epoch these are π_old's (the parameters have not moved), so the
   π_old pass is reused; later mini-batches run a no-grad pre-pass. Either way the
   selection equals what the training forward would see, and does not depend on the
   micro-batch size or the number of ranks.
2. per micro-batch, the forward with gradient, the objective's share, and backward; rows
   whose advantage is 0 at every token run a no-grad forward only where that is exact
   (``learner.skip_zero_advantage``; :func:`entropo.trainer.micro_batches.with_inert_rows`);
3. one optimizer step per mini-batch (gradient clipping inside DeepSpeed).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.objective import (
    Objective,
    Prepared,
    StepContext,
    micro_objective,
    prepare_minibatch,
)
from entropo.config import TrainConfig
from entropo.models import mixed_precision
from entropo.trainer import micro_batches, weight_sync
from entropo.trainer.batch import LearnerShard


class LearnerRank:
    """The body of one learner actor (wrapped with ``ray.remote`` by the controller)."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, threads: int | None = None,
                 max_threads: int | None = None) -> None:
        from entropo.trainer.elastic_threads import ElasticThreads

        if threads:
            torch.set_num_threads(threads)
        self.threads = ElasticThreads.for_actor(threads or torch.get_num_threads(), max_threads)
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.is_main = rank == 0
        self.strategy = None
        self.ref = None
        self.sync_group = None
        self.rendezvous = None  # rank 0: the learner group's store server (strategy.init_distributed)

    # ---- set-up -------------------------------------------------------------------------
    def address(self) -> tuple[str, int]:
        """Host and a free port on this actor's node, for the rendezvous (rank 0 only)."""
        import socket

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return host, s.getsockname()[1]

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def setup(self, host: str, port: int) -> None:
        from entropo.models.loading import load_model
        from entropo.trainer.dist_reduce import DistReducer
        from entropo.trainer.strategy import DeepSpeedStrategy, accelerator_is_gpu, init_distributed

        self.rendezvous = init_distributed(self.rank, self.world, host, port)  # rank 0: the store's server
        self.reducer = DistReducer()
        dtype = self.cfg.model.dtype
        bf16 = dtype == "bfloat16" or (dtype == "auto" and accelerator_is_gpu())
        model = load_model(self.cfg.model.path, "float32")
        if self.cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.strategy = DeepSpeedStrategy(model, self.cfg.learner, self.world, bf16)
        self.device = next(self.strategy.module.parameters()).device
        if self.cfg.algorithm.kl_coef > 0:
            self.ref = load_model(self.cfg.model.path, "float32").to(self.device).eval()
            self.ref.requires_grad_(False)
        if self.cfg.learner.mixed_precision is not None:
            if warning := mixed_precision.slow_bf16_warning(self.cfg.learner.mixed_precision, self.device):
                warnings.warn(warning, stacklevel=1)
            for m in (self.strategy.module, self.ref):
                if m is not None:
                    mixed_precision.keep_attention_fp32(m)

    def _compute(self):
        """The precision every forward of this learner runs in (``learner.mixed_precision``)."""
        return mixed_precision.autocast(self.cfg.learner.mixed_precision, self.device)

    # ---- π_old / π_ref ------------------------------------------------------------------
    def _extras(self, names: set[str] | frozenset[str]) -> dict:
        """Per-token functions of the logits that the selected methods need (``TOKEN_EXTRAS``)."""
        from entropo.algorithms.stateful import extra_fn

        return {name: extra_fn(name, self.cfg.algorithm, self.cfg.rollout.temperature) for name in sorted(names)}

    def forward(self, shard: LearnerShard, extras: frozenset[str] = frozenset()) -> LearnerShard:
        """π_old log-probs and entropies (π_ref log-probs, and requested ``extras`` such as
        ``proxy_logp`` or ``topp_entropy``) for this rank's rows."""
        self.threads.reset()
        return self._forward(shard, extras)

    @torch.no_grad()
    def _forward(self, shard: LearnerShard, extras: frozenset[str] = frozenset(),
                 policy_only: bool = False) -> LearnerShard:
        from entropo.models.forward import response_logprobs, response_outputs

        module = self.strategy.module
        was_training = module.training
        module.eval()
        fns = {} if policy_only else self._extras(extras | self.objective.old_extras)
        parts = RowParts(shard.response_ids.shape[1])
        for rows in self._micro_batches(shard):
            s, _ = shard.rows(rows).trimmed()
            dev = [self._dev(x) for x in (s.prompt_ids, s.prompt_mask, s.response_ids, s.mask)]
            with self._compute():
                out = response_outputs(module, *dev, self.cfg.rollout.temperature, extras=fns)
                values = {"old_logp": out.logp, "entropy": out.entropy, **out.extras}
                if self.ref is not None and not policy_only:
                    values["ref_logp"], _ = response_logprobs(self.ref, *dev, self.cfg.rollout.temperature,
                                                              with_entropy=False)
            parts.add(rows, values, dev[3])
            self.threads.grow()
        module.train(was_training)
        return LearnerShard(shard.prompt_ids, shard.prompt_mask, shard.response_ids, shard.mask, **parts.result())

    @property
    def objective(self) -> Objective:
        return self.cfg.objective()

    # ---- update -------------------------------------------------------------------------
    def update(self, minibatches: list[LearnerShard], ctx: StepContext,
               fused: bool = False) -> tuple[dict[str, float], dict[str, torch.Tensor] | None]:
        """Epochs × mini-batches × micro-batches; returns metrics averaged over the whole update.

        ``fused``: the shards carry no π_old pass; π_old is π_θ of the training forward,
        detached (exact for one epoch of one mini-batch: the parameters have not moved yet), and
        its ``old_logp`` and ``entropy`` come back as the second value, in row order.
        """
        obj = self.objective
        if fused and (self.cfg.learner.ppo_epochs != 1 or len(minibatches) != 1 or obj.needs_policy_prepass):
            raise ValueError("a fused π_old pass needs one epoch of one mini-batch and no global pre-pass")
        self.threads.reset()
        run = _Update(obj, ctx, self._extras(obj.grad_extras), MetricSums(obj.share_metrics, self.device),
                      RowParts(minibatches[0].response_ids.shape[1]) if fused else None)
        self.strategy.module.train()
        grad_norms = [self._train_minibatch(run, mb, epoch, k)
                      for epoch in range(self.cfg.learner.ppo_epochs) for k, mb in enumerate(minibatches)]
        out = run.sums.reduce(self.reducer, self.cfg.learner.ppo_epochs * len(minibatches))
        # ranks whose parameters hold NaN/inf after the update (every rank takes part): the
        # controller stops the run before such weights are synced or checkpointed
        bad = torch.tensor([float(self.strategy.nonfinite_params() > 0)], dtype=torch.float64)
        out["actor/nonfinite_param_ranks"] = float(self.reducer.sum(bad)[0])
        out["actor/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        out["actor/lr"] = self.strategy.lr()
        out["actor/optimizer_steps"] = float(len(grad_norms))
        out["perf/learner_threads"] = float(self.threads.threads)
        return out, None if run.outputs is None else run.outputs.result()

    def _train_minibatch(self, run: _Update, mb: LearnerShard, epoch: int, k: int) -> float:
        """Mini-batch ``k`` of epoch ``epoch``: its global statistics, its micro-batches and one
        optimizer step; returns the step's gradient norm."""
        # same seed on every rank: the global random draws (Clip-Cov) must agree
        gen = torch.Generator().manual_seed(
            (self.cfg.trainer.seed * 1_000_003 + run.ctx.step) * 100_003 + epoch * 1009 + k)
        prepared = self._prepare(mb, run.obj, run.ctx, gen, reuse_old=(epoch == 0 and k == 0))
        run.sums.add(prepared.metrics, 1.0)
        plan = self._plan(mb, run.obj, run.ctx, prepared)
        last = [m for m in plan if m.backward][-1]
        norm = float("nan")
        for m in plan:
            self._train_micro(run, mb, m, prepared, gen, boundary=m is last)
            if m is last:
                norm = self.strategy.step()
            elif m.backward:
                self.strategy.micro_step()
            self.threads.grow()
        return norm

    def _train_micro(self, run: _Update, mb: LearnerShard, m: micro_batches.MicroBatch, prepared: Prepared,
                     gen: torch.Generator, boundary: bool) -> None:
        """One micro-batch of the update: its forward, its share of the objective and its backward
        (a filler micro-batch runs the forward and a zero backward only, to match the other ranks'
        collectives); its metrics go into ``run.sums``."""
        from entropo.models.forward import response_outputs

        obj, ctx = run.obj, run.ctx
        s, t = mb.rows(m.rows).trimmed()
        dev = [self._dev(x) for x in (s.prompt_ids, s.prompt_mask, s.response_ids, s.mask)]
        model = self.strategy.train_model if m.backward else self.strategy.module
        with torch.set_grad_enabled(m.backward), self._compute():
            out = response_outputs(model, *dev, self.cfg.rollout.temperature,
                                   with_entropy=obj.needs_entropy or run.outputs is not None, extras=run.extras)
        if m.filler:
            if m.backward:
                self.strategy.backward(out.logp.sum() * 0.0, boundary=boundary)
            return
        if run.outputs is not None:  # fused π_old: this forward is π_old's
            s.old_logp, s.entropy = out.logp.detach(), out.entropy.detach()
            run.outputs.add(m.rows, {"old_logp": s.old_logp, "entropy": s.entropy}, dev[3])
        inp = self._inputs(s, out.logp, out.entropy if obj.needs_entropy else None, ctx, generator=gen,
                           extras=out.extras)
        ref = self._dev(s.ref_logp) if s.ref_logp is not None else None
        with torch.set_grad_enabled(m.backward):
            loss, metrics = micro_objective(inp, obj, prepared.rows(m.rows, width=t), ref_logp=ref, ctx=ctx)
        if m.backward:
            self.strategy.backward(loss, boundary=boundary)
        run.sums.add(metrics, float(s.mask.sum()))
        rows = float(len(m.rows))
        run.sums.add({"perf/backward_rows_frac": torch.tensor(float(m.backward))}, rows)

    def _inputs(self, s: LearnerShard, logp: torch.Tensor, entropy: torch.Tensor | None, ctx: StepContext,
                **kwargs) -> TokenLossInputs:
        """The objective's inputs for rows ``s`` given π_θ's log-probs and entropies."""
        return TokenLossInputs(
            logp=logp, old_logp=self._dev(s.old_logp), advantages=self._dev(s.advantages), mask=self._dev(s.mask),
            entropy=entropy, old_entropy=self._dev(s.entropy), proxy_logp=self._dev(s.proxy_logp),
            step_entropy=ctx.step_entropy, rollout_logp=self._dev(s.rollout_logp), kl_scale=self._dev(s.kl_scale),
            **kwargs,
        )

    def _prepare(self, mb: LearnerShard, obj: Objective, ctx: StepContext, gen: torch.Generator, reuse_old: bool):
        """Global selections and denominators of one mini-batch (see the module docstring)."""
        logp, entropy = mb.old_logp, mb.entropy
        if logp is None:  # fused π_old: no global decision reads π_θ here, only the denominators
            logp = torch.zeros_like(mb.mask)
        if obj.needs_policy_prepass and not reuse_old:
            fresh = self._forward(mb, policy_only=True)
            logp, entropy = fresh.old_logp, fresh.entropy
        inp = self._inputs(mb, self._dev(logp), self._dev(entropy), ctx, reducer=self.reducer, generator=gen)
        return prepare_minibatch(inp, obj)

    # ---- weights ------------------------------------------------------------------------
    def sync_specs(self) -> list[weight_sync.ParamSpec]:
        """The weight-sync plan's parameters as this rank sends them (full shapes under ZeRO-3)."""
        return weight_sync.param_specs(iter(self.strategy.module.named_parameters()), weight_sync.full_shape)

    def join_sync_group(self, host: str, port: int, world: int, backend: str, bucket_bytes: int) -> None:
        """Rank 0 joins the weight-sync group as its rank 0; other ranks only plan the gathers."""
        self.plan = weight_sync.SyncPlan.build(self.sync_specs(), bucket_bytes)
        if self.is_main:
            self.sync_group = weight_sync.init_sync_group(host, port, 0, world, backend)

    def send_weights(self) -> int:
        params = dict(self.strategy.module.named_parameters())
        return weight_sync.send_weights(self.sync_group, params, self.plan, self.strategy.gather)

    @torch.no_grad()
    def score(self, shard: LearnerShard) -> torch.Tensor:
        return self.forward(shard).old_logp

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, path: str, tag: str, client_state: dict) -> None:
        self.strategy.save(path, tag, client_state)

    def load(self, path: str, tag: str) -> dict:
        return self.strategy.load(path, tag)

    def export_pretrained(self, path: str) -> None:
        """``save_pretrained`` of the full policy (gathered under ZeRO-3), written by rank 0."""
        module = self.strategy.module
        params = list(module.parameters())
        with self.strategy.gather(params):
            if self.is_main:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                module.save_pretrained(path, state_dict=state)

    # ---- helpers ------------------------------------------------------------------------
    def _micro_batches(self, shard: LearnerShard) -> list[torch.Tensor]:
        """Row indices of this rank's micro-batches (see :mod:`entropo.trainer.micro_batches`);
        every rank runs as many as the rank with the most."""
        groups = self._cut(shard, torch.arange(len(shard)))
        if self.cfg.learner.micro_batch_tokens is None:
            return groups
        counts, _ = self.reducer.gather(self._dev(torch.tensor([float(len(groups))])))
        return micro_batches.split_to(groups, int(counts.max().item()))

    def _cut(self, shard: LearnerShard, rows: torch.Tensor) -> list[torch.Tensor]:
        """Micro-batches of the shard's ``rows``, as positions into ``rows``."""
        learner = self.cfg.learner
        if learner.micro_batch_tokens is None:
            return micro_batches.fixed_size(len(rows), learner.micro_batch_size)
        return micro_batches.token_budget(shard.prompt_mask[rows].sum(-1), shard.mask[rows].sum(-1),
                                          learner.micro_batch_tokens)

    def _plan(self, mb: LearnerShard, obj: Objective, ctx: StepContext,
              prepared: Prepared) -> list[micro_batches.MicroBatch]:
        """This mini-batch's forwards: every row with a backward, or, where it is exact
        (``learner.skip_zero_advantage``), rows with no advantage in no-grad forwards only."""
        plan = None
        if (self.cfg.learner.skip_zero_advantage and obj.inert_at_zero_advantage and not ctx.entropy_coef
                and prepared.norm is not None):
            inert = ((mb.advantages * mb.mask) == 0).all(-1)
            plan = micro_batches.with_inert_rows(lambda rows: self._cut(mb, rows), inert,
                                                 micro_batches.max_over_ranks(self.reducer, self.device),
                                                 match_forwards=self.strategy.zero_stage == 3)
        return plan or [micro_batches.MicroBatch(rows) for rows in self._micro_batches(mb)]

    def _dev(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(self.device)


class RowParts:
    """Per-token outputs of micro-batches put back into row order at the shard's width."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, rows: torch.Tensor, values: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        self.rows.append(rows)
        for key, v in values.items():
            v = torch.nn.functional.pad((v.detach() * mask).cpu(), (0, self.width - v.shape[1]))
            self.parts.setdefault(key, []).append(v)

    def result(self) -> dict[str, torch.Tensor]:
        back = torch.argsort(torch.cat(self.rows))  # micro-batch order -> row order
        return {k: torch.cat(v)[back] for k, v in self.parts.items()}


@dataclass
class _Update:
    """What every micro-batch of one update shares."""

    obj: Objective
    ctx: StepContext
    extras: dict  # per-token functions of the logits, computed with gradient
    sums: MetricSums
    outputs: RowParts | None  # the fused π_old pass's outputs, in row order


class MetricSums:
    """Weighted sums of metric tensors over the micro-batches of an update, kept as tensors so
    that reading them costs one device sync per update (:meth:`reduce`), not one per metric.

    A metric in ``shares`` is each micro-batch's share of the mini-batch value: its shares are
    summed (then averaged over optimizer steps). Any other metric is a mean weighted by the
    given weight (valid tokens, rows). Every rank must hold the same keys for the one
    all-reduce: a non-finite value (e.g. the threshold of an empty selection) enters with zero
    weight.
    """

    def __init__(self, shares: frozenset[str], device: torch.device) -> None:
        self.shares = shares
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, torch.Tensor], weight: float) -> None:
        """Add each metric ``v`` as ``v·weight`` (a share: ``v``, weight 0)."""
        for key, v in metrics.items():
            v = torch.as_tensor(v).detach().to(self.device, torch.float64).reshape(())
            finite = torch.isfinite(v)
            share = key in self.shares
            value = torch.where(finite, v if share else v * weight, torch.zeros_like(v))
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.weights[key] = self.weights.get(key, 0.0) + finite.to(torch.float64) * (0.0 if share else weight)

    def reduce(self, reducer, n_updates: int) -> dict[str, float]:
        """Every metric over all ranks: one all-reduce and one read of the results."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        packed = torch.stack([torch.stack([self.sums[k], self.weights[k]]) for k in keys])  # [K, 2]
        totals = reducer.sum(packed).tolist()
        out = {}
        for key, (total, weight) in zip(keys, totals):
            if key in self.shares:
                out[key] = total / max(n_updates, 1)
            else:
                out[key] = total / weight if weight > 0 else float("nan")
        return out
