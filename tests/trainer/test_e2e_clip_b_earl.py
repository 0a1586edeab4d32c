"""The Clip_B and EARL recipes train end to end (2 steps, tiny model, 2 learner ranks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from entropo.config import load_config
from tests.metrics_doc import undocumented

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DIGITS = f"digits={Path(__file__).parent / 'rewards_for_tests.py'}:digit_fraction"


def _train(recipe, model_dir, tmp_path, *overrides):
    from entropo.trainer.run import train

    cfg = load_config(CONFIGS / recipe, [
        f"model.path={model_dir}", f"trainer.output_dir={tmp_path}", "trainer.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=20", "learner.micro_batch_size=4", "learner.lr=1e-3",
        "logger.backends=[jsonl]", "reward.mode=local", "evaluation.max_prompts=8", "learner.ranks=2",
        "rollout.workers=1", "trainer.total_steps=2", f"reward.fns=[{DIGITS}]", *overrides,
    ])
    assert train(cfg)["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    rows = rows[1:]
    keys = ("entropy_dynamics/predicted_dH", "entropy_dynamics/predicted_dH_adv_pos",
            "entropy_dynamics/predicted_dH_adv_neg", "entropy_dynamics/s_mean", "entropy_dynamics/s_std")
    for row in rows:  # the entropy-discriminator diagnostic is logged every step of every run
        assert all(row.get(k) is not None and math.isfinite(row[k]) for k in keys)
        parts = row["entropy_dynamics/predicted_dH_adv_pos"] + row["entropy_dynamics/predicted_dH_adv_neg"]
        assert parts == pytest.approx(row["entropy_dynamics/predicted_dH"], rel=1e-9, abs=1e-12)
    assert undocumented({k for r in rows for k in r}) == [], "add them to docs/metrics.md"
    return cfg, rows


def test_clip_b_recipe(ray_session, tiny_model_dir, tmp_path):
    # the random tiny model is near uniform (H ≈ ln 90, S spread ≈ 0.01): at the recipe's μ = 2.5
    # nothing stands out, so a smaller μ makes the mask act on this run
    cfg, rows = _train("clip_b.yaml", tiny_model_dir, tmp_path, "algorithm.clip_b.mu=0.5")
    assert cfg.objective().masks[0][0] == "clip_b"
    assert any(row["clip_b/masked_frac"] > 0 for row in rows)
    for row in rows:
        for key in ("clip_b/masked_frac", "clip_b/masked_frac_neg", "clip_b/s_mean", "clip_b/s_std",
                    "clip_b/threshold"):
            assert math.isfinite(row[key]), key
        assert 0.0 <= row["clip_b/masked_frac"] <= row["clip_b/masked_frac_neg"] <= 1.0
        assert row["clip_b/s_std"] > 0
        # one mini-batch per step: Clip_B's S̄ over both ranks is the step batch's S̄ (entropy_dynamics/s_mean)
        assert row["clip_b/s_mean"] == pytest.approx(row["entropy_dynamics/s_mean"], rel=1e-6)
        assert row["clip_b/s_std"] == pytest.approx(row["entropy_dynamics/s_std"], rel=1e-6)
        assert "timing/forward" in row  # S needs π_old before the update: no fused pass


def test_earl_recipe(ray_session, tiny_model_dir, tmp_path):
    cfg, rows = _train("earl.yaml", tiny_model_dir, tmp_path)
    assert cfg.algorithm.high_entropy.stat_scope == "sequence"
    for row in rows:
        # k_i = ⌈0.2·N_i⌉ per response: at least 20% kept, exactly 20% for N_i = 20 (5, 10, 15)
        assert 0.2 - 1e-6 <= row["entropy_mask/keep_frac"] <= 0.3
        assert math.isfinite(row["entropy_mask/threshold"]) and row["entropy_mask/threshold"] > 0
        assert "objective/micro_norm" not in row  # prepared per mini-batch: global denominators
