import pytest
import torch


@pytest.fixture
def cov_batch():
    """The Clip-Cov / KL-Cov hand case's batch: two sequences of three valid tokens, r = 1."""
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    logp = torch.tensor([[-0.1, -2.0, -0.5], [-0.2, -3.0, -1.0]])
    mask = torch.ones(2, 3)
    return logp, adv, mask
