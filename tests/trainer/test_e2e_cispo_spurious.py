"""configs/cispo.yaml and configs/spurious_reward.yaml train end to end (2 steps, tiny model, 2 ranks).

What each run must have produced: the clip-bias metrics at every step, within their ranges; for
the spurious-reward control, per-step reward means equal to the ``random`` reward's seeded
draws re-computed here from the run's own prompts; every logged key documented.
"""

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
FRACTIONS = ("actor/pg_clipfrac", "actor/clipfrac_pos_adv", "actor/clipfrac_neg_adv")
MASSES = ("actor/clipped_adv_mass_pos", "actor/clipped_adv_mass_neg")


def _recipe(name, model_dir, tmp_path, *overrides):
    """The recipe at the scale of tests/trainer/test_runtime.py's ``_cfg`` (two mini-batches of
    2 prompts per step instead of the recipe's 12, which must divide the 4 prompts)."""
    return load_config(CONFIGS / f"{name}.yaml", [
        f"model.path={model_dir}", f"trainer.output_dir={tmp_path}", "trainer.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=12", "learner.micro_batch_size=4", "learner.lr=1e-3",
        "logger.backends=[jsonl]", "reward.mode=local", "evaluation.max_prompts=8", "logger.forking_every=2",
        "learner.ranks=2", "learner.zero_stage=2", "rollout.workers=1", "trainer.total_steps=2",
        "learner.mini_batch_prompts=2", *overrides,
    ])


def _train(cfg, tmp_path):
    from entropo.trainer.run import train

    summary = train(cfg)
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the evaluation before training
    assert undocumented({k for r in rows for k in r}) == []
    for row in rows[1:]:
        assert row["actor/optimizer_steps"] == 2  # two mini-batches: the second one is off-policy
        assert row["actor/ppo_kl"] != 0.0
        for key in FRACTIONS:
            assert 0.0 <= row[key] <= 1.0, key
        for key in MASSES:
            assert row[key] is not None and math.isfinite(row[key]) and row[key] >= 0.0, key
        assert row["actor/clipfrac_pos_adv"] + row["actor/clipfrac_neg_adv"] <= row["actor/pg_clipfrac"] + 1e-6
        for key in ("entropy/mean", "reward/mean", "actor/pg_loss", "actor/grad_norm"):
            assert row.get(key) is not None and math.isfinite(row[key]), key
    return rows[1:]


def _random_reward_means(cfg) -> list[float]:
    """The ``random`` reward's mean per step, from the run's prompt draws: the sampler the run
    builds (same rows, size, seed), rendered as the controller renders them, n responses each."""
    from entropo.data.prompts import render_prompt
    from entropo.data.sampler import PromptSampler
    from entropo.models.loading import load_tokenizer
    from entropo.rewards.spurious import uniform_draw
    from entropo.trainer.run import prompts

    tok = load_tokenizer(cfg.model.path)
    rows, _ = prompts(cfg, tok)
    sampler = PromptSampler(rows, cfg.trainer.prompts_per_step, cfg.trainer.seed)
    r = cfg.reward.random
    means = []
    for step in range(1, cfg.trainer.total_steps + 1):
        draws = [uniform_draw(r.seed, step, False, render_prompt(row, tok), g, k) < r.p
                 for g, row in enumerate(sampler.next_batch()) for k in range(cfg.rollout.n)]
        means.append(sum(draws) / len(draws))
    return means


def test_cispo_recipe_trains(ray_session, tiny_model_dir, tmp_path):
    # the recipe's reward (embedded) is 0 for every response of the untrained tiny model, so
    # every advantage would be 0; the digit-fraction reward gives the loss something to weigh
    cfg = _recipe("cispo", tiny_model_dir, tmp_path, f"reward.fns=[{DIGITS}]")
    assert cfg.algorithm.loss == "cispo" and cfg.algorithm.cispo.eps_low is None
    for row in _train(cfg, tmp_path):
        # r̂ = min(r, 5) > 0 and the first mini-batch is on-policy (r̂ = 1)
        assert 0.0 < row["cispo/weight_mean"] <= 1.0 + cfg.algorithm.cispo.eps_high
        assert row["actor/grad_norm"] > 0
        assert "actor/pg_clipfrac_dual" not in row


@pytest.mark.parametrize("clip", [True, False], ids=["clipped", "unclipped"])
def test_spurious_reward_recipe_trains(ray_session, tiny_model_dir, tmp_path, clip):
    cfg = _recipe("spurious_reward", tiny_model_dir, tmp_path, f"algorithm.ppo_clip.clip={str(clip).lower()}")
    assert cfg.reward.fns == ["random", "embedded*0"]
    rows = _train(cfg, tmp_path)
    expected = _random_reward_means(cfg)
    assert [row["reward/random/mean"] for row in rows] == pytest.approx(expected, abs=1e-6)
    assert [row["reward/mean"] for row in rows] == pytest.approx(expected, abs=1e-6)  # embedded*0 adds 0
    assert 0.0 < sum(expected) / len(expected) < 1.0
    for row in rows:
        assert row["reward/accuracy"] == row["reward/embedded/mean"] == 0.0  # embedded's acc, weight 0
        if not clip:  # the unclipped arm clips nothing
            assert all(row[key] == 0.0 for key in (*FRACTIONS, *MASSES))
    if clip:  # the second mini-batch moved past ε = 0.2 somewhere (1.7% of step 1's tokens here)
        assert max(row["actor/pg_clipfrac"] for row in rows) > 0
