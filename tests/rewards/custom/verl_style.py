"""A custom reward in verl's convention: compute_score(data_source, solution_str, ground_truth, extra_info)."""


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if data_source == "as_dict":
        return {"score": 2.0, "acc": 1.0, "pred": "a string is ignored", "bonus": 0.5}
    return 1.0 if solution_str.strip() == ground_truth else 0.0
