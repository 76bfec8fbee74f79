"""Fixtures for the feedback tests (helpers live in feedback_helpers.py)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Every test starts from the same global RNG state, on one intra-op thread.

    The tensors here are small: a second OpenMP thread buys nothing, and on a busy machine
    its spin-waiting makes each op many times slower. The previous setting is restored.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    yield
    torch.set_num_threads(threads)
