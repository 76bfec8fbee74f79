"""Seeded batch order and whole-batch slicing, with and without DataLoader workers."""

from __future__ import annotations

import pytest
import torch

from sslr.data.loaders import (
    DeviceLoader,
    EpochBatchSampler,
    TensorBatches,
    batch_bounds,
    mix_seed,
)


@pytest.mark.parametrize("n,bs", [(10, 3), (9, 3), (10, 10), (1, 4), (129, 128), (257, 128)])
def test_batch_bounds_cover_every_index_once_and_never_leave_a_batch_of_one(n, bs):
    bounds = batch_bounds(n, bs)
    covered = [i for start, end in bounds for i in range(start, end)]
    assert covered == list(range(n))
    sizes = [end - start for start, end in bounds]
    assert all(s <= bs + 1 for s in sizes)
    if n > 1:
        assert min(sizes) > 1


def test_empty_splits_have_no_batches():
    assert batch_bounds(0, 4) == []
    assert list(EpochBatchSampler(0, 4)) == [] and len(EpochBatchSampler(0, 4, num_replicas=2)) == 0


def test_order_is_a_function_of_seed_and_epoch_only():
    def order(seed, epoch):
        s = EpochBatchSampler(100, 16, seed=seed)
        s.set_epoch(epoch)
        return [i for batch in s for i in batch]

    assert order(0, 0) == order(0, 0)  # a resumed run replays the same epoch
    assert order(0, 0) != order(0, 1)  # a new order every epoch
    assert order(0, 3) != order(1, 3)  # and per seed
    assert sorted(order(5, 7)) == list(range(100))


def test_unshuffled_sampler_is_sequential():
    s = EpochBatchSampler(10, 4, shuffle=False)
    s.set_epoch(3)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_mix_seed_separates_purposes():
    values = {mix_seed(0, p) for p in range(50)} | {mix_seed(1, p) for p in range(50)}
    assert len(values) == 100
    assert all(0 <= v < 2**63 for v in values)


def _pool(n=50):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return x, torch.arange(n)


@pytest.mark.parametrize("as_float", [False, True])
def test_device_loader_and_tensor_batches_yield_the_same_batches(as_float):
    x, y = _pool()
    index = torch.arange(5, 45)  # a split: pool entries 5..44
    sampler = EpochBatchSampler(index.numel(), 8, seed=3)
    sampler.set_epoch(2)
    on_device = list(DeviceLoader(x, y, index, sampler, as_float=as_float))
    in_host = [TensorBatches(x, y, index, as_float).__getitems__(b) for b in sampler]
    assert len(on_device) == len(in_host) == len(sampler) == 5
    for (xa, ya), (xb, yb) in zip(on_device, in_host, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
        # image content follows its target: pixel value == pool index
        pix = xa[:, 0, 0, 0] * (255 if as_float else 1)
        assert torch.allclose(pix.double(), ya.double())
        assert xa.shape[1] == (3 if as_float else 1)
    seen = torch.cat([b[1] for b in on_device])
    assert sorted(seen.tolist()) == index.tolist()  # each example of the split exactly once


@pytest.mark.parametrize("n", [100, 101, 7])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ddp_shares_partition_the_epoch(n, shuffle):
    """Under DDP each rank keeps rank::world of the same epoch permutation, in equal shares."""
    world = 3
    shares = []
    for rank in range(world):
        s = EpochBatchSampler(n, 8, seed=2, shuffle=shuffle, num_replicas=world, rank=rank)
        s.set_epoch(5)
        shares.append([i for batch in s for i in batch])
    assert len({len(share) for share in shares}) == 1  # equal shares: ranks stay in step
    assert len({len(list(EpochBatchSampler(n, 8, 2, shuffle, world, r))) for r in range(3)}) == 1
    seen = [i for share in shares for i in share]
    assert set(seen) == set(range(n))
    assert len(seen) - n == -n % world  # only the wrap-around padding repeats
    single = EpochBatchSampler(n, 8, seed=2, shuffle=shuffle)
    single.set_epoch(5)
    mine = single.indices().tolist()[1::world]
    assert shares[1][: len(mine)] == mine  # the same permutation, sharded


def test_lightning_leaves_the_sampler_in_place():
    """It is a DistributedSampler, so Lightning does not wrap another sampler around it."""
    from torch.utils.data import DistributedSampler

    assert isinstance(EpochBatchSampler(10, 4), DistributedSampler)
