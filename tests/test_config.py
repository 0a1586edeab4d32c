"""Every recipe loads; bad keys, types, values and impossible combinations fail naming the key."""

import warnings
from pathlib import Path

import pytest

from entropo.config import ConfigError, TrainConfig, load_config, to_yaml

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in CONFIGS}
    assert {"grpo", "dr_grpo", "dapo", "clip_cov", "kl_cov", "entropy_mask"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_loads_and_round_trips(path, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recipe must not trigger a composition warning
        cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    cfg.objective()
    out = tmp_path / "resolved.yaml"
    out.write_text(to_yaml(cfg))
    assert load_config(out) == cfg


def test_recipes_select_their_methods():
    by_name = {p.stem: load_config(p) for p in CONFIGS}
    assert by_name["clip_cov"].algorithm.loss == "clip_cov"
    assert by_name["kl_cov"].algorithm.kl_cov.k == 0.002
    assert by_name["entropy_mask"].objective().masks[0][0] == "high_entropy"
    assert by_name["dr_grpo"].objective().agg_mode == "seq-mean-token-sum-norm"
    assert by_name["dapo"].algorithm.ppo_clip.eps_high == 0.28
    assert by_name["cispo"].algorithm.loss == "cispo" and by_name["cispo"].algorithm.cispo.eps_low is None
    assert by_name["spurious_reward"].reward.fns == ["random", "embedded*0"]
    assert by_name["spurious_reward"].algorithm.ppo_clip.clip and by_name["spurious_reward"].reward.random.p == 0.5
    assert by_name["clip_b"].objective().masks == (("clip_b", by_name["clip_b"].algorithm.clip_b),)
    assert by_name["clip_b"].algorithm.clip_b.mu == 2.5
    assert by_name["earl"].objective().masks[0][0] == "high_entropy"
    assert by_name["earl"].algorithm.high_entropy.stat_scope == "sequence"
    assert by_name["qae"].algorithm.advantage == "qae" and by_name["qae"].algorithm.qae.k == 0.4
    assert by_name["ares"].algorithm.ares.enable and by_name["ares"].algorithm.kl_coef == 0.01


# Recipe keys allowed to equal their default: values a recipe must keep even if the default
# changes, because its paper defines the method by them and the default is not that paper's.
PINNED = {
    ("grpo", "algorithm.advantage"): "GRPO's group-normalised advantage is what this recipe is "
                                     "(DeepSeekMath Eq. 3); the base default could change",
    ("grpo", "algorithm.loss"): "GRPO's objective is PPO's clipped surrogate (DeepSeekMath Eq. 3); "
                                "the base default could change",
    ("dapo", "algorithm.loss_agg_mode"): "the token-level loss is one of DAPO's four techniques "
                                         "(arXiv 2503.14476 Eq. 12), not a trainer-wide choice",
    ("dapo", "algorithm.ppo_clip.eps_low"): "clip-higher is the decoupled pair eps_low = 0.2, eps_high = 0.28 "
                                            "(DAPO Eq. 10); 0.2 is PPO's default only by coincidence",
}


def _leaves(node, prefix=""):
    """(dotted key, value) of every non-mapping value in an OmegaConf mapping; lists as lists."""
    from omegaconf import OmegaConf

    for key, value in node.items():
        if OmegaConf.is_dict(value):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", OmegaConf.to_container(value) if OmegaConf.is_list(value) else value


def _keys_equal_to_defaults(path):
    from omegaconf import OmegaConf

    defaults = dict(_leaves(OmegaConf.structured(TrainConfig())))
    return [key for key, value in _leaves(OmegaConf.load(path)) if key in defaults and value == defaults[key]]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipes_hold_only_what_differs_from_the_defaults(path):
    """STYLE 14: the default lives in its dataclass field; a recipe repeating it would keep the
    old value when the default changes, or look like a choice when it is none."""
    same = [key for key in _keys_equal_to_defaults(path) if (path.stem, key) not in PINNED]
    assert not same, (f"{path.name}: {', '.join(same)} equal their defaults (entropo/config.py): remove "
                      "them, or pin them in PINNED with the reason")


def test_every_pin_is_a_recipe_key_equal_to_its_default():
    by_stem = {p.stem: p for p in CONFIGS}
    for (stem, key), why in PINNED.items():
        assert why and key in _keys_equal_to_defaults(by_stem[stem]), (stem, key)


def test_defaults_live_in_the_dataclasses():
    cfg = load_config()
    assert cfg == TrainConfig()
    assert cfg.l_norm == cfg.rollout.max_new_tokens


def test_overrides():
    cfg = load_config(overrides=["algorithm.token_mask=high_entropy", "rollout.n=4", "algorithm.l_norm=100"])
    assert cfg.algorithm.token_mask == ["high_entropy"]
    assert cfg.rollout.n == 4 and cfg.l_norm == 100


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.nn=3"], "rollout.nn"),
        (["rollout.n=three"], "rollout.n"),
        (["rollout.n=0"], "rollout.n"),
        (["algorithm.loss=ppo"], "algorithm.loss: 'ppo' is not one of"),
        (["algorithm.advantage=gae"], "algorithm.advantage"),
        (["algorithm.token_mask=[high_entropy,high_entropy]"], "listed twice"),
        (["algorithm.clip_cov.clip_ratio=2"], "algorithm.clip_cov.clip_ratio"),
        (["algorithm.high_entropy.norm=tokens"], "algorithm.high_entropy.norm"),
        (["learner.zero_stage=4"], "learner.zero_stage"),
        (["logger.backends=[mlflow]"], "logger.backends"),
        (["learner.mini_batch_prompts=5"], "learner.mini_batch_prompts"),
        (["rollout.temperature"], "key=value"),
        (["rollout.engine=sglang"], "rollout.engine: 'sglang' is not one of hf, vllm"),
        (["rollout.engine=vllm", "rollout.vllm.dtype=float16"], "rollout.vllm.dtype"),
        (["rollout.engine=vllm", "rollout.vllm.kv_cache_gb=0"], "rollout.vllm.kv_cache_gb: must be > 0"),
        (["rollout.engine=vllm", "rollout.vllm.gpu_memory_utilization=1.5"], "rollout.vllm.gpu_memory_utilization"),
        (["rollout.engine=vllm", "rollout.vllm.tensor_parallel_size=0"], "rollout.vllm.tensor_parallel_size"),
        (["rollout.engine=vllm", "rollout.vllm.tensor_parallel_size=2", "rollout.gpus_per_worker=1"],
         "rollout.gpus_per_worker=1.0: set it to 2"),
        (["rollout.engine=vllm", "rollout.vllm.max_model_len=100"],
         "max_model_len=100 is below data.max_prompt_tokens"),
        (["rollout.vllm.enforce_eager=false"], "rollout.vllm.enforce_eager is set, but rollout.engine is 'hf'"),
        (["rollout.engine=vllm", "algorithm.sampling=[hapo_temperature]"], "hapo_temperature needs rollout.engine=hf"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=overrides)


@pytest.mark.parametrize(
    ("overrides", "both"),
    [
        (["algorithm.loss=clip_cov", "algorithm.ppo_clip.dual_clip_c=3"], ("ppo_clip", "clip_cov")),
        (["algorithm.loss=kl_cov", "algorithm.clip_cov.clip_ratio=0.01"], ("clip_cov", "kl_cov")),
        (["algorithm.token_mask=kl_cov"], ("kl_cov", "ppo_clip")),
        (["algorithm.loss=high_entropy"], ("high_entropy", "token_mask")),
    ],
)
def test_impossible_combinations_name_both_methods(overrides, both):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    for name in both:
        assert name in str(err.value)


def test_degenerate_scope_warns():
    with pytest.warns(UserWarning, match="silent"):
        load_config(overrides=["algorithm.loss=kl_cov", "algorithm.kl_cov.stat_scope=micro"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm:\n  loss: clip_cov\n  clip_cov:\n    ratio: 0.1\n")
    with pytest.raises(ConfigError, match=r"algorithm\.clip_cov\.ratio.*bad\.yaml"):
        load_config(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", r"bad\.yaml: the top level must be a mapping of sections .*not a list$"),
    ("model:\n  path: [x\n", r"bad\.yaml: YAML syntax error at line 3, column 1: expected ','"),
    ("model:\n\tpath: x\n", r"bad\.yaml: YAML syntax error at line 2, column 1"),
])
def test_yaml_errors_are_one_line_with_file_line_and_column(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(bad)
    assert "\n" not in str(e.value)


def test_recipes_load_by_bare_name_from_anywhere(tmp_path, monkeypatch):
    from entropo.config import recipe_names

    monkeypatch.chdir(tmp_path)
    assert load_config("clip_cov").algorithm.loss == "clip_cov"
    assert load_config("clip_cov.yaml").algorithm.loss == "clip_cov"
    assert set(recipe_names()) == {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    with pytest.raises(ConfigError, match="config file not found: clip_kov .*clip_cov"):
        load_config("clip_kov")
    (tmp_path / "clip_cov.yaml").write_text("trainer:\n  total_steps: 3\n")
    assert load_config("clip_cov.yaml").algorithm.loss == "ppo_clip"  # a file in the cwd comes first


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.rollout.n = 3  # type: ignore[misc]


def test_vllm_engine_settings_resolve_what_needs_no_device():
    from entropo.trainer.vllm_engine import max_model_len

    cfg = load_config(overrides=["rollout.engine=vllm", "trainer.seed=7", "data.max_prompt_tokens=100"])
    v = cfg.vllm_engine()
    assert v.seed == 7 and v.max_model_len is None and cfg.max_sequence_tokens == 164

    class Model:
        max_position_embeddings = 256

    assert max_model_len(v, cfg.max_sequence_tokens, Model()) == 164
    assert max_model_len(v, 576, Model()) == 256  # the run would allow more than the model holds
    assert max_model_len(load_config(overrides=["rollout.engine=vllm", "rollout.vllm.max_model_len=900"])
                         .vllm_engine(), 576, Model()) == 900  # set by the user: vLLM says if it cannot


def test_rollout_call_timeout_is_derived_from_the_response_length():
    """null: 600 s (the weight-sync group's timeout) + 1 s per decode step; a value set is kept."""
    assert load_config().rollout_call_timeout_s == 600 + 64
    assert load_config(overrides=["rollout.max_new_tokens=8192"]).rollout_call_timeout_s == 600 + 8192
    assert load_config(overrides=["rollout.call_timeout_s=30"]).rollout_call_timeout_s == 30
    for bad in ("0", "-5", "inf"):
        with pytest.raises(ConfigError, match=f"rollout.call_timeout_s: must be > 0 or null, got {float(bad)}"):
            load_config(overrides=[f"rollout.call_timeout_s={bad}"])


@pytest.mark.parametrize("overrides", [
    ["data.train=my/gsm8k.parquet"],
    ["data.eval=my/test.jsonl"],
    ["data.train=openai/gsm8k", "reward.fns=[math,embedded*0.1]"],
])
def test_embedded_reward_on_a_users_data_is_refused(overrides):
    """The embedded reward checks the addition task's answers only: on other data it would
    score every response wrong (or, partially credited, right) without a word."""
    with pytest.raises(ConfigError, match="reward.fns: 'embedded' scores only the embedded addition task"):
        load_config(overrides=overrides)
    load_config(overrides=[*overrides, "reward.fns=[math]"])


@pytest.mark.parametrize(("overrides", "key"), [
    (["reward.max_error_frac=1.5"], "reward.max_error_frac"),
    (["reward.max_error_frac=-0.1"], "reward.max_error_frac"),
    (["reward.correct_threshold=nan"], "reward.correct_threshold"),
])
def test_reward_failure_settings_are_checked(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=overrides)


def test_python_api_names():
    import entropo
    from entropo.config import load_config as direct
    from entropo.trainer import errors, run

    assert entropo.load_config is direct and entropo.train is run.train and entropo.evaluate is run.evaluate_only
    assert entropo.RunError is errors.RunError
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        entropo.trian  # noqa: B018


# Loads every kind of config error, then valid recipes, then the CLI's error path and the
# reference, in a fresh interpreter, and prints which of them imported torch. Loading and
# validating a config needs no tensor: a config error is reported in the time it takes to
# read the YAML, not the seconds of ``import torch`` (benchmarks/startup.py times it).
_NO_TORCH = r'''
import contextlib, io, sys
from pathlib import Path
from entropo.config import ConfigError, load_config

tmp = Path(sys.argv[1])
(tmp / "syntax.yaml").write_text("model: [\n")
(tmp / "list.yaml").write_text("- a\n- b\n")
errors = {
    "unknown key": (None, ["algorithm.bogus=1"]),
    "wrong type": (None, ["rollout.n=abc"]),
    "out of range": (None, ["rollout.n=0"]),
    "unknown method": (None, ["algorithm.loss=clip_kov"]),
    "mask as a loss": (None, ["algorithm.loss=high_entropy"]),
    "a method config's own check": (None, ["algorithm.clip_cov.clip_ratio=2"]),
    "YAML syntax": (tmp / "syntax.yaml", []),
    "non-mapping top level": (tmp / "list.yaml", []),
    "missing file": (tmp / "missing.yaml", []),
}
for name, (path, overrides) in errors.items():
    try:
        load_config(path, overrides)
        print(name, "loaded")
    except ConfigError:
        print(name, "torch" in sys.modules)
for recipe in (None, "clip_cov", "dapo", "entropy_mask", "hapo", "ares"):
    load_config(recipe)
    print(recipe, "torch" in sys.modules)
from entropo.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main(["train", "algorithm.bogus=1"])
    main(["config"])
print("cli", code, "torch" in sys.modules)
'''


def test_loading_a_config_imports_no_torch(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 16, done.stdout
    assert [line for line in lines if not line.endswith(" False")] == [], done.stdout
    assert lines[-1] == "cli 2 False"


def test_split_args_takes_the_first_argument_without_equals_as_the_config():
    from entropo.config import split_args

    assert split_args(["clip_cov", "rollout.n=4"]) == ("clip_cov", ["rollout.n=4"])
    assert split_args(["rollout.n=4"]) == (None, ["rollout.n=4"])
    assert split_args([]) == (None, [])
