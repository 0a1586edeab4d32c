"""benchmarks/entropy_mechanism.py: override building and table formatting (no training here)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

from entropo.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "entropy_mechanism.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("entropy_mechanism", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


em = _load_script()
RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


def _args(*argv: str):
    return em.parse_args(["--out", "/tmp/entropy-mechanism-test", *argv])


def _load(name: str, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # recipe warnings (e.g. dr_grpo's agg mode) are not the point
        return load_config(ROOT / "configs" / f"{name}.yaml", em.method_overrides(name, args))


def test_recipes_are_found():
    assert em.recipes() == RECIPES
    assert set(em.SHOWCASE) <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_with_the_overrides(name):
    """Each recipe, fitted to the embedded task, is a valid config (else --all would lose it)."""
    args = _args("--steps", "7", "--seed", "3", "--lr", "2e-5")
    cfg = _load(name, args)
    assert cfg.model.path == "embedded:tiny-qwen2-addition"
    assert cfg.data.train == "embedded:addition"
    assert cfg.rollout.n == em.LAPTOP_N
    assert cfg.trainer.prompts_per_step == em.PROMPTS_PER_STEP
    assert cfg.learner.lr == 2e-5
    assert cfg.evaluation.every == 0
    assert cfg.reward.mode == "local"
    assert cfg.logger.backends == ["jsonl"]
    assert Path(cfg.trainer.output_dir) == Path("/tmp/entropy-mechanism-test") / name
    assert cfg.trainer.total_steps == 7
    assert cfg.trainer.seed == 3
    if cfg.algorithm.overlong.enable:
        assert cfg.algorithm.overlong.cache_len <= cfg.rollout.max_new_tokens


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_with_paper_n_and_short_responses(name):
    """--paper-n keeps the recipe's n; a short L_max shrinks an overlong cache_len to fit."""
    args = _args("--paper-n", "--set", "rollout.max_new_tokens=8")
    cfg = _load(name, args)
    from omegaconf import OmegaConf

    recipe_n = OmegaConf.select(OmegaConf.load(ROOT / "configs" / f"{name}.yaml"), "rollout.n")
    assert cfg.rollout.n == (recipe_n if recipe_n is not None else em.LAPTOP_N)
    assert cfg.rollout.max_new_tokens == 8
    if cfg.algorithm.overlong.enable:
        assert cfg.algorithm.overlong.cache_len == 2


def test_paper_n_keeps_16_only_when_asked():
    assert _load("dapo", _args()).rollout.n == 8
    assert _load("dapo", _args("--paper-n")).rollout.n == 16
    assert _load("grpo", _args("--paper-n")).rollout.n == 8


def test_cache_len_untouched_when_it_fits():
    overrides = em.method_overrides("dapo", _args())
    assert not any(o.startswith("algorithm.overlong.cache_len") for o in overrides)
    assert _load("dapo", _args()).algorithm.overlong.cache_len == 16


def test_pear_gets_a_weight_zero_checker_for_evaluation():
    cfg = _load("pear", _args())
    assert cfg.reward.fns == ["pear", "embedded*0"]
    assert _load("pear", _args("--set", "reward.fns=[pear]")).reward.fns == ["pear"]
    assert _load("grpo", _args()).reward.fns == ["embedded"]


def test_set_overrides_come_last_and_win():
    args = _args("--set", "learner.lr=1e-3", "--set", "rollout.n=4")
    overrides = em.method_overrides("clip_cov", args)
    assert overrides[-2:] == ["learner.lr=1e-3", "rollout.n=4"]
    cfg = _load("clip_cov", args)
    assert cfg.learner.lr == 1e-3 and cfg.rollout.n == 4


def test_all_selects_every_loadable_recipe():
    methods, excluded = em.select_methods(_args("--all"))
    assert sorted(methods + list(excluded)) == RECIPES
    assert set(excluded) == set(em.EXCLUDED)
    assert all(reason for reason in excluded.values())


def test_default_methods_and_bad_arguments():
    assert _args().methods == list(em.SHOWCASE)
    with pytest.raises(SystemExit):
        _args("--methods", "grpo", "no_such_recipe")
    with pytest.raises(SystemExit):
        _args("--set", "learner.lr")


def test_format_table_numbers_and_failed_rows():
    results = [
        {"method": "grpo", "status": "ok", "accuracy_start": 0.25, "accuracy_end": 0.6875,
         "entropy_start": 0.4, "entropy_end": 0.1, "entropy_ratio": 0.25, "wall_seconds": 123.4},
        {"method": "clip_cov", "status": "ok", "accuracy_start": None, "accuracy_end": None,
         "entropy_start": None, "entropy_end": float("nan"), "entropy_ratio": None, "wall_seconds": 9.6},
        {"method": "kl_cov", "status": "failed", "error": "RunError: boom | bang", "wall_seconds": 2.0},
    ]
    lines = em.format_table(results).splitlines()
    assert lines[0] == ("| method | final accuracy | start accuracy | final entropy | "
                        "entropy end/start | wall s | status |")
    assert lines[1].startswith("|---|")
    assert len(lines) == 2 + len(results)
    assert lines[2] == "| grpo | 68.8% | 25.0% | 0.100 | 0.25 | 123 | ok |"
    assert lines[3] == "| clip_cov | n/a | n/a | n/a | n/a | 10 | ok |"
    assert lines[4] == "| kl_cov | n/a | n/a | n/a | n/a | 2 | failed: RunError: boom \\| bang |"
    assert all(line.count("|") - line.count("\\|") == 8 for line in lines)


