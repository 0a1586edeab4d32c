import torch

from entropo.models.forward import model_inputs
from entropo.trainer.batch import StepBatch
from entropo.trainer.engine import left_pad, response_mask

EOS, PAD = 1, 0


def test_response_mask_up_to_and_including_first_eos():
    ids = torch.tensor([[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, 9], [5, EOS, 7, EOS, PAD], [5, 6, PAD, PAD, PAD]])
    mask, truncated = response_mask(ids, EOS, PAD, max_new_tokens=5)
    assert mask.int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    # row 1 used all 5 tokens without EOS; row 3 ended early (a stop string) and is complete
    assert truncated.tolist() == [False, True, False, False]


def test_left_pad_right_aligns():
    ids, att = left_pad([[3, 4, 5], [7]], PAD)
    assert ids.tolist() == [[3, 4, 5], [PAD, PAD, 7]]
    assert att.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_positions_count_only_attended_tokens():
    ids, _att, pos = model_inputs(torch.tensor([[0, 0, 7]]), torch.tensor([[0, 0, 1]]),
                                 torch.tensor([[8, 9, 0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert ids.tolist() == [[0, 0, 7, 8, 9, 0]]
    assert pos.tolist()[0][2:5] == [0, 1, 2]


def _batch(n, p, t, offset=0):
    return StepBatch(
        prompt_ids=torch.arange(n * p).reshape(n, p) + offset, prompt_mask=torch.ones(n, p, dtype=torch.long),
        response_ids=torch.ones(n, t, dtype=torch.long), mask=torch.ones(n, t), rollout_logp=torch.zeros(n, t),
        truncated=torch.zeros(n, dtype=torch.bool), group_ids=torch.arange(n) + offset,
        response_text=[str(i + offset) for i in range(n)], rows=list(range(offset, offset + n)),
        reward_components={"a": torch.arange(n).float()},
    )


def test_select_and_concat_keep_every_field_aligned():
    a, b = _batch(2, 3, 4), _batch(3, 2, 5, offset=10)
    both = StepBatch.concat([a, b])
    assert both.prompt_ids.shape == (5, 3) and both.response_ids.shape == (5, 5)
    assert both.prompt_mask[2:].tolist() == [[0, 1, 1]] * 3  # left-padded
    assert both.mask[:2, 4].tolist() == [0.0, 0.0]  # right-padded
    sub = both.select([4, 0])
    assert sub.response_text == ["12", "0"] and sub.rows == [12, 0]
    assert sub.group_ids.tolist() == [12, 0] and sub.reward_components["a"].tolist() == [2.0, 0.0]


def test_learner_rows_trim_only_columns_no_row_needs():
    from entropo.trainer.batch import LearnerShard

    shard = LearnerShard(
        prompt_ids=torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]]), prompt_mask=torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
        response_ids=torch.tensor([[1, 2, 0, 0, 0], [3, 4, 5, 0, 0]]),
        mask=torch.tensor([[1.0, 1, 0, 0, 0], [1, 1, 1, 0, 0]]), old_logp=torch.arange(10.0).reshape(2, 5),
    )
    trimmed, t = shard.trimmed()
    assert t == 3
    assert trimmed.prompt_ids.tolist() == [[0, 5, 6], [7, 8, 9]]  # 3 prompt columns are enough
    assert trimmed.response_ids.tolist() == [[1, 2, 0], [3, 4, 5]]
    assert trimmed.old_logp.tolist() == [[0, 1, 2], [5, 6, 7]]


def test_the_learner_shard_is_the_field_table():
    """LearnerShard has exactly the table's fields, in its order, typed as in StepBatch, so the
    learner's shards, the π_old pass's fields and the controller's split cannot drift apart."""
    import dataclasses

    from entropo.trainer.batch import (
        LEARNER_FIELDS,
        OLD_PASS_FIELDS,
        SEQUENCE_FIELDS,
        UPDATE_FIELDS,
        LearnerShard,
    )

    shard = {f.name: f.type for f in dataclasses.fields(LearnerShard)}
    batch = {f.name: f.type for f in dataclasses.fields(StepBatch)}
    assert tuple(shard) == LEARNER_FIELDS == SEQUENCE_FIELDS + OLD_PASS_FIELDS + UPDATE_FIELDS
    for name in SEQUENCE_FIELDS:
        assert shard[name] == batch[name] == "torch.Tensor", name
    for name in OLD_PASS_FIELDS + UPDATE_FIELDS:  # optional in the shard; filled by a stage in the batch
        assert shard[name] == "torch.Tensor | None", name
        assert batch[name] in ("torch.Tensor", "torch.Tensor | None"), name
    rows = StepBatch(prompt_ids=torch.ones(4, 2, dtype=torch.long), prompt_mask=torch.ones(4, 2),
                     response_ids=torch.ones(4, 3, dtype=torch.long), mask=torch.ones(4, 3),
                     rollout_logp=torch.zeros(4, 3), truncated=torch.zeros(4, dtype=torch.bool),
                     group_ids=torch.arange(4), response_text=[""] * 4, rows=[None] * 4)
    rows.advantages = torch.arange(12.0).view(4, 3)
    part = LearnerShard.of(rows, slice(1, 3))
    assert torch.equal(part.advantages, rows.advantages[1:3]) and part.old_logp is None and len(part) == 2
