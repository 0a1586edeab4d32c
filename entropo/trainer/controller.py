"""The step loop: prompts → rollout → learner forward → rewards → advantages (+ dynamic
sampling) → update → weight sync → metrics → checkpoint.

The controller owns the loop, the data and the algorithm's running state (adaptive
coefficients); the actors own the models. Actors never call each other.

Two ways the loop saves time, both off by nothing but their config:

- fused π_old (``learner.fuse_old_forward``, on by default where exact, see
  :func:`old_pass_fused`): no separate learner forward; the update's own forward supplies
  π_old and the entropies, which are put on the batch after the update.
- asynchronous rollout (``trainer.async_rollout``): right after a step's batch arrives, the
  next step's prompts are drawn and generated in a background thread while this step's
  forward, rewards and update run; the weights reach the rollout workers at the start of the
  next step, once they are idle. Each batch is therefore sampled by the policy one update
  behind the one it is trained from (``rollout/off_policy_steps`` = 1); ``algorithm.
  token_weight=[tis]`` corrects for it. Before evaluation and at the end the pending
  generation is awaited and the weights synced (:meth:`Controller.settle`); a checkpoint
  stores the data position before the pending draw, so a resumed run draws it again.
  Sampling-stage state read at launch (HAPO's adaptive-temperature statistics) is one step
  older than in the synchronous mode; extra generation batches (dynamic sampling, AEPO)
  queue behind the pending generation on the rollout workers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from entropo.algorithms import diagnostics
from entropo.algorithms.advantages import broadcast_to_tokens
from entropo.algorithms.aepo import (
    AEPO_INITIAL_ENTROPY,
    aepo_mix,
    aepo_num_injected,
    aepo_num_prompts,
    aepo_temperature,
)
from entropo.algorithms.ares import AresState, ares_step, sequence_kl
from entropo.algorithms.canon import canon_token_scale
from entropo.algorithms.dynamic_sampling import (
    dynamic_sampling_metrics,
    group_keep_mask,
    need_more_batches,
    select_groups,
)
from entropo.algorithms.hapo import entropy_h_hat
from entropo.algorithms.masks import top_count
from entropo.algorithms.objective import StepContext
from entropo.algorithms.overlong import filter_truncated, overlong_metrics, overlong_penalty
from entropo.algorithms.registry import ADVANTAGE_RESHAPERS, ADVANTAGES
from entropo.algorithms.regularizers import adaptive_entropy_coef
from entropo.algorithms.select import top_k_mask
from entropo.algorithms.siren import siren_anchor
from entropo.config import TrainConfig, to_yaml
from entropo.data.prompts import render_prompt
from entropo.rewards.manager import check_failures
from entropo.trainer.batch import StepBatch
from entropo.trainer.checkpoint import Checkpoints, load_controller, save_controller
from entropo.trainer.evaluation import answer_key
from entropo.trainer.learner import LearnerShard
from entropo.trainer.rollout import SamplingParams

FORK_RHO = 0.2  # spec D4: the top 20% of tokens by entropy are the "forking" tokens
FORK_TOP_TOKENS = 50  # spec D4: the 50 most frequent forking tokens
FIT_WINDOW = 20  # spec D2: trailing window of the ΔH-vs-Ĉ fit
PLAIN_ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "qae")  # read rewards only
# built-in rewards that never read Sample.entropy / Sample.old_logp
POLICY_FREE_REWARDS = ("math", "countdown", "embedded", "format", "code", "random")


# The update's metrics that must be finite, in the order they are reported; a NaN loss makes
# NaN gradients, and NaN gradients make NaN weights.
FINITE_UPDATE_METRICS = ("actor/pg_loss", "actor/grad_norm")


class NonFiniteUpdateError(RuntimeError):
    """An update made the loss, the gradient or the weights NaN/inf (before any sync or save)."""


def check_update_finite(step: int, metrics: dict[str, float], lr: float) -> None:
    """Raise :class:`NonFiniteUpdateError` naming the step and the first non-finite value.

    Args:
        step: the step whose update produced ``metrics``.
        metrics: ``Cluster.update``'s metrics.
        lr: ``learner.lr``, for the message.
    """
    bad = [(k, metrics[k]) for k in FINITE_UPDATE_METRICS if k in metrics and not math.isfinite(metrics[k])]
    ranks = metrics.get("actor/nonfinite_param_ranks", 0.0)
    if not bad and not ranks:
        return
    what = f"{bad[0][0]}={bad[0][1]}" if bad else f"NaN/inf weights on {ranks:g} learner rank(s)"
    raise NonFiniteUpdateError(
        f"step {step}: the update gave {what}; these weights were neither synced to the rollout "
        f"workers nor checkpointed, and the last complete checkpoint is intact. Lower learner.lr "
        f"(now {lr:g}) or check the rewards and data, then resume with trainer.resume=auto")


def old_pass_fused(cfg: TrainConfig, reward_targets: list[str]) -> bool:
    """Whether the π_old pass can be the update's own forward (``learner.fuse_old_forward``):
    π_old must equal π_θ at that forward (one epoch of one mini-batch) and nothing before
    the update may read π_old or π_ref (``reward_targets``: the reward functions' targets)."""
    a, learner = cfg.algorithm, cfg.learner
    obj = cfg.objective()
    one_update = learner.ppo_epochs == 1 and learner.mini_batch_prompts in (None, cfg.trainer.prompts_per_step)
    return (learner.fuse_old_forward and one_update and a.kl_coef == 0
            and a.advantage in PLAIN_ADVANTAGES and a.advantage_reshaper is None
            and not (a.sampling or a.regularizer or a.adaptive_entropy or a.ares.enable)
            and "dmmpt" not in a.token_mask  # its gate reads the step's π_old entropy
            and not obj.needs_policy_prepass and not (obj.needs - {"entropy", "rollout_logp"})
            and all(t in POLICY_FREE_REWARDS for t in reward_targets))


@dataclass
class ControllerState:
    """The controller's own state, saved in checkpoints."""

    step: int = 0
    entropy_coef: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: {"cov": [], "entropy": []})
    accuracy_start: float | None = None
    accuracy_end: float | None = None
    entropy_start: float | None = None
    entropy_end: float | None = None
    siren_anchor: float | None = None  # SIREN's H_anc, fixed at step 1 (spec G2)
    epo_count: int = 0  # EPO's cumulative mean of step entropies (spec G3)
    epo_total: float = 0.0
    hapo_stats: tuple[float, float, float, float] | None = None  # S2: (μ, σ, s⁺, s⁻) of the last step
    aepo_entropy: float = AEPO_INITIAL_ENTROPY  # S3/G4: Ĥ of the last update
    ares: dict | None = None  # ARES's α_b, β_b, τ and EMAs (AresState.as_dict()), after the last step
    probe: dict[str, torch.Tensor] | None = None  # D4: fixed responses and their initial entropies
    reward_errors: float = 0.0  # Σ reward/errors over the steps so far, for the summary


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


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
        self.state = ControllerState(entropy_coef=cfg.algorithm.entropy_coef)
        self.run_dir = Path(cfg.trainer.output_dir)
        self.checkpoints = Checkpoints(self.run_dir / "checkpoints", cfg.trainer.keep_checkpoints)
        self.eval_rows = eval_rows or []
        targets = [s.target for s in getattr(rewards, "specs", [])]
        self.fused = rewards is not None and old_pass_fused(cfg, targets)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead") if cfg.trainer.async_rollout else None
        self._ahead: Future | None = None  # the next step's generation, in flight
        self._ahead_rewards: dict[str, float] | None = None  # its reward metrics, when scored there
        self._ahead_sampler_state: dict | None = None  # data position before its draw

    # ---- the step -----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        step = self.state.step + 1
        t = Timer()
        with t("step"):
            batch, gen_metrics = self.collect(step, t)          # rollout, forward, rewards, filtering
            if self.cfg.algorithm.ares.enable:                    # ARES: HWE reward term, per-bucket KL β
                gen_metrics.update(self.ares_shape(batch))
            with t("advantage"):
                batch, adv_metrics = self.advantages(batch)
            if "aepo" in self.cfg.algorithm.sampling:
                with t("aepo"):
                    batch, aepo_metrics = self.aepo_inject(batch, step)
                adv_metrics.update(aepo_metrics)
            with t("update"):
                ctx = self.step_context(batch, step)
                update_metrics = self.cluster.update(self.minibatches(batch), ctx, fill=batch if self.fused else None)
            check_update_finite(step, update_metrics, self.cfg.learner.lr)  # before any sync or save
            if self._pool is None:
                with t("sync"):
                    self.cluster.sync_weights(step)
            self.keep_probe(batch)
        self.state.step = step
        self.last_batch = batch
        metrics = {**gen_metrics, **adv_metrics, **update_metrics, **self.batch_metrics(batch)}
        metrics.update(self.cluster.metrics())  # e.g. rollout/worker_restarts
        metrics.update(self.adapt(metrics))
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
                    self.cluster.forward(batch, self.forward_extras())
            with t("reward"):
                scored, self._ahead_rewards = self._ahead_rewards, None
                metrics.update(scored if scored is not None else self.score(batch, step))
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
        if attempt == 1 and self._ahead is not None:
            with t("rollout"):  # only the part not hidden behind the previous step
                batch, seconds, self._ahead_rewards, reward_seconds = self._ahead.result()
            self._ahead = None
            t.seconds["rollout_ahead"] = seconds
            if self._ahead_rewards is not None:
                t.seconds["reward_ahead"] = reward_seconds
        else:
            prompts = self.sampler.next_batch()
            with t("rollout"):
                batch = self.cluster.rollout(prompts, self.sampling(step, attempt), self.tokenizer)
        if self._pool is not None and attempt == 1:
            with t("sync"):
                self.sync_if_stale()
            if step < self.cfg.trainer.total_steps:
                self.start_ahead(step + 1)
        return batch

    def start_ahead(self, step: int) -> None:
        """Draw ``step``'s prompts now and generate them in the background; score them there
        too when no reward reads π_old (the fused π_old pass guarantees it) and no dynamic
        sampling decides on more batches, so that slow rewards overlap the update as well."""
        self._ahead_sampler_state = self.sampler.state_dict()
        prompts = self.sampler.next_batch()
        params = self.sampling(step, 1)
        score = self.fused and not self.cfg.algorithm.dynamic_sampling.enable

        def run() -> tuple[StepBatch, float, dict[str, float] | None, float]:
            start = time.perf_counter()
            batch = self.cluster.rollout(prompts, params, self.tokenizer)
            seconds = time.perf_counter() - start
            if not score:
                return batch, seconds, None, 0.0
            start = time.perf_counter()
            metrics = self.score(batch, step)
            return batch, seconds, metrics, time.perf_counter() - start

        self._ahead = self._pool.submit(run)

    def sync_if_stale(self) -> None:
        """Push the learner's weights to the rollout workers if they hold older ones (async
        mode, with no generation in flight)."""
        if self.cluster.weight_version < self.state.step:
            self.cluster.sync_weights(self.state.step)

    def settle(self) -> None:
        """Async mode: wait for the generation in flight (its batch is kept for the next step)
        and sync the weights, so that the rollout workers hold the current policy."""
        if self._pool is None:
            return
        if self._ahead is not None:
            self._ahead.result()  # waits; the finished future keeps the batch for the next step
        self.sync_if_stale()

    def sampling(self, step: int, attempt: int) -> SamplingParams:
        r, a = self.cfg.rollout, self.cfg.algorithm
        adaptive = None
        if "hapo_temperature" in a.sampling and self.state.hapo_stats is not None:
            h = a.hapo_temperature
            adaptive = (h.tau, h.code_compat, *self.state.hapo_stats)
        return SamplingParams(
            n=r.n, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
            stop=tuple(r.stop), seed=self.cfg.trainer.seed * 1_000_003 + step * 101 + attempt,
            hapo_temperature=adaptive,
        )

    def forward_extras(self) -> frozenset[str]:
        """Extra π_old quantities this step needs (SIREN's anchor is measured at step 1)."""
        a = self.cfg.algorithm
        out = {"topk_entropy"} if a.ares.enable and a.ares.entropy == "topk" else set()
        if "siren" in a.regularizer and self.state.siren_anchor is None:
            out.add("topp_entropy")
        return frozenset(out)

    def samples(self, batch: StepBatch, step: int, is_eval: bool = False) -> list:
        """One reward-function input per response (π_old statistics when the batch has them)."""
        from entropo.rewards.api import Sample, TrainerState

        state = TrainerState(global_step=step, max_steps=self.cfg.trainer.total_steps, is_eval=is_eval)
        rendered: dict[int, str] = {}  # a group's n responses share one row: template it once
        out = []
        for i, (text, ids, m, row, g) in enumerate(zip(
            batch.response_text, batch.response_ids, batch.mask, batch.rows, batch.group_ids
        )):
            valid = m.bool()
            if id(row) not in rendered:
                rendered[id(row)] = render_prompt(row, self.tokenizer)
            out.append(Sample(
                prompt=rendered[id(row)],
                response=text, response_ids=ids[valid].tolist(), ground_truth=row.ground_truth,
                data_source=row.data_source, extra_info=row.extra_info, group=int(g),
                entropy=None if batch.entropy is None else batch.entropy[i][valid],
                old_logp=None if batch.old_logp is None else batch.old_logp[i][valid],
                messages=None if isinstance(row.prompt, str) else row.prompt, columns=row.columns,
                trainer_state=state,
            ))
        return out

    def correctness(self, batch: StepBatch) -> tuple[torch.Tensor, float]:
        """Plain correctness ``[N]`` for evaluation (``reward.correct_threshold``) and the share of
        reward calls that fell back; stops the run like a training step when a reward function
        fails on most samples."""
        res = self.rewards.score(self.samples(batch, self.state.step, is_eval=True))
        check_failures(res, self.cfg.reward.max_error_frac, "the evaluation")
        return res.correct, res.metrics["reward/error_frac"]

    def score(self, batch: StepBatch, step: int) -> dict[str, float]:
        res = self.rewards.score(self.samples(batch, step))
        check_failures(res, self.cfg.reward.max_error_frac, f"step {step}")
        rewards, comps, correct, metrics = res.rewards, dict(res.components), res.correct, dict(res.metrics)
        ov = self.cfg.algorithm.overlong
        if ov.enable:
            lengths = batch.response_lengths
            r_len = overlong_penalty(lengths, self.cfg.rollout.max_new_tokens, ov)
            comps["overlong"] = r_len
            rewards = rewards + r_len
            metrics.update({k: float(v) for k, v in overlong_metrics(
                lengths, self.cfg.rollout.max_new_tokens, ov, batch.truncated).items()})
        batch.rewards, batch.reward_components, batch.correct = rewards, comps, correct
        clusters = res.cluster_ids
        if clusters is None or bool((clusters < 0).any()):
            clusters = answer_clusters(batch.group_ids, [answer_key(t) for t in batch.response_text])
        batch.cluster_ids = clusters
        return metrics

    def advantages(self, batch: StepBatch) -> tuple[StepBatch, dict[str, float]]:
        """The estimator (spec A1-A4), then at most one reshaper (A5/A6), broadcast to tokens."""
        a = self.cfg.algorithm
        if a.overlong.filter_truncated:
            batch.mask = filter_truncated(batch.mask, batch.truncated)
        entry = ADVANTAGES.get(a.advantage)
        cfg = getattr(a, a.advantage, None) if entry.config_cls else None
        adv, metrics = entry.fn(batch.rewards, batch.group_ids, cfg, mask=batch.mask, entropy=batch.entropy)
        if a.advantage == "canon":
            adv = adv * canon_token_scale(a.loss_agg_mode, self.cfg.rollout.max_new_tokens)
        if a.advantage_reshaper is not None:
            reshaper = ADVANTAGE_RESHAPERS.get(a.advantage_reshaper)
            adv, m = reshaper.fn(adv, batch.group_ids, getattr(a, a.advantage_reshaper), mask=batch.mask,
                                 entropy=batch.entropy, cluster_ids=batch.cluster_ids)
            metrics.update(m)
        batch.advantages = broadcast_to_tokens(adv, batch.mask)
        return batch, {k: float(v) for k, v in metrics.items()}

    def aepo_inject(self, batch: StepBatch, step: int) -> tuple[StepBatch, dict[str, float]]:
        """AEPO (spec S3 + G4): re-generate the first prompts at T', and let the first n_s
        positive responses replace rows 0..n_s−1 of the batch with advantage ≡ 1."""
        a, r = self.cfg.algorithm, self.cfg.rollout
        cfg, h_hat = a.aepo, self.state.aepo_entropy
        t_prime = aepo_temperature(h_hat, cfg.entropy_target, cfg.T_high, cfg.T_low)
        n_prompts = aepo_num_prompts(self.cfg.trainer.prompts_per_step, cfg.prompt_fraction)
        metrics = {"aepo/temperature": t_prime, "aepo/entropy_estimate": h_hat}
        if n_prompts == 0:
            return batch, metrics
        first_rows = [batch.rows[i] for i in range(0, n_prompts * r.n, r.n)]
        params = dataclasses.replace(self.sampling(step, attempt=0), temperature=t_prime, seed=step * 7919 + 17)
        extra = self.cluster.rollout(first_rows, params, self.tokenizer)
        self.cluster.forward(extra)  # π_old at the base temperature for every row (spec G4)
        self.score(extra, step)
        adv, _ = ADVANTAGES.get("grpo").fn(extra.rewards, extra.group_ids, a.grpo, mask=extra.mask)
        n_pos = int((adv > cfg.positive_threshold).sum())
        n_s = min(aepo_num_injected(h_hat, cfg.entropy_target, cfg.reinforce_sample_num, n_pos), len(batch))
        plan, m = aepo_mix(len(batch), adv, n_s, cfg.positive_threshold)
        metrics.update({k: float(v) for k, v in m.items()})
        if n_s == 0:
            return batch, metrics
        metrics["aepo/injected_reward_mean"] = float(extra.rewards[plan.source_rows].mean())
        extra.advantages = broadcast_to_tokens(torch.ones(len(extra)), extra.mask)
        merged = StepBatch.concat([batch, extra])
        order = torch.arange(len(batch))
        order[plan.target_rows] = len(batch) + plan.source_rows
        mixed = merged.select(order)
        # an injected row keeps its own (new) group: it must not join the group it replaced
        mixed.group_ids = mixed.group_ids.clone()
        mixed.group_ids[plan.target_rows] = -1 - plan.source_rows
        return mixed, metrics

    def ares_shape(self, batch: StepBatch) -> dict[str, float]:
        """ARES (arXiv 2510.08457; ``entropo.algorithms.ares``): add the difficulty-bucketed HWE
        term to the rewards (component ``ares``) and, with ``adaptive_kl``, set each response's
        β_b on the KL to π_ref (``batch.kl_scale``); the state carries over to the next step."""
        a = self.cfg.algorithm
        cfg = a.ares
        state = AresState.initial(cfg) if self.state.ares is None else AresState.from_dict(self.state.ares)
        entropy = batch.topk_entropy if cfg.entropy == "topk" else batch.entropy
        seq_kl = sequence_kl(batch.old_logp, batch.ref_logp, batch.mask, a.kl_estimator) if cfg.adaptive_kl else None
        out = ares_step(entropy, batch.mask, batch.correct, batch.group_ids, state, cfg, seq_kl=seq_kl)
        self.state.ares = out.state.as_dict()
        term = out.term.to(batch.rewards.dtype)
        batch.rewards = batch.rewards + term
        batch.reward_components = {**batch.reward_components, "ares": term}
        if out.beta is not None:
            batch.kl_scale = broadcast_to_tokens(out.beta.to(batch.mask.dtype), batch.mask)
        return {k: float(v) for k, v in out.metrics.items()}

    def step_context(self, batch: StepBatch, step: int) -> StepContext:
        """Step-level inputs of the objective (and the running state they come from)."""
        a = self.cfg.algorithm
        # None when π_old comes from the update itself (fused): then no method reads it
        h = None if batch.entropy is None else float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp(min=1))
        if "siren" in a.regularizer and self.state.siren_anchor is None:
            self.state.siren_anchor = float(siren_anchor(batch.topp_entropy, batch.mask, a.siren.mask_quantile))
        if "hapo_temperature" in a.sampling:  # S2: this step's π_old statistics drive the next rollout
            ht = a.hapo_temperature
            _, st = entropy_h_hat(batch.entropy, batch.mask, ht.entropy_pivot, ht.code_compat)
            self.state.hapo_stats = (float(st.mu), float(st.sigma), float(st.s_pos), float(st.s_neg))
        epo_reference = None
        if "epo" in a.regularizer:
            self.state.epo_count += 1
            self.state.epo_total += h
            epo_reference = self.state.epo_total / self.state.epo_count
        return StepContext(step=step, entropy_coef=self.entropy_coef_now(batch), step_entropy=h,
                           siren_anchor=self.state.siren_anchor, epo_reference=epo_reference)

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
            out.append([_shard(mb.select(slice(r * k, (r + 1) * k))) for r in range(ranks)])
        return out

    # ---- metrics and running state ----------------------------------------------------------
    def batch_metrics(self, batch: StepBatch) -> dict[str, float]:
        m = batch.mask
        lengths = batch.response_lengths
        correct = batch.correct.bool()
        out: dict[str, float] = {
            "reward/mean": float(batch.rewards.mean()),
            "reward/accuracy": float(batch.correct.mean()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/correct_mean": float(lengths[correct].mean()) if correct.any() else float("nan"),
            "response_length/wrong_mean": float(lengths[~correct].mean()) if (~correct).any() else float("nan"),
            "response_length/truncated_frac": float(batch.truncated.float().mean()),
            "rollout/weight_version": float(batch.weight_version),
        }
        for name, values in batch.reward_components.items():
            out[f"reward/{name}/mean"] = float(values.mean())
        out.update({k: float(v) for k, v in diagnostics.entropy_summary(batch.entropy, m).items()})
        rows_mask = m * correct.unsqueeze(-1)
        out.update({k: float(v) for k, v in diagnostics.phase_split_means(
            batch.entropy, m, rows_mask, names=("correct", "wrong")).items()})
        close_id = self._think_close_id()
        if close_id is not None:
            think, answer_mask = think_phase(batch.response_ids, m, close_id)
            out.update({k: float(v) for k, v in diagnostics.phase_split_means(
                batch.entropy, answer_mask, think, names=("think", "answer")).items()})
        out.update({k: float(v) for k, v in diagnostics.logprob_gap(batch.rollout_logp, batch.old_logp, m).items()})
        out.update({k: float(v) for k, v in diagnostics.covariance_metrics(
            batch.old_logp, batch.advantages, batch.entropy, m).items()})
        out.update({k: float(v) for k, v in diagnostics.entropy_dynamics_metrics(
            batch.old_logp, batch.entropy, batch.advantages, m).items()})
        return out

    def _think_close_id(self) -> int | None:
        """The token id of ``</think>`` when the tokenizer has it as one token."""
        tok = self.tokenizer
        if tok is None:
            return None
        ids = tok.encode("</think>", add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def adapt(self, metrics: dict[str, float]) -> dict[str, float]:
        """Running state after the update: adaptive entropy coefficient, ΔH-vs-Cov fit."""
        out: dict[str, float] = {}
        a = self.cfg.algorithm
        h = self.state.history
        h["cov"].append(metrics.get("cov/mean", float("nan")))
        h["entropy"].append(metrics["entropy/mean"])
        for key in h:  # the fit reads the last FIT_WINDOW steps; older ones are never used
            del h[key][:-FIT_WINDOW - 1]
        fit = diagnostics.fit_entropy_change(h["cov"], h["entropy"], window=FIT_WINDOW)
        out.update({k: float(v) for k, v in fit.items()})
        if "aepo" in a.sampling and math.isfinite(metrics.get("actor/neg_logp", float("nan"))):
            self.state.aepo_entropy = metrics["actor/neg_logp"]  # Ĥ: sampled-token NLL of the update (G4)
        if a.adaptive_entropy:
            out["actor/entropy_coef"] = self.state.entropy_coef
            out["actor/entropy_bonus_active"] = float(metrics["entropy/mean"] <= a.entropy_adaptive.target)
            self.state.entropy_coef, _ = adaptive_entropy_coef(
                self.state.entropy_coef, metrics["entropy/mean"], a.entropy_adaptive)
        return out

    def entropy_coef_now(self, batch: StepBatch) -> float:
        """c_H of this update. Adaptive (spec G1): the bonus applies only while the entropy of
        the current policy (this step's π_old batch mean) is at most the target."""
        a = self.cfg.algorithm
        if not a.adaptive_entropy:
            return a.entropy_coef
        h = float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp(min=1))
        return self.state.entropy_coef if h <= a.entropy_adaptive.target else 0.0

    # ---- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> Path:
        """An atomic checkpoint of the learner, the policy export and the controller state."""
        tmp = self.checkpoints.begin(self.state.step)
        self.cluster.save(tmp)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(tmp / "hf")
        # a generation in flight (async mode) is not saved: a resumed run draws its prompts again
        sampler = self._ahead_sampler_state if self._ahead is not None else self.sampler.state_dict()
        save_controller(tmp, {"state": dataclasses.asdict(self.state), "sampler": sampler})
        return self.checkpoints.commit(tmp, self.state.step)

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint: learner state, controller state, data position, and
        the rollout workers' weights (synced from the restored learner)."""
        saved = load_controller(path)
        self.cluster.load(path)
        self.state = ControllerState(**saved["state"])
        self.sampler.load_state_dict(saved["sampler"])
        self.cluster.sync_weights(self.state.step)

    def keep_probe(self, batch: StepBatch) -> None:
        """D4: the first step's responses and their entropies under the initial policy."""
        if self.cfg.logger.forking_every and self.state.probe is None:
            k = min(self.cfg.logger.forking_probe, len(batch))
            self.state.probe = {
                "prompt_ids": batch.prompt_ids[:k].clone(), "prompt_mask": batch.prompt_mask[:k].clone(),
                "response_ids": batch.response_ids[:k].clone(), "mask": batch.mask[:k].clone(),
                "entropy": batch.entropy[:k].clone(),
            }

    def forking_tokens(self, step: int, batch: StepBatch) -> dict[str, float]:
        """D4 (Wang et al., arXiv 2506.01939): the top-20% entropy ("forking") tokens of the step
        batch decoded and counted (a table), and how many of the probe set's top-20% positions
        under the initial policy are still top-20% under the current one."""
        keep, threshold = top_k_mask(batch.entropy, batch.mask, top_count(FORK_RHO, int(batch.mask.sum())))
        ids = batch.response_ids[keep].tolist()
        counts: dict[int, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:FORK_TOP_TOKENS]
        decode = self.tokenizer.decode if self.tokenizer is not None else str
        self.sinks.log_table(step, "forking_tokens", ["token", "count", "share"],
                             [[decode([t]) if self.tokenizer is not None else str(t), c, c / max(len(ids), 1)]
                              for t, c in top])
        out = {"forking/threshold": float(threshold), "forking/distinct_tokens": float(len(counts))}
        probe = self.state.probe
        if probe is not None:
            now = StepBatch(prompt_ids=probe["prompt_ids"], prompt_mask=probe["prompt_mask"],
                            response_ids=probe["response_ids"], mask=probe["mask"],
                            rollout_logp=torch.zeros_like(probe["mask"]), truncated=torch.zeros(len(probe["mask"]), dtype=torch.bool),
                            group_ids=torch.zeros(len(probe["mask"]), dtype=torch.long), response_text=[], rows=[])
            self.cluster.forward(now)
            n = top_count(FORK_RHO, int(probe["mask"].sum()))
            initial, _ = top_k_mask(probe["entropy"], probe["mask"], n)
            current, _ = top_k_mask(now.entropy, probe["mask"], n)
            out["forking/overlap_initial"] = float((initial & current).sum()) / max(int(initial.sum()), 1)
        return out

    def log_samples(self, step: int, batch: StepBatch) -> None:
        """A table of completions and the token-entropy histogram, for the dashboards."""
        m = batch.mask.bool()
        self.sinks.log_histogram(step, "entropy/tokens", batch.entropy[m].float().numpy())
        rows = []
        for i in range(min(self.cfg.logger.samples, len(batch))):
            row = batch.rows[i]
            prompt = render_prompt(row, self.tokenizer)
            h = float(batch.entropy[i][m[i]].mean()) if m[i].any() else float("nan")
            rows.append([prompt, batch.response_text[i], float(batch.rewards[i]), h])
        self.sinks.log_table(step, "samples", ["prompt", "response", "reward", "mean_entropy"], rows)

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        from entropo.trainer.evaluation import evaluate

        t0 = time.perf_counter()
        metrics = evaluate(self.cfg, self.cluster, self.eval_rows, self.tokenizer, self.correctness)
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


def think_phase(response_ids: torch.Tensor, mask: torch.Tensor, close_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(think [N, T], valid [N, T])``: tokens before the first ``</think>`` (all of them when a
    response has none, as PEAR's split, spec R3), and the valid tokens without ``</think>``."""
    is_close = (response_ids == close_id) & mask.bool()
    t = response_ids.shape[1]
    first = torch.where(is_close.any(-1), is_close.float().argmax(-1), torch.full((len(mask),), t))
    pos = torch.arange(t).expand_as(response_ids)
    think = (pos < first.unsqueeze(-1)) & mask.bool()
    return think.float(), (mask.bool() & ~is_close).float()


def answer_clusters(group_ids: torch.Tensor, answers: list[str]) -> torch.Tensor:
    """``[N]`` cluster id of each response's final answer within its group (exact match;
    ids numbered by first appearance), for SEED-GRPO's semantic entropy."""
    seen: dict[tuple[int, str], int] = {}
    per_group: dict[int, int] = {}
    out = []
    for g, a in zip(group_ids.tolist(), answers):
        if (g, a) not in seen:
            seen[(g, a)] = per_group.get(g, 0)
            per_group[g] = seen[(g, a)] + 1
        out.append(seen[(g, a)])
    return torch.tensor(out, dtype=torch.long)


def _shard(b: StepBatch) -> LearnerShard:
    return LearnerShard(
        prompt_ids=b.prompt_ids, prompt_mask=b.prompt_mask, response_ids=b.response_ids, mask=b.mask,
        old_logp=b.old_logp, entropy=b.entropy, ref_logp=b.ref_logp, advantages=b.advantages,
        proxy_logp=b.proxy_logp, rollout_logp=b.rollout_logp, kl_scale=b.kl_scale,
    )


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
