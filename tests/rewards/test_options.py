"""The built-ins' option dataclasses work as nested sections of ``RewardConfig``, with dotted
overrides and validation."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from entropo.config import RewardConfig
from entropo.rewards import RewardManager
from entropo.rewards.configs import PEARConfig


def _load(*overrides: str) -> RewardConfig:
    merged = OmegaConf.merge(OmegaConf.structured(RewardConfig), OmegaConf.from_dotlist(list(overrides)))
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


def test_every_builtin_with_options_has_its_section():
    """RewardManager reads ``reward.<name>`` for each such built-in, with no fallback: its
    defaults are the section's."""
    from entropo.rewards import registry

    cfg = RewardConfig()
    for name in registry.names():
        options = registry.get(name).options
        if options is not None:
            assert isinstance(getattr(cfg, name, None), options), name
