"""Golden runs: each recipe family trains two seeded steps through the whole trainer (Ray
rollout worker, DeepSpeed learner, reward pool) and its per-step numbers must equal the stored
ones, so that a refactor cannot change what a method computes without a test saying so.

Each family is a recipe (or the defaults plus the method's selector) at a small scale: 4
prompts per step in 2 mini-batches of 2 prompts, so that the second mini-batch of each step
is off-policy and every clip, mask and selection has work, sampled at T = 0.4 from the
embedded warm-started model, where about a third of the responses are correct (at the
default T = 0.7 it is 3%, and most groups would have no advantage). The stored values live in
``tests/trainer/golden/<family>.json``; after an intended change of behaviour, rewrite them with

    ENTROPO_UPDATE_GOLDEN=1 bash scripts/test.sh tests/trainer/test_golden.py

and say in the commit why the numbers moved.

Two groups of numbers are compared, in this order:

- the rollout (``ROLLOUT_KEYS``): what was sampled and how it was scored. When these differ,
  generation changed (the decode loop, seeds, the data order or the CPU's kernels), and the
  method's numbers cannot be compared; the failure says so instead of listing them.
- the method (``METHOD_KEYS`` and each family's own keys): the loss, the gradient norm, the
  entropy, the KL terms and each method's selection fractions.

Tolerance: relative ``RTOL`` = 1e-5. On one machine the runs are bit-identical (every actor
runs on a fixed thread count from its placement bundle, the seeds are fixed, float32
throughout); 1e-5 absorbs a different summation order in float32 kernels (≈ 1e-7 relative per
operation, amplified over two optimizer steps), while any change to a method moves these
values far more (``test_golden_comparison_fails_on_a_changed_value`` holds the comparison to that).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).with_name("golden")
RTOL = 1e-5
ATOL = 1e-9  # values that are 0 up to float32 rounding (a step-1 on-policy loss of ~1e-9)

# Scale overrides shared by every family: small, seeded, no evaluation, one rank and worker.
SCALE = [
    "trainer.total_steps=2", "trainer.prompts_per_step=4", "learner.mini_batch_prompts=2",
    "learner.micro_batch_size=8", "learner.ranks=1", "rollout.workers=1", "trainer.seed=0",
    "data.eval=null", "reward.mode=local", "logger.backends=[jsonl]", "logger.forking_every=0",
    "logger.samples_every=0", "rollout.temperature=0.4",
]

ROLLOUT_KEYS = ("reward/mean", "reward/accuracy", "response_length/mean")
METHOD_KEYS = ("actor/pg_loss", "actor/grad_norm", "actor/pg_clipfrac", "entropy/mean", "adv/abs_mean")

# family -> (recipe or None for the defaults, extra overrides, keys of the method itself).
# Recipes with 16 samples per prompt run with 8 here: the golden run pins code, not the paper's scale.
N8 = ["rollout.n=8"]
FAMILIES: dict[str, tuple[str | None, list[str], tuple[str, ...]]] = {
    "grpo_kl": ("grpo", [], ("actor/ref_kl", "actor/ppo_kl")),
    "rloo": (None, ["algorithm.advantage=rloo"], ("actor/ppo_kl",)),
    "clip_cov": ("clip_cov", [], ("clip_cov/selected_frac", "sampling/num_gen_batches")),
    "kl_cov": ("kl_cov", [], ("kl_cov/selected_frac", "sampling/num_gen_batches")),
    "entropy_mask": ("entropy_mask", N8, ("entropy_mask/keep_frac", "sampling/num_gen_batches")),
    "dapo": ("dapo", N8, ("sampling/num_gen_batches", "reward/overlong/mean")),
    "pear": ("pear", [], ("reward/pear/mean",)),
    "empo": ("empo", [], ("reward/empo/mean",)),
    "lp_reg": ("lp_reg", [], ("lp_reg/selected_frac",)),
    "canon": ("canon", N8, ()),
    # the stateful methods: their running state carries from step 1 into step 2
    "siren": ("siren", [], ("siren/H_anc",)),
    "epo": ("epo", [], ("epo/term",)),
    "hapo": ("hapo", N8, ("hapo/h_pos_frac", "sampling/num_gen_batches")),
    "aepo": ("aepo", ["trainer.seed=1"], ("aepo/temperature", "aepo/entropy_estimate")),  # seed 0: step 2 has no signal
    "ares": ("ares", [], ("actor/ref_kl",)),
    "adaptive_entropy": (None, ["algorithm.entropy_coef=0.01", "algorithm.adaptive_entropy=true",
                                "algorithm.entropy_adaptive.target=0.5"],
                         ("actor/entropy_coef", "actor/entropy_bonus")),
}


def golden_run(family: str, output_dir: Path) -> list[dict[str, float]]:
    """Train ``family`` for two steps; the pinned keys of each step's metrics."""
    from entropo.config import load_config
    from entropo.trainer.run import train

    recipe, extra, own = FAMILIES[family]
    cfg = load_config(recipe, [f"trainer.output_dir={output_dir}", *SCALE, *extra])
    assert train(cfg)["steps"] == 2
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    keys = (*ROLLOUT_KEYS, *METHOD_KEYS, *own)
    missing = [k for k in keys for r in rows if k not in r]
    assert not missing, f"{family}: metrics missing from metrics.jsonl: {sorted(set(missing))}"
    return [{"step": r["step"], **{k: r[k] for k in keys}} for r in rows]


