"""Load prompt datasets into one row type, :class:`PromptRow`, with errors that say where.

Why one loader: ``data.train`` / ``data.eval`` accept several forms, and a malformed row
should fail before any actor starts, naming the file and row, not as a ``KeyError`` in a
rollout worker an hour later.

Accepted ``spec`` forms (:func:`load_rows`):

- ``embedded:addition``: the built-in task (:mod:`entropo.data.embedded`). Options go after
  ``?`` as a query string: ``embedded:addition?digits=2&n=500&seed=3``. Defaults: digits=3,
  n=2000 / seed=0 for train, n=200 / seed=1 for eval. Train and eval never overlap.
- a ``.jsonl``, ``.json`` or ``.parquet`` file. A ``.json`` file holds an array of rows, an
  object ``{"data": [rows]}``, or JSON lines. ``split`` is ignored for a single file.
- a directory: its ``.jsonl``/``.json``/``.parquet`` files (not recursive), sorted by name.
  When some file names start with a split name (``train``, ``test``, ``eval``, ``validation``,
  ``valid``, ``val``, ``dev``, followed by ``.``, ``-`` or ``_``, as in verl's
  ``train.parquet``/``test.parquet`` or the hub's ``train-00000-of-00001.parquet``), only
  the files of the requested split are read (``eval`` matches test/eval/validation/valid/
  val/dev); otherwise every file is read.
- anything else: a ``datasets`` hub name, ``datasets.load_dataset(name, split=...)``, with
  ``split="eval"`` read as the hub split ``test``; ``?name=<config>&split=<split>`` override
  both. (Needs network access or a populated HF cache.)

Row layout: verl's, as is: ``prompt`` (a string, or chat messages ``[{"role", "content"}]``),
``data_source``, ``reward_model.ground_truth``, ``extra_info``. ``field_map`` points the
four fields elsewhere with dotted paths, e.g. ``{"prompt": "question", "ground_truth":
"answer"}``. Unless mapped, ``ground_truth`` falls back to a top-level ``ground_truth``
column; a missing ground truth is None (some reward functions need none); a missing
``data_source`` becomes ``spec``; a missing ``extra_info`` becomes ``{}``. Numeric ground
truths become strings. Every top-level column except the prompt's and TRL's ``completion``
is kept as is in ``PromptRow.columns`` (TRL passes them to reward functions as keyword
lists, e.g. ``solution``).

Errors: a malformed row (bad JSON, not an object, missing or empty prompt, wrong field type)
raises :class:`DataError` naming the file and the row (``line N`` for JSON lines, counting
blank lines; ``row N`` otherwise; both 1-based). With ``on_error="skip"`` such rows are
dropped, logged, and reported in the returned :class:`LoadedRows` (``n_skipped``,
``skipped``). A dataset with no rows, or no valid rows, always raises.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from entropo.data import embedded

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
EMBEDDED_PREFIX = "embedded:"
EVAL_SPLIT_NAMES = ("eval", "test", "validation", "valid", "val", "dev")
FIELDS = ("prompt", "ground_truth", "data_source", "extra_info")
DEFAULT_FIELD_MAP = {
    "prompt": "prompt",
    "ground_truth": "reward_model.ground_truth",
    "data_source": "data_source",
    "extra_info": "extra_info",
}
NOT_COLUMNS = ("completion", "completion_ids")
"""Columns TRL never passes to reward functions (besides the prompt)."""
EMBEDDED_DEFAULTS = {"train": {"n": 2000, "seed": 0, "digits": embedded.DIGITS},
                     "eval": {"n": 200, "seed": 1, "digits": embedded.DIGITS}}
_MISSING = object()


class DataError(ValueError):
    """A dataset that cannot be used; the message names the source (and row, if one is at fault)."""


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a dataset.

    Attributes:
        prompt: a plain string, or chat messages ``[{"role": ..., "content": ...}, ...]``.
        ground_truth: the reference answer the reward function checks, or None.
        data_source: the dataset name reward functions may dispatch on (verl convention).
        extra_info: any other per-row data, passed to reward functions.
        index: the row's position in the loaded list (0-based, after skipped rows).
        columns: the row's top-level columns other than the prompt's and ``completion``, as
            read (TRL hands these to reward functions; empty for the embedded task).
    """

    prompt: str | list[dict[str, Any]]
    ground_truth: str | None
    data_source: str
    extra_info: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    columns: dict[str, Any] = field(default_factory=dict)


class LoadedRows(list[PromptRow]):
    """The rows :func:`load_rows` returns: a plain list plus what was skipped.

    Attributes:
        n_skipped: malformed rows dropped with ``on_error="skip"`` (0 otherwise).
        skipped: one message per dropped row, naming file and row.
    """

    def __init__(self, rows: list[PromptRow], skipped: list[str] | None = None) -> None:
        super().__init__(rows)
        self.skipped: list[str] = list(skipped or [])

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


