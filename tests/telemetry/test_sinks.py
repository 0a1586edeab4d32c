"""Metric sinks: each backend's output is read back with that backend's own reader."""

import io
import json
import math
import re
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from rich.console import Console

from entropo.telemetry.sinks import (
    ConsoleSink,
    JsonlSink,
    MetricSink,
    MultiSink,
    TensorBoardSink,
    _fmt_duration,
    make_sinks,
)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------
# jsonl


def test_jsonl_values_read_back_exactly(tmp_path):
    sink = JsonlSink(tmp_path)
    # 0.1 and 1/3 have no short binary form: json must round-trip the full double.
    sink.log(1, {"entropy/mean": 0.1, "reward/mean": 1 / 3, "actor/pg_loss": -2.5e-7})
    sink.log(2, {"entropy/mean": torch.tensor(0.75), "reward/mean": np.float32(0.5), "count": 3})
    rows = _read_jsonl(tmp_path / "metrics.jsonl")  # readable before close: flushed per step
    sink.close()
    assert rows == [
        {"step": 1, "entropy/mean": 0.1, "reward/mean": 1 / 3, "actor/pg_loss": -2.5e-7},
        {"step": 2, "entropy/mean": 0.75, "reward/mean": 0.5, "count": 3.0},
    ]
    assert (tmp_path / "metrics.jsonl").read_text().startswith('{"step": 1, ')
    assert all(type(v) is float for row in rows for k, v in row.items() if k != "step")


def test_jsonl_non_finite_is_null(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.log(1, {"a": float("nan"), "b": float("inf"), "c": -math.inf, "d": 1.0})
    sink.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    assert json.loads(text) == {"step": 1, "a": None, "b": None, "c": None, "d": 1.0}


def test_jsonl_resume_drops_steps_from_start_step(tmp_path):
    sink = JsonlSink(tmp_path)
    for step in range(1, 6):
        sink.log(step, {"x": float(step)})
    sink.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "x": 6.')  # a line cut by a crash

    sink = JsonlSink(tmp_path, start_step=4)
    assert [r["step"] for r in _read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    for step in range(4, 7):
        sink.log(step, {"x": 10.0 * step})
    sink.close()
    rows = _read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["x"]) for r in rows] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)
    ]


def test_jsonl_fresh_start_drops_everything(tmp_path):
    JsonlSink(tmp_path).log(1, {"x": 1.0})
    sink = JsonlSink(tmp_path)  # start_step=0: a fresh run in an old directory
    sink.log(1, {"x": 2.0})
    sink.close()
    assert _read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "x": 2.0}]


# ---------------------------------------------------------------------------------------
# tensorboard


def _accumulator(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_histograms_tables_read_back(tmp_path):
    sink = TensorBoardSink(tmp_path)
    values = {1: (0.5, -1.25), 2: (0.25, 3.0), 3: (0.125, 0.1)}
    for step, (ent, loss) in values.items():
        sink.log(step, {"entropy/mean": ent, "actor/pg_loss": loss})
    sink.log_histogram(3, "entropy/tokens", torch.tensor([0.0, 1.0, 2.0, 4.0]))
    sink.log_table(3, "samples", ["prompt", "reward"], [["1+1=", 1.0], ["a|b", 0.0]])
    sink.close()

    acc = _accumulator(tmp_path)
    ent = acc.Scalars("entropy/mean")
    assert [(e.step, e.value) for e in ent] == [(1, 0.5), (2, 0.25), (3, 0.125)]
    loss = acc.Scalars("actor/pg_loss")
    # TensorBoard stores float32: compare with the float32 rounding of each value.
    assert [e.value for e in loss] == [float(np.float32(v[1])) for v in values.values()]
    (hist,) = acc.Histograms("entropy/tokens")
    assert (hist.step, hist.histogram_value.num, hist.histogram_value.min, hist.histogram_value.max) == (3, 4, 0, 4)
    assert hist.histogram_value.sum == 7.0
    (text,) = acc.Tensors("samples/text_summary")
    md = text.tensor_proto.string_val[0].decode()
    assert md.splitlines()[0] == "| prompt | reward |" and "a\\|b" in md


def test_tensorboard_resume_purges_later_steps(tmp_path):
    sink = TensorBoardSink(tmp_path)
    for step in range(1, 6):
        sink.log(step, {"x": float(step)})
    sink.close()
    sink = TensorBoardSink(tmp_path, start_step=4)
    for step in range(4, 7):
        sink.log(step, {"x": 10.0 * step})
    sink.close()
    assert [(e.step, e.value) for e in _accumulator(tmp_path).Scalars("x")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)
    ]