def differences(expected: list[dict], actual: list[dict], keys) -> list[str]:
    """``step key: expected → actual`` for every value outside RTOL/ATOL (NaN equals NaN)."""
    out = []
    if [r["step"] for r in expected] != [r["step"] for r in actual]:
        return [f"steps {[r['step'] for r in expected]} → {[r['step'] for r in actual]}"]
    for want, got in zip(expected, actual):
        for key in keys:
            a, b = want.get(key), got.get(key)
            same = (a is not None and b is not None
                    and ((math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)))
            if not same:
                out.append(f"step {want['step']} {key}: {a!r} → {b!r}")
    return out


def compare(family: str, expected: list[dict], actual: list[dict]) -> None:
    """Fail with the rollout's differences first (then the method's cannot be compared)."""
    rollout = differences(expected, actual, ROLLOUT_KEYS)
    assert not rollout, (
        f"{family}: the rollout differs from the golden run (generation, seeds, data order or the "
        f"CPU's kernels changed), so the method's numbers cannot be compared:\n  " + "\n  ".join(rollout))
    method_keys = [k for k in expected[0] if k != "step" and k not in ROLLOUT_KEYS]
    method = differences(expected, actual, method_keys)
    assert not method, f"{family}: the method's numbers moved:\n  " + "\n  ".join(method)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_recipe_family_matches_its_golden_run(ray_session, tmp_path, family):
    actual = golden_run(family, tmp_path)
    path = GOLDEN_DIR / f"{family}.json"
    if os.environ.get("ENTROPO_UPDATE_GOLDEN"):
        GOLDEN_DIR.mkdir(exist_ok=True)
        recipe, extra, _ = FAMILIES[family]
        path.write_text(json.dumps({"recipe": recipe, "overrides": [*SCALE, *extra], "steps": actual},
                                   indent=1) + "\n")
    expected = json.loads(path.read_text())["steps"]
    compare(family, expected, actual)
    # a golden run that trains nothing would pin nothing: every step moved the weights
    assert all(r["actor/grad_norm"] > 0 for r in actual), family


def test_golden_comparison_fails_on_a_changed_value():
    """The comparison is not vacuous: a value moved by 1e-4 relative, a rollout value and a
    missing key each fail, with the right message; NaN equals NaN and float noise passes."""
    base = [{"step": 1, "reward/mean": 0.25, "reward/accuracy": 0.25, "response_length/mean": 30.0,
             "actor/grad_norm": 0.5, "entropy/mean": float("nan")}]
    noisy = [{**base[0], "actor/grad_norm": 0.5 * (1 + 1e-7)}]
    compare("f", base, noisy)
    moved = [{**base[0], "actor/grad_norm": 0.5 * (1 + 1e-4)}]
    with pytest.raises(AssertionError, match="the method's numbers moved"):
        compare("f", base, moved)
    resampled = [{**base[0], "response_length/mean": 31.0}]
    with pytest.raises(AssertionError, match="the rollout differs"):
        compare("f", base, resampled)
    lost = [{k: v for k, v in base[0].items() if k != "entropy/mean"}]
    with pytest.raises(AssertionError, match="entropy/mean"):
        compare("f", base, lost)