# ---------------------------------------------------------------------------------------
# row conversion


class _RowError(Exception):
    """A malformed row; the caller adds the location."""


def _get(raw: dict[str, Any], path: str) -> Any:
    value: Any = raw
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _check_prompt(prompt: Any, path: str) -> str | list[dict[str, Any]]:
    if prompt is _MISSING or prompt is None:
        raise _RowError(f"missing prompt (field '{path}')")
    if isinstance(prompt, str):
        if not prompt:
            raise _RowError(f"empty prompt (field '{path}')")
        return prompt
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise _RowError(f"empty prompt message list (field '{path}')")
        for i, message in enumerate(prompt):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise _RowError(
                    f"prompt message {i} (field '{path}') is not {{'role': str, 'content': str}}"
                )
        return [dict(m) for m in prompt]
    raise _RowError(
        f"prompt (field '{path}') must be a string or a list of chat messages, "
        f"got {type(prompt).__name__}"
    )


def _to_row(raw: Any, field_map: dict[str, str], explicit: set[str], default_source: str) -> PromptRow:
    if not isinstance(raw, dict):
        raise _RowError(f"row is a {type(raw).__name__}, not an object")
    prompt = _check_prompt(_get(raw, field_map["prompt"]), field_map["prompt"])

    truth = _get(raw, field_map["ground_truth"])
    if truth is _MISSING and "ground_truth" not in explicit:
        truth = _get(raw, "ground_truth")
    if truth is _MISSING:
        truth = None
    elif isinstance(truth, (int, float)) and not isinstance(truth, bool):
        truth = str(truth)
    elif truth is not None and not isinstance(truth, str):
        raise _RowError(
            f"ground truth (field '{field_map['ground_truth']}') must be a string or a number, "
            f"got {type(truth).__name__}"
        )

    source = _get(raw, field_map["data_source"])
    if source is _MISSING or source is None:
        source = default_source
    elif not isinstance(source, str):
        raise _RowError(f"data_source (field '{field_map['data_source']}') must be a string")

    extra = _get(raw, field_map["extra_info"])
    if extra is _MISSING or extra is None:
        extra = {}
    elif not isinstance(extra, dict):
        raise _RowError(f"extra_info (field '{field_map['extra_info']}') must be an object")
    dropped = {field_map["prompt"].split(".")[0], *NOT_COLUMNS}
    columns = {k: v for k, v in raw.items() if k not in dropped}
    return PromptRow(prompt=prompt, ground_truth=truth, data_source=source, extra_info=dict(extra),
                     columns=columns)


# ---------------------------------------------------------------------------------------
# sources: each yields (location, raw row), location like "data/a.jsonl: line 3"


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, _RowError(f"bad JSON ({e.msg} at column {e.colno})")


def _read_file(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            for i, raw in enumerate(rows, start=1):
                yield f"{path}: row {i}", raw
            return
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # pyarrow's errors are ValueErrors
        raise DataError(f"{path}: cannot read: {e}") from e
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, text)
        return
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values: JSON lines in a .json file
            yield from _read_jsonl(path, text)
            return
        raise DataError(f"{path}: bad JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON array of rows or {{"data": [rows]}}')
    for i, raw in enumerate(data, start=1):
        yield f"{path}: row {i}", raw


def _is_eval(split: str) -> bool:
    return split.lower() in EVAL_SPLIT_NAMES


def _split_kind(split: str, source: str) -> str:
    """``train`` or ``eval``; anything else is an error naming ``source``."""
    if split.lower() == "train":
        return "train"
    if _is_eval(split):
        return "eval"
    raise DataError(f"{source}: unknown split '{split}'; use train or eval ({', '.join(EVAL_SPLIT_NAMES)})")


def file_split(path: Path) -> str | None:
    filename = path.name.lower()
    for name in ("train", *EVAL_SPLIT_NAMES):
        if filename.startswith(name) and filename[len(name):len(name) + 1] in (".", "-", "_"):
            return "train" if name == "train" else "eval"
    return None


def _directory_files(directory: Path, split: str) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES)
    if not files:
        raise DataError(f"{directory}: no {'/'.join(FILE_SUFFIXES)} files in this directory")
    splits = {p: file_split(p) for p in files}
    if not any(splits.values()):
        return files
    chosen = [p for p in files if splits[p] == _split_kind(split, str(directory))]
    if not chosen:
        named = ", ".join(p.name for p in files if splits[p])
        raise DataError(f"{directory}: split files ({named}) but none for split '{split}'")
    return chosen


