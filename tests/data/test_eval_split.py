"""``data.eval=auto``: the training data's own eval split, else a held-out slice; never the
embedded task for a user's dataset."""

from __future__ import annotations

import json

import pytest

from entropo.data.eval_split import HOLDOUT_DIVISOR, split_eval
from entropo.data.loading import DataError, load_rows


def _jsonl(path, n):
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "solution": str(i)}) + "\n" for i in range(n)))
    return str(path)


def test_a_single_file_holds_out_a_tenth_not_trained_on(tmp_path):
    spec = _jsonl(tmp_path / "d.jsonl", 50)
    rows = load_rows(spec)
    choice = split_eval(spec, "auto", rows, max_prompts=200)
    assert len(choice.eval) == 50 // HOLDOUT_DIVISOR == 5 and len(choice.train) == 45
    assert {r.prompt for r in choice.eval}.isdisjoint(r.prompt for r in choice.train)
    assert [r.index for r in choice.train] == list(range(45)) and [r.index for r in choice.eval] == list(range(5))
    assert "holding out 5 of its 50 prompts" in choice.source and spec in choice.source
    again = split_eval(spec, "auto", rows, max_prompts=200)
    assert [r.prompt for r in again.eval] == [r.prompt for r in choice.eval]  # a fixed seed
    assert len(split_eval(spec, "auto", rows, max_prompts=2).eval) == 2  # evaluation.max_prompts caps it


def test_too_few_prompts_means_no_evaluation_said_so(tmp_path):
    spec = _jsonl(tmp_path / "d.jsonl", 9)
    choice = split_eval(spec, "auto", load_rows(spec), max_prompts=200)
    assert choice.eval == [] and len(choice.train) == 9 and "set data.eval" in choice.source


def test_a_directory_with_a_test_file_uses_it(tmp_path):
    _jsonl(tmp_path / "train.jsonl", 20)
    _jsonl(tmp_path / "test.jsonl", 3)
    rows = load_rows(str(tmp_path), split="train")
    choice = split_eval(str(tmp_path), "auto", rows, max_prompts=200)
    assert len(choice.train) == 20 and len(choice.eval) == 3 and "eval split" in choice.source


def test_embedded_uses_its_eval_split_and_explicit_specs_are_used_as_given(tmp_path):
    rows = load_rows("embedded:addition?n=40")
    choice = split_eval("embedded:addition?n=40", "auto", rows, max_prompts=7)
    assert len(choice.train) == 40 and len(choice.eval) == 7
    assert {r.prompt for r in choice.eval}.isdisjoint(r.prompt for r in rows)
    other = _jsonl(tmp_path / "e.jsonl", 4)
    assert len(split_eval("embedded:addition", other, rows, 200).eval) == 4
    assert split_eval("embedded:addition", None, rows, 200).eval == []
    with pytest.raises(DataError, match="no such file"):
        split_eval("embedded:addition", str(tmp_path / "missing.jsonl"), rows, 200)
