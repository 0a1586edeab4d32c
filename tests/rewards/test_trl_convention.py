"""TRL's reward-function interface as TRL's ``GRPOTrainer`` calls it: conversational prompts and
completions, every dataset column as a keyword list, ``completion_ids``, ``trainer_state``; and
TRL's documented example rewards, unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entropo.rewards import RewardManager
from entropo.rewards.api import Sample, TrainerState
from entropo.rewards.loader import trl_kwargs
from tests.rewards.helpers import reward_cfg

CUSTOM = os.path.relpath(Path(__file__).parent / "custom", Path.cwd())
MESSAGES = [{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": "What is 1+1?"}]
STATE = TrainerState(global_step=3, max_steps=10)


def _conversational(response: str, solution: str, **columns) -> Sample:
    return Sample(prompt="<rendered>", response=response, response_ids=[7, 8], ground_truth=None,
                  data_source="toy", messages=MESSAGES, columns={"solution": solution, **columns},
                  trainer_state=STATE)


def test_kwargs_of_a_conversational_dataset():
    samples = [_conversational("<think>a</think><answer>2</answer>", "$2$", level=1),
               _conversational("3", "$2$")]  # a row without the 'level' column
    kw = trl_kwargs(samples)
    assert kw["prompts"] == [MESSAGES, MESSAGES]
    assert kw["completions"] == [[{"role": "assistant", "content": "<think>a</think><answer>2</answer>"}],
                                 [{"role": "assistant", "content": "3"}]]
    assert kw["completion_ids"] == [[7, 8], [7, 8]]
    assert kw["solution"] == ["$2$", "$2$"] and kw["level"] == [1, None]
    assert kw["trainer_state"] is STATE and kw["trainer_state"].global_step == 3


def test_kwargs_of_a_standard_dataset_and_our_fields():
    s = Sample(prompt="1+1=", response="2", response_ids=[5], ground_truth="2", data_source="toy",
               extra_info={"split": "train"}, columns={"prompt_id": 9})
    kw = trl_kwargs([s])
    assert kw["prompts"] == ["1+1="] and kw["completions"] == ["2"]  # strings, as TRL's standard format
    assert kw["prompt_id"] == [9] and kw["ground_truth"] == ["2"] and kw["split"] == ["train"]
    assert kw["trainer_state"] is None
    # a dataset column wins over our row fields of the same name
    s2 = Sample(prompt="p", response="r", response_ids=[], ground_truth="ours", data_source="toy",
                columns={"ground_truth": "theirs"})
    assert trl_kwargs([s2])["ground_truth"] == ["theirs"]


@pytest.mark.distributed
def test_trl_documented_example_rewards_run_unchanged(ray_session):
    """In Ray workers (the default reward.mode): math-verify's parse times out with
    signal.alarm, which works only in a process's main thread, not in local mode's threads."""
    samples = [_conversational("<think>1+1 is 2</think><answer>$2$</answer>", "$2$"),
               _conversational("<think>hm</think><answer>$3$</answer>", "$2$"),
               _conversational("no tags, 2", "$2$"),
               _conversational("anything", "not latex at all")]  # gold unparsable: None
    cfg = reward_cfg([f"{CUSTOM}/trl_examples.py:accuracy_reward", f"{CUSTOM}/trl_examples.py:format_reward*0.5"],
                     mode="ray", workers=1, worker_cpus=0.5)
    with RewardManager(cfg) as rm:
        res = rm.score(samples)
    assert res.metrics["reward/errors"] == 0.0
    assert res.metrics["reward/skipped"] == 1.0  # accuracy's None for the unparsable solution
    assert res.components["accuracy_reward"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert res.components["format_reward"].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert res.correct.tolist() == [1.0, 0.0, 1.0, 0.0]  # total >= 1.0: the format half alone is not


def test_missing_column_is_one_error_naming_the_keyword(capfd):
    """A TRL function asking for a column the dataset lacks fails on its samples, with the reason."""
    s = Sample(prompt="p", response="r", response_ids=[], ground_truth=None, data_source="toy")
    with RewardManager(reward_cfg([f"{CUSTOM}/trl_examples.py:accuracy_reward"])) as rm:
        res = rm.score([s])
    assert res.failures[0].failed == 1
    assert "solution" in res.failures[0].first
    assert "solution" in capfd.readouterr().err


@pytest.mark.parametrize("column", ["completion", "completion_ids"])
def test_trl_never_passes_these_dataset_columns(tmp_path, column):
    from entropo.data.loading import load_rows

    path = tmp_path / "d.jsonl"
    path.write_text(f'{{"prompt": "x", "{column}": "y", "solution": "1"}}\n')
    (row,) = load_rows(str(path))
    assert row.columns == {"solution": "1"}
