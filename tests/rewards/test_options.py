"""The built-ins' option dataclasses work as nested sections of a structured config (the
shape ``RewardConfig`` takes once it carries them), with dotted overrides and validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

from entropo.rewards import RewardManager
from entropo.rewards.code_exec import CodeConfig
from entropo.rewards.countdown import CountdownConfig
from entropo.rewards.empo import EMPOConfig
from entropo.rewards.math_answer import MathConfig
from entropo.rewards.pear import PEARConfig
from entropo.rewards.think_format import FormatConfig


@dataclass(frozen=True)
class ProposedRewardConfig:
    fns: list[str] = field(default_factory=lambda: ["embedded"])
    fallback_score: float = 0.0
    timeout_s: float = 30.0
    mode: str = "ray"
    workers: int = 2
    worker_cpus: float = 1.0
    worker_memory_growth_mb: float = 2048.0
    cluster_answers: bool = False
    math: MathConfig = field(default_factory=MathConfig)
    countdown: CountdownConfig = field(default_factory=CountdownConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    pear: PEARConfig = field(default_factory=PEARConfig)
    empo: EMPOConfig = field(default_factory=EMPOConfig)


def _load(*overrides: str) -> ProposedRewardConfig:
    merged = OmegaConf.merge(OmegaConf.structured(ProposedRewardConfig), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_object(merged)


def test_overrides_reach_the_builtins():
    cfg = _load("fns=[pear,format*0.1]", "mode=local", "pear.alpha=2", "pear.pear_clip_min=-1",
                "math.tail_chars=300", "code.isolation=plain", "empo.answer=math")
    assert cfg.pear == PEARConfig(alpha=2.0, pear_clip_min=-1.0)
    assert cfg.math.tail_chars == 300 and cfg.code.isolation == "plain" and cfg.empo.answer == "math"
    from entropo.models.tiny import build_char_tokenizer

    with RewardManager(cfg, tokenizer=build_char_tokenizer()) as rm:
        assert rm.evaluator.entries[1].spec.weight == 0.1


def test_bad_option_values_name_the_field():
    with pytest.raises(ValueError, match="reward.empo.answer"):
        _load("empo.answer=rouge")
    with pytest.raises(ValueError, match="reward.math.check_timeout_s"):
        _load("math.check_timeout_s=-1")
