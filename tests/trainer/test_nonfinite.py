"""A learning rate that breaks the numerics stops the run in one line naming the step, with
nothing non-finite synced or checkpointed, and metrics.jsonl one line per completed step."""

from __future__ import annotations

import json

import pytest

from entropo.config import load_config
from tests.trainer.test_runtime import DIGITS

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.mark.parametrize(("lr", "ranks", "message", "completed"), [
    # Adam moves every weight by ~lr: 1e39 overflows float32 at the first update (ZeRO-3 partitions)
    ("1e39", 2, "step 1: the update gave NaN/inf weights on 2 learner rank(s); these weights were neither synced", 0),
    # 1e30 keeps them finite but the next rollout's logits overflow
    ("1e30", 1, "step 2: the rollout's next-token probabilities are NaN/inf", 1),
])
def test_a_runaway_learning_rate_stops_in_one_line(ray_session, tiny_model_dir, tmp_path, lr, ranks, message,
                                                   completed):
    from entropo.trainer.errors import RunError
    from entropo.trainer.run import train

    cfg = load_config(overrides=[
        f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path}", "trainer.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=12", "learner.micro_batch_size=4", f"learner.lr={lr}",
        "logger.backends=[jsonl]", "reward.mode=local", "evaluation.max_prompts=8", "trainer.total_steps=3",
        "trainer.save_every=1", f"learner.ranks={ranks}", f"learner.zero_stage={3 if ranks == 2 else 0}",
        f"reward.fns=[{DIGITS}]",
    ])
    with pytest.raises(RunError) as e:
        train(cfg)
    text = str(e.value)
    assert text.startswith(message) and "\n" not in text and f"learner.lr (now {float(lr):g})" in text
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(completed + 1))  # the evaluation, then each completed step
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) if (tmp_path / "checkpoints").exists() else []
    assert saved == [f"step_{s:06d}" for s in range(1, completed + 1)]  # none of the failed step
