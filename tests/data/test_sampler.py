"""PromptSampler: seeded, wraps into reshuffled epochs, resumes exactly."""

import pytest

from entropo.data.loading import PromptRow
from entropo.data.sampler import PromptSampler

ROWS = [PromptRow(f"p{i}", str(i), "test", {}, i) for i in range(10)]


def _ids(batch):
    return [row.index for row in batch]


def test_deterministic_and_seed_dependent():
    a, b, c = PromptSampler(ROWS, 4, seed=0), PromptSampler(ROWS, 4, seed=0), PromptSampler(ROWS, 4, seed=1)
    draws_a = [_ids(a.next_batch()) for _ in range(6)]
    assert draws_a == [_ids(b.next_batch()) for _ in range(6)]
    assert draws_a != [_ids(c.next_batch()) for _ in range(6)]


def test_epochs_cover_every_row_and_reshuffle():
    s = PromptSampler(ROWS, 5, seed=0)
    epoch0 = _ids(s.next_batch()) + _ids(s.next_batch())
    assert s.epoch == 0 and s.position == 10
    epoch1 = _ids(s.next_batch()) + _ids(s.next_batch())
    assert s.epoch == 1
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1


def test_batch_spanning_epochs_is_full():
    s = PromptSampler(ROWS, 4, seed=3)
    stream = [i for _ in range(5) for i in _ids(s.next_batch())]  # 20 rows = 2 epochs
    assert sorted(stream[:10]) == sorted(stream[10:]) == list(range(10))
    small = PromptSampler(ROWS[:3], 5, seed=0)
    assert len(small.next_batch()) == 5  # fewer rows than a batch: wraps inside the batch


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 7])
def test_state_round_trip_gives_identical_batches(steps):
    original = PromptSampler(ROWS, 4, seed=5)
    for _ in range(steps):
        original.next_batch()
    state = original.state_dict()
    resumed = PromptSampler(list(ROWS), 4, seed=5)
    resumed.load_state_dict(dict(state))
    assert [_ids(original.next_batch()) for _ in range(6)] == [_ids(resumed.next_batch()) for _ in range(6)]


def test_state_from_another_dataset_or_seed_is_rejected():
    state = PromptSampler(ROWS, 4, seed=5).state_dict()
    with pytest.raises(ValueError, match="seed"):
        PromptSampler(ROWS, 4, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="rows"):
        PromptSampler(ROWS[:9], 4, seed=5).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError):
        PromptSampler([], 4, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        PromptSampler(ROWS, 0, seed=0)