# ---------------------------------------------------------------------------------------
# wandb (offline, read back from the run's .wandb transaction log)

# wandb 0.31 ships no Python reader for .wandb files (the old
# wandb.sdk.internal.datastore is gone; wandb-core, in Go, writes them). The format is
# LevelDB's log format with a 7-byte file header: ":W&B", magic 0xBEE1, version 0; then
# 32 KiB blocks of chunks, each <crc32:u32><length:u16><type:u8> + payload, where
# type 1 = full, 2 = first, 3 = middle, 4 = last, and crc32 is seeded with crc32(type byte).
# A record is one serialised wandb_internal_pb2.Record.
_W_BLOCK, _W_HEADER = 32768, 7


def _read_wandb_records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:_W_HEADER]) == (b":W&B", 0xBEE1, 0)
    records, pending, i = [], b"", _W_HEADER
    while i + _W_HEADER <= len(data):
        if _W_BLOCK - i % _W_BLOCK < _W_HEADER:  # block trailer: zero padding
            i += _W_BLOCK - i % _W_BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[i : i + _W_HEADER])
        chunk = data[i + _W_HEADER : i + _W_HEADER + length]
        if len(chunk) < length:  # still being written
            break
        i += _W_HEADER + length
        if kind == 0 and length == 0:  # zero-filled tail
            continue
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, f"bad crc at {i}"
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wait_for_wandb_log(path, timeout_s=30.0):
    """The records of a finished run's .wandb file, once its ``exit`` record is on disk.

    wandb 0.31's ``run.finish()`` can return before wandb-core has written the transaction
    log: about 1 in 10 runs here still had a header-only (7-byte) file right after it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        records = _read_wandb_records(path) if path.exists() else []
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _history(records):
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in r.history.item})
    return rows


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in [("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                     ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data"),
                     ("WANDB_ARTIFACT_DIR", "wandb_artifacts")]:
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path / "run"


def test_wandb_offline_run_reads_back(wandb_offline):
    from entropo.telemetry.sinks import WandbSink

    run_dir = wandb_offline
    config = {"algorithm": {"loss": "clip_cov"}, "learner": {"lr": 1e-6}}
    sink = WandbSink(run_dir, project="entropo-test", run_name="tiny", config=config)
    run_id = (run_dir / "wandb_id").read_text().strip()
    for step in (1, 2, 3):
        sink.log(step, {"entropy/mean": 0.5 * step, "reward/mean": 0.1 * step, "timing/step": torch.tensor(2.0)})
    sink.log_table(3, "samples", ["prompt", "response", "reward"], [["1+1=", "2", 1.0], ["2+2=", "5", 0.0]])
    sink.close()

    (offline,) = run_dir.glob("wandb/offline-run-*")
    assert offline.name.endswith(f"-{run_id}")
    records = _wait_for_wandb_log(offline / f"run-{run_id}.wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds, kinds
    run_record = records[kinds.index("run")].run
    assert (run_record.run_id, run_record.project, run_record.display_name) == (run_id, "entropo-test", "tiny")
    stored_config = {it.key: json.loads(it.value_json) for it in run_record.config.update}
    assert stored_config["algorithm"] == {"loss": "clip_cov"}
    # define_metric: every metric is plotted against "step".
    metrics = {r.metric.glob_name or r.metric.name: r.metric for r in records if r.HasField("metric")}
    assert metrics["*"].step_metric == "step"

    rows = _history(records)
    scalar_rows = [row for row in rows if "entropy/mean" in row]
    assert [(r["step"], r["entropy/mean"], r["reward/mean"], r["timing/step"]) for r in scalar_rows] == [
        (1, 0.5, 0.1, 2.0), (2, 1.0, 0.2, 2.0), (3, 1.5, 0.30000000000000004, 2.0)
    ]
    (table_row,) = [row for row in rows if "samples/_type" in row]
    assert (table_row["step"], table_row["samples/_type"], table_row["samples/nrows"]) == (3, "table-file", 2)
    table = json.loads((offline / "files" / table_row["samples/path"]).read_text())
    assert table["columns"] == ["prompt", "response", "reward"]
    assert table["data"] == [["1+1=", "2", 1.0], ["2+2=", "5", 0.0]]

    # A resumed process in the same run directory continues the same wandb run id.
    sink = WandbSink(run_dir, project="entropo-test", run_name="tiny", config=config)
    sink.log(4, {"entropy/mean": 2.0})
    sink.close()
    resumed = [p for p in run_dir.glob("wandb/offline-run-*") if p != offline]
    assert len(resumed) == 1  # wandb names it offline-run-<time>-<id>[-n]
    records = _wait_for_wandb_log(resumed[0] / f"run-{run_id}.wandb")
    assert [r.run.run_id for r in records if r.HasField("run")] == [run_id]
    rows = _history(records)
    assert [(r["step"], r["entropy/mean"]) for r in rows] == [(4, 2.0)]

    # Meta-test of the reader: one flipped payload byte fails its checksum.
    corrupt = bytearray((offline / f"run-{run_id}.wandb").read_bytes())
    corrupt[_W_HEADER * 2 + 1] ^= 0xFF
    (run_dir / "corrupt.wandb").write_bytes(bytes(corrupt))
    with pytest.raises(AssertionError, match="bad crc"):
        _read_wandb_records(run_dir / "corrupt.wandb")


# ---------------------------------------------------------------------------------------
# fan-out and failures


class _Recorder:
    def __init__(self):
        self.calls = []
        self.closed = False

    def log(self, step, metrics):
        self.calls.append((step, metrics))

    def close(self):
        self.closed = True


class _Boom:
    def log(self, step, metrics):
        raise ConnectionError("dashboard down")

    def log_table(self, step, name, columns, rows):
        raise AssertionError("a disabled sink must not be called again")

    def close(self):
        raise AssertionError("a disabled sink is not closed")


def test_failing_sink_is_disabled_with_one_warning():
    good = _Recorder()
    multi = MultiSink([_Boom(), good])
    assert all(isinstance(s, MetricSink) for s in multi.sinks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2, 3):
            multi.log(step, {"x": float(step)})
        multi.log_table(3, "samples", ["a"], [[1]])  # _Recorder has no log_table: skipped
        multi.close()
    assert len(caught) == 1
    assert issubclass(caught[0].category, RuntimeWarning)
    assert "_Boom" in str(caught[0].message) and "dashboard down" in str(caught[0].message)
    assert good.calls == [(1, {"x": 1.0}), (2, {"x": 2.0}), (3, {"x": 3.0})]
    assert good.closed


def test_multisink_converts_values_and_drops_non_numbers_once():
    rec = _Recorder()
    multi = MultiSink([rec])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2):
            multi.log(step, {"t": torch.tensor(1.5), "n": np.float64(0.25), "i": 2, "s": "oops",
                             "v": torch.ones(3)})
    assert rec.calls == [(s, {"t": 1.5, "n": 0.25, "i": 2.0}) for s in (1, 2)]
    assert all(type(v) is float for v in rec.calls[0][1].values())
    assert sorted(str(w.message).split("'")[1] for w in caught) == ["s", "v"]


def test_make_sinks(tmp_path, monkeypatch):
    from entropo.telemetry import sinks as sinks_mod

    assert make_sinks(["jsonl", "console"], tmp_path, 5, "p", "r", {}, is_main=False).sinks == []
    with pytest.raises(ValueError, match="unknown backend 'mlflow'; known: console, jsonl"):
        make_sinks(["mlflow"], tmp_path, 5, "p", "r", {})

    def broken(*args, **kwargs):
        raise OSError("no space")

    monkeypatch.setattr(sinks_mod, "TensorBoardSink", broken)
    with pytest.warns(RuntimeWarning, match="'tensorboard' failed to start"):
        multi = make_sinks(["jsonl", "tensorboard", "jsonl"], tmp_path, 5, "p", "r", {})
    assert [type(s) for s in multi.sinks] == [JsonlSink]
    with multi:
        multi.log(1, {"x": 1.0})
    assert _read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "x": 1.0}]


# ---------------------------------------------------------------------------------------
# console


def test_console_plain_lines_without_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=40)
    assert not console.is_terminal
    sink = ConsoleSink(total_steps=20, console=console)
    for step in (1, 2):
        sink.log(step, {"reward/mean": 0.5 * step, "entropy/mean": 1.23456, "actor/pg_loss": -0.0123456,
                        "response_length/mean": 45.2, "timing/step": 12.34, "other/x": 9.0})
    sink.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one line per step, not wrapped at the 40-column width
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()  # no control codes
    # 3 significant digits; pg_loss and other keys only in the other sinks
    assert lines[0].startswith("[ 1/20] | reward 0.5 | entropy 1.23 | len 45.2 | time 12.3s | eta ")
    assert lines[1].startswith("[ 2/20] | reward 1 |")
    assert "other/x" not in out.getvalue() and "pg_loss" not in out.getvalue()


def test_console_line_shows_accuracy_reward_errors_and_the_last_eval():
    out = io.StringIO()
    sink = ConsoleSink(total_steps=3, console=Console(file=out, force_terminal=False, width=200))
    sink.log(0, {"eval/pass@1": 0.22, "eval/maj@1": 0.22})  # the eval before training: its own step
    sink.log(1, {"reward/mean": 0.5, "reward/accuracy": 0.25, "entropy/mean": 0.2, "reward/error_frac": 0.0})
    sink.log(2, {"reward/mean": 0.0, "reward/accuracy": 0.0, "reward/error_frac": 0.9375})
    sink.log(3, {"reward/mean": 0.5, "eval/pass@1": 0.3125})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[0/3] | eval 0.22@s0 | eta ")
    # error_frac 0: no rerr; the step-0 eval stays on the line
    assert lines[1].startswith("[1/3] | reward 0.5 | acc 0.25 | entropy 0.2 | eval 0.22@s0 | eta ")
    assert lines[2].startswith("[2/3] | reward 0 | acc 0 | rerr 0.94 | eval 0.22@s0 | eta ")
    assert lines[3].startswith("[3/3] | reward 0.5 | eval 0.312@s3 | eta ")  # the newer eval replaces it


def test_console_terminal_line_keeps_the_last_eval():
    out = io.StringIO()
    sink = ConsoleSink(total_steps=3, keys=("reward/mean",), console=Console(file=out, force_terminal=True, width=120))
    sink.log(1, {"reward/mean": 0.25, "eval/pass@1": 0.5, "reward/error_frac": 0.125})
    sink.log(2, {"reward/mean": 0.75})
    sink.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "reward 0.25 | rerr 0.12 | eval 0.5@s1" in text and "reward 0.75 | eval 0.5@s1" in text


def test_console_terminal_bar_prints_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    sink = ConsoleSink(total_steps=3, keys=("reward/mean",), console=console)
    sink.log(1, {"reward/mean": 0.25})
    sink.log(2, {"reward/mean": float("nan")})
    sink.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # drop colours and cursor moves
    assert "reward 0.25" in text and "reward nan" in text and "step 2/3" in text


def test_fmt_duration():
    assert [_fmt_duration(s) for s in (4.4, 65, 3600 * 2 + 61)] == ["4s", "1m05s", "2h01m"]
