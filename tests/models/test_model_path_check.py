"""``model.path`` checked in the driver, before any Ray actor: one line naming the key, the
value and the fix, instead of transformers' traceback from inside ``from_pretrained``.

Filesystem only: the HF cache is a temporary folder, so a hub name is never looked up online.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

from entropo.cli import main
from entropo.models import loading
from entropo.models.loading import ModelPathError, check_model_path

HUB_NAME = "entropo-tests/no-such-model"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)


@pytest.fixture
def no_actors(monkeypatch):
    """Fail the test if the run gets as far as connecting to Ray."""
    import entropo.trainer.cluster as cluster

    def connect(cfg):
        raise AssertionError("Ray was reached before model.path was checked")

    monkeypatch.setattr(cluster, "connect", connect)


def _one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_uncached_hub_name_offline(hf_cache, offline):
    with pytest.raises(ModelPathError) as e:
        check_model_path(HUB_NAME)
    msg = _one_line(str(e.value))
    assert msg.startswith(f"model.path: '{HUB_NAME}' is a hub name that is not in the HF cache ({hf_cache})")
    assert f"`hf download {HUB_NAME}`" in msg and f"`huggingface-cli download {HUB_NAME}`" in msg
    assert "point model.path at a local folder" in msg


def test_cached_hub_name_offline_passes(hf_cache, offline):
    snapshot = hf_cache / "models--entropo-tests--no-such-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert check_model_path(HUB_NAME) == HUB_NAME


def test_uncached_hub_name_online_is_left_to_from_pretrained(hf_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    assert check_model_path(HUB_NAME) == HUB_NAME  # it will download; no network here


def test_invalid_hub_name(hf_cache, offline):
    with pytest.raises(ModelPathError, match=r"^model\.path: 'not a name!' is neither an existing local folder"):
        check_model_path("not a name!")


@pytest.mark.parametrize(("files", "why"), [
    ({}, "has no config.json, so it is not a model folder"),
    ({"config.json": "{}", "tokenizer.json": "{}"}, "has a config.json but no weights (*.safetensors or *.bin)"),
])
def test_local_folder_without_a_model(tmp_path, files, why):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ModelPathError) as e:
        check_model_path(str(tmp_path))
    msg = _one_line(str(e.value))
    assert msg.startswith(f"model.path: '{tmp_path}' {why}; point model.path at a folder written by save_pretrained")


def test_local_file_and_missing_path(tmp_path):
    (tmp_path / "model.safetensors").write_text("")
    with pytest.raises(ModelPathError, match="is a file, not a model folder"):
        check_model_path(str(tmp_path / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"model\.path: local path '\./no/such' does not exist; point"):
        check_model_path("./no/such")


def test_a_saved_model_passes(tiny_model_dir):
    assert check_model_path(tiny_model_dir) == tiny_model_dir


def test_tokenizer_fetch_failure_is_one_line(hf_cache, monkeypatch):
    """Online with no network: transformers' several-line OSError becomes one line."""

    def fail(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(ModelPathError) as e:
        loading.load_tokenizer(HUB_NAME)
    msg = _one_line(str(e.value))
    assert msg.startswith(f"model.path: cannot load '{HUB_NAME}' (We couldn't connect to 'https://huggingface.co'")
    assert f"`hf download {HUB_NAME}`" in msg


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("kind", ["hub", "empty"])
def test_cli_prints_one_line_before_any_actor(hf_cache, offline, no_actors, tmp_path, capsys, command, kind):
    value = HUB_NAME if kind == "hub" else str(tmp_path / "empty")
    Path(tmp_path / "empty").mkdir()
    code = main([command, f"model.path={value}", f"trainer.output_dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    _one_line(err)
    assert err.startswith(f"entropo: error: model.path: '{value}' ")
