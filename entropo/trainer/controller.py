"""The step loop: prompts → rollout → learner forward → rewards → advantages (+ dynamic
sampling) → update → weight sync → metrics → checkpoint.

The controller owns the loop and the data; the actors own the models, and actors never call
each other. Methods with running state across steps keep it behind their own hooks
(:mod:`entropo.algorithms.stateful`): the controller holds ``{name: state}``, calls the hooks
at fixed points of the step and saves the states in checkpoints; no method is named here.

Two ways the loop saves time, both off by nothing but their config:

- fused π_old (``learner.fuse_old_forward``, on by default where exact, see
  :func:`old_pass_fused`): no separate learner forward; the update's own forward supplies
  π_old and the entropies, which are put on the batch after the update.
- asynchronous rollout (``trainer.async_rollout``, :mod:`entropo.trainer.ahead`): the next
  step's generation runs while this step trains; the weights reach the rollout workers at
  the start of the next step, once they are idle. Before evaluation and at the end the
  pending generation is awaited and the weights synced (:meth:`Controller.settle`).
  Sampling-stage state read at launch (an adaptive temperature's statistics) is one step
  older than in the synchronous mode; extra generation batches (dynamic sampling, a method's
  injected rows) queue behind the pending generation on the rollout workers.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from entropo.algorithms import diagnostics
from entropo.algorithms.advantages import broadcast_to_tokens
from entropo.algorithms.dynamic_sampling import (
    dynamic_sampling_metrics,
    group_keep_mask,
    need_more_batches,
    select_groups,
)
from entropo.algorithms.objective import StepContext
from entropo.algorithms.overlong import filter_truncated
from entropo.algorithms.registry import ADVANTAGE_RESHAPERS, ADVANTAGES
from entropo.config import TrainConfig, to_yaml
from entropo.trainer import step_metrics
from entropo.trainer.ahead import RolloutAhead
from entropo.trainer.batch import LearnerShard, StepBatch
from entropo.trainer.checkpoint import (
    CheckpointError,
    Checkpoints,
    CheckpointWriteError,
    load_controller,
    save_controller,
)
from entropo.trainer.engine import SamplingParams
from entropo.trainer.errors import LearnerLostError, check_update_finite
from entropo.trainer.methods import StepMethods
from entropo.trainer.passes import old_pass_fused
from entropo.trainer.scoring import Scorer
from entropo.trainer.step_metrics import Timer


@dataclass
class ControllerState:
    """The controller's own state, saved in checkpoints."""

    step: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {"cov": [], "entropy": []})
    accuracy_start: float | None = None
    accuracy_end: float | None = None
    entropy_start: float | None = None
    entropy_end: float | None = None
    probe: dict[str, torch.Tensor] | None = None  # fixed responses and their initial entropies (forking analysis)
    reward_errors: float = 0.0  # Σ reward/errors over the steps so far, for the summary