def _read_hub(spec: str, split: str) -> Iterator[tuple[str, Any]]:
    name, _, query = spec.partition("?")
    options = dict(parse_qsl(query))
    unknown = set(options) - {"name", "split"}
    if unknown:
        raise DataError(f"{spec}: unknown option(s) {', '.join(sorted(unknown))}; known: name, split")
    hub_split = options.get("split", "test" if _is_eval(split) else split)
    try:
        import datasets

        ds = datasets.load_dataset(name, options.get("name"), split=hub_split)
    except Exception as e:  # any failure of the hub path means "this spec is unusable"
        raise DataError(
            f"could not load '{spec}': it is not an embedded task, a local file or a directory, "
            f"and loading it as a hub dataset (split '{hub_split}') failed: {type(e).__name__}: {e}"
        ) from e
    for i, raw in enumerate(ds, start=1):
        yield f"{name} [{hub_split}]: row {i}", raw


def looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(FILE_SUFFIXES)


def _embedded_rows(spec: str, split: str) -> list[PromptRow]:
    task, _, query = spec[len(EMBEDDED_PREFIX):].partition("?")
    if task != "addition":
        raise DataError(f"{spec}: unknown embedded task '{task}'; known: {EMBEDDED_PREFIX}addition")
    which = _split_kind(split, spec)
    options = dict(EMBEDDED_DEFAULTS[which])
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in options:
            raise DataError(f"{spec}: unknown option '{key}'; known: {', '.join(options)}")
        try:
            options[key] = int(value)
        except ValueError:
            raise DataError(f"{spec}: option {key}={value!r} is not an integer") from None
    try:
        problems = embedded.make_split(options["n"], options["seed"], options["digits"], split=which)
    except ValueError as e:
        raise DataError(f"{spec}: {e}") from e
    if not problems:
        raise DataError(f"{spec}: no rows (n=0)")
    return [
        PromptRow(p["prompt"], p["ground_truth"], p["data_source"], p["extra_info"], index=i)
        for i, p in enumerate(problems)
    ]


# ---------------------------------------------------------------------------------------
# entry point


def load_rows(
    spec: str,
    split: str = "train",
    field_map: dict[str, str] | None = None,
    on_error: str = "raise",
) -> LoadedRows:
    """Load a dataset as :class:`PromptRow` s (the forms of ``spec`` are in the module docstring).

    Args:
        spec: ``embedded:<task>[?options]``, a file, a directory or a hub dataset name.
        split: ``train`` or ``eval`` (also test/validation/...); picks the embedded split,
            the split files of a directory, or the hub split. Ignored for a single file.
        field_map: where each of ``prompt``, ``ground_truth``, ``data_source`` and
            ``extra_info`` is in a raw row, as dotted paths; unmapped fields use verl's layout.
        on_error: ``raise`` (a malformed row raises :class:`DataError`) or ``skip`` (it is
            dropped and recorded in the result's ``skipped``).

    Returns:
        The rows, ``index`` = position, as a list with ``n_skipped`` and ``skipped``.

    Raises:
        DataError: an unreadable source, a malformed row (with ``on_error="raise"``), or no
            valid rows.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got '{on_error}'")
    if spec.startswith(EMBEDDED_PREFIX):
        if field_map:
            raise DataError(f"{spec}: field_map does not apply to an embedded task")
        return LoadedRows(_embedded_rows(spec, split))

    unknown = set(field_map or {}) - set(FIELDS)
    if unknown:
        raise DataError(f"field_map: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(FIELDS)}")
    fmap = {**DEFAULT_FIELD_MAP, **(field_map or {})}

    path = Path(spec).expanduser()
    if path.is_dir():
        sources: Iterator[tuple[str, Any]] = (
            item for f in _directory_files(path, split) for item in _read_file(f)
        )
    elif path.is_file():
        if path.suffix not in FILE_SUFFIXES:
            raise DataError(f"{spec}: unsupported file type '{path.suffix}'; use {', '.join(FILE_SUFFIXES)}")
        sources = _read_file(path)
    elif looks_local(spec):
        raise DataError(f"{spec}: no such file or directory")
    else:
        sources = _read_hub(spec, split)

    rows: list[PromptRow] = []
    skipped: list[str] = []
    n_seen = 0
    for where, raw in sources:
        n_seen += 1
        try:
            if isinstance(raw, _RowError):
                raise raw
            row = _to_row(raw, fmap, set(field_map or {}), default_source=spec)
        except _RowError as e:
            message = f"{where}: {e}"
            if on_error == "raise":
                raise DataError(message) from None
            skipped.append(message)
            continue
        rows.append(dataclasses.replace(row, index=len(rows)))

    if n_seen == 0:
        raise DataError(f"{spec}: the dataset is empty")
    if not rows:
        raise DataError(f"{spec}: all {n_seen} rows are malformed; first: {skipped[0]}")
    if skipped:
        log.warning("%s: skipped %d malformed row(s) of %d; first: %s", spec, len(skipped), n_seen, skipped[0])
    return LoadedRows(rows, skipped)
