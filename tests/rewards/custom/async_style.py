"""Async custom rewards, one per convention."""

import asyncio


async def native(sample):
    await asyncio.sleep(0.01)
    if sample.response == "hang":
        await asyncio.sleep(3600)
    return float(sample.response == sample.ground_truth)


async def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    await asyncio.sleep(0)
    return {"score": float(solution_str == ground_truth)}


async def trl(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]
