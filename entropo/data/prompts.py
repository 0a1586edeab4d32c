"""Turn a :class:`PromptRow` into the text and token ids a rollout worker generates from.

Rules (the one place that decides them, so filtering and generation agree):

- chat messages + a tokenizer with a chat template: the template, with
  ``add_generation_prompt=True`` (verl and TRL do the same);
- a plain string prompt: used as is, with or without a template (TRL's "standard" format:
  a string is a raw completion prompt, never wrapped in a chat turn);
- chat messages + no template (e.g. the embedded character tokenizer): the messages'
  contents joined with newlines; roles are dropped.

Token ids: text produced by a chat template already holds its special tokens, so it is
encoded with ``add_special_tokens=False``; other text with ``add_special_tokens=True`` (a BOS,
for tokenizers that add one).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from entropo.data.loading import PromptRow


def _uses_template(row: PromptRow, tokenizer: PreTrainedTokenizerBase) -> bool:
    return isinstance(row.prompt, list) and getattr(tokenizer, "chat_template", None) is not None


def render_prompt(row: PromptRow, tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt text the model sees (rules in the module docstring).

    Args:
        row: the prompt row.
        tokenizer: the policy's tokenizer (its chat template, if any, is used).

    Returns:
        The rendered prompt text.
    """
    if isinstance(row.prompt, str):
        return row.prompt
    if _uses_template(row, tokenizer):
        return tokenizer.apply_chat_template(row.prompt, tokenize=False, add_generation_prompt=True)
    return "\n".join(message["content"] for message in row.prompt)


def encode_prompt(row: PromptRow, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The prompt's token ids (rendered by :func:`render_prompt`, special tokens as above).

    Args:
        row: the prompt row.
        tokenizer: the policy's tokenizer.

    Returns:
        The token ids, without padding.
    """
    text = render_prompt(row, tokenizer)
    return tokenizer(text, add_special_tokens=not _uses_template(row, tokenizer))["input_ids"]


def filter_long(
    rows: Sequence[PromptRow], tokenizer: PreTrainedTokenizerBase, max_tokens: int
) -> tuple[list[PromptRow], int]:
    """Drop prompts longer than ``max_tokens`` tokens (``data.max_prompt_tokens``).

    Args:
        rows: the prompt rows.
        tokenizer: the policy's tokenizer.
        max_tokens: the longest prompt kept, in tokens of :func:`encode_prompt`.

    Returns:
        ``(kept, n_dropped)``: the rows that fit, in order (their ``index`` unchanged), and
        how many were dropped.
    """
    kept = [row for row in rows if len(encode_prompt(row, tokenizer)) <= max_tokens]
    return kept, len(rows) - len(kept)
