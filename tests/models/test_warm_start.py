"""The supervised warm start: training, saved files, determinism, and the cached embedded build."""

import json
import logging
import random
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

import entropo.models
from entropo.data import embedded
from entropo.models import warm_start
from entropo.models.loading import EMBEDDED_MODELS, EmbeddedModel, resolve_model_path
from entropo.models.tiny import build_char_tokenizer, build_tiny_model
from entropo.models.warm_start import NAME, STEPS_ENV, accuracy, sft_warm_start
from tests.log_capture import LogMessages

SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ENTROPO_CACHE", str(tmp_path / "cache"))


def _small_build(directory, **kw):
    settings = {"steps": 30, "batch_size": 16, "lr": 3e-3, "digits": 2, "seed": 0, "stop_at": None,
                "model_kwargs": SMALL, "eval_n": 8, "threads": 1}
    return sft_warm_start(directory, **{**settings, **kw})


def test_trains_on_train_problems_and_saves(monkeypatch, tmp_path):
    splits = []
    real = warm_start.make_split

    def spy(n, seed, digits=3, split="train"):
        splits.append(split)
        return real(n, seed, digits=digits, split=split)

    monkeypatch.setattr(warm_start, "make_split", spy)
    threads = torch.get_num_threads()
    record = _small_build(tmp_path / "ws")
    assert splits == ["train", "eval"]  # training draws train problems; eval only measures
    assert torch.get_num_threads() == threads  # restored

    losses = record["losses"]
    assert len(losses) == 10 and losses[-1] < 0.8 * losses[0]
    assert 0.0 <= record["eval_accuracy_greedy"] <= 1.0
    assert record["num_params"] < 50_000 and record["train_seconds"] > 0

    saved = json.loads((tmp_path / "ws" / "warm_start.json").read_text())
    assert saved["steps"] == 30 and saved["model_kwargs"]["hidden_size"] == 32
    assert saved["eval_accuracy_greedy"] == record["eval_accuracy_greedy"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ws")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ws")
    assert model.config.hidden_size == 32 and tokenizer.eos_token == "<eos>"
    problems = embedded.make_split(4, seed=1, digits=2, split="eval")
    tokenizer.padding_side = "right"
    assert 0.0 <= accuracy(model, tokenizer, problems, do_sample=True, num_samples=2) <= 1.0
    assert tokenizer.padding_side == "right"  # accuracy() pads left only while it generates


def test_same_seed_same_weights(tmp_path):
    a = _small_build(tmp_path / "a", steps=5, eval_n=0)
    b = _small_build(tmp_path / "b", steps=5, eval_n=0)
    assert a["losses"] == b["losses"] and a["eval_accuracy_greedy"] is None
    ma = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    mb = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_stops_early_at_the_monitor_accuracy(monkeypatch, tmp_path):
    monkeypatch.setattr(warm_start, "CHECK_BELOW_LOSS", float("inf"))  # check from the start
    monkeypatch.setattr(warm_start, "MONITOR_N", 8)
    every = warm_start.CHECK_EVERY
    record = _small_build(tmp_path / "a", steps=2 * every, stop_at=0.0, eval_n=0)
    assert record["steps_run"] == every and [s for s, _ in record["checks"]] == [every]
    record = _small_build(tmp_path / "b", steps=2 * every, stop_at=1.1, eval_n=0)  # unreachable
    assert record["steps_run"] == 2 * every and [s for s, _ in record["checks"]] == [every, 2 * every]
    assert json.loads((tmp_path / "b" / "warm_start.json").read_text())["checks"] == record["checks"]


def test_learns_the_response_only():
    # labels cover the solution and EOS, never the prompt or the padding
    tok = warm_start.build_char_tokenizer()
    problems = [embedded.make_problem(random.Random(s), 3) for s in range(3)]
    batch = warm_start._batch(tok, problems)
    for row, labels, p in zip(batch["input_ids"], batch["labels"], problems):
        kept = labels[labels != -100].tolist()
        assert tok.decode(kept) == embedded.solution_text(p) + "<eos>"
        assert tok.decode(row[: len(p["prompt"])].tolist()) == p["prompt"]


