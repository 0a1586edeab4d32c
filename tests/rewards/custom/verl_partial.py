"""A verl ``compute_score`` that gives format credit: 0.1 for any answer, 1.0 for a right one."""


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's custom-reward signature; the partial credit is not correctness."""
    answer = solution_str.rsplit("</think>", 1)[-1].strip()
    return 1.0 if answer == ground_truth else 0.1
