from pathlib import Path

from entropo.config_docs import markdown, rows

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_field_is_documented_once():
    keys = [k for k, _, _ in rows()]
    assert len(keys) == len(set(keys)) > 100
    assert [k for k, _, doc in rows() if not doc] == []


def test_docs_config_md_is_generated_from_the_code():
    assert DOC.read_text() == markdown(), "regenerate with: entropo config > docs/config.md"


def test_defaults_shown_are_the_dataclass_defaults():
    table = {k: d for k, d, _ in rows()}
    assert table["algorithm.clip_cov.clip_ratio"] == "0.0002"
    assert table["algorithm.token_mask"] == "[]"
    assert table["data.eval"] == "auto"
