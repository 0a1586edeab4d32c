"""A custom reward in TRL's convention: f(prompts, completions, **kwargs) -> list of floats."""


def length_match(prompts, completions, ground_truth, **kwargs):
    """1 when the completion has as many characters as the ground truth; None without one."""
    return [None if gt is None else float(len(c) == len(gt)) for c, gt in zip(completions, ground_truth)]


def uses_columns(prompts, completions, level, **kwargs):
    """Reads an extra_info key as its own column."""
    return [float(lv) for lv in level]


def fragile(prompts, completions, **kwargs):
    """Fails as a whole when any completion is 'raise' (the pool then retries one by one)."""
    if "raise" in completions:
        raise ValueError("boom in a batch")
    return [1.0] * len(completions)


def hangs_on(prompts, completions, **kwargs):
    """Blocks for ever (no CPU) when any completion is 'hang': the whole batch call hangs."""
    if "hang" in completions:
        import threading

        threading.Event().wait()
    return [1.0] * len(completions)
