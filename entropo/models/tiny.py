"""The embedded tiny model: a character-level tokenizer and a small randomly initialised Qwen2.

Why: the default ``entropo train`` (and every integration test) must run on a laptop CPU
with no hub access. A per-character vocabulary keeps the embedding table tiny and makes every
string of the embedded tasks (:mod:`entropo.data.embedded`) encodable, and a Qwen2 built
from a config is the same architecture family the real recipes train, so the same loading,
generation and DeepSpeed code paths run on it (verified in ``/work/shared/NOTES.md``: it
round-trips through ``save_pretrained``/``from_pretrained`` and generates).

Tokenizer (``tokenizers`` WordLevel model, one token per character, Fuse decoder):

- ids 0-4 are ``<pad>``, ``<eos>``, ``<unk>``, ``<think>``, ``</think>``; then the
  characters of :data:`CHARS` (digits, ``+ - * = ?``, a-z, A-Z, space, newline, punctuation).
- ``<think>`` and ``</think>`` are *added tokens*, so the string ``</think>`` encodes to one id
  (PEAR-style phase splitting looks for that id). They are not marked special: decoding with
  ``skip_special_tokens=True`` keeps them, because reward functions read the decoded response
  and look for ``</think>`` in it. ``<pad>``, ``<eos>`` and ``<unk>`` are special and dropped.
- A character outside the alphabet encodes to ``<unk>``; ``decode(skip_special_tokens=False)``
  reproduces every in-alphabet text exactly (no whitespace clean-up).
- No BOS token, no chat template: the embedded prompts are plain strings.

Nothing here is tuned: ``build_tiny_model``'s defaults (about 0.14M parameters) only make a
model that runs. How well a size learns the embedded task is recorded in NOTES.md, not here.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = (PAD, EOS, UNK)
"""Special tokens: ``decode(skip_special_tokens=True)`` drops them."""

THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)
"""Single-id added tokens that stay in decoded text."""

CHARS = string.digits + "+-*=?" + string.ascii_lowercase + string.ascii_uppercase + " \n" + ".,:;!'\"()[]/<>_%"
"""The character alphabet, one token each, after the five special/added tokens."""


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the embedded character-level tokenizer (layout in the module docstring).

    Returns:
        A fast tokenizer with ``pad_token="<pad>"``, ``eos_token="<eos>"``,
        ``unk_token="<unk>"``, right padding and ``model_max_length`` unset (it is the
        model's ``max_position_embeddings``, which the tokenizer does not know).
    """
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *THINK_TOKENS, *CHARS))}
    if len(vocab) != len(SPECIAL_TOKENS) + len(THINK_TOKENS) + len(CHARS):
        raise AssertionError("CHARS repeats a character")  # a programming error, fail loudly
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Oniguruma (the regex engine of `tokenizers`) has no (?s) flag; [\s\S] matches any
    # character including the newline, so every character becomes its own pre-token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """Build a randomly initialised Qwen2 sized for ``tokenizer``.

    Args:
        tokenizer: the tokenizer whose vocabulary and pad/eos ids the model uses.
        hidden_size: model width.
        num_layers: transformer blocks.
        num_heads: attention heads (also the key/value heads: no grouped-query attention).
        intermediate_size: MLP width.
        max_position_embeddings: the longest prompt + response, in tokens.
        seed: seed of the initialisation; the global torch RNG is left untouched.

    Returns:
        A float32 ``Qwen2ForCausalLM`` with tied input/output embeddings, whose config and
        generation config carry the tokenizer's pad and eos ids.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_length=max_position_embeddings,
    )
    return model.eval()


def save_tiny(path: str | Path, **model_kwargs: int) -> Path:
    """Build the tiny tokenizer and model and write both to ``path`` with ``save_pretrained``.

    Args:
        path: the output directory (created if missing).
        model_kwargs: keyword arguments of :func:`build_tiny_model` (sizes, seed).

    Returns:
        ``path`` as a :class:`Path`; ``from_pretrained(path)`` loads model and tokenizer.
    """
    path = Path(path)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, **model_kwargs)
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