def test_entropy_ratio():
    assert em._ratio(0.1, 0.4) == pytest.approx(0.25)
    assert em._ratio(None, 0.4) is None
    assert em._ratio(0.1, 0.0) is None
    assert em._ratio(float("nan"), 0.4) is None


def test_first_line_of_an_error():
    assert em._first_line(ValueError("first\nsecond")) == "ValueError: first"
    assert em._first_line(RuntimeError()) == "RuntimeError"


def test_first_line_of_a_ray_task_error_is_its_cause():
    class RayTaskError(RuntimeError):  # as ray.exceptions.RayTaskError: header, then .cause
        def __init__(self, cause):
            super().__init__("\x1b[36mray::LearnerRank.update()\x1b[39m (pid=1)\ntraceback ...")
            self.cause = cause

    err = RayTaskError(ValueError("the real reason\nmore"))
    assert em._first_line(err) == "RayTaskError: the real reason"
    assert em._first_line(RayTaskError(None)) == "RayTaskError: ray::LearnerRank.update() (pid=1)"


def test_seeds_get_one_directory_each_and_their_own_trainer_seed():
    one, many = _args("--seed", "4"), _args("--seed", "4", "--seeds", "3")
    assert em.seeds(one) == [4] and em.seeds(many) == [4, 5, 6]
    assert em.run_dir("grpo", one) == Path("/tmp/entropy-mechanism-test/grpo")
    assert em.run_dir("grpo", many, 6) == Path("/tmp/entropy-mechanism-test/grpo/seed6")
    cfg = _load_seeded("clip_cov", many, 5)
    assert cfg.trainer.seed == 5
    assert Path(cfg.trainer.output_dir) == Path("/tmp/entropy-mechanism-test/clip_cov/seed5")
    with pytest.raises(SystemExit):
        _args("--seeds", "0")


def _load_seeded(name: str, args, seed: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(ROOT / "configs" / f"{name}.yaml", em.method_overrides(name, args, seed))


def test_mean_and_standard_error_by_hand():
    # [0.2, 0.4, 0.6]: mean 0.4; sample variance (0.04 + 0 + 0.04) / 2 = 0.04; s.e. = 0.2 / √3
    mean, se = em.mean_se([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4, abs=1e-12) and se == pytest.approx(0.2 / 3 ** 0.5, abs=1e-12)
    assert em.mean_se([0.5, None, float("nan")]) == (0.5, None)
    assert em.mean_se([]) is None


def test_paired_difference_pairs_by_seed_and_skips_failed_runs():
    base = [{"seed": s, "status": "ok", "accuracy_end": a} for s, a in ((0, 0.30), (1, 0.40), (2, 0.50))]
    other = [{"seed": 2, "status": "ok", "accuracy_end": 0.60}, {"seed": 0, "status": "ok", "accuracy_end": 0.50},
             {"seed": 1, "status": "failed", "error": "x"}]
    # seed 0: +0.20, seed 2: +0.10 -> mean 0.15; sample sd = √((0.05² + 0.05²) / 1) = 0.0707; s.e. = 0.05
    mean, se = em.paired_difference(other, base, "accuracy_end")
    assert mean == pytest.approx(0.15, abs=1e-12) and se == pytest.approx(0.05, abs=1e-12)


def test_seed_table_rows_and_noise_marks():
    rows = []
    for seed, (g_acc, g_ratio, c_acc, c_ratio) in enumerate([(0.30, 0.70, 0.50, 0.80), (0.40, 0.72, 0.60, 0.70),
                                                              (0.50, 0.74, 0.70, 0.75)]):
        rows.append({"method": "grpo", "seed": seed, "status": "ok", "accuracy_start": 0.2,
                     "accuracy_end": g_acc, "entropy_ratio": g_ratio})
        rows.append({"method": "clip_cov", "seed": seed, "status": "ok", "accuracy_start": 0.2,
                     "accuracy_end": c_acc, "entropy_ratio": c_ratio})
    rows.append({"method": "kl_cov", "seed": 0, "status": "failed", "error": "RunError: boom"})
    lines = em.format_seed_table(rows, ["grpo", "clip_cov", "kl_cov"]).splitlines()
    assert lines[0].startswith("| method | seeds | start accuracy | final accuracy | entropy end/start |")
    # grpo: accuracy 0.3/0.4/0.5 -> 40.0% ± 5.8% (0.1/√3); ratio 0.72 ± 0.012 (0.02/√3 = 0.0115)
    assert lines[2] == "| grpo | 3/3 | 20.0% ± 0.0% | 40.0% ± 5.8% | 0.720 ± 0.012 | — | — |"
    # clip_cov - grpo per seed: accuracy +20 points each (s.e. 0, not noise);
    # ratio +0.10, −0.02, +0.01 -> mean +0.030, sd 0.0624, s.e. 0.036 > |mean| / 2: within noise
    assert lines[3] == ("| clip_cov | 3/3 | 20.0% ± 0.0% | 60.0% ± 5.8% | 0.750 ± 0.029 | +20.0 ± 0.0 | "
                        "+0.030 ± 0.036 (within noise) |")
    assert lines[4] == "| kl_cov | 0/1 | n/a | n/a | n/a | n/a | n/a |"
    assert lines[-1] == "failed: kl_cov seed 0: RunError: boom"
