"""DAPO dynamic sampling (arXiv 2503.14476): group filter, metrics, accumulation."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from entropo.algorithms.configs.dapo import DynamicSamplingConfig
from entropo.algorithms.dynamic_sampling import (
    DynamicSamplingExhausted,
    dynamic_sampling_metrics,
    group_keep_mask,
    need_more_batches,
    select_groups,
)


def _spec_batch():
    # Groups {[1,1,1,1], [0,0,0,0], [1,0,0,0], [1]}, ids 1..4.
    acc = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1])
    ids = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4])
    return acc, ids


def _keep_loop(metric, group_ids):
    """Slow reference: population std per group, as verl's np.std, with exact equality."""
    by_id = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        by_id[g].append(i)
    keep = torch.zeros(len(metric), dtype=torch.bool)
    for idx in by_id.values():
        values = [float(metric[i]) for i in idx]
        if len(idx) == 1 or len(set(values)) > 1:
            keep[idx] = True
    return keep


def test_spec_keeps_groups_3_and_4():
    acc, ids = _spec_batch()
    keep = group_keep_mask(acc, ids)
    assert torch.equal(keep, torch.isin(ids, torch.tensor([3, 4])))


def test_spec_shuffled_noncontiguous_ids():
    acc, ids = _spec_batch()
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    ids = ids * 1000 - 77  # arbitrary, negative ids
    keep = group_keep_mask(acc[perm], ids[perm])
    assert torch.equal(keep, torch.isin(ids[perm], torch.tensor([3 * 1000 - 77, 4 * 1000 - 77])))


def test_constant_non_binary_group_is_dropped():
    # 0.1 three times is constant; np.std could report ~1e-17 here, min == max does not.
    metric = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.2])
    ids = torch.tensor([0, 0, 0, 1, 1])
    assert torch.equal(
        group_keep_mask(metric, ids), torch.tensor([False, False, False, True, True])
    )


@pytest.mark.parametrize("seed", range(3))
def test_keep_mask_equals_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 15, (60,), generator=gen) * 3
    metric = torch.randint(0, 2, (60,), generator=gen).float()
    assert torch.equal(group_keep_mask(metric, ids), _keep_loop(metric, ids))


def test_metrics_spec_batch():
    acc, ids = _spec_batch()
    keep = group_keep_mask(acc, ids)
    metrics = dynamic_sampling_metrics(acc, ids, keep)
    # 4 groups: kept 3 and 4; all-correct 1 and 4 (a singleton [1] is all-correct); all-wrong 2.
    expected = {
        "sampling/kept_groups": 2.0,
        "sampling/kept_group_frac": 0.5,
        "sampling/all_correct_frac": 0.5,
        "sampling/all_wrong_frac": 0.25,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(metrics[key], torch.tensor(value), msg=key)


def test_metrics_plus_minus_one_scores():
    # DAPO's math scorer gives ±1: −1 is wrong.
    score = torch.tensor([-1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = dynamic_sampling_metrics(score, ids, group_keep_mask(score, ids))
    torch.testing.assert_close(metrics["sampling/all_wrong_frac"], torch.tensor(1 / 3))
    torch.testing.assert_close(metrics["sampling/all_correct_frac"], torch.tensor(1 / 3))
    torch.testing.assert_close(metrics["sampling/kept_group_frac"], torch.tensor(1 / 3))


def test_need_more_batches():
    cfg = DynamicSamplingConfig(enable=True, max_num_gen_batches=3)
    assert not need_more_batches(8, 8, 1, cfg)
    assert not need_more_batches(9, 8, 3, cfg)  # enough, even at the limit
    assert need_more_batches(5, 8, 2, cfg)
    with pytest.raises(DynamicSamplingExhausted, match="max_num_gen_batches=3"):
        need_more_batches(5, 8, 3, cfg)
    forever = DynamicSamplingConfig(enable=True, max_num_gen_batches=0)
    assert need_more_batches(0, 8, 10**6, forever)


def test_select_groups_truncates_to_whole_groups():
    # Two generation batches of 3 prompts × G=2, accumulated; target 3 prompts → 6 rows.
    metric = torch.tensor([1.0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1])
    ids = torch.tensor([10, 10, 11, 11, 12, 12, 20, 20, 21, 21, 22, 22])
    keep = group_keep_mask(metric, ids)  # kept: 10, 12, 21, 22
    rows = select_groups(ids, keep, 3)
    assert torch.equal(rows, torch.tensor([0, 1, 4, 5, 8, 9]))
    assert rows.numel() == 3 * 2


def test_select_groups_uses_first_appearance_not_id_order():
    metric = torch.tensor([1.0, 0, 0, 1, 1, 0])
    ids = torch.tensor([9, 9, 2, 2, 5, 5])  # appearance order 9, 2, 5
    rows = select_groups(ids, group_keep_mask(metric, ids), 2)
    assert torch.equal(rows, torch.tensor([0, 1, 2, 3]))


def test_select_groups_not_enough():
    acc, ids = _spec_batch()
    with pytest.raises(ValueError, match="need_more_batches"):
        select_groups(ids, group_keep_mask(acc, ids), 3)


def test_config_validation():
    with pytest.raises(ValueError, match="metric"):
        DynamicSamplingConfig(metric="reward")
    with pytest.raises(ValueError, match="max_num_gen_batches"):
        DynamicSamplingConfig(max_num_gen_batches=-1)


def test_meta_wrong_keep_fails():
    acc, ids = _spec_batch()
    keep = group_keep_mask(acc, ids)
    # Keeping group 1 (all correct) as well would be wrong; the comparison must notice.
    wrong = torch.isin(ids, torch.tensor([1, 3, 4]))
    assert not torch.equal(keep, wrong)
