"""The ARES recipe trains end to end (2 steps, tiny model, 2 learner ranks) and resumes its state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from entropo.config import load_config
from tests.metrics_doc import undocumented

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# verl convention: 1 when the response contains the ground truth's first digit, so that a random
# tiny model's groups get different accuracies (difficulty buckets)
FIRST_DIGIT = f"{Path(__file__).parent / 'rewards_for_tests.py'}:compute_score"
BUCKETS = ("easy", "medium", "hard")


def _run(model_dir, out, *overrides):
    from entropo.trainer.run import train

    cfg = load_config(CONFIGS / "ares.yaml", [
        f"model.path={model_dir}", f"trainer.output_dir={out}", "trainer.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=24", "learner.micro_batch_size=4", "learner.lr=1e-3",
        "logger.backends=[jsonl]", "reward.mode=local", "evaluation.max_prompts=8", "learner.ranks=2",
        "rollout.workers=1", "trainer.total_steps=2", f"reward.fns=[{FIRST_DIGIT}]", *overrides,
    ])
    assert train(cfg)["steps"] == 2
    rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    for row in rows.values():  # a NaN metric (an empty bucket's KL and target) is written as null
        row.update({k: math.nan for k, v in row.items() if v is None and k.startswith("ares/")})
    return cfg, rows


def _beta_rule(steps, target=0.01, rho=0.97, deadzone=0.02, lr=0.05, clip=0.2):
    """_update_beta_per_bucket once per step from the logged bucket KLs (NaN: bucket absent)."""
    beta, k_ema, e_ema = [1.0] * 3, [None] * 3, [0.0] * 3
    for kl in steps:
        for b in range(3):
            if math.isnan(kl[b]):
                continue
            k_ema[b] = kl[b] if k_ema[b] is None else (1 - rho) * kl[b] + rho * k_ema[b]
            e = k_ema[b] / target - 1
            if abs(e) >= deadzone:
                e_ema[b] = (1 - rho) * e + rho * e_ema[b]
                beta[b] = math.exp(min(max(math.log(beta[b]) + lr * max(-clip, min(clip, e_ema[b])),
                                           math.log(1e-4)), math.log(100.0)))
    return beta


def test_ares_recipe_trains_and_resumes(ray_session, tiny_model_dir, tmp_path):
    cfg, rows = _run(tiny_model_dir, tmp_path / "full", "trainer.save_every=1")
    assert cfg.algorithm.ares.enable and cfg.algorithm.ares.adaptive_kl
    assert sorted(rows) == [0, 1, 2]  # step 0: the evaluation before training
    steps = [rows[1], rows[2]]
    always = ["ares/hwe_count_mean", "ares/term_mean", "ares/threshold", "ares/threshold_batch",
              *(f"ares/{k}_{b}" for k in ("frac", "alpha", "beta") for b in BUCKETS)]
    for row in steps:
        assert all(row.get(k) is not None and math.isfinite(row[k]) for k in always), row
        assert sum(row[f"ares/frac_{b}"] for b in BUCKETS) == pytest.approx(1.0)
        for b in BUCKETS:  # a bucket's KL and target exist when it holds responses
            present = row[f"ares/frac_{b}"] > 0
            assert math.isfinite(row[f"ares/kl_{b}"]) == present == math.isfinite(row[f"ares/target_{b}"])
        assert row["reward/ares/mean"] == pytest.approx(row["ares/term_mean"], rel=1e-5, abs=1e-7)
        assert row["ares/threshold_batch"] > 0 and row["ares/hwe_count_mean"] >= 0
        assert "timing/forward" in row  # the term reads π_old's entropies: no fused pass
    # step 1 counts with its own τ̂; step 2 with the τ stored after step 1 (= τ̂_1)
    assert rows[1]["ares/threshold"] == rows[1]["ares/threshold_batch"] == rows[2]["ares/threshold"]
    assert all(not rows[1][f"ares/kl_{b}"] > 1e-6 for b in BUCKETS)  # π_old = π_ref at step 1 (or NaN)
    assert rows[2]["actor/ref_kl"] > 0  # the policy moved away from π_ref
    # β after each step = the update rule applied to the bucket KLs of the steps so far
    kls = [[row[f"ares/kl_{b}"] for b in BUCKETS] for row in steps]
    for n, row in enumerate(steps, start=1):
        assert [row[f"ares/beta_{b}"] for b in BUCKETS] == pytest.approx(_beta_rule(kls[:n]), rel=1e-12)
    assert undocumented({k for r in steps for k in r}) == [], "add them to docs/metrics.md"

    # the step-1 checkpoint holds the state after step 1; resuming from it gives step 2 again
    saved = tmp_path / "full" / "checkpoints" / "step_000001"
    state = torch.load(saved / "controller.pt", weights_only=False)["methods"]["ares"]
    assert list(state["beta"]) == [rows[1][f"ares/beta_{b}"] for b in BUCKETS]
    assert list(state["alpha"]) == [rows[1][f"ares/alpha_{b}"] for b in BUCKETS]
    assert state["threshold"] == rows[1]["ares/threshold_batch"]
    _, again = _run(tiny_model_dir, tmp_path / "resumed", f"trainer.resume={saved}")
    assert sorted(again) == [2]
    for key in ("ares/threshold", *(f"ares/{k}_{b}" for k in ("alpha", "beta") for b in BUCKETS)):
        assert again[2][key] == pytest.approx(rows[2][key], rel=1e-6), key
    assert again[2]["ares/hwe_count_mean"] == pytest.approx(rows[2]["ares/hwe_count_mean"], abs=1e-9)


def test_ares_with_the_codes_top_k_entropy(ray_session, tiny_model_dir, tmp_path):
    """``entropy=topk``: the learner's π_old pass returns the top-10 estimate and the windows read it.
    The random tiny model is near uniform over 90 tokens (H ≈ 4.4 nats): its top 10 (and the
    sampled token) hold a small share of the mass, so the estimate (about 1 nat) is far below H."""
    cfg, rows = _run(tiny_model_dir, tmp_path, "algorithm.ares.entropy=topk", "learner.ranks=1")
    assert cfg.algorithm.ares.entropy == "topk"
    for row in (rows[1], rows[2]):
        assert 0 < row["ares/threshold_batch"] < 1.5 < row["entropy/mean"]
        assert math.isfinite(row["ares/term_mean"]) and row["ares/beta_hard"] > 0
    assert undocumented({k for r in (rows[1], rows[2]) for k in r}) == []
