"""load_rows: embedded task, jsonl/json/parquet files, directories, field maps and row errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from entropo.data.loading import DataError, PromptRow, load_rows

VERL_ROW = {
    "data_source": "openai/gsm8k",
    "prompt": [{"role": "user", "content": "What is 2+2?"}],
    "ability": "math",
    "reward_model": {"style": "rule", "ground_truth": "4"},
    "extra_info": {"split": "train", "index": 7},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_embedded_addition_default_and_options():
    train = load_rows("embedded:addition")
    evals = load_rows("embedded:addition", split="eval")
    assert len(train) == 2000 and len(evals) == 200 and train.n_skipped == 0
    row = train[0]
    assert isinstance(row, PromptRow) and row.index == 0 and train[5].index == 5
    assert row.prompt.endswith("=?") and row.data_source == "embedded/addition"
    a, b = row.extra_info["a"], row.extra_info["b"]
    assert row.ground_truth == str(a + b)
    assert not {r.prompt for r in train} & {r.prompt for r in evals}
    small = load_rows("embedded:addition?digits=2&n=50&seed=3")
    assert len(small) == 50 and all(r.extra_info["digits"] == 2 for r in small)
    assert small == load_rows("embedded:addition?digits=2&n=50&seed=3")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("embedded:addition?digit=2", "unknown option 'digit'"),
        ("embedded:addition?n=ten", "not an integer"),
        ("embedded:subtraction", "unknown embedded task"),
        ("embedded:addition?digits=1&n=500", "digits=1"),
    ],
)
def test_embedded_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        load_rows(spec)
    with pytest.raises(DataError, match="unknown split 'dev2'"):
        load_rows("embedded:addition", split="dev2")


def test_jsonl_verl_row_loads_as_is(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [VERL_ROW, {**VERL_ROW, "prompt": "plain text"}])
    rows = load_rows(str(path))
    assert rows[0] == PromptRow(
        prompt=[{"role": "user", "content": "What is 2+2?"}],
        ground_truth="4",
        data_source="openai/gsm8k",
        extra_info={"split": "train", "index": 7},
        index=0,
        columns={k: v for k, v in VERL_ROW.items() if k != "prompt"},  # kept for TRL-style rewards
    )
    assert rows[1].prompt == "plain text" and rows[1].index == 1


def test_json_array_and_data_object_and_json_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([VERL_ROW, VERL_ROW]))
    (tmp_path / "b.json").write_text(json.dumps({"data": [VERL_ROW]}))
    _write_jsonl(tmp_path / "c.json", [VERL_ROW, VERL_ROW, VERL_ROW])
    assert [len(load_rows(str(tmp_path / f))) for f in ("a.json", "b.json", "c.json")] == [2, 1, 3]
    (tmp_path / "d.json").write_text('{"prompt": 1')
    with pytest.raises(DataError, match=r"d\.json: bad JSON"):
        load_rows(str(tmp_path / "d.json"))


def test_parquet_nested_verl_rows(tmp_path):
    table = pa.Table.from_pylist([VERL_ROW, {**VERL_ROW, "reward_model": {"style": "rule", "ground_truth": "5"}}])
    pq.write_table(table, tmp_path / "train.parquet")
    rows = load_rows(str(tmp_path / "train.parquet"))
    assert [r.ground_truth for r in rows] == ["4", "5"]
    assert rows[0].prompt == [{"role": "user", "content": "What is 2+2?"}]
    assert rows[0].extra_info == {"split": "train", "index": 7}


def test_field_map_with_dotted_paths(tmp_path):
    raw = [{"question": "1+1?", "answer": 2, "meta": {"src": "toy", "info": {"level": 1}}}]
    path = _write_jsonl(tmp_path / "q.jsonl", raw)
    fmap = {"prompt": "question", "ground_truth": "answer", "data_source": "meta.src", "extra_info": "meta.info"}
    (row,) = load_rows(str(path), field_map=fmap)
    # numeric answer -> "2"; the other columns stay as read (the prompt's column does not)
    assert row == PromptRow("1+1?", "2", "toy", {"level": 1}, 0, columns={"answer": 2, "meta": raw[0]["meta"]})
    # unmapped source falls back to the spec, a missing ground truth is None
    (row,) = load_rows(str(path), field_map={"prompt": "question", "ground_truth": "nope"})
    assert row.data_source == str(path) and row.ground_truth is None and row.extra_info == {}
    with pytest.raises(DataError, match="field_map: unknown field"):
        load_rows(str(path), field_map={"question": "prompt"})


def test_top_level_ground_truth_fallback(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"prompt": "x", "ground_truth": "y"}])
    assert load_rows(str(path))[0].ground_truth == "y"


def test_directory_reads_all_files_sorted(tmp_path):
    _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "b"}])
    _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a1"}, {"prompt": "a2"}])
    pq.write_table(pa.Table.from_pylist([{"prompt": "c"}]), tmp_path / "c.parquet")
    (tmp_path / "notes.txt").write_text("ignored")
    rows = load_rows(str(tmp_path))
    assert [r.prompt for r in rows] == ["a1", "a2", "b", "c"]
    assert [r.index for r in rows] == [0, 1, 2, 3]


def test_directory_with_split_files_picks_the_split(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "tr"}]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist([{"prompt": "te"}]), tmp_path / "test.parquet")
    assert [r.prompt for r in load_rows(str(tmp_path))] == ["tr"]
    assert [r.prompt for r in load_rows(str(tmp_path), split="eval")] == ["te"]
    (tmp_path / "test.parquet").unlink()
    with pytest.raises(DataError, match="none for split 'eval'"):
        load_rows(str(tmp_path), split="eval")


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n\n" + "{not json\n" + json.dumps({"prompt": "ok2"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: bad JSON"):
        load_rows(str(path))


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"question": "no prompt"}, "missing prompt"),
        ({"prompt": 5}, "must be a string or a list"),
        ({"prompt": ""}, "empty prompt"),
        ({"prompt": [{"role": "user"}]}, "message 0"),
        ({"prompt": "x", "reward_model": {"ground_truth": ["a"]}}, "ground truth"),
        ({"prompt": "x", "extra_info": "s"}, "extra_info"),
        ([1, 2], "not an object"),
    ],
)
def test_malformed_rows_raise_with_location(tmp_path, row, match):
    path = _write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataError, match=rf"rows\.jsonl: line 2: .*{match}"):
        load_rows(str(path))


def test_parquet_bad_row_names_row_number(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": None}]), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet: row 2: missing prompt"):
        load_rows(str(tmp_path / "p.parquet"))


def test_skip_mode_counts(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a"}\n{bad\n{"prompt": 3}\n{"prompt": "b"}\n')
    rows = load_rows(str(path), on_error="skip")
    assert [r.prompt for r in rows] == ["a", "b"] and [r.index for r in rows] == [0, 1]
    assert rows.n_skipped == 2
    assert "line 2" in rows.skipped[0] and "line 3" in rows.skipped[1]
    path.write_text("{bad\n")
    with pytest.raises(DataError, match="all 1 rows are malformed"):
        load_rows(str(path), on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        load_rows(str(path), on_error="ignore")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "blank.jsonl"])
def test_empty_dataset_raises_naming_source(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n\n" if name.startswith("blank") else "")
    with pytest.raises(DataError, match=rf"{name}.*empty"):
        load_rows(str(path))
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(DataError, match=r"e\.json.*empty"):
        load_rows(str(tmp_path / "e.json"))


def test_missing_paths_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(str(tmp_path / "x.csv"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=r"no .* files"):
        load_rows(str(tmp_path / "sub"))


def test_hub_failure_is_wrapped():
    with pytest.raises(DataError, match=r"could not load 'no-such-org/no-such-dataset'.*hub"):
        load_rows("no-such-org/no-such-dataset")
