"""The embedded tiny model: tokenizer round trip, save/load, generation, and the model cache."""

import os
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from entropo.models import loading
from entropo.models.loading import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from entropo.models.tiny import CHARS, build_char_tokenizer, build_tiny_model, save_tiny


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ENTROPO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_think_tags_are_single_tokens(tok):
    for tag in ("<think>", "</think>"):
        ids = tok.encode(tag, add_special_tokens=False)
        assert ids == [tok.convert_tokens_to_ids(tag)]
        assert ids[0] != tok.unk_token_id
    ids = tok.encode("1+2=?<think>2+1+0=3</think>3", add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("</think>")) == 1
    assert len(ids) == len("1+2=?") + 1 + len("2+1+0=3") + 1 + 1  # one id per char or tag


def test_decode_round_trips_every_character(tok):
    text = CHARS + "<think>a  b\n\nc</think>42"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    # pad / eos are dropped with skip_special_tokens=True; the think tags stay
    assert tok.decode([*ids, tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text
    assert tok.decode([*ids, tok.eos_token_id]) == text + "<eos>"


def test_unknown_character_is_unk(tok):
    ids = tok.encode("1é2", add_special_tokens=False)
    assert ids[1] == tok.unk_token_id and len(ids) == 3


def test_model_is_seeded_and_leaves_global_rng_alone(tok):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_model(tok, seed=0)
    assert torch.equal(torch.rand(1), expected)
    b, c = build_tiny_model(tok, seed=0), build_tiny_model(tok, seed=1)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.tie_word_embeddings and a.lm_head.weight is a.model.embed_tokens.weight
    assert a.config.vocab_size == len(tok)
    assert a.generation_config.pad_token_id == tok.pad_token_id == a.config.pad_token_id
    assert a.generation_config.eos_token_id == tok.eos_token_id == a.config.eos_token_id


def test_save_load_and_generate(tmp_path, tok):
    save_tiny(tmp_path / "tiny")
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    text = "12+345=?<think>2+5+0=7</think>"
    assert tok2.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert tok2.decode(tok2.encode(text, add_special_tokens=False)) == text
    # the saved weights are the seed-0 model's
    ref = build_tiny_model(tok, seed=0)
    for (name, p), q in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), name
    prompt = torch.tensor([tok2.encode("12+345=?", add_special_tokens=False)])
    out = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and prompt.shape[1] < out.shape[1] <= prompt.shape[1] + 4
    assert torch.equal(out[:, : prompt.shape[1]], prompt)


def test_resolve_builds_once_and_reuses(monkeypatch, tmp_path):
    calls = []
    real = EMBEDDED_MODELS["tiny-qwen2"]

    def counting_build(directory):
        calls.append(directory)
        real.build(directory)

    monkeypatch.setitem(EMBEDDED_MODELS, "tiny-qwen2", EmbeddedModel("tiny-qwen2", counting_build, real.version))
    first = resolve_model_path("embedded:tiny-qwen2")
    assert first.startswith(str(tmp_path / "cache"))
    mtime = os.path.getmtime(os.path.join(first, "config.json"))
    second = resolve_model_path("embedded:tiny-qwen2")
    assert second == first and len(calls) == 1
    assert os.path.getmtime(os.path.join(first, "config.json")) == mtime
    # only the final directory and its lock file: no temporary directory is left behind
    assert sorted(os.listdir(os.path.dirname(first))) == sorted([os.path.basename(first), os.path.basename(first) + ".lock"])

    tokenizer = load_tokenizer("embedded:tiny-qwen2")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<pad>"
    model = load_model("embedded:tiny-qwen2")
    assert model.dtype == torch.float32 and len(calls) == 1
    batch = tokenizer(["1+2=?", "10+200=?"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # left padded
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 3


def test_concurrent_resolves_build_once(monkeypatch):
    calls = []

    def slow_build(directory):
        calls.append(directory)
        time.sleep(0.2)
        (directory / "config.json").write_text("{}")

    monkeypatch.setitem(EMBEDDED_MODELS, "slow", EmbeddedModel("slow", slow_build))
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model_path("embedded:slow"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3


def test_failed_build_leaves_nothing(monkeypatch, tmp_path):
    def broken(directory):
        (directory / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setitem(EMBEDDED_MODELS, "broken", EmbeddedModel("broken", broken))
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model_path("embedded:broken")
    models_dir = tmp_path / "cache" / "models"
    assert [p.name for p in models_dir.iterdir()] == ["broken-v1.lock"]


def test_unknown_embedded_name_lists_registered():
    with pytest.raises(ValueError, match=r"model\.path.*registered: .*embedded:tiny-qwen2"):
        resolve_model_path("embedded:tiny-qwen3")


@pytest.mark.parametrize("path", ["/nonexistent/model", "./no/such", "~/no-such-model-dir", "a/b/c"])
def test_missing_local_path_names_model_path(path):
    with pytest.raises(FileNotFoundError, match=r"model\.path"):
        resolve_model_path(path)


def test_hub_name_and_existing_dir_pass_through(tmp_path):
    assert resolve_model_path("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_load_tokenizer_sets_missing_pad_to_eos(tmp_path):
    base = build_char_tokenizer()
    no_pad = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, eos_token="<eos>")
    assert no_pad.pad_token is None
    no_pad.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.pad_token == "<eos>" and loaded.padding_side == "left"


def test_dtype():
    assert loading.torch_dtype("float32") == torch.float32
    assert loading.torch_dtype("bfloat16") == torch.bfloat16
    assert loading.torch_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    with pytest.raises(ValueError, match=r"model\.dtype"):
        loading.torch_dtype("fp16")
