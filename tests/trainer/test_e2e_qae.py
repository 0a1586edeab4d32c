"""The ``qae`` recipe (QAE on DAPO's pieces) trains end to end on the embedded task: the
quantile baseline's metrics are logged and agree with each other and with the advantages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from entropo.config import load_config
from tests.metrics_doc import undocumented

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "qae.yaml"


def test_qae_recipe_trains_on_the_embedded_task(ray_session, tmp_path):
    from entropo.trainer.run import train

    # the embedded warm-started model: its rewards vary within groups, so QAE's gate has work
    cfg = load_config(RECIPE, [
        f"trainer.output_dir={tmp_path}", "trainer.total_steps=2", "trainer.prompts_per_step=4",
        "learner.micro_batch_size=8",
        "logger.backends=[jsonl]", "reward.mode=local", "evaluation.max_prompts=8", "rollout.workers=1",
        "learner.ranks=1",
    ])
    assert train(cfg)["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("qae/baseline_mean", "qae/pos_frac", "qae/neg_frac", "qae/hard_frac", "qae/easy_frac",
                    "actor/pg_loss", "actor/grad_norm"):
            assert math.isfinite(row[key]), key
        assert 0.0 <= row["qae/baseline_mean"] <= 1.0  # a quantile of {0, 1} rewards
        # every response has A > 0, A < 0 or A = 0
        assert row["qae/pos_frac"] + row["qae/neg_frac"] + row["adv/zero_frac"] == pytest.approx(1.0, abs=1e-6)
        assert row["qae/hard_frac"] + row["qae/easy_frac"] <= 1.0 + 1e-6
        assert row["actor/grad_norm"] > 0
    # with binary rewards every non-zero A is ±(1 − b)/std or ±b/std of a group with c of 8 correct:
    # under b = 0 (a hard group) the largest is 1/std_c, std_c² = c(8 − c)/(8·7)
    hard_values = [1 / (math.sqrt(c * (8 - c) / 56) + 1e-6) for c in range(1, 8)]
    hard_rows = [row for row in rows if row["qae/hard_frac"] == 1.0]
    assert hard_rows, "the warm-started model's groups were all hard in both steps when this was written"
    for row in hard_rows:
        assert min(abs(row["adv/max"] - v) for v in hard_values) < 1e-5, row["adv/max"]
    assert undocumented({k for r in rows for k in r}) == [], "add them to docs/metrics.md"