def test_embedded_build_is_cached(monkeypatch):
    monkeypatch.setenv(STEPS_ENV, "3")
    for key, value in SMALL.items():  # the registered build reads MODEL_KWARGS when it runs
        monkeypatch.setitem(warm_start.MODEL_KWARGS, key, value)
    monkeypatch.setattr(warm_start, "EVAL_N", 8)  # and EVAL_N
    calls = []
    real = EMBEDDED_MODELS[NAME]

    def counting_build(directory):
        calls.append(directory)
        real.build(directory)

    monkeypatch.setitem(EMBEDDED_MODELS, NAME, EmbeddedModel(NAME, counting_build, real.version))
    first = resolve_model_path(f"embedded:{NAME}")
    second = resolve_model_path(f"embedded:{NAME}")
    assert first == second and len(calls) == 1
    record = json.loads((Path(first) / "warm_start.json").read_text())
    assert record["steps"] == 3 and record["model_kwargs"]["hidden_size"] == SMALL["hidden_size"]
    assert record["eval_problems"]["n"] == 8 and record["eval_accuracy_greedy"] is not None
    assert AutoModelForCausalLM.from_pretrained(first).config.num_hidden_layers == SMALL["num_layers"]


def test_resolving_registers_the_warm_start(monkeypatch):
    # as in a fresh process that never imported entropo.models.warm_start; the re-import
    # also rebinds the package attribute, which monkeypatch restores with the rest
    monkeypatch.setattr(entropo.models, "warm_start", warm_start)
    monkeypatch.delitem(sys.modules, "entropo.models.warm_start")
    monkeypatch.delitem(EMBEDDED_MODELS, NAME)
    with pytest.raises(ValueError, match=f"embedded:{NAME}"):
        resolve_model_path("embedded:no-such-model")
    assert NAME in EMBEDDED_MODELS


def test_accuracy_generates_without_the_length_warning(monkeypatch):
    """transformers logs "Both `max_new_tokens` (=64) and `max_length`(=256) seem to have been
    set" at a generate call given max_new_tokens while the model's generation_config keeps
    max_length=256 (16 lines on a first run of the warm start). accuracy() passes the same limit
    as max_length, so nothing is logged; the tokens are those of max_new_tokens."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, **SMALL)
    assert model.generation_config.max_length == 256  # the saved limit behind the warning
    problems = embedded.make_split(4, seed=1, digits=2, split="eval")
    calls = []
    generate = model.generate

    def spy(**kwargs):
        calls.append((kwargs, generate(**kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(model, "generate", spy)
    logs = LogMessages()
    logging.getLogger("transformers").addHandler(logs)  # transformers' loggers do not propagate to root
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            accuracy(model, tokenizer, problems, max_new_tokens=6)
            accuracy(model, tokenizer, problems, max_new_tokens=6, do_sample=True, num_samples=2)
    finally:
        logging.getLogger("transformers").removeHandler(logs)
    assert not [m for m in logs.messages if "max_new_tokens" in m or "max_length" in m]
    assert [str(w.message) for w in caught] == []

    kwargs, out = calls[0]  # greedy: the same tokens as generate(max_new_tokens=6)
    model.generation_config.max_length = None  # (so that the reference call does not warn)
    ref = generate(input_ids=kwargs["input_ids"], attention_mask=kwargs["attention_mask"], do_sample=False,
                   max_new_tokens=6, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    assert torch.equal(out, ref)


def test_saving_the_warm_start_draws_no_progress_bar(capfd, tmp_path):
    """save_pretrained drew "Writing model shards: 100%|...| 1/1" for an instant write; the
    switch is off only for that write and restored afterwards."""
    hf_logging.enable_progress_bar()
    _small_build(tmp_path / "ws", steps=2, eval_n=0)
    assert hf_logging.is_progress_bar_enabled()
    assert "Writing model shards" not in capfd.readouterr().err
