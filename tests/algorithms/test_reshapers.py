"""Advantage reshapers: SEED-GRPO, ETTRL EAR, ETMR leaf count (docs/algorithms.md §4.3)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import pytest
import torch

from entropo.algorithms.configs.advantages import EttrlConfig, SeedConfig
from entropo.algorithms.registry import ADVANTAGE_RESHAPERS
from entropo.algorithms.reshapers import etmr_leaf_count, ettrl, seed, semantic_entropy

# Hand case: G = 6, clusters of sizes {5, 1}.
G6 = torch.zeros(6, dtype=torch.long)
C51 = torch.tensor([0, 0, 0, 0, 0, 1])
MASK6 = torch.ones(6, 3)


# ---------------------------------------------------------------- SEED-GRPO: hand-computed numbers


def test_seed_spec_mc():
    # SE = −(1/2)(ln 5/6 + ln 1/6) = (0.182322 + 1.791759)/2 = 0.987041; SE_max = ln 6 = 1.791759.
    se, se_max = semantic_entropy(G6, C51, "mc")
    torch.testing.assert_close(se, torch.full((6,), 0.987041, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(se_max, torch.full((6,), math.log(6), dtype=torch.float64))
    # f = 1 − 0.987041/1.791759 = 1 − 0.550878 = 0.449122.
    adv = torch.tensor([5, 5, 5, 5, 5, -25], dtype=torch.float64) / 30  # R − mean R for R = [1]*5 + [0]
    out, m = seed(adv, G6, SeedConfig(alpha=1.0), mask=MASK6, cluster_ids=C51)
    torch.testing.assert_close(out, adv * 0.449122, rtol=0, atol=1e-6)
    torch.testing.assert_close(m["seed/scale_mean"], torch.tensor(0.449122, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["seed/se_mean"], torch.tensor(0.987041, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["seed/num_clusters_mean"], torch.tensor(2.0, dtype=torch.float64))


def test_seed_spec_plugin():
    # SE = −(5/6 ln 5/6 + 1/6 ln 1/6) = 0.151935 + 0.298627 = 0.450561; f = 1 − 0.251463 = 0.748537.
    se, _ = semantic_entropy(G6, C51, "plugin")
    torch.testing.assert_close(se[0], torch.tensor(0.450561, dtype=torch.float64), rtol=0, atol=1e-6)
    out, _ = seed(torch.ones(6), G6, SeedConfig(alpha=1.0, se_form="plugin"), mask=MASK6, cluster_ids=C51)
    torch.testing.assert_close(out, torch.full((6,), 0.748537), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- SEED-GRPO: edge cases


def test_seed_edge_cases():
    # Group 3: G = 1 (SE_max = 0): unscaled. Group 4: one cluster: SE = 0, unscaled.
    # Group 5: all 4 answers distinct: SE = ln 4 = SE_max in both forms: f = 1 − α = 0.5.
    ids = torch.tensor([3, 4, 4, 4, 5, 5, 5, 5])
    clusters = torch.tensor([9, 1, 1, 1, 0, 1, 2, 3])
    adv = torch.arange(1.0, 9.0)
    for form in ("mc", "plugin"):
        out, m = seed(adv, ids, SeedConfig(alpha=0.5, se_form=form), mask=torch.ones(8, 2), cluster_ids=clusters)
        torch.testing.assert_close(out, adv * torch.tensor([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5]))
        # Mean over the 3 groups: SE = (0 + 0 + ln 4)/3, f = (1 + 1 + 0.5)/3.
        torch.testing.assert_close(m["seed/se_mean"], torch.tensor(math.log(4) / 3, dtype=torch.float64))
        torch.testing.assert_close(m["seed/scale_min"], torch.tensor(0.5, dtype=torch.float64))


def test_seed_cluster_numbering_and_row_order_do_not_matter():
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    per_group = torch.tensor([0, 0, 1, 0, 1, 1, 2])
    global_ids = torch.tensor([10, 10, 11, 20, 21, 21, 22])
    a, _ = semantic_entropy(ids, per_group, "mc")
    b, _ = semantic_entropy(ids, global_ids, "mc")
    perm = torch.tensor([6, 2, 0, 4, 1, 5, 3])
    c, _ = semantic_entropy(ids[perm], per_group[perm], "mc")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(c, a[perm], rtol=0, atol=0)


def _se_loop(group_ids, cluster_ids, form):
    groups = defaultdict(list)
    for g, c in zip(group_ids.tolist(), cluster_ids.tolist()):
        groups[g].append(c)
    out = []
    for g in group_ids.tolist():
        counts = Counter(groups[g]).values()
        n = len(groups[g])
        ps = [k / n for k in counts]
        if form == "mc":
            out.append(-sum(math.log(p) for p in ps) / len(ps))
        else:
            out.append(-sum(p * math.log(p) for p in ps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed_", range(4))
@pytest.mark.parametrize("form", ["mc", "plugin"])
def test_semantic_entropy_equals_loop(seed_, form):
    gen = torch.Generator().manual_seed(seed_)
    ids = torch.randint(0, 6, (40,), generator=gen) * 7
    clusters = torch.randint(0, 4, (40,), generator=gen)
    se, _ = semantic_entropy(ids, clusters, form)
    torch.testing.assert_close(se, _se_loop(ids, clusters, form), rtol=0, atol=1e-12)


def test_seed_errors():
    with pytest.raises(ValueError, match="algorithm.seed.alpha"):
        seed(torch.ones(6), G6, SeedConfig(), mask=MASK6, cluster_ids=C51)
    with pytest.raises(ValueError, match="cluster_ids"):
        seed(torch.ones(6), G6, SeedConfig(alpha=1.0), mask=MASK6)
    for form in ("exponential", "focal"):
        with pytest.raises(ValueError, match="unverified"):
            SeedConfig(alpha=1.0, f=form)
    with pytest.raises(ValueError, match="algorithm.seed.f"):
        SeedConfig(alpha=1.0, f="cubic")
    with pytest.raises(ValueError, match="algorithm.seed.alpha"):
        SeedConfig(alpha=-0.1)
    # α = 1.5 on all-distinct answers: f = 1 − 1.5 < 0 must be refused.
    with pytest.raises(ValueError, match="algorithm.seed.alpha"):
        seed(torch.ones(6), G6, SeedConfig(alpha=1.5), mask=MASK6, cluster_ids=torch.arange(6))


# ---------------------------------------------------------------- ETTRL


def test_ettrl_spec_numbers():
    # H = [0.5, 1.0, 1.5] (token means; padding holds NaN): H̄ = 1, Y = 1 + (1 − H)/1 = [1.5, 1.0, 0.5].
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.float64)
    entropy = torch.tensor([[0.4, 0.6, float("nan")], [1.0, 0.5, 1.5], [1.5, float("nan"), 9.0]])
    adv = torch.tensor([2.0, -1.0, 4.0])
    out, m = ettrl(adv, torch.zeros(3, dtype=torch.long), mask=mask, entropy=entropy.double())
    torch.testing.assert_close(out, torch.tensor([3.0, -1.0, 2.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["ettrl/Y_max"], torch.tensor(1.5, dtype=torch.float64))
    torch.testing.assert_close(m["ettrl/Y_min"], torch.tensor(0.5, dtype=torch.float64))


def test_ettrl_edge_cases():
    ids = torch.tensor([0, 0, 0, 1, 1, 2])
    # Group 0: H = [0, 0, 3], H̄ = 1: Y = [2, 2, −1] (kept in faithful mode).
    # Group 1: H = [0, 0], H̄ = 0: Y = 1. Group 2: singleton: Y = 1 + 0 = 1.
    h = torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0, 0.7])
    entropy, mask = h[:, None].expand(-1, 2), torch.ones(6, 2)
    out, m = ettrl(torch.ones(6), ids, mask=mask, entropy=entropy)
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0, -1.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(m["ettrl/Y_neg_frac"], torch.tensor(1 / 6, dtype=torch.float64))
    out, _ = ettrl(torch.ones(6), ids, EttrlConfig(clip_Y_min=0.0), mask=mask, entropy=entropy)
    assert out[2] == 0.0


def test_ettrl_adv_clip_mode():
    adv = torch.tensor([-3.0, -1.0, 0.5, 2.5])
    out, m = ettrl(adv, torch.zeros(4, dtype=torch.long), EttrlConfig(mode="clip"), mask=torch.ones(4, 1))
    torch.testing.assert_close(out, torch.tensor([-2.0, -1.0, 0.5, 2.0]))
    torch.testing.assert_close(m["ettrl/clip_frac"], torch.tensor(0.5, dtype=torch.float64))


def test_ettrl_errors():
    with pytest.raises(ValueError, match="entropies"):
        ettrl(torch.ones(2), torch.zeros(2, dtype=torch.long), mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match="algorithm.ettrl.mode"):
        EttrlConfig(mode="scale")
    with pytest.raises(ValueError, match="algorithm.ettrl.clip_beta"):
        EttrlConfig(clip_beta=0.0)


# ---------------------------------------------------------------- ETMR, registry, meta


def test_etmr_leaf_count():
    assert etmr_leaf_count(4, 3, 2) == 28  # 4·(1 + 2·3)
    assert etmr_leaf_count(5, 0, 2) == 5
    with pytest.raises(ValueError):
        etmr_leaf_count(-1, 3, 2)


def test_registry():
    assert ADVANTAGE_RESHAPERS.get("seed").config_cls is SeedConfig
    assert ADVANTAGE_RESHAPERS.get("ettrl").fn is ettrl
    with pytest.raises(KeyError, match="registered: .*ettrl.*seed"):
        ADVANTAGE_RESHAPERS.get("seed_grpo")


def test_meta_wrong_value_fails():
    se, _ = semantic_entropy(G6, C51, "mc")
    # The plug-in value in place of the MC one, and a 1e-5 slip, must both fail at atol 1e-6.
    for wrong in (0.450561, 0.987051):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(se[0], torch.tensor(wrong, dtype=torch.float64), rtol=0, atol=1e-6)