class Controller:
    """Drives a :class:`~entropo.trainer.cluster.Cluster` of actors through training."""

    def __init__(self, cfg: TrainConfig, cluster, sampler, tokenizer, rewards, sinks,
                 eval_rows: list | None = None) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.rewards = rewards  # a RewardManager
        self.sinks = sinks
        self.methods = StepMethods(cfg)  # the stateful methods and their states
        self.scorer = Scorer(cfg, rewards, tokenizer)
        self.state = ControllerState()
        self.run_dir = Path(cfg.trainer.output_dir)
        self.checkpoints = Checkpoints(self.run_dir / "checkpoints")
        self.eval_rows = eval_rows or []
        self.fused = rewards is not None and old_pass_fused(cfg, rewards.reads_policy)
        self.close_id = step_metrics.think_close_id(tokenizer)
        score_ahead = self.fused and not cfg.algorithm.dynamic_sampling.enable
        self.ahead = RolloutAhead(lambda prompts, params: cluster.rollout(prompts, params, tokenizer), sampler,
                                  (lambda b, step: self.scorer.score(b, step)) if score_ahead else None,
                                  ) if cfg.trainer.async_rollout else None
        self._ahead_rewards: dict[str, float] | None = None  # the taken batch's reward metrics, when scored ahead

    # ---- the step -----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        step = self.state.step + 1
        t = Timer()
        with t("step"):
            batch, gen_metrics = self.collect(step, t)          # rollout, forward, rewards, filtering
            gen_metrics.update(self.methods.shape(batch, step))   # reward shaping by stateful methods
            with t("advantage"):
                batch, adv_metrics = self.advantages(batch)
            batch, inject_metrics = self.methods.inject(           # rows added by stateful methods
                batch, step, partial(self.generate_extra, step), t)
            with t("update"):
                ctx = self.step_context(batch, step)
                update_metrics = self.cluster.update(self.minibatches(batch), ctx, fill=batch if self.fused else None)
            check_update_finite(step, update_metrics, self.cfg.learner.lr)  # before any sync or save
            if self.ahead is None:
                with t("sync"):
                    self.cluster.sync_weights(step)
            if self.cfg.logger.forking_every and self.state.probe is None:
                self.state.probe = step_metrics.probe_of(batch, self.cfg.logger.forking_probe)
        self.state.step = step
        self.last_batch = batch
        metrics = {**gen_metrics, **adv_metrics, **inject_metrics, **update_metrics,
                   **step_metrics.batch_metrics(batch, self.close_id)}
        metrics.update(self.cluster.metrics())  # e.g. rollout/worker_restarts
        metrics.update(self.observe(metrics, step))
        metrics["rollout/off_policy_steps"] = float(step - 1 - batch.weight_version)
        metrics.update({f"timing/{k}": v for k, v in t.seconds.items()})
        metrics["perf/tokens_per_s"] = float(batch.mask.sum()) / max(t.seconds["step"], 1e-9)
        return metrics

    # ---- stages -------------------------------------------------------------------------
    def collect(self, step: int, t: Timer) -> tuple[StepBatch, dict[str, float]]:
        """Generate, score and (with dynamic sampling) filter until the batch is full."""
        ds = self.cfg.algorithm.dynamic_sampling
        target = self.cfg.trainer.prompts_per_step
        kept: list[StepBatch] = []
        n_kept = n_gen = 0
        metrics: dict[str, float] = {}
        sampling: dict[str, list[float]] = {}
        while True:
            n_gen += 1
            batch = self.generate(step, n_gen, t)
            if not self.fused:
                with t("forward"):
                    self.cluster.forward(batch, self.methods.forward_extras())
            with t("reward"):
                scored, self._ahead_rewards = self._ahead_rewards, None
                metrics.update(scored if scored is not None else self.scorer.score(batch, step))
            if not ds.enable:
                return batch, metrics
            # group ids restart at 0 in every generation batch: make them unique across batches
            batch.group_ids = batch.group_ids + (n_gen - 1) * target
            metric = batch.correct if ds.metric == "acc" else batch.rewards
            keep = group_keep_mask(metric, batch.group_ids)
            for k, v in dynamic_sampling_metrics(metric, batch.group_ids, keep).items():
                sampling.setdefault(k, []).append(float(v))
            kept.append(batch.select(torch.nonzero(keep).flatten()))
            n_kept += len(torch.unique(batch.group_ids[keep]))
            if not need_more_batches(n_kept, target, n_gen, ds):
                break
        merged = StepBatch.concat(kept)
        rows = select_groups(merged.group_ids, torch.ones(len(merged), dtype=torch.bool), target)
        metrics.update({k: sum(v) / len(v) for k, v in sampling.items()})
        metrics["sampling/num_gen_batches"] = float(n_gen)
        return merged.select(rows), metrics

    def generate(self, step: int, attempt: int, t: Timer) -> StepBatch:
        """Generation batch ``attempt`` of ``step``: the one generated ahead (async mode), or a
        fresh draw. In async mode the next step's generation starts here."""
        if attempt == 1 and self.ahead is not None and self.ahead.pending:
            with t("rollout"):  # only the part not hidden behind the previous step
                batch, seconds, self._ahead_rewards, reward_seconds = self.ahead.take()
            t.seconds["rollout_ahead"] = seconds
            if self._ahead_rewards is not None:
                t.seconds["reward_ahead"] = reward_seconds
        else:
            prompts = self.sampler.next_batch()
            with t("rollout"):
                batch = self.cluster.rollout(prompts, self.sampling(step, attempt), self.tokenizer)
        if self.ahead is not None and attempt == 1:
            with t("sync"):
                self.sync_if_stale()
            if step < self.cfg.trainer.total_steps:
                self.ahead.start(step + 1, self.sampling(step + 1, 1))
        return batch

    def sync_if_stale(self) -> None:
        """Push the learner's weights to the rollout workers if they hold older ones (async
        mode, with no generation in flight)."""
        if self.cluster.weight_version < self.state.step:
            self.cluster.sync_weights(self.state.step)

    def settle(self) -> None:
        """Async mode: wait for the generation in flight (its batch is kept for the next step)
        and sync the weights, so that the rollout workers hold the current policy."""
        if self.ahead is not None:
            self.ahead.wait()
            self.sync_if_stale()

    def sampling(self, step: int, attempt: int) -> SamplingParams:
        """The rollout's sampling parameters; a sampling method may scale the logits per token."""
        r = self.cfg.rollout
        return SamplingParams(
            n=r.n, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
            stop=tuple(r.stop), seed=self.cfg.trainer.seed * 1_000_003 + step * 101 + attempt,
            logit_scale=self.methods.logit_scale(step),
        )

    def advantages(self, batch: StepBatch) -> tuple[StepBatch, dict[str, float]]:
        """The estimator (docs/algorithms.md §4), then at most one reshaper (§4.3), broadcast to tokens."""
        a = self.cfg.algorithm
        if a.overlong.filter_truncated:
            batch.mask = filter_truncated(batch.mask, batch.truncated)
        entry = ADVANTAGES.get(a.advantage)
        cfg = getattr(a, a.advantage, None) if entry.config_cls else None
        adv, metrics = entry.fn(batch.rewards, batch.group_ids, cfg, mask=batch.mask, entropy=batch.entropy)
        if entry.token_scale is not None:
            adv = adv * entry.token_scale(a.loss_agg_mode, self.cfg.rollout.max_new_tokens)
        if a.advantage_reshaper is not None:
            reshaper = ADVANTAGE_RESHAPERS.get(a.advantage_reshaper)
            adv, m = reshaper.fn(adv, batch.group_ids, getattr(a, a.advantage_reshaper), mask=batch.mask,
                                 entropy=batch.entropy, cluster_ids=batch.cluster_ids)
            metrics.update(m)
        batch.advantages = broadcast_to_tokens(adv, batch.mask)
        return batch, {k: float(v) for k, v in metrics.items()}

    def generate_extra(self, step: int, rows: list, temperature: float, seed: int) -> StepBatch:
        """A stateful method's extra generation: rollout at ``temperature``, π_old pass (at the
        rollout temperature) and rewards."""
        params = dataclasses.replace(self.sampling(step, attempt=0), temperature=temperature, seed=seed)
        extra = self.cluster.rollout(rows, params, self.tokenizer)
        self.cluster.forward(extra)
        self.scorer.score(extra, step)
        return extra

    def step_context(self, batch: StepBatch, step: int) -> StepContext:
        """Step-level inputs of the objective: the step's π_old entropy and the stateful
        methods' values (their ``context`` hooks update their state from this batch)."""
        # None when π_old comes from the update itself (fused): then no method reads it
        h = None if batch.entropy is None else float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp(min=1))
        return StepContext(step=step, step_entropy=h, values=self.methods.context(batch, step))

    def observe(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """Running state after the update: the ΔH-vs-Cov fit, then the stateful methods'."""
        h = self.state.history
        h["cov"].append(metrics.get("cov/mean", float("nan")))
        h["entropy"].append(metrics["entropy/mean"])
        for key in h:  # the fit reads the last FIT_WINDOW steps; older ones are never used
            del h[key][:-diagnostics.FIT_WINDOW - 1]
        fit = diagnostics.fit_entropy_change(h["cov"], h["entropy"], window=diagnostics.FIT_WINDOW)
        return {**{k: float(v) for k, v in fit.items()}, **self.methods.observe(metrics, step)}

    def minibatches(self, batch: StepBatch) -> list[list[LearnerShard]]:
        """Mini-batches of whole groups, each split evenly across learner ranks: ``[mb][rank]``."""
        per_mb = (self.cfg.learner.mini_batch_prompts or self.cfg.trainer.prompts_per_step) * self.cfg.rollout.n
        ranks = self.cfg.learner.ranks
        out = []
        for start in range(0, len(batch), per_mb):
            mb = batch.select(slice(start, start + per_mb))
            if len(mb) % ranks:
                raise ValueError(
                    f"a mini-batch of {len(mb)} responses cannot be split evenly over learner.ranks={ranks}"
                )
            k = len(mb) // ranks
            out.append([LearnerShard.of(mb.select(slice(r * k, (r + 1) * k))) for r in range(ranks)])
        return out

    # ---- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> Path:
        """An atomic checkpoint of the learner, the policy export and the controller state.

        Raises:
            CheckpointWriteError: a write failed (a full disk, an I/O error; a learner rank's
                error comes through Ray as its own type); the partial save is left for the
                caller to remove once no learner rank writes to it.
        """
        step = self.state.step
        try:
            tmp = self.checkpoints.begin(step)
            self.cluster.save(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "hf")
            # a generation in flight (async mode) is not saved: a resumed run draws its prompts again
            pending = self.ahead is not None and self.ahead.pending
            sampler = self.ahead.sampler_state if pending else self.sampler.state_dict()
            save_controller(tmp, {"state": dataclasses.asdict(self.state), "methods": self.methods.state_dict(),
                                  "sampler": sampler})
            return self.checkpoints.commit(tmp, step, self.cfg.trainer.keep_checkpoints)
        except LearnerLostError:
            raise
        except (OSError, RuntimeError) as e:  # this save did not commit: the complete ones are the earlier ones
            last = self.checkpoints.complete()
            raise CheckpointWriteError(step, self.checkpoints.partial(step), last[-1] if last else None, e) from e

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint: learner state, controller state, data position, and
        the rollout workers' weights (synced from the restored learner)."""
        saved = load_controller(path)
        state = dict(saved["state"])
        unknown = sorted(set(state) - {f.name for f in dataclasses.fields(ControllerState)})
        if unknown:
            raise CheckpointError(f"{path / 'controller.pt'}: controller state with fields this version of entropo "
                                  f"does not keep ({', '.join(unknown)}); resume it with the version that wrote it")
        self.cluster.load(path)
        self.state = ControllerState(**state)
        self.methods.load_state_dict(saved.get("methods", {}))
        self.sampler.load_state_dict(saved["sampler"])
        self.cluster.sync_weights(self.state.step)

    # ---- dashboards -----------------------------------------------------------------------
    def forking_tokens(self, step: int, batch: StepBatch) -> dict[str, float]:
        """The forking-token analysis (:func:`step_metrics.forking_tokens`); its table goes to the sinks."""
        tok = self.tokenizer
        decode = tok.decode if tok is not None else (lambda ids: str(ids[0]))
        out, table = step_metrics.forking_tokens(batch, self.state.probe, self.cluster.forward, decode)
        self.sinks.log_table(step, "forking_tokens", ["token", "count", "share"], table)
        return out

    def log_samples(self, step: int, batch: StepBatch) -> None:
        """A table of completions and the token-entropy histogram, for the dashboards."""
        self.sinks.log_histogram(step, "entropy/tokens", batch.entropy[batch.mask.bool()].float().numpy())
        self.sinks.log_table(step, "samples", ["prompt", "response", "reward", "mean_entropy"],
                             step_metrics.sample_rows(batch, self.tokenizer, self.cfg.logger.samples))

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        from entropo.trainer.evaluation import evaluate

        t0 = time.perf_counter()
        metrics = evaluate(self.cfg, self.cluster, self.eval_rows, self.tokenizer,
                           partial(self.scorer.correctness, step=self.state.step))
        metrics["timing/eval"] = time.perf_counter() - t0
        return metrics

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg = self.cfg.trainer
        every = self.cfg.evaluation.every
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))
        if self.eval_rows and self.state.step == 0:
            first = self.evaluate()
            self.state.accuracy_start = first["eval/pass@1"]
            self.sinks.log(0, first)
        last: dict[str, float] = {}
        while self.state.step < cfg.total_steps:
            last = self.train_step()
            step = self.state.step
            if self.state.entropy_start is None:
                self.state.entropy_start = last["entropy/mean"]
            self.state.entropy_end = last["entropy/mean"]
            self.state.reward_errors += last.get("reward/errors", 0.0)
            final = step == cfg.total_steps
            if self.eval_rows and (final or (every and step % every == 0)):
                self.settle()
                last.update(self.evaluate())
                self.state.accuracy_end = last["eval/pass@1"]
            fork_every = self.cfg.logger.forking_every
            if fork_every and step % fork_every == 0:
                last.update(self.forking_tokens(step, self.last_batch))
            self.sinks.log(step, last)
            samples_every = self.cfg.logger.samples_every
            if samples_every and (step % samples_every == 0 or step == 1):
                self.log_samples(step, self.last_batch)
            if final or (cfg.save_every and step % cfg.save_every == 0):
                self.checkpoint()
        self.settle()
        return last


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
