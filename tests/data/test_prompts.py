"""render_prompt / encode_prompt / filter_long: template use, plain strings, length filtering."""

from entropo.data.loading import PromptRow
from entropo.data.prompts import encode_prompt, filter_long, render_prompt
from entropo.models.tiny import build_char_tokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2=?"}]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _row(prompt, index=0):
    return PromptRow(prompt, None, "test", {}, index)


def test_plain_string_is_used_as_is():
    tok = build_char_tokenizer()
    assert render_prompt(_row("12+345=?"), tok) == "12+345=?"
    tok.chat_template = TEMPLATE
    assert render_prompt(_row("12+345=?"), tok) == "12+345=?"  # strings never get a template


def test_chat_messages_use_the_template_with_generation_prompt():
    tok = build_char_tokenizer()
    tok.chat_template = TEMPLATE
    assert render_prompt(_row(CHAT), tok) == "system:Be brief.\nuser:1+2=?\nassistant:"
    assert tok.decode(encode_prompt(_row(CHAT), tok)) == "system:Be brief.\nuser:1+2=?\nassistant:"


def test_chat_messages_without_template_join_contents():
    tok = build_char_tokenizer()
    assert render_prompt(_row(CHAT), tok) == "Be brief.\n1+2=?"


def test_filter_long_counts_tokens():
    tok = build_char_tokenizer()
    rows = [_row("1+2=?", 0), _row("123+456=?", 1), _row("12+3=?", 2)]  # 5, 9, 6 tokens
    kept, dropped = filter_long(rows, tok, max_tokens=6)
    assert [r.index for r in kept] == [0, 2] and dropped == 1
    kept, dropped = filter_long(rows, tok, max_tokens=9)
    assert len(kept) == 3 and dropped == 0
