"""Reward functions with variance for a random tiny model (loaded by path in tests)."""


def digit_fraction(sample):
    """Native convention: the fraction of digits in the response; ``acc`` = it closed its thinking."""
    text = sample.response
    return {"score": sum(c.isdigit() for c in text) / max(len(text), 1), "acc": float("</think>" in text)}


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl convention: 1 when the response contains the first digit of the ground truth."""
    return {"score": float(bool(ground_truth) and ground_truth[0] in solution_str)}


def length_penalty(prompts, completions, **columns):
    """TRL convention: a small penalty growing with the completion length."""
    return [-len(c) / 1000.0 for c in completions]


def trl_spy(prompts, completions, completion_ids, trainer_state, spy_path, solution, **kwargs):
    """TRL convention, weight 0 in the tests: appends what TRL's interface handed it to the file
    named by the dataset's ``spy_path`` column (a column, so Ray reward workers see it too)."""
    import json

    with open(spy_path[0], "a") as f:
        f.write(json.dumps({"prompts": prompts, "completions": completions, "n_ids": [len(c) for c in completion_ids],
                            "solution": solution, "step": trainer_state.global_step,
                            "is_eval": trainer_state.is_eval}) + "\n")
    return [0.0] * len(completions)
