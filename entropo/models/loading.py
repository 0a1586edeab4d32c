"""Resolve ``model.path`` and load the tokenizer and model every actor uses.

``model.path`` is one of:

- ``embedded:<name>``: a model entropo builds itself (no download). :data:`EMBEDDED_MODELS`
  maps each name to a builder that writes a ``save_pretrained`` directory. The first use
  builds it under the cache root (env ``ENTROPO_CACHE``, default ``~/.cache/entropo``), in
  ``models/<name>-<version>``; later uses, in this or any other process, reuse it. Register
  more with :func:`register_embedded_model`. Modules that register built-in embedded models
  (:data:`BUILTIN_MODULES`, e.g. :mod:`entropo.models.warm_start` for
  ``embedded:tiny-qwen2-addition``) are imported when an ``embedded:`` name is resolved: they
  import this module, so importing them here at the top would be a cycle.
- a local directory: returned unchanged; a path that looks local and does not exist fails
  here, naming ``model.path``, instead of deep inside ``from_pretrained``.
- anything else: a hub name, returned unchanged for ``from_pretrained``.

:func:`check_model_path` is the driver's check, run before any Ray actor starts: a local
folder must hold ``config.json`` and weights, and a hub name must be in the HF cache when
offline (``HF_HUB_OFFLINE=1``). It reads the filesystem only, no network; its
:class:`ModelPathError` names ``model.path``, the value and the fix in one line.

Building is crash- and race-safe: a builder writes into a fresh temporary directory next to
the final one, which is then renamed into place with ``os.replace`` (atomic on POSIX), so the
final directory either does not exist or is complete. An ``flock`` on ``<final>.lock`` makes
concurrent processes (Ray actors starting together) wait for one build instead of each
building; if a process dies mid-build its temporary directory is left behind and ignored.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from entropo.models.tiny import save_tiny

EMBEDDED_PREFIX = "embedded:"
DTYPES = ("auto", "float32", "bfloat16")

Builder = Callable[[Path], object]
"""Writes a complete ``save_pretrained`` model + tokenizer into an existing empty directory."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model entropo builds itself.

    Attributes:
        name: the part after ``embedded:`` in ``model.path``.
        build: writes a complete ``save_pretrained`` model + tokenizer into the given
            (existing, empty) directory.
        version: part of the cache directory name; bump it when ``build``'s output changes,
            so stale caches are not reused.
    """

    name: str
    build: Builder
    version: str = "1"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {}
"""Registered embedded models, by name."""

BUILTIN_MODULES = ("entropo.models.warm_start",)
"""Modules whose import registers more embedded models; imported by :func:`resolve_model_path`."""


def register_embedded_model(name: str, version: str = "1") -> Callable[[Builder], Builder]:
    """Decorator registering ``build(directory)`` as the builder of ``embedded:<name>``.

    Args:
        name: the embedded name.
        version: cache version of the builder's output (see :class:`EmbeddedModel`).

    Returns:
        The decorator; it returns the builder unchanged.
    """

    def decorator(build: Builder) -> Builder:
        if name in EMBEDDED_MODELS:
            raise ValueError(f"embedded model '{name}' is registered twice")
        EMBEDDED_MODELS[name] = EmbeddedModel(name, build, version)
        return build

    return decorator


@register_embedded_model("tiny-qwen2")
def _build_tiny_qwen2(directory: Path) -> None:
    """Random initialisation, default sizes of :func:`entropo.models.tiny.build_tiny_model`."""
    save_tiny(directory)


def cache_root() -> Path:
    """The cache directory: ``$ENTROPO_CACHE`` or ``~/.cache/entropo``.

    Returns:
        The (possibly not yet existing) cache root.
    """
    return Path(os.environ.get("ENTROPO_CACHE") or "~/.cache/entropo").expanduser()


def _looks_local(path: str) -> bool:
    # A hub name is "org/name" (one '/'), so a single os.sep cannot mark a local path on
    # POSIX; two or more separators, a leading '/', './', '../' or '~' can.
    return (
        path.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or path.count("/") >= 2
        or (os.sep != "/" and os.sep in path)
    )


def _build_embedded(entry: EmbeddedModel) -> Path:
    models_dir = cache_root() / "models"
    final = models_dir / f"{entry.name}-v{entry.version}"
    if final.is_dir():
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(f"{final}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if final.is_dir():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=models_dir))
        try:
            entry.build(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def resolve_model_path(path: str) -> str:
    """Turn ``model.path`` into something ``from_pretrained`` accepts.

    Args:
        path: ``embedded:<name>``, a local directory, or a hub name.

    Returns:
        For an embedded name, its cache directory (built on first use); otherwise ``path``
        (with ``~`` expanded for local paths).

    Raises:
        ValueError: an unknown embedded name (the message lists the registered ones).
        FileNotFoundError: ``path`` looks like a local path and does not exist.
    """
    if path.startswith(EMBEDDED_PREFIX):
        for module in BUILTIN_MODULES:
            importlib.import_module(module)  # registers on first import; a no-op afterwards
        name = path[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED_MODELS:
            known = ", ".join(f"{EMBEDDED_PREFIX}{n}" for n in sorted(EMBEDDED_MODELS))
            raise ValueError(f"model.path: unknown embedded model '{path}'; registered: {known}")
        return str(_build_embedded(EMBEDDED_MODELS[name]))
    if _looks_local(path):
        local = Path(path).expanduser()
        if not local.exists():
            raise FileNotFoundError(f"model.path: local path '{path}' does not exist; point model.path at a "
                                    "model folder (save_pretrained or `hf download NAME --local-dir DIR`) or a hub name")
        return str(local)
    return path


class ModelPathError(FileNotFoundError):
    """``model.path`` names no model this process can load; the one-line message names
    ``model.path``, the value and the fix. A ``FileNotFoundError``, so callers that catch
    the missing-local-path error of :func:`resolve_model_path` catch this too."""


# Any one of these makes a folder loadable by ``from_pretrained`` (sharded saves have the
# index and the shards, older ones ``pytorch_model.bin``).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def _download_fix(name: str) -> str:
    return (f"download it first with `hf download {name}` (or `huggingface-cli download {name}`) "
            "while online, or point model.path at a local folder")


def check_model_path(path: str) -> str:
    """The driver's check of ``model.path``, before any actor loads it; filesystem only.

    Args:
        path: as for :func:`resolve_model_path`.

    Returns:
        :func:`resolve_model_path`'s result.

    Raises:
        ValueError: an unknown embedded name.
        ModelPathError: a local path that does not exist, is not a folder, or lacks
            ``config.json`` or weights (:data:`WEIGHT_PATTERNS`); a hub name that is not a
            valid repo id; a hub name not in the HF cache while offline. Online, a hub name
            not yet cached passes: ``from_pretrained`` downloads it.
    """
    resolved = resolve_model_path(path)
    if path.startswith(EMBEDDED_PREFIX):
        return resolved  # built by entropo, complete by construction
    local = Path(resolved).expanduser()
    if _looks_local(path) or local.exists():  # from_pretrained prefers an existing folder too
        _check_local_folder(path, local)
    else:
        _check_hub_name(path)
    return resolved


def _check_local_folder(path: str, local: Path) -> None:
    key = f"model.path: '{path}'"
    fix = "point model.path at a folder written by save_pretrained or `hf download NAME --local-dir DIR`"
    if not local.is_dir():  # resolve_model_path has checked that it exists
        raise ModelPathError(f"{key} is a file, not a model folder; {fix}")
    if not (local / "config.json").is_file():
        raise ModelPathError(f"{key} has no config.json, so it is not a model folder; {fix}")
    if not any(next(local.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ModelPathError(f"{key} has a config.json but no weights (*.safetensors or *.bin); {fix}")


def _check_hub_name(name: str) -> None:
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    try:
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")  # HF_HUB_CACHE, revision main
    except HFValidationError as e:
        first = str(e).splitlines()[0].rstrip(".")
        raise ModelPathError(f"model.path: '{name}' is neither an existing local folder nor a valid hub name "
                             f"({first}); point model.path at a local folder or an org/name on the hub") from None
    if huggingface_hub.is_offline_mode() and not isinstance(cached, str):
        cache = huggingface_hub.constants.HF_HUB_CACHE
        raise ModelPathError(f"model.path: '{name}' is a hub name that is not in the HF cache ({cache}) and "
                             f"offline mode (HF_HUB_OFFLINE=1) forbids downloading it; {_download_fix(name)}")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``model.path``, set up for batched generation.

    Args:
        path: as for :func:`resolve_model_path`.

    Returns:
        The tokenizer with ``padding_side="left"`` (decoder-only generation appends to the
        right end of every row) and, when it has none, ``pad_token = eos_token``.

    Raises:
        ModelPathError: ``from_pretrained`` cannot fetch a hub name (no network and not
            cached, no such repo, a gated one); local folders raise transformers' own errors.
    """
    resolved = resolve_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as e:
        # e.g. online but the hub is unreachable and the name is not cached: transformers
        # raises an OSError with several lines; one line naming model.path is enough.
        if _looks_local(path) or Path(resolved).exists():
            raise
        first = str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__
        raise ModelPathError(f"model.path: cannot load '{path}' ({first}); {_download_fix(path)}") from e
    if _declared_tokenizer_class(resolved) in GENERIC_TOKENIZERS and type(tokenizer).__name__ not in GENERIC_TOKENIZERS:
        # transformers 5 maps a folder whose config says e.g. qwen2 to Qwen2's own (byte-level)
        # tokenizer class, even when tokenizer_config.json declares a generic one: a character
        # tokenizer then loses its spaces. The declared generic class reads tokenizer.json as is.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(resolved)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""Tokenizer classes that take ``tokenizer.json`` as it is, with no model-specific rules."""


def _declared_tokenizer_class(directory: str) -> str | None:
    """``tokenizer_class`` of a local folder's ``tokenizer_config.json`` (None elsewhere)."""
    config = Path(directory) / "tokenizer_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")


def torch_dtype(dtype: str) -> torch.dtype:
    """Map ``model.dtype`` to a torch dtype.

    Args:
        dtype: ``float32``, ``bfloat16`` or ``auto`` (bfloat16 when CUDA is available,
            float32 otherwise).

    Returns:
        The torch dtype.
    """
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, dtype)


def load_model(path: str, dtype: str = "float32") -> PreTrainedModel:
    """Load the causal LM of ``model.path``.

    Args:
        path: as for :func:`resolve_model_path`.
        dtype: as for :func:`torch_dtype`.

    Returns:
        The model, on CPU, in eval mode (as ``from_pretrained`` returns it).
    """
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=torch_dtype(dtype))
