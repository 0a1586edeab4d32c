"""The embedded addition task: correct solutions score 1, wrong ones 0, splits are disjoint."""

import random

import pytest

from entropo.data import embedded
from entropo.models.tiny import build_char_tokenizer


def test_solution_format_examples():
    p = {"extra_info": {"a": 12, "b": 345}}
    assert embedded.solution_text(p) == "<think>2+5+0=7,1+4+0=5,0+3+0=3</think>357"
    # carries: 8+6=14 carries 1 into 7+5+1=13, which carries 1 into 6+4+1=11 -> 1134
    p = {"extra_info": {"a": 678, "b": 456}}
    assert embedded.solution_text(p) == "<think>8+6+0=14,7+5+1=13,6+4+1=11</think>1134"
    assert embedded.solution_text({"extra_info": {"a": 0, "b": 0}}) == "<think>0+0+0=0</think>0"


def test_make_problem():
    problem = embedded.make_problem(random.Random(0), digits=3)
    a, b = problem["extra_info"]["a"], problem["extra_info"]["b"]
    assert problem["prompt"] == f"{a}+{b}=?"
    assert problem["ground_truth"] == str(a + b)
    assert problem["data_source"] == "embedded/addition"
    with pytest.raises(ValueError, match="digits"):
        embedded.make_problem(random.Random(0), digits=0)


@pytest.mark.parametrize("digits", [1, 2, 3, 5])
def test_solution_scores_one(digits):
    rng = random.Random(digits)
    for _ in range(300):
        problem = embedded.make_problem(rng, digits)
        solution = embedded.solution_text(problem)
        assert embedded.score(solution, problem["ground_truth"]) == 1.0
        assert embedded.score(solution + " \n", problem["ground_truth"]) == 1.0  # stripped


def test_wrong_or_unfinished_answers_score_zero():
    problem = {"extra_info": {"a": 12, "b": 345}, "ground_truth": "357"}
    good = embedded.solution_text(problem)
    assert embedded.score(good.replace("</think>357", "</think>358"), "357") == 0.0
    assert embedded.score(good.replace("</think>357", "</think>0357"), "357") == 0.0
    assert embedded.score("<think>2+5+0=7 357", "357") == 0.0  # no </think>
    assert embedded.score("357", "357") == 0.0
    assert embedded.extract_answer("357") is None
    assert embedded.extract_answer("<think>a</think>1</think> 2 ") == "2"  # the last one
    assert embedded.score("<think></think>357<eos>", "357") == 0.0  # responses arrive without EOS


def test_splits_deterministic_distinct_and_disjoint():
    train = embedded.make_split(2000, seed=0, digits=3, split="train")
    assert train == embedded.make_split(2000, seed=0, digits=3, split="train")
    assert train != embedded.make_split(2000, seed=1, digits=3, split="train")
    # eval with the same seed or another one: never a train prompt
    train_prompts = {p["prompt"] for p in train}
    assert len(train_prompts) == 2000
    for seed in (0, 1):
        evals = embedded.make_split(200, seed=seed, digits=3, split="eval")
        assert len({p["prompt"] for p in evals}) == 200
        assert not train_prompts & {p["prompt"] for p in evals}
    assert all(embedded.split_of(p) == "train" for p in train_prompts)


def test_small_digit_space_fails_clearly():
    assert len(embedded.make_split(5, seed=0, digits=1, split="eval")) == 5
    with pytest.raises(ValueError, match="digits=1"):
        embedded.make_split(100, seed=0, digits=1, split="train")  # ~90 train problems exist
    with pytest.raises(ValueError, match="split"):
        embedded.make_split(5, seed=0, split="test")


def test_prompt_and_solution_tokenize_without_unk():
    tok = build_char_tokenizer()
    rng = random.Random(0)
    think_close = tok.convert_tokens_to_ids("</think>")
    for _ in range(200):
        problem = embedded.make_problem(rng, 3)
        text = problem["prompt"] + embedded.solution_text(problem)
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert ids.count(think_close) == 1
        assert tok.decode(ids) == text
